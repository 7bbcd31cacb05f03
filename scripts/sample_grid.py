"""A PNG grid of synthetic pages for the README: one page per layout family, both pages of a two-page invoice,
then one page each with the scan and photo presets.

Run as::

    python scripts/sample_grid.py docs/synth-samples.png
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from PIL import Image

from invoice_vlm.synth import LAYOUTS, SynthConfig, augment, generate_invoice

THUMB_W, COLS = 250, 5


def _thumb(im: Image.Image) -> Image.Image:
    im = im.convert("RGB")
    return im.resize((THUMB_W, round(im.height * THUMB_W / im.width)), Image.Resampling.LANCZOS)


def main(out: str) -> None:
    tiles = []
    for k, layout in enumerate(sorted(LAYOUTS)):  # one clean page per family
        tiles.append(_thumb(generate_invoice(2026, k, SynthConfig(n=1, layouts=layout)).pages[0].render(110)))
    cfg = SynthConfig(n=1)
    long = next(inv for inv in (generate_invoice(2026, i, cfg) for i in range(500)) if len(inv.pages) == 2)
    tiles += [_thumb(p.render(110)) for p in long.pages]  # an invoice that flows onto a second page
    for k, preset in enumerate(("scan", "photo")):
        page = generate_invoice(2027, k, cfg).pages[0].render(110)
        tiles.append(_thumb(augment(page, preset, random.Random(k))[0]))
    rows = (len(tiles) + COLS - 1) // COLS
    h = max(t.height for t in tiles)
    grid = Image.new("RGB", (COLS * THUMB_W + (COLS + 1) * 8, rows * h + (rows + 1) * 8), (200, 200, 200))
    for i, t in enumerate(tiles):
        grid.paste(t, (8 + (i % COLS) * (THUMB_W + 8), 8 + (i // COLS) * (h + 8)))
    # 128 colours keep text edges crisp and the file small
    grid.quantize(128, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    print(f"wrote {out} ({Path(out).stat().st_size // 1024} KB, {len(tiles)} pages)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/synth-samples.png")
