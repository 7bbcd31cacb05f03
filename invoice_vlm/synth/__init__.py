"""Synthetic invoices with exact ground truth: a SynthDoG for invoices.

Run as::

    invoice-vlm synth --out data/synth --n 1000 --seed 0 --workers 2 [--pdf] [--augment scan]

One source of truth: a layout places text runs and shapes on pages (``page``); the same runs draw the image
(Pillow), write the PDF's text layer (reportlab) and give the target transcription. Modules: ``locales`` (words,
dates, amounts), ``content`` (what an invoice says; the ``fields`` schema), ``fonts``, ``page``, ``layouts``
(the families), ``augment`` (scan/photo presets), ``generate`` (sharded, parallel, resumable writing).
"""

from .augment import PRESETS, augment
from .content import make_invoice, make_qa, public_fields
from .fonts import FONT_FAMILIES, get_font
from .generate import (Invoice, SynthConfig, generate_invoice, main, parse_split, plan_shards, text_corpus,
                       write_shard)
from .layouts import LAYOUTS
from .locales import LOCALES, Locale, format_amount, format_date
from .page import Page, check_page, write_pdf

__all__ = ["PRESETS", "augment", "make_invoice", "make_qa", "public_fields", "FONT_FAMILIES", "get_font",
           "Invoice", "SynthConfig", "generate_invoice", "main", "parse_split", "plan_shards", "text_corpus",
           "write_shard", "LAYOUTS", "LOCALES", "Locale", "format_amount", "format_date", "Page", "check_page",
           "write_pdf"]
