from __future__ import annotations

import json

import pytest

from invoice_vlm import synth
from invoice_vlm.common import InvoiceVLMError, build_config
from invoice_vlm.data import read_split


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    synth.main(synth.SynthConfig(out=str(out), n=20, seed=3, dpi=40, split="train=0.8,validation=0.1,test=0.1"))
    return out


def test_splits_and_records(dataset):
    counts = {s: len(read_split(dataset, s)) for s in ("train", "validation", "test")}
    assert counts == {"train": 16, "validation": 2, "test": 2}
    s = read_split(dataset, "train")[0]
    assert s.text.count("\n") >= 10
    for key in ("invoice_number", "date", "due_date", "vendor", "vendor_address", "customer", "customer_address",
                "currency", "subtotal", "tax", "total", "line_items", "normalized"):
        assert key in s.fields
    # the target is what is printed: every printed field value appears in the transcription
    for key in ("invoice_number", "date", "vendor", "total", "subtotal"):
        assert s.fields[key] in s.text
    assert {"layout", "locale", "font"} <= set(s.meta)


def test_same_seed_same_dataset(dataset, tmp_path):
    again = tmp_path / "again"
    synth.main(synth.SynthConfig(out=str(again), n=20, seed=3, dpi=40, split="train=0.8,validation=0.1,test=0.1"))
    for split in ("train", "test"):
        assert (again / split / "metadata.jsonl").read_text() == (dataset / split / "metadata.jsonl").read_text()
        a, b = sorted((again / split).glob("*.png")), sorted((dataset / split).glob("*.png"))
        assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    other = tmp_path / "other"
    synth.main(synth.SynthConfig(out=str(other), n=20, seed=4, dpi=40))
    assert (other / "train" / "metadata.jsonl").read_text() != (dataset / "train" / "metadata.jsonl").read_text()


def test_loads_with_hf_imagefolder(dataset, tmp_path):
    import datasets

    ds = datasets.load_dataset("imagefolder", data_dir=str(dataset), cache_dir=str(tmp_path / "cache"))
    assert set(ds) == {"train", "validation", "test"}
    row = ds["train"][0]
    assert row["text"] == read_split(dataset, "train")[0].text
    assert row["image"].size[0] > 0


def test_amount_formats():
    from decimal import Decimal

    assert synth.format_amount(Decimal("1234.5"), synth.LOCALES["en_US"]) == "$1,234.50"
    assert synth.format_amount(Decimal("1234.5"), synth.LOCALES["de_DE"]) == "1.234,50 €"
    assert synth.format_amount(Decimal("1234567.891"), synth.LOCALES["fr_FR"]) == "1 234 567,89 €"
    assert synth.format_amount(Decimal("12"), synth.LOCALES["nl_NL"]) == "€ 12,00"


@pytest.mark.parametrize("overrides, message", [
    ({"n": 0}, "n must be positive"),
    ({"locales": "en_US,xx_XX"}, "unknown locale 'xx_XX'"),
    ({"split": "train=0.9,dev=0.1"}, "unknown split 'dev'"),
    ({"split": "train"}, "expected name=ratio pairs"),
])
def test_bad_settings(overrides, message):
    with pytest.raises(InvoiceVLMError, match=message):
        build_config(synth.SynthConfig, overrides=overrides)


def test_refuses_to_overwrite_another_dataset(dataset):
    before = (dataset / "train" / "metadata.jsonl").read_text()
    with pytest.raises(InvoiceVLMError, match="folder exists and is not empty"):
        synth.main(synth.SynthConfig(out=str(dataset), n=2, seed=9, dpi=40))
    assert (dataset / "train" / "metadata.jsonl").read_text() == before
    assert json.loads((dataset / "dataset.json").read_text())["config"]["seed"] == 3
