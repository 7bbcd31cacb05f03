"""Classic OCR engines in the same harness as the models: Tesseract (the Debian package) and RapidOCR 3.x (pip).

Each engine returns, per page image, its words as boxes; :func:`reading_order` puts them into the project's
convention (rows top to bottom, each row left to right, runs joined by a space, rows by a newline), so an
engine's BLEU and TER measure what it read, not how it orders lines. The engines know nothing about datasets.
"""

from __future__ import annotations

import importlib.util
import io
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

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


def group_rows(boxes: Sequence[tuple[float, float, float, float]]) -> list[list[int]]:
    """Boxes (left, top, right, bottom) grouped into rows in reading order, as lists of indices: a box joins the row
    whose vertical span (which grows with each box) it overlaps by more than half of the smaller height; rows top
    to bottom, boxes within a row left to right. The engines' text and the segmentation benchmark's candidates
    both group this way."""
    rows: list[list] = []  # top, bottom, indices
    for i in sorted(range(len(boxes)), key=lambda i: (boxes[i][1] + boxes[i][3]) / 2):
        _, top, _, bottom = boxes[i]
        h = max(bottom - top, 1e-6)
        for row in rows:
            if min(row[1], bottom) - max(row[0], top) > 0.5 * min(h, row[1] - row[0]):
                row[0], row[1] = min(row[0], top), max(row[1], bottom)
                row[2].append(i)
                break
        else:
            rows.append([top, bottom, [i]])
    rows.sort(key=lambda r: (r[0] + r[1]) / 2)
    return [sorted(r[2], key=lambda i: boxes[i][0]) for r in rows]


def reading_order(boxes: list[Box]) -> str:
    """Boxes (words or lines) -> the page's text: rows as :func:`group_rows` forms them, runs joined by a space,
    rows by a newline."""
    boxes = [b for b in boxes if b.text.strip()]
    rows = group_rows([(b.left, b.top, b.right, b.bottom) for b in boxes])
    return "\n".join(" ".join(boxes[i].text.strip() for i in row) for row in rows)


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


# the files the rapidocr 3.10 wheel ships: PP-OCRv6's small detector and recogniser (the only recogniser inside; it
# reads Latin scripts, German and French among them, and Chinese) and PP-OCR's text orientation classifier
RAPIDOCR_MODELS = {"Det": "PP-OCRv6_det_small.onnx", "Rec": "PP-OCRv6_rec_small.onnx",
                   "Cls": "ch_ppocr_mobile_v2.0_cls_mobile.onnx"}


class RapidOCREngine:
    """RapidOCR 3.x (pip ``rapidocr`` with ``onnxruntime``): PaddleOCR's PP-OCRv6 small text detector and its
    multilingual recogniser (Latin scripts, German, French, ... with Chinese), both shipped inside the wheel, so
    nothing is downloaded at run time. Text lines with boxes, put in reading order. ``threads``: ONNX Runtime's
    threads per model (0: its default, every core)."""

    name = "rapidocr"

    def __init__(self, threads: int = 0):
        try:
            from rapidocr import RapidOCR
        except ImportError:
            raise InvoiceVLMError("engine rapidocr: not installed (pip install rapidocr onnxruntime, or "
                                  "pip install 'invoice-vlm[engines]')") from None
        # the model files inside the wheel, named outright: a default that names a file the wheel lacks would be
        # downloaded at first use, and here it is an error instead
        models = Path(importlib.util.find_spec("rapidocr").origin).parent / "models"
        params = {"Global.log_level": "warning"}  # else it logs every model's path at info level
        for key, name in RAPIDOCR_MODELS.items():
            if not (models / name).is_file():
                raise InvoiceVLMError(f"engine rapidocr: {models / name} not found: the rapidocr wheel must ship "
                                      "PP-OCRv6 small (pip install 'rapidocr>=3.10,<4')")
            params[f"{key}.model_path"] = str(models / name)
        self.ocr = RapidOCR(params=params)

    def version(self) -> str:
        from importlib.metadata import version

        return f"rapidocr {version('rapidocr')} (PP-OCRv6 small det + rec, onnxruntime {version('onnxruntime')})"

    def lines(self, image: Image.Image) -> list[Box]:
        """The text lines the detector finds and the recogniser reads, as boxes around their quadrilaterals."""
        import numpy as np

        result = self.ocr(np.asarray(image.convert("RGB")), use_det=True, use_cls=True, use_rec=True)
        if result.boxes is None or result.txts is None:
            return []
        return [Box(text, *_quad_box(quad)) for quad, text in zip(result.boxes, result.txts)]

    def detect(self, image: Image.Image) -> list[tuple[float, float, float, float]]:
        """The detector's text boxes alone (no recognition): (left, top, right, bottom) around each quadrilateral."""
        import numpy as np

        result = self.ocr(np.asarray(image.convert("RGB")), use_det=True, use_cls=False, use_rec=False)
        return [] if result.boxes is None else [_quad_box(quad) for quad in result.boxes]

    def read(self, image: Image.Image) -> str:
        return reading_order(self.lines(image))

    def predict_iter(self, images: Iterable[Image.Image], prompt: str = "ocr") -> Iterator[str]:
        for im in images:
            yield self.read(im)


def _quad_box(quad) -> tuple[float, float, float, float]:
    xs, ys = [float(p[0]) for p in quad], [float(p[1]) for p in quad]
    return min(xs), min(ys), max(xs), max(ys)


def make_engine(name: str, **kwargs):
    if name == "tesseract":
        return TesseractEngine(**kwargs)
    if name == "rapidocr":
        return RapidOCREngine()
    raise InvoiceVLMError(f"unknown engine {name!r} (known: {', '.join(ENGINES)})")
