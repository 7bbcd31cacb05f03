"""Does a tiny PaliGemma trained from scratch start to read? A short plain training loop on one probe task, printing
the training loss and ``image_gap`` (loss of held-out targets with another example's image minus with their own;
0 = the image is ignored) every 25 steps, and two greedy readings every 100.

Probes (all images 768 x 768, the embedded model's geometry):
  lines   bands of rows from a dataset's pages, enlarged up to --zoom (the ``lines`` task with ``lines_zoom``)
  grid    random characters one per 32 px patch, in reading order from the first patch (alignment made trivial)
  big     1-4 random characters 110-260 px tall (about 4 x 6 patches each): the easiest reading there is

    python scripts/probe_reading.py big --steps 300
    python scripts/probe_reading.py lines --data data/pretrain --zoom 3 --steps 300
    python scripts/probe_reading.py grid --zero-init-vision --steps 300

The model is ``tiny-random`` with the pretraining config's architecture (``configs/tiny/pretrain.yaml``), built in
``--workdir``; AdamW, batch 8, 20 warm-up steps, gradient clipping at 1.0.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from invoice_vlm.models import TINY_RANDOM, TinyModelConfig, resolve_model, training_batch  # noqa: E402
from invoice_vlm.synth import FONT_FAMILIES, get_font  # noqa: E402
from invoice_vlm.train.tasks import GLYPH_CHARS  # noqa: E402
from invoice_vlm.train.trainer import image_gap  # noqa: E402

CHARS = GLYPH_CHARS  # the glyphs task's characters


def grid_sample(rng: random.Random, cell: int = 32, max_chars: int = 48):
    chars = [rng.choice(CHARS) for _ in range(rng.randint(3, max_chars))]
    font = get_font(rng.choice(sorted(FONT_FAMILIES)), False, cell * 0.7)
    im = Image.new("RGB", (768, 768), "white")
    draw = ImageDraw.Draw(im)
    per_row = 768 // cell
    for k, c in enumerate(chars):
        r, q = divmod(k, per_row)
        draw.text((q * cell + cell / 2, r * cell + cell / 2), c, fill="black", font=font, anchor="mm")
    return im, " ".join(chars)


def big_sample(rng: random.Random):
    chars = [rng.choice(CHARS) for _ in range(rng.randint(1, 4))]
    size = rng.uniform(110, min(260, 700 / len(chars)))
    font = get_font(rng.choice(sorted(FONT_FAMILIES)), False, size)
    im = Image.new("RGB", (768, 768), "white")
    draw = ImageDraw.Draw(im)
    x, y = rng.uniform(10, 60), rng.uniform(10, 768 - size * 1.3)
    for c in chars:
        draw.text((x, y), c, fill="black", font=font)
        x += size * 0.8
    return im, " ".join(chars)


def lines_samples(data: str, zoom: float, seed: int, split: str):
    from invoice_vlm.data import open_image, read_split
    from invoice_vlm.train.collate import show_band
    from invoice_vlm.train.tasks import build_examples

    examples = build_examples(read_split(data, split), {"lines": 1.0}, seed, "ocr", 4, zoom)
    random.Random(seed).shuffle(examples)
    for e in examples:
        yield show_band(open_image(e.image).convert("RGB"), e.window, e.zoom), e.target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("probe", choices=["lines", "grid", "big"])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--data", default="data/pretrain")
    ap.add_argument("--zoom", type=float, default=3.0)
    ap.add_argument("--zero-init-vision", action="store_true",
                    help="zero the vision tower's residual branches (each layer starts as the identity)")
    ap.add_argument("--workdir", default="runs/probe")
    args = ap.parse_args()

    torch.manual_seed(0)
    from transformers import AutoProcessor, PaliGemmaForConditionalGeneration

    from invoice_vlm.common import read_yaml

    arch = TinyModelConfig(**read_yaml("configs/tiny/pretrain.yaml").get("tiny", {}))
    base = resolve_model(TINY_RANDOM, Path(args.workdir), arch)
    processor = AutoProcessor.from_pretrained(base)
    model = PaliGemmaForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
    if args.zero_init_vision:
        with torch.no_grad():
            for layer in model.model.vision_tower.encoder.layers:
                for lin in (layer.self_attn.out_proj, layer.mlp.fc2):
                    lin.weight.zero_()
                    lin.bias.zero_()
    if args.probe == "lines":
        stream = lines_samples(args.data, args.zoom, 0, "train")
        held = list(lines_samples(args.data, args.zoom, 1, "validation"))[:8]
    else:
        make = grid_sample if args.probe == "grid" else big_sample
        rng = random.Random(0)
        stream = iter(lambda: make(rng), None)
        held = [make(random.Random(999 + k)) for k in range(8)]

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-6)
    model.train()
    t0, losses = time.time(), []
    for step in range(1, args.steps + 1):
        batch = [next(stream) for _ in range(8)]
        inputs = training_batch(processor, [b[0] for b in batch], ["ocr"] * 8, [b[1] for b in batch])
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, step / 20)
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        if step % 25 == 0:
            g = image_gap(model, processor, [h[0] for h in held], [h[1] for h in held], "ocr")
            print(f"step {step} train loss {sum(losses) / len(losses):.3f} held-out loss {g['loss_right_image']:.3f} "
                  f"image_gap {g['image_gap']:.4f} ({time.time() - t0:.0f} s)", flush=True)
            losses = []
        if step % 100 == 0:
            model.eval()
            with torch.no_grad():
                enc = processor(text=["<image>ocr"] * 2, images=[h[0] for h in held[:2]], return_tensors="pt")
                out = model.generate(**enc, max_new_tokens=40, do_sample=False)
            n = enc["input_ids"].shape[1]
            print("   read:", [processor.tokenizer.decode(o[n:], skip_special_tokens=True) for o in out],
                  "truth:", [h[1] for h in held[:2]], flush=True)
            model.train()


if __name__ == "__main__":
    main()
