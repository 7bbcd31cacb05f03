"""The Python half of scripts/gpu_check.sh: build a random model of PaliGemma 2 3B-896's shapes, estimate its training
memory, and run `invoice-vlm train` while measuring the peak.

    python scripts/gpu_check.py build --out DIR [--shape pg2-896|tiny]   # random weights, the project's tokenizer
    python scripts/gpu_check.py estimate [--shape pg2-896]               # preflight's figures on a meta-device model
    python scripts/gpu_check.py train --out FILE.json -- TRAIN ARGS       # invoice-vlm train + peak memory

``pg2-896`` is google/paligemma2-3b-pt-896's architecture (SigLIP So400m 27x1152 at 896 px, patch 14: 4,096 image
tokens; Gemma 2 2B 26x2304, 8 heads of 256, 4 KV heads; vocabulary 257,216; 3.03B parameters) built offline with
this project's byte-level BPE tokenizer, the embedding table sized to the real vocabulary. ``tiny`` is the same
construction at the default tiny size (the CPU dry run of gpu_check.sh).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

PG2_VOCAB = 257_216


def pg2_config(processor, shape: str):
    """PaliGemmaConfig of the real 3B-896 shapes (``pg2-896``) or of the tiny default (``tiny``)."""
    from transformers import Gemma2Config, PaliGemmaConfig, SiglipVisionConfig

    tok = processor.tokenizer
    if shape == "pg2-896":
        v = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                 image_size=896, patch_size=14)
        t = dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
                 num_key_value_heads=4, head_dim=256, sliding_window=4096, query_pre_attn_scalar=256,
                 max_position_embeddings=8192, vocab_size=PG2_VOCAB)
    else:
        v = dict(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=3,
                 image_size=224, patch_size=16)
        t = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=1, head_dim=64, sliding_window=512, query_pre_attn_scalar=64,
                 max_position_embeddings=4096, vocab_size=8192)
    vision = SiglipVisionConfig(**v, vision_use_head=False)
    text = Gemma2Config(**t, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id)
    return PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=processor.image_token_id,
                           vocab_size=t["vocab_size"], projection_dim=t["hidden_size"], hidden_size=t["hidden_size"])


def _processor(shape: str):
    from invoice_vlm.models import build_processor, build_tokenizer

    size, patch = (896, 14) if shape == "pg2-896" else (224, 16)
    return build_processor(build_tokenizer(2048), size, patch)


def build(out: str, shape: str) -> None:
    """Random weights (initialised on the GPU when there is one: 3B parameters take minutes on a CPU), saved in bf16
    (the trainer loads them at the dtype it trains in)."""
    from transformers import PaliGemmaForConditionalGeneration

    processor = _processor(shape)
    config = pg2_config(processor, shape)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = PaliGemmaForConditionalGeneration(config)
    model.to(torch.bfloat16)
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(processor.tokenizer, key))
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"built": out, "shape": shape, "parameters": n}))


def estimate(shape: str, sequence: int, target: int, batch: int = 1) -> dict:
    """Preflight's estimate for LoRA (configs/paligemma2-3b-pt-896/lora.yaml's adapter) on an fp32 and a bf16 base,
    on a meta-device model: no memory is allocated."""
    from peft import LoraConfig, get_peft_model
    from transformers import PaliGemmaForConditionalGeneration

    from invoice_vlm.train.preflight import memory_estimate

    processor = _processor(shape)
    config = pg2_config(processor, shape)
    image = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    sft = {"per_device_train_batch_size": batch, "bf16": True, "gradient_checkpointing": True}
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        with torch.device("meta"):
            model = PaliGemmaForConditionalGeneration(config).to(dtype)
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=(
            r".*\.language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$")))
        parts, assumed = memory_estimate(model, sft, sequence, image, target + 1, cuda=True)
        out[str(dtype).replace("torch.", "")] = {"gib": parts, "assumed": assumed}
    return out


class _SmiPoll(threading.Thread):
    """nvidia-smi's memory.used for this GPU, polled every 0.2 s; the peak in MiB."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                used = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                       "-i", "0"], capture_output=True, text=True, timeout=5).stdout.split()
                self.peak = max(self.peak, int(used[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return
            time.sleep(0.2)


def train(out: str, args: list[str]) -> dict:
    """`invoice-vlm train ARGS` in this process, with the peak memory (allocated, reserved, nvidia-smi) beside
    preflight's estimate from the run's run.json."""
    from invoice_vlm.cli import app

    cuda = torch.cuda.is_available()
    smi = _SmiPoll() if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        smi.start()
    t0 = time.perf_counter()
    try:
        app(["train", *args], standalone_mode=False)
        error = None
    except BaseException as e:  # noqa: BLE001 - recorded, then re-raised below
        error = f"{type(e).__name__}: {e}"
    secs = time.perf_counter() - t0
    if smi:
        smi.stop.set()
        smi.join(2)
    result: dict = {"args": args, "seconds": round(secs, 1), "error": error}
    if cuda:
        result.update(device=torch.cuda.get_device_name(0),
                      max_memory_allocated_gib=round(torch.cuda.max_memory_allocated() / 2**30, 3),
                      max_memory_reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 3),
                      nvidia_smi_peak_gib=round(smi.peak / 1024, 3) if smi.peak else None)
    name = args[args.index("--name") + 1] if "--name" in args else None
    runs = Path(args[args.index("--output-root") + 1]) if "--output-root" in args else Path("runs")
    run_json = runs / name / "run.json" if name else None
    if run_json and run_json.exists():
        pre = json.loads(run_json.read_text())["preflight"]
        result["preflight_gib"] = pre["memory_estimate_gb"]
        result["preflight_assumed"] = pre.get("memory_assumed")
        est = pre["memory_estimate_gb"]["total"]
        if cuda:
            measured = result["nvidia_smi_peak_gib"] or result["max_memory_allocated_gib"]
            result["estimate_over_nvidia_smi"] = round(est / measured, 3) if measured else None
            ctx = pre["memory_estimate_gb"].get("cuda_context", 0)
            result["estimate_less_context_over_allocated"] = round(
                (est - ctx) / result["max_memory_allocated_gib"], 3) if result["max_memory_allocated_gib"] else None
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("preflight_assumed",)}))
    if error:
        raise SystemExit(f"train failed: {error}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", required=True)
    b.add_argument("--shape", default="pg2-896", choices=["pg2-896", "tiny"])
    e = sub.add_parser("estimate")
    e.add_argument("--shape", default="pg2-896", choices=["pg2-896", "tiny"])
    e.add_argument("--sequence", type=int, default=5113, help="tokens: 4,096 image + prompt + target")
    e.add_argument("--target", type=int, default=1001, help="labelled tokens (the longest target + its end)")
    e.add_argument("--batch", type=int, default=1)
    e.add_argument("--out")
    t = sub.add_parser("train")
    t.add_argument("--out", required=True)
    t.add_argument("args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    if a.cmd == "build":
        build(a.out, a.shape)
    elif a.cmd == "estimate":
        r = estimate(a.shape, a.sequence, a.target, a.batch)
        if a.out:
            Path(a.out).write_text(json.dumps(r, indent=1))
        print(json.dumps(r, indent=1))
    else:
        train(a.out, [x for x in a.args if x != "--"])


if __name__ == "__main__":
    sys.exit(main())
