"""The held-out ``glyphs`` examples that ``glyph_gap.py`` and ``image_signal.py`` draw, and the options that pick
them, in one place so that the two scripts always look at the same drawing."""

from __future__ import annotations

import argparse

from invoice_vlm.train.tasks import GLYPH_SIZE, glyph_examples


def add_glyph_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--glyph-size", type=float, nargs=2, default=GLYPH_SIZE)
    ap.add_argument("--glyph-chars", type=int, default=0)
    ap.add_argument("--fixed", action="store_true", help="one font, size and place (glyph_fixed)")


def examples(args: argparse.Namespace, prefix: str, n: int) -> tuple[list[str], list]:
    return glyph_examples(prefix, n, tuple(args.glyph_size), args.glyph_chars, fixed=args.fixed)
