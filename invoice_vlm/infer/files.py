"""Files and folders to pages for ``invoice-vlm predict``: which files, how many pages, each page's image; and the
folder ``predict --out`` writes, read back (by ``jobs``, which writes it, and by ``eval --predictions``).

The engine (``invoice_vlm.infer.Predictor``) only sees images; this module turns paths into them, and every
problem with a file into one :class:`InvoiceVLMError` line naming it, so that the other files still run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from PIL import Image

from ..common import MAX_DOCUMENT_PAGES, InvoiceVLMError
from ..data import document_pages, is_pdf

SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".pdf"}
JOB = "job.json"  # a predict --out folder's description: settings, shards, "complete" (see invoice_vlm.jobs)
GENERATOR = "invoice_vlm.predict"


@dataclass
class Document:
    path: Path
    pages: list[int] | None  # 1-based; None: every page
    count: int  # pages it will give (for the progress bar)
    pdf: bool = False


def expand(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Files given, and the files with a known suffix inside folders given (recursively, sorted)."""
    files, errors = [], []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
            if not found:
                errors.append(f"{p}: no images or PDFs in this folder")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            errors.append(f"{p}: file not found")
    return files, errors


def plan(path: Path, pages: list[int] | None, max_pages: int = MAX_DOCUMENT_PAGES) -> Document:
    """How many pages ``path`` will give, reading no more than the PDF's page table or the image's headers."""
    with open(path, "rb") as f:
        head = f.read(1024)
    if not head:
        raise InvoiceVLMError(f"{path}: empty file")
    if is_pdf(head):
        from ..data import pdf_page_count

        n, kind = pdf_page_count(path), "PDF"
    else:
        from ..data import image_page_count

        n, kind = image_page_count(path), "image"
        if n == 1:
            return Document(path, None, 1)  # --pages picks pages of PDFs and multi-page TIFFs; an image is its page
    if pages and pages[-1] > n:
        raise InvoiceVLMError(f"{path}: no page {pages[-1]} (the {kind} has {n})")
    count = len(pages) if pages else n
    if max_pages and count > max_pages:
        raise InvoiceVLMError(f"{path}: {count} pages, at most {max_pages} per document (--pages picks some, "
                              "--max-pages raises the limit)")
    return Document(path, pages, count, pdf=kind == "PDF")


def page_images(doc: Document, dpi: int = 200) -> Iterator[tuple[int, Image.Image]]:
    yield from document_pages(doc.path.read_bytes(), str(doc.path), doc.pages, dpi=dpi)


# --------------------------------------------------------------------------------------------- the job folder


def read_job(folder: Path) -> dict[str, Any]:
    path = folder / JOB
    if not path.is_file():
        raise InvoiceVLMError(f"{folder}: no {JOB} here (not an invoice-vlm predict --out folder)")
    try:
        job = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvoiceVLMError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(job, dict) or job.get("generator") != GENERATOR:
        raise InvoiceVLMError(f"{path}: not written by invoice-vlm predict --out")
    return job


def iter_records(folder: Path) -> Iterator[dict[str, Any]]:
    """Every record of a job folder's finished shards, shard by shard."""
    from ..data import json_line

    for s in read_job(folder).get("shards", []):
        path = folder / s["name"]
        if not path.is_file():
            continue
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield json_line(line, f"{path}:{lineno}")
