"""The synthetic invoice generator: ground truth, diversity, PDFs, augmentation, sharding and resume."""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from invoice_vlm import synth
from invoice_vlm.common import InvoiceVLMError, build_config
from invoice_vlm.data import pdf_text, read_split
from invoice_vlm.synth import generate

SPLIT = "train=0.8,validation=0.1,test=0.1"
FIELD_KEYS = {"invoice_number", "date", "due_date", "vendor", "vendor_address", "customer", "customer_address",
              "currency", "subtotal", "tax", "total", "line_items", "normalized"}


def cfg(out, **kw) -> synth.SynthConfig:
    base = dict(out=str(out), n=20, seed=3, dpi=50, split=SPLIT, shard_size=4)
    return synth.SynthConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    synth.main(cfg(out, pdf=True, workers=2), progress=False)
    return out


def all_pages(root):
    return [s for split in ("train", "validation", "test") for s in read_split(root, split)]


def test_records_fields_qa_and_meta(dataset):
    info = json.loads((dataset / "dataset.json").read_text())
    assert info["complete"] and info["splits"] == {"train": 16, "validation": 2, "test": 2}
    pages = all_pages(dataset)
    assert len(pages) == info["pages"] >= 20
    assert {s.meta["invoice"] for s in pages} == set(range(20))
    for s in pages:
        assert set(s.fields) == FIELD_KEYS
        norm = s.fields["normalized"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", norm["date"]) and re.fullmatch(r"[A-Z]{3}", norm["currency"])
        assert float(norm["total"]) == pytest.approx(float(norm["subtotal"]) + float(norm["tax"]))
        assert float(norm["subtotal"]) == pytest.approx(sum(float(i["amount"]) for i in norm["line_items"]))
        for item in s.fields["line_items"]:
            assert set(item) == {"description", "quantity", "unit_price", "amount"}
        assert {"layout", "locale", "font", "augment", "page", "pages", "pdf", "elements"} <= set(s.meta)
        assert (s.image.parent / s.meta["pdf"]).is_file()
        for qa in s.qa:  # every answer is printed on that very page
            assert qa["answer"] in s.text, (qa, s.id)
        if s.meta["pages"] == 1:  # the whole invoice is on the page: its key values are all printed
            for key in ("invoice_number", "total", "subtotal", "tax"):
                assert s.fields[key] in s.text
            for item in s.fields["line_items"]:
                assert item["amount"] in s.text


def test_same_seed_same_dataset_and_workers_do_not_matter(dataset, tmp_path):
    again = tmp_path / "again"
    synth.main(cfg(again, pdf=True, workers=1), progress=False)
    for a, b in zip(sorted(p for p in dataset.rglob("*") if p.is_file() and p.name != "dataset.json"),
                    sorted(p for p in again.rglob("*") if p.is_file() and p.name != "dataset.json"), strict=True):
        assert a.relative_to(dataset) == b.relative_to(again)
        assert a.read_bytes() == b.read_bytes(), a
    other = tmp_path / "other"
    synth.main(cfg(other, seed=4, n=4, split="train=1"), progress=False)
    assert read_split(other, "train")[0].text != read_split(dataset, "train")[0].text


def test_loads_with_hf_imagefolder(dataset, tmp_path):
    import datasets

    ds = datasets.load_dataset("imagefolder", data_dir=str(dataset), cache_dir=str(tmp_path / "cache"))
    assert set(ds) == {"train", "validation", "test"}
    ours = {s.text for s in read_split(dataset, "train")}
    assert len(ds["train"]) == len(ours) and set(ds["train"]["text"]) == ours
    row = ds["train"][0]
    assert row["image"].size[0] > 0 and row["fields"]["line_items"] and row["qa"]


def first_two_page(layout: str) -> int:
    c = synth.SynthConfig(n=1, layouts=layout)
    for i in range(400):
        if len(synth.generate_invoice(0, i, c).pages) == 2:
            return i
    raise AssertionError(f"{layout}: no two-page invoice in 400")


@pytest.mark.parametrize("layout", sorted(synth.LAYOUTS))
def test_pdf_text_layer_is_the_target(layout, tmp_path):
    """For every family, pypdfium2 reads the PDF back (reading order from the glyph positions) as the target,
    page by page, including an invoice that flows onto a second page."""
    c = synth.SynthConfig(n=1, layouts=layout)
    indices = [0, 1, 2, first_two_page(layout)]
    for i in indices:
        inv = synth.generate_invoice(0, i, c)
        path = tmp_path / f"{i}.pdf"
        synth.write_pdf(inv.pages, str(path))
        for k, page in enumerate(inv.pages):
            assert pdf_text(path, k) == page.transcription(), (layout, i, k)


@pytest.mark.parametrize("layout", sorted(synth.LAYOUTS))
def test_layouts_draw_what_the_target_says(layout):
    """No run leaves the page, no two runs overlap, no two rows sit side by side at different heights."""
    c = synth.SynthConfig(n=1, layouts=layout)
    for i in range(25):
        for page in synth.generate_invoice(7, i, c).pages:
            assert synth.check_page(page, margin=5) == [], (layout, i)


def test_check_page_catches_overlaps():
    page = synth.Page(595, 842)
    page.text(100, 100, "Total", "DejaVuSans", 10)
    page.text(110, 103, "1.234,50", "DejaVuSans", 10)  # drawn on top of "Total", 3 pt lower
    page.text(300, 400, "left", "DejaVuSans", 10)
    page.text(400, 402, "right", "DejaVuSans", 10)  # beside "left" but on another baseline
    problems = synth.check_page(page)
    assert any(p.startswith("overlap") for p in problems) and any(p.startswith("ambiguous") for p in problems)


def test_diversity():
    c = synth.SynthConfig(n=1)
    seen = collections.defaultdict(set)
    items, pages = [], collections.Counter()
    for i in range(300):
        inv = synth.generate_invoice(11, i, c)
        seen["layout"].add(inv.layout)
        seen["locale"].add(inv.locale)
        seen["font"].add(inv.style.family)
        seen["table"].add(inv.style.table)
        seen["currency"].add(inv.content["normalized"]["currency"])
        for el in ("logo", "qr", "barcode", "stamp", "signature", "notes", "footer"):
            if getattr(inv.style, el):
                seen["elements"].add(el)
        items.append(len(inv.content["line_items"]))
        pages[len(inv.pages)] += 1
    assert len(seen["layout"]) == len(synth.LAYOUTS) >= 10
    assert len(seen["locale"]) == len(synth.LOCALES) >= 6
    assert len(seen["font"]) >= 8
    assert seen["table"] == {"ruled", "grid", "zebra", "band", "plain"}
    assert seen["currency"] == {"USD", "GBP", "EUR"}
    assert seen["elements"] == {"logo", "qr", "barcode", "stamp", "signature", "notes", "footer"}
    assert min(items) == 1 and max(items) >= 25
    assert pages[2] >= 5 and set(pages) <= {1, 2}


def test_fonts_have_bold_and_every_character():
    """Each family has a bold face, and both faces carry a glyph for every character the generator prints."""
    from reportlab.pdfbase.ttfonts import TTFontFile

    chars = set("".join(synth.text_corpus(120))) - {"\n"}
    assert len(synth.FONT_FAMILIES) >= 8
    for family in synth.FONT_FAMILIES:
        for bold in (False, True):
            path = synth.fonts.font_file(family, bold)
            assert ("Bold" in path) == bold
            cmap = TTFontFile(path).charToGlyph
            missing = sorted(ch for ch in chars if ord(ch) not in cmap)
            assert not missing, (family, bold, missing)


def test_amount_and_date_formats():
    import datetime as dt
    from decimal import Decimal

    L = synth.LOCALES
    assert synth.format_amount(Decimal("1234.5"), L["en_US"]) == "$1,234.50"
    assert synth.format_amount(Decimal("1234.5"), L["de_DE"]) == "1.234,50 €"
    assert synth.format_amount(Decimal("1234567.891"), L["fr_FR"]) == "1 234 567,89 €"
    assert synth.format_amount(Decimal("12"), L["nl_NL"]) == "€ 12,00"
    assert synth.format_amount(Decimal("12"), L["de_DE"], "code") == "12,00 EUR"
    assert synth.format_amount(Decimal("12"), L["en_GB"], "plain") == "12.00"
    day = dt.date(2024, 3, 5)
    assert synth.format_date(day, L["de_DE"], "{day}. %B %Y") == "5. März 2024"
    assert synth.format_date(day, L["en_US"], "%m/%d/%Y") == "03/05/2024"
    assert synth.format_date(day, L["es_ES"], "{day} de %B de %Y") == "5 de marzo de 2024"


@pytest.mark.parametrize("preset", ["scan", "photo"])
def test_augmentation_is_deterministic_and_keeps_targets(dataset, tmp_path, preset):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        synth.main(cfg(out, augment=preset, n=6, split="train=1"), progress=False)
    clean = tmp_path / "clean"
    synth.main(cfg(clean, n=6, split="train=1"), progress=False)
    sa, sb, sc = (read_split(x, "train") for x in (a, b, clean))
    assert [s.text for s in sa] == [s.text for s in sc] and [s.fields for s in sa] == [s.fields for s in sc]
    assert [s.image.read_bytes() for s in sa] == [s.image.read_bytes() for s in sb]
    from PIL import Image, ImageChops

    for x, y in zip(sa, sc):
        assert x.image.suffix == ".jpg" and x.meta["augment"] == preset
        with Image.open(x.image) as im, Image.open(y.image) as ref:
            assert im.size == ref.size
            diff = ImageChops.difference(im.convert("L"), ref.convert("L"))
            assert sum(diff.histogram()[40:]) > 0.01 * im.size[0] * im.size[1]  # visibly changed


def test_resume_after_interruption(tmp_path, monkeypatch):
    """A crash leaves finished shards; the same command then writes only the missing ones, and the result is
    the dataset an uninterrupted run makes."""
    out = tmp_path / "ds"
    real_records = generate.invoice_records

    def crash_at_9(inv, c, folder):
        if inv.index == 9:  # in the middle of the third shard (invoices 8-11)
            raise RuntimeError("power cut")
        return real_records(inv, c, folder)

    monkeypatch.setattr(generate, "invoice_records", crash_at_9)
    with pytest.raises(RuntimeError, match="power cut"):
        synth.main(cfg(out, n=12, split="train=1"), progress=False)
    assert not json.loads((out / "dataset.json").read_text())["complete"]
    with pytest.raises(InvoiceVLMError, match="dataset is incomplete"):
        read_split(out, "train")
    done = {p.name: p.stat().st_mtime_ns for p in (out / "train").iterdir()}
    assert sorted(done) == [".00002.partial", "00000", "00001"]

    monkeypatch.setattr(generate, "invoice_records", real_records)
    real = generate.write_shard
    calls = []

    def counting(c, shard):
        calls.append(shard.path)
        return real(c, shard)

    monkeypatch.setattr(generate, "write_shard", counting)
    synth.main(cfg(out, n=12, split="train=1"), progress=False)
    assert calls == ["train/00002"]  # finished shards were skipped
    assert sorted(p.name for p in (out / "train").iterdir()) == ["00000", "00001", "00002"]
    assert all((out / "train" / k).stat().st_mtime_ns == v for k, v in done.items() if not k.startswith("."))

    monkeypatch.setattr(generate, "write_shard", real)
    fresh = tmp_path / "fresh"
    synth.main(cfg(fresh, n=12, split="train=1"), progress=False)
    assert [s.text for s in read_split(out, "train")] == [s.text for s in read_split(fresh, "train")]


@pytest.mark.parametrize("overrides, message", [
    ({"n": 0}, "n must be positive"),
    ({"locales": "en_US,xx_XX"}, "unknown locale 'xx_XX'"),
    ({"layouts": "fancy"}, "unknown layout 'fancy'"),
    ({"augment": "vintage"}, "unknown augmentation preset 'vintage'"),
    ({"split": "train=0.9,dev=0.1"}, "unknown split 'dev'"),
    ({"split": "train"}, "expected name=ratio pairs"),
    ({"split": "train=0.5,train=0.5"}, "train given twice"),
    ({"max_items": 31}, "max_items must be between 1 and 30"),
])
def test_bad_settings(overrides, message):
    with pytest.raises(InvoiceVLMError, match=message):
        build_config(synth.SynthConfig, overrides=overrides)


def test_refuses_to_overwrite_another_dataset(dataset):
    before = {p: p.stat().st_mtime_ns for p in dataset.rglob("*")}
    with pytest.raises(InvoiceVLMError, match=r"holds another dataset \(n=20, seed=3, pdf=True\)"):
        synth.main(cfg(dataset, n=2, seed=9), progress=False)
    assert {p: p.stat().st_mtime_ns for p in dataset.rglob("*")} == before


def test_overwrite_replaces_a_synthetic_dataset(tmp_path):
    out = tmp_path / "ds"
    synth.main(cfg(out, n=3, split="train=1"), progress=False)
    synth.main(cfg(out, n=2, seed=5, split="train=1", overwrite=True), progress=False)
    assert len({s.meta["invoice"] for s in read_split(out, "train")}) == 2


# ------------------------------------------------------------------------------------------- Tesseract


def word_bag_f1(pred: str, ref: str) -> tuple[int, int, int]:
    p, r = collections.Counter(pred.split()), collections.Counter(ref.split())
    return sum((p & r).values()), sum(p.values()), sum(r.values())


TESS_LANG = {"en_US": "eng", "en_GB": "eng", "de_DE": "deu", "fr_FR": "fra", "es_ES": "spa", "it_IT": "ita",
             "nl_NL": "nld"}


@pytest.mark.slow
def test_tesseract_reads_what_the_target_says(tmp_path):
    """On clean renders, an independent OCR engine finds the target's words: word-bag F1 >= 0.95 over 50 pages
    (every layout family, locale and font family appears)."""
    assert shutil.which("tesseract"), "tesseract not installed (the Makefile installs tesseract-ocr)"
    c = synth.SynthConfig(n=1)
    pages = []
    for i in range(50):
        inv = synth.generate_invoice(21, i, c)
        page = inv.pages[0]
        path = tmp_path / f"{i}.png"
        page.render(150).save(path)
        pages.append((path, page.transcription(), inv.locale))

    def ocr(item):
        path, ref, locale = item
        env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
        text = subprocess.run(["tesseract", str(path), "-", "-l", TESS_LANG[locale], "--psm", "4"], env=env,
                              capture_output=True, text=True, check=True).stdout
        return word_bag_f1(text, ref)

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        counts = list(pool.map(ocr, pages))
    hit, npred, nref = (sum(x) for x in zip(*counts))
    precision, recall = hit / npred, hit / nref
    f1 = 2 * precision * recall / (precision + recall)
    print(f"tesseract word-bag F1 {f1:.4f} (P {precision:.4f} R {recall:.4f}) over {len(pages)} pages")
    assert f1 >= 0.95


def test_clean_renders_record_an_extent_for_every_line(dataset):
    """``meta.rows``: one vertical extent per transcription line, inside the page; what a row reader's examples
    (train.tasks.row_examples) and its pretraining rows match the segmenter's boxes to."""
    pages = read_split(dataset, "train")
    for p in pages:
        rows, lines = p.meta["rows"], p.text.split("\n")
        assert len(rows) == len(lines) and all(0 <= t < b <= 1 for t, b in rows)


