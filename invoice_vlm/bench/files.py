"""``invoice-vlm bench files``: the whole ``invoice-vlm predict`` command, as a user runs it on a folder of page
images (model loading, decoding, preparation and reading included), against ``tesseract FILE -`` per file with one
process per core, on the same images and cores. The images are a manifest's PDF pages rendered once beforehand (as
a user's scans or renders would arrive); every case's CER against the pages' references is beside its speed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..common import InvoiceVLMError


def bench_files(data: str, limit: int = 40, dpi: int = 200, workers: list[int] | None = None,
                model: str = "invoice-vlm-tiny", decode: list[str] | None = None) -> list[dict[str, Any]]:
    """``workers``: predict --workers values (default 0 and -1, predict's default: one a core); ``decode``: predict
    --decode values (default auto, predict's, and ctc, the head alone)."""
    from ..data import _open_pdf, _render
    from ..evaluate import cer
    from .segment import list_pages, references

    exe = shutil.which("tesseract")
    if exe is None:
        raise InvoiceVLMError("bench files: the tesseract program is not installed (Debian: tesseract-ocr)")
    pages = list_pages(data)[:limit] if limit else list_pages(data)
    refs = references(data)
    pages = [p for p in pages if p[0] in refs]
    if not pages:
        raise InvoiceVLMError(f"{data}: no pages with references")
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="invoice-vlm-bench-files-") as tmp:
        files, truth = [], []
        for k, (pid, pdf_path, index) in enumerate(pages):
            pdf = _open_pdf(pdf_path)
            try:
                image = _render(pdf, index + 1, str(pdf_path), dpi)
            finally:
                pdf.close()
            f = Path(tmp) / f"page-{k:04d}.png"
            image.save(f)
            files.append(f)
            truth.append(refs[pid])

        def tesseract(f: Path) -> str:
            return subprocess.run([exe, str(f), "-"], capture_output=True, text=True).stdout.strip()

        t0 = time.perf_counter()
        with ThreadPoolExecutor(cores) as pool:  # each page is its own process: the threads only wait
            got = list(pool.map(tesseract, files))
        base = time.perf_counter() - t0
        rows.append({"variant": f"tesseract FILE - ({cores} at a time)", "pages": len(files),
                     "seconds": round(base, 2), "pages_per_s": round(len(files) / base, 3), "vs_tesseract": 1.0,
                     "cer": round(cer(got, truth), 4)})
        for mode in decode or ["auto", "ctc"]:
            for w in workers if workers else [0, -1]:
                cmd = [sys.executable, "-m", "invoice_vlm", "predict", "--model", model, "--format", "jsonl",
                       "--workers", str(w), "--decode", mode, *map(str, files)]
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True)
                secs = time.perf_counter() - t0
                if proc.returncode != 0:
                    raise InvoiceVLMError(f"bench files: invoice-vlm predict failed: {proc.stderr.strip()[-300:]}")
                texts = {json.loads(line)["file"]: json.loads(line)["text"] for line in proc.stdout.splitlines()
                         if line}
                got = [texts.get(str(f), "") for f in files]
                label = f"--workers {w}" + (f" (one a core: {cores})" if w < 0 else "")
                rows.append({"variant": f"invoice-vlm predict --decode {mode} {label}", "pages": len(files),
                             "seconds": round(secs, 2), "pages_per_s": round(len(files) / secs, 3),
                             "vs_tesseract": round(base / secs, 2), "cer": round(cer(got, truth), 4)})
    return rows
