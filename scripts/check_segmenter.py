"""How well the row segmenter cuts a synthetic dataset's clean pages, against the records' own rows. Run it after
any change to ``invoice_vlm.rows`` (and bump ``rows.SEGMENTER_VERSION`` so pretraining cuts its row banks again).

    python scripts/check_segmenter.py --data data/pretrain --split test

- found: rows of the record (non-empty) that the segmenter gives as exactly one box of their own (``match_rows``);
- cut: found rows with visible ink (grey below 235, two pixels or more in a column) just outside their box, within
  two row heights to the left or right: a row cut short at an end. Neighbouring columns of the same row are inside
  its box, so this counts lost ends, not gaps;
- the pages with the most rows not found.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import track

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from invoice_vlm.data import read_split  # noqa: E402
from invoice_vlm.rows import SEGMENTER_VERSION, match_rows, segment  # noqa: E402


def check(data: str, split: str, limit: int = 0) -> dict:
    samples = [s for s in read_split(data, split) if s.meta.get("rows") and s.meta.get("augment", "none") == "none"]
    samples = samples[:limit] if limit else samples
    rows = found = cut = 0
    missed: list[tuple[int, str]] = []
    for s in track(samples, description="pages"):
        with Image.open(s.image) as im:
            page = im.convert("L")
        texts = s.text.split("\n")
        if len(texts) != len(s.meta["rows"]):
            continue
        gray = np.asarray(page)
        visible = gray < 235
        lost = 0
        for box, text in zip(match_rows(segment(page), s.meta["rows"], page.height), texts):
            if not text.strip():
                continue
            rows += 1
            if box is None:
                lost += 1
                continue
            found += 1
            left, top, right, bottom = box
            h = bottom - top
            cols = np.flatnonzero(visible[top + h // 4:bottom - h // 4].sum(axis=0) >= 2)
            outside = ((cols < left) & (cols > left - 2 * h)).sum(), ((cols >= right) & (cols < right + 2 * h)).sum()
            cut += max(outside) >= 2
        missed.append((lost, s.id))
    missed.sort(reverse=True)
    return {"data": data, "split": split, "segmenter_version": SEGMENTER_VERSION, "pages": len(samples),
            "rows": rows, "found": round(found / max(rows, 1), 4), "cut": round(cut / max(found, 1), 4),
            "most_rows_not_found": [f"{i} ({n})" for n, i in missed[:5] if n]}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=0, help="first N pages only (0: all)")
    a = ap.parse_args()
    print(json.dumps(check(a.data, a.split, a.limit), indent=1))
