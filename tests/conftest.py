"""Tiny models and tiny datasets, built once per test session, offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from invoice_vlm.models import TinyModelConfig, build_processor, build_tokenizer, build_model  # noqa: E402
from invoice_vlm.synth import get_font, text_corpus  # noqa: E402

# A few dozen hidden units, 2 layers, 64 px images with 16 px patches (16 image tokens): seconds on a CPU.
TINY = dict(image_size=64, patch_size=16, vision_hidden=32, vision_layers=2, vision_heads=2, vision_intermediate=64,
            text_hidden=64, text_layers=2, text_heads=2, text_kv_heads=1, text_head_dim=32, text_intermediate=128,
            bpe_vocab=600, max_position_embeddings=1024)


ROW_LINES = ["Invoice Number: 42183017", "Bill to Address: 93B Sai Yu Chung", "Total due 1,234.50 EUR"]


def write_rows_pdf(path: Path, extra: str = "") -> None:
    """A one-page PDF: three plain rows, a rotated one, an invisible one (an OCR layer's render mode 3), and two
    rows set on top of each other."""
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path), pagesize=(600, 800))
    for k, line in enumerate(ROW_LINES):
        c.setFont("Helvetica", 14)
        c.drawString(50, 750 - 40 * k, line + extra)
    c.saveState()
    c.translate(500, 300)
    c.rotate(90)
    c.drawString(0, 0, "Rotated margin note")
    c.restoreState()
    c.drawString(50, 400, "Overprinted first")
    c.drawString(60, 396, "Overprinted second")
    t = c.beginText(50, 500)
    t.setTextRenderMode(3)
    t.setFont("Helvetica", 14)
    t.textOut("Invisible OCR text")
    c.drawText(t)
    c.showPage()
    c.save()


@pytest.fixture(scope="session")
def pdf_bank(tmp_path_factory) -> Path:
    """A row bank cut from a few generated PDFs (what `invoice-vlm pdf-bank` builds), for the embedded reader's
    32 px rows."""
    from invoice_vlm.models import ReadingUnit
    from invoice_vlm.train.rowdata import PdfBankConfig, build_pdf_bank

    root = tmp_path_factory.mktemp("pdf-bank")
    (root / "pdfs").mkdir()
    for k in range(6):
        write_rows_pdf(root / "pdfs" / f"doc{k}.pdf", extra=f" {k}")
    chars = "".join(sorted(set("".join(ROW_LINES) + "0123456789 ")))
    build_pdf_bank(PdfBankConfig(pdfs=str(root / "pdfs"), out=str(root / "bank.npz"), workers=1, dpis=[150]),
                   ReadingUnit(height=32, max_width=1536, multiple=16), chars, progress=False, say=lambda _: None)
    return root / "bank.npz"


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return text_corpus(60)


def make_tiny(out: Path, corpus: list[str], variant: str = "paligemma") -> Path:
    cfg = TinyModelConfig(variant=variant, **TINY)
    processor = build_processor(build_tokenizer(cfg.bpe_vocab, corpus), cfg.image_size, cfg.patch_size)
    model = build_model(cfg, processor)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, corpus) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny") / "model", corpus)


@pytest.fixture(scope="session")
def tiny_model_pg2(tmp_path_factory, corpus) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny2") / "model", corpus, "paligemma2")


def write_text_dataset(root: Path, texts: dict[str, list[str]], size: int = 64) -> Path:
    """A dataset folder whose images show their (short) texts in big letters."""
    font = get_font("DejaVuSans", True, 14)
    for split, items in texts.items():
        folder = root / split
        folder.mkdir(parents=True)
        with open(folder / "metadata.jsonl", "w", encoding="utf-8") as f:
            for i, text in enumerate(items):
                im = Image.new("RGB", (size, size), "white")
                ImageDraw.Draw(im).multiline_text((2, 2), text, font=font, fill="black")
                name = f"{i:04d}.png"
                im.save(folder / name)
                f.write(json.dumps({"file_name": name, "id": f"{split}-{i}", "text": text, "fields": {}}) + "\n")
    return root


@pytest.fixture()
def text_dataset(tmp_path) -> Path:
    return write_text_dataset(tmp_path / "data", {"train": ["AB 12", "€ 7,50"], "test": ["AB 12", "€ 7,50"]})


@pytest.fixture(scope="session")
def reading_model(tiny_model, tmp_path_factory):
    """The tiny PaliGemma with weights that make its text depend on the page (the random one writes newlines
    only): tests that compare texts compare real ones."""
    import torch

    from invoice_vlm.models import load

    model, processor = load(tiny_model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for w in model.parameters():
            if w.dim() >= 2:
                w.copy_(torch.randn(w.shape, generator=g) * 0.2)
    out = tmp_path_factory.mktemp("reading") / "model"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


# ------------------------------------------------------------------------------------------ the row reader
def _small_rows():
    """Two ResNet stages (stride 8) and a 2 x 64 decoder: seconds on a CPU."""
    from invoice_vlm.models import RowModelConfig

    return RowModelConfig(height=16, max_width=256, stem=8, widths=[16, 32], depths=[1, 1], text_hidden=64,
                          text_layers=2, text_heads=2, text_kv_heads=1, text_intermediate=128,
                          max_position_embeddings=512)


SMALL_ROWS = _small_rows()


@pytest.fixture(scope="session")
def row_pages(tmp_path_factory):
    """12 synthetic invoices at 100 dpi (8 train, 4 test): pages for the row reader's tests."""
    from invoice_vlm import synth

    out = tmp_path_factory.mktemp("rowpages") / "ds"
    synth.main(synth.SynthConfig(out=str(out), n=12, seed=3, dpi=100, workers=1, split="train=8,test=4"))
    return out


@pytest.fixture(scope="session")
def row_model(tmp_path_factory):
    """A random row reader of SMALL_ROWS's shape, saved like a hub checkpoint."""
    from invoice_vlm.models import create_row_model

    return create_row_model(tmp_path_factory.mktemp("rowmodel") / "model", SMALL_ROWS)


@pytest.fixture(scope="session")
def row_model_ctc(row_model, tmp_path_factory):
    """The small row reader with a CTC head beside it (seeded random weights, biased away from the blank so that it
    writes characters)."""
    import shutil

    import torch

    from invoice_vlm.models import CtcHead, load

    out = tmp_path_factory.mktemp("rowmodel-ctc") / "model"
    shutil.copytree(row_model, out)
    model, _ = load(out)
    torch.manual_seed(0)
    head = CtcHead.for_model(model, frames=2)
    with torch.no_grad():
        head.weight.mul_(40)
        head.bias.view(2, -1)[:, -1] -= 1.0
    head.save(out)
    return out
