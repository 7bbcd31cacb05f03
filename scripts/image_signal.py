"""Where does a model lose the image? For 8 held-out ``glyphs`` examples, layer by layer through the vision tower,
the projector and the decoder: the mean magnitude of the hidden states and how much of them changes from one image
to another (standard deviation over the images, averaged over tokens and channels). At the decoder's last prompt
position (the one that predicts the first character), a share near 0 means the prediction cannot depend on the image.

    python scripts/image_signal.py runs/glyph1/base runs/glyph1/model --glyph-size 600 1000 --glyph-chars 1

The examples are drawn as the trainer's ``glyphs`` task draws them, from seeds no run trains on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _glyph_args import add_glyph_args, examples  # noqa: E402
from invoice_vlm.models import load, training_batch  # noqa: E402


def _row(name: str, x: torch.Tensor) -> str:
    mag, over_images = x.abs().mean().item(), x.std(0).mean().item()
    return f"| {name} | {mag:.3f} | {over_images:.4f} | {100 * over_images / max(mag, 1e-12):.2f}% |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+")
    add_glyph_args(ap)
    args = ap.parse_args()

    texts, images = examples(args, "signal", 8)
    for path in args.models:
        model, processor = load(path)
        model.eval()
        batch = training_batch(processor, images, ["ocr"] * len(images), texts)
        n_img = processor.image_seq_length
        first_target = int((batch["token_type_ids"][0] == 1).nonzero()[0])
        print(f"\n{path}\n\n| hidden states | mean abs | std over images | share |\n|---|---:|---:|---:|")
        with torch.no_grad():
            vision = model.model.vision_tower(batch["pixel_values"], output_hidden_states=True)
            for i, h in enumerate(vision.hidden_states):
                print(_row(f"vision, residual stream after layer {i}" if i else "vision, patch + position", h))
            print(_row("vision, after post_layernorm", vision.last_hidden_state))
            print(_row("projector (the decoder's image tokens)",
                       model.model.multi_modal_projector(vision.last_hidden_state)))
            out = model(**batch, output_hidden_states=True)
            last = len(out.hidden_states) - 1
            for i, h in enumerate(out.hidden_states[1:], 1):
                name = f"decoder layer {i}" + (" (after the final norm)" if i == last else "")
                print(_row(f"{name}, image tokens", h[:, :n_img]))
                print(_row(f"{name}, position predicting the first character", h[:, first_target - 1]))
            print(f"\nloss {out.loss.item():.3f}")


if __name__ == "__main__":
    main()
