"""Pretraining rows from real PDFs (data.pdf_rows, rowdata.build_pdf_bank) and drawn strings in many fonts."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest

from invoice_vlm.common import InvoiceVLMError
from invoice_vlm.data import read_split
from invoice_vlm.models import ReadingUnit, build_char_tokenizer
from invoice_vlm.train.rowdata import (PdfBankConfig, RowBank, RowSampler, chars_of, build_pdf_bank, draw_string, held_out_path,
                                       row_fonts)

from conftest import ROW_LINES as LINES, write_rows_pdf as _pdf


def test_pdf_rows_give_the_text_layer_rows_and_mark_what_cannot_be_trusted(tmp_path):
    import pypdfium2 as pdfium

    from invoice_vlm.data import pdf_rows

    _pdf(tmp_path / "a.pdf")
    pdf = pdfium.PdfDocument(str(tmp_path / "a.pdf"))
    rows = pdf_rows(pdf[0])
    pdf.close()
    good = [r.text for r in rows if not r.problem]
    assert good == LINES
    problems = {r.text: r.problem for r in rows if r.problem}
    assert problems["R"] == "rotated text"  # a vertical run: a row per glyph, none joined to another row
    assert problems["Invisible OCR text"] == "invisible text"
    assert problems["Overprinted first"] == problems["Overprinted second"] == "overlaps another row"
    top = [r for r in rows if r.text == LINES[0]][0]
    assert 45 < top.box[0] < 55 and 35 < top.box[1] < 50 and top.box[3] - top.box[1] < 14  # y down, in points


def test_pdf_bank_cuts_trusted_rows_excludes_evaluation_files_and_names_sources(tmp_path):
    pdfs, evaluation = tmp_path / "pdfs", tmp_path / "eval"
    (pdfs / "pkg").mkdir(parents=True)
    evaluation.mkdir()
    for k in range(4):
        _pdf(pdfs / "pkg" / f"doc{k}.pdf", extra=f" {k}")
    shutil.copy(pdfs / "pkg" / "doc3.pdf", evaluation / "held.pdf")  # an evaluation document: never used
    (pdfs / "sources.jsonl").write_text("".join(
        json.dumps({"file": f"pkg/doc{k}.pdf", "source": "debian:example=1.0", "license": "MIT"}) + "\n"
        for k in range(4)))
    unit = ReadingUnit(height=32, max_width=1536, multiple=16)
    said = []
    chars = "".join(sorted(set("".join(LINES) + "0123456789 ")))
    summary = build_pdf_bank(PdfBankConfig(pdfs=str(pdfs), out=str(tmp_path / "bank.npz"), exclude=[str(evaluation)],
                                           workers=1, dpis=[150]), unit, chars, progress=False, say=said.append)
    assert summary["pdfs"] == 3 and summary["excluded"] == [str(pdfs / "pkg" / "doc3.pdf")]
    assert any("doc3.pdf" in line and "evaluation" in line for line in said)
    assert summary["licenses"] == {"MIT": 3} and {s["source"] for s in summary["sources"]} == {"debian:example=1.0"}
    # a vertical run is a row per glyph, each marked rotated
    assert summary["left_out"]["rotated text"] >= 3 and summary["left_out"]["invisible text"] == 3
    assert summary["left_out"]["overlaps another row"] == 6
    bank = RowBank.load(tmp_path / "bank.npz")
    held = RowBank.load(held_out_path(tmp_path / "bank.npz")) if held_out_path(tmp_path / "bank.npz").is_file() else None
    texts = bank.texts + (held.texts if held else [])
    assert sorted(texts) == sorted(f"{line} {k}" for line in LINES for k in range(3))
    assert bank.strip.shape[0] == 32 and json.loads((tmp_path / "bank.json").read_text())["rows"] == len(bank)
    # the crop holds the row's ink from end to end: its width follows the text's length
    widths = {t: bank.width(i) for i, t in enumerate(bank.texts)}
    for t, w in widths.items():
        assert 0.35 * 32 * len(t) < w < 0.75 * 32 * len(t), (t, w)


def test_pdf_bank_refuses_a_missing_folder_in_one_line(tmp_path):
    with pytest.raises(InvoiceVLMError, match="not a folder"):
        build_pdf_bank(PdfBankConfig(pdfs=str(tmp_path / "nope")), ReadingUnit(), "abc", progress=False)


def test_drawn_strings_vary_their_font_and_look_and_missing_fonts_are_one_line():
    fonts = row_fonts(["fonts-dejavu-core", "fonts-liberation"])
    assert len(fonts) >= 6 and any("Oblique" in f or "Italic" in f for f in fonts)
    with pytest.raises(InvoiceVLMError, match="apt-get install fonts-not-a-package"):
        row_fonts(["fonts-not-a-package"])
    unit = ReadingUnit()
    rng = random.Random(7)
    rows = [draw_string(rng, "Payment terms: net 30 days from the invoice date", unit, fonts) for _ in range(60)]
    assert all(r.shape[0] == unit.height and r.dtype == np.uint8 for r in rows)
    papers = [int(np.median(r)) for r in rows]
    # drawn on papers and bands of any shade, white on dark included; like a page's rows (rows.row_image), they reach
    # the reader as dark type on white, and their type's grey still varies
    assert min(papers) >= 250 and len({int(r.min()) // 16 for r in rows}) > 3
    assert len({r.shape[1] for r in rows}) > 20  # fonts and sizes differ


def test_dot_leaders_leave_the_real_bank_and_the_other_rows_keep_their_pixels():
    from invoice_vlm.train.rowdata import concat_banks, without_dot_leaders

    texts = ["2.1 Prerequisites . . . . . . . . 12", "Total due 1,234.50 EUR", "Chapter 3 ............ 7", "a. b. c. d."]
    rows = [np.full((4, 3 + k), k, np.uint8) for k in range(len(texts))]
    bank = concat_banks([RowBank(r, np.array([0, r.shape[1]]), [t]) for r, t in zip(rows, texts)])
    kept = without_dot_leaders(bank)
    assert kept.texts == ["Total due 1,234.50 EUR", "a. b. c. d."]
    assert np.array_equal(kept.row(0), rows[1]) and np.array_equal(kept.row(1), rows[3])


def test_row_bank_holds_matched_rows_and_survives_a_save_without_pickle(row_pages, tmp_path):
    unit = ReadingUnit(height=16, max_width=256, multiple=8)
    samples = read_split(row_pages, "train")[:3]
    bank = RowBank.build(samples, unit, progress=False)
    texts = {t for s in samples for t in s.text.split("\n")}
    assert len(bank) > 20 and all(t == "" or t in texts for t in bank.texts)
    assert all(bank.row(i).shape[0] == 16 for i in range(len(bank)))
    bank.save(tmp_path / "bank.npz")
    again = RowBank.load(tmp_path / "bank.npz")
    assert again.texts == bank.texts and np.array_equal(again.strip, bank.strip)


def test_a_step_s_batch_is_a_pure_function_of_seed_and_step(row_pages):
    unit = ReadingUnit(height=16, max_width=256, multiple=8)
    bank = RowBank.build(read_split(row_pages, "train")[:2], unit, progress=False)
    chars = chars_of(build_char_tokenizer())
    a, b = RowSampler(bank, unit, chars, seed=1), RowSampler(bank, unit, chars, seed=1)
    rows_a, texts_a = a.batch(7, 8, 0.5)
    rows_b, texts_b = b.batch(7, 8, 0.5)
    assert texts_a == texts_b and all(np.array_equal(x, y) for x, y in zip(rows_a, rows_b))
    assert a.batch(8, 8, 0.5)[1] != texts_a
