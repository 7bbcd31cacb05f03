"""Classic OCR engines in the same harness as the models: Tesseract (the Debian package) and RapidOCR (pip).

Each engine returns, per page image, its words as boxes; :func:`reading_order` puts them into the project's
convention (rows top to bottom, each row left to right, runs joined by a space, rows by a newline), so an
engine's BLEU and TER measure what it read, not how it orders lines. The engines know nothing about datasets.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator

from PIL import Image

from ..common import InvoiceVLMError

ENGINES = ("model", "tesseract", "rapidocr")
# Every language the setup installs (Makefile APT_PACKAGES): the real invoices are German, French and English.
TESSERACT_LANGS = "eng+deu+fra+spa+ita+nld"


@dataclass
class Box:
    text: str
    left: float
    top: float
    right: float
    bottom: float


def reading_order(boxes: list[Box]) -> str:
    """Boxes (words or lines) -> rows: a box joins the row whose vertical span it overlaps by more than half of
    the smaller height; rows top to bottom, boxes within a row left to right."""
    rows: list[tuple[float, float, list[Box]]] = []  # top, bottom, boxes
    for b in sorted(boxes, key=lambda b: (b.top + b.bottom) / 2):
        if not b.text.strip():
            continue
        h = max(b.bottom - b.top, 1e-6)
        for k, (top, bottom, members) in enumerate(rows):
            overlap = min(bottom, b.bottom) - max(top, b.top)
            if overlap > 0.5 * min(h, bottom - top):
                members.append(b)
                rows[k] = (min(top, b.top), max(bottom, b.bottom), members)
                break
        else:
            rows.append((b.top, b.bottom, [b]))
    rows.sort(key=lambda r: (r[0] + r[1]) / 2)
    return "\n".join(" ".join(b.text.strip() for b in sorted(m, key=lambda b: b.left)) for _, _, m in rows)


class TesseractEngine:
    """``tesseract`` (CLI) with TSV output; lines as Tesseract segments them, then put in reading order. Pages run
    in ``workers`` parallel processes."""

    name = "tesseract"

    def __init__(self, lang: str = TESSERACT_LANGS, psm: int = 3, workers: int = 2):
        exe = shutil.which("tesseract")
        if exe is None:
            raise InvoiceVLMError("engine tesseract: the tesseract program is not installed (Debian: apt-get install "
                                  "tesseract-ocr tesseract-ocr-deu ...; `make install` does it)")
        listed = subprocess.run([exe, "--list-langs"], capture_output=True, text=True).stdout.split("\n")[1:]
        have = {x.strip() for x in listed}
        missing = [x for x in lang.split("+") if x not in have]
        if missing:
            raise InvoiceVLMError(f"engine tesseract: language data missing for {', '.join(missing)} (Debian: "
                                  f"tesseract-ocr-{missing[0]})")
        self.exe, self.lang, self.psm, self.workers = exe, lang, psm, workers

    def version(self) -> str:
        return subprocess.run([self.exe, "--version"], capture_output=True, text=True).stdout.split("\n")[0]

    def read(self, image: Image.Image) -> str:
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG", compress_level=1)
        proc = subprocess.run([self.exe, "stdin", "stdout", "-l", self.lang, "--psm", str(self.psm), "tsv"],
                              input=buf.getvalue(), capture_output=True)
        if proc.returncode != 0:
            raise InvoiceVLMError(f"engine tesseract failed: {proc.stderr.decode(errors='replace').strip()[:200]}")
        return reading_order(_tesseract_lines(proc.stdout.decode("utf-8", errors="replace")))

    def predict_iter(self, images: Iterable[Image.Image], prompt: str = "ocr") -> Iterator[str]:
        with ThreadPoolExecutor(self.workers) as pool:  # each page is its own process: threads just wait
            yield from pool.map(self.read, images)


def _tesseract_lines(tsv: str) -> list[Box]:
    """Tesseract's words grouped by (block, paragraph, line) into line boxes."""
    lines: dict[tuple[str, str, str], list[tuple[str, int, int, int, int]]] = {}
    for row in tsv.splitlines()[1:]:
        cols = row.split("\t")
        if len(cols) < 12 or cols[0] != "5" or not cols[11].strip():
            continue
        left, top, width, height = (int(c) for c in cols[6:10])
        lines.setdefault((cols[2], cols[3], cols[4]), []).append((cols[11], left, top, left + width, top + height))
    out = []
    for words in lines.values():
        words.sort(key=lambda w: w[1])
        out.append(Box(" ".join(w[0] for w in words), min(w[1] for w in words), min(w[2] for w in words),
                       max(w[3] for w in words), max(w[4] for w in words)))
    return out


class RapidOCREngine:
    """RapidOCR (PaddleOCR's models on ONNX Runtime, pip ``rapidocr_onnxruntime``): text lines with boxes."""

    name = "rapidocr"

    def __init__(self):
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError:
            raise InvoiceVLMError("engine rapidocr: not installed (pip install rapidocr_onnxruntime, or "
                                  "pip install 'invoice-vlm[engines]')") from None
        self.ocr = RapidOCR()

    def version(self) -> str:
        from importlib.metadata import version

        return f"rapidocr_onnxruntime {version('rapidocr_onnxruntime')}"

    def read(self, image: Image.Image) -> str:
        import numpy as np

        result, _ = self.ocr(np.asarray(image.convert("RGB")))
        boxes = []
        for quad, text, _score in result or []:
            xs, ys = [p[0] for p in quad], [p[1] for p in quad]
            boxes.append(Box(text, min(xs), min(ys), max(xs), max(ys)))
        return reading_order(boxes)

    def predict_iter(self, images: Iterable[Image.Image], prompt: str = "ocr") -> Iterator[str]:
        for im in images:
            yield self.read(im)


def make_engine(name: str, **kwargs):
    if name == "tesseract":
        return TesseractEngine(**kwargs)
    if name == "rapidocr":
        return RapidOCREngine()
    raise InvoiceVLMError(f"unknown engine {name!r} (known: {', '.join(ENGINES)})")
