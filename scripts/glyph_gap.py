"""Do a run's checkpoints read glyphs? For each checkpoint: ``image_gap`` on held-out ``glyphs`` examples (loss with
another example's image minus loss with the right one; 0 = the image is ignored), the examples read exactly right
and the CER of greedy decoding (by edit distance, so one dropped character costs one edit, not the rest of the
string), and two readings.

    python scripts/glyph_gap.py runs/curriculum-big/checkpoint-* --glyph-size 150 300 --glyph-chars 4

The examples are drawn exactly as the trainer's ``glyphs`` task draws them (``render_rows``), from a seed no run
trains on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _glyph_args import add_glyph_args, examples  # noqa: E402
from invoice_vlm.evaluate import cer  # noqa: E402
from invoice_vlm.infer import Predictor  # noqa: E402
from invoice_vlm.models import load  # noqa: E402
from invoice_vlm.train.trainer import image_gap  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    add_glyph_args(ap)
    ap.add_argument("-n", type=int, default=16, help="held-out examples")
    args = ap.parse_args()

    texts, images = examples(args, "held-out", args.n)
    print("| checkpoint | image_gap | read exactly right | CER | readings (truth) |")
    print("|---|---:|---:|---:|---|")
    for ckpt in sorted(args.checkpoints, key=lambda p: int(p.rsplit("-", 1)[-1]) if p.rsplit("-", 1)[-1].isdigit()
                       else 0):
        model, processor = load(ckpt)
        model.eval()
        with torch.no_grad():
            gap = image_gap(model, processor, images, texts, "ocr")
            preds = Predictor(model, processor, max_new_tokens=24, batch_size=8).predict(images, "ocr")
        right = sum(p.strip() == t for p, t in zip(preds, texts))
        print(f"| {ckpt} | {gap['image_gap']:.3f} | {right}/{len(texts)} | {cer(preds, texts):.1%} | "
              f"{preds[0]!r} ({texts[0]!r}), {preds[1]!r} ({texts[1]!r}) |", flush=True)


if __name__ == "__main__":
    main()
