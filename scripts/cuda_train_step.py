"""Training steps of a wider tiny PaliGemma on a CUDA GPU in bf16: full fine-tuning and LoRA, samples/s each.

Run as (on a machine with a GPU)::

    python scripts/cuda_train_step.py [--batch-size 8] [--steps 20]

The model is the real architecture at a size where the GPU, not Python, sets the pace (SigLIP 6x768 at 448 px,
patch 14: 1024 image tokens; Gemma 8x1024), with random weights, built offline like the tiny default. Batches
come from the project's collator over synthetic invoices, so the step is the one `invoice-vlm train` takes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda", help="cuda (bf16), or cpu (fp32) to check the script runs")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this script measures GPU training steps (--device cpu to dry-run it)")
    cuda = args.device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    from invoice_vlm import synth
    from invoice_vlm.data import open_image, read_split
    from invoice_vlm.models import TinyModelConfig, create_tiny, load
    from invoice_vlm.train.collate import Collator

    wide = TinyModelConfig(image_size=448, patch_size=14, vision_hidden=768, vision_layers=6, vision_heads=12,
                           vision_intermediate=3072, text_hidden=1024, text_layers=8, text_heads=8,
                           text_kv_heads=1, text_head_dim=128, text_intermediate=4096)
    results = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "dtype": str(dtype),
               "batch_size": args.batch_size, "steps": args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        synth.main(synth.SynthConfig(out=f"{tmp}/data", n=args.batch_size, dpi=150, max_items=6,
                                     split="train=1", workers=2), progress=False)
        samples = read_split(f"{tmp}/data", "train")
        base = create_tiny(Path(tmp) / "base", wide)
        for method in ("full", "lora"):
            model, processor = load(base, dtype=dtype, device=args.device)
            if method == "lora":
                from peft import LoraConfig, get_peft_model

                model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=(
                    r".*\.language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$")))
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=1e-5)
            rows = [{"image": open_image(s.image), "prompt": "ocr", "target": s.text}
                    for s in samples[: args.batch_size]]
            batch = {k: v.to(args.device) for k, v in Collator(processor)(rows).items()}
            batch["pixel_values"] = batch["pixel_values"].to(dtype)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            for i in range(args.warmup + args.steps):
                if i == args.warmup:
                    sync()
                    t0 = time.perf_counter()
                loss = model(**batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
            sync()
            secs = (time.perf_counter() - t0) / args.steps
            results[method] = {"samples_per_s": round(args.batch_size / secs, 2), "step_s": round(secs, 4),
                               "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
                               "trainable_params": sum(p.numel() for p in params),
                               "tokens_per_sample": int(batch["attention_mask"].sum()) // args.batch_size,
                               "loss": round(float(loss), 4)}
            del model, opt
            if cuda:
                torch.cuda.empty_cache()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
