"""Where does learning to read stop? A plain training loop (batch 8, AdamW, the project's collator) of a fresh tiny
PaliGemma on one rung of a ladder of image -> one-character tasks, printing held-out accuracy every 50 steps.

    python scripts/read_ladder.py fixed --steps 300 --save /tmp/m-fixed     # one digit, one font, size, place
    python scripts/read_ladder.py glyph --steps 400 --init /tmp/m-fixed     # any font, size, place, from there

Rungs (digits 0-9 unless said; chance is 6.4 of 64):
  bar        a black bar in one of 10 places (where, not what)
  fixed      one big digit in one font, size and place (the trainer's ``glyph_fixed``)
  fixedfont  one font, size and place drawn at random
  fixedpos   a font drawn at random, one size and place
  glyph      font, size and place drawn at random (the trainer's ``glyphs`` task, ``glyph_chars: 1``)
  fixed60    as ``fixed``, over the 60 characters of the ``glyphs`` task

The model is the shipped architecture at ``--image-size`` (256 px: 64 image tokens, about 7 times cheaper a step
than 768 px here, and it fails and succeeds as the 768 px model does; README, "What starts the reading").
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from invoice_vlm.models import TinyModelConfig, create_tiny, load  # noqa: E402
from invoice_vlm.synth import FONT_FAMILIES, get_font  # noqa: E402
from invoice_vlm.train.collate import Collator  # noqa: E402
from invoice_vlm.train.tasks import GLYPH_CHARS, render_rows  # noqa: E402

RUNGS = ("bar", "fixed", "fixedfont", "fixedpos", "glyph", "fixed60")
PAGE = (850, 1100)  # the pretraining pages' size; the processor resizes to the model's


def example(rung: str, rng: random.Random) -> dict:
    classes = GLYPH_CHARS if rung == "fixed60" else "0123456789"
    c = rng.choice(classes)
    if rung == "bar":
        img = Image.new("RGB", PAGE, "white")
        k = int(c)
        ImageDraw.Draw(img).rectangle((k * 85, 0, k * 85 + 84, PAGE[1]), fill=(0, 0, 0))
    elif rung == "glyph":
        img = render_rows(f"ladder/{rng.random()}", c, font_px=(600, 1000))
    elif rung in ("fixed", "fixed60"):
        img = render_rows("ladder", c, font_px=(600, 1000), fixed=True)
    else:  # fixedfont / fixedpos: one of the two drawn at random, drawn as render_rows would
        family = sorted(FONT_FAMILIES)[0] if rung == "fixedfont" else rng.choice(sorted(FONT_FAMILIES))
        if rung == "fixedfont":
            font, xy = get_font(family, False, rng.uniform(600, 1000)), (rng.randint(20, 120), rng.randint(8, 30))
        else:
            font, xy = get_font(family, False, 700), (70, 20)
        img = Image.new("RGB", PAGE, "white")
        ImageDraw.Draw(img).text(xy, c, fill=(0, 0, 0), font=font)
    return {"image": img, "prompt": "ocr", "target": c}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rung", choices=RUNGS)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--init", help="start from this model folder (a rung's --save) instead of a fresh model")
    ap.add_argument("--save", help="save the trained model here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        base = args.init or create_tiny(Path(tmp) / "base", TinyModelConfig(image_size=args.image_size, patch_size=32,
                                                                           seed=args.seed))
        model, processor = load(base)
    model.train()
    collate = Collator(processor)
    rng = random.Random(args.seed)
    held = [example(args.rung, random.Random(f"held-out/{i}")) for i in range(64)]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-6)

    def accuracy() -> int:
        model.eval()
        right = 0
        with torch.no_grad():
            for i in range(0, len(held), 16):
                batch = collate(held[i:i + 16])
                labels = batch["labels"]
                rows = torch.arange(len(labels))
                first = (labels != -100).float().argmax(1)  # the character's position; the one before predicts it
                right += (model(**batch).logits[rows, first - 1].argmax(-1) == labels[rows, first]).sum().item()
        model.train()
        return right

    t0 = time.time()
    for step in range(1, args.steps + 1):
        loss = model(**collate([example(args.rung, rng) for _ in range(8)])).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if step % 50 == 0:
            print(f"{args.rung} step {step}: train loss {loss.item():.3f}, held-out read right {accuracy()}/64 "
                  f"({time.time() - t0:.0f} s)", flush=True)
    if args.save:
        model.save_pretrained(args.save)
        processor.save_pretrained(args.save)


if __name__ == "__main__":
    main()
