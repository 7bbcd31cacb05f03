"""Files and folders to pages for ``invoice-vlm predict``: which files, how many pages, each page's image.

The engine (``invoice_vlm.infer.Predictor``) only sees images; this module turns paths into them, and every
problem with a file into one :class:`InvoiceVLMError` line naming it, so that the other files still run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from PIL import Image

from ..common import MAX_DOCUMENT_PAGES, InvoiceVLMError
from ..data import document_pages, is_pdf

SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".pdf"}


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
