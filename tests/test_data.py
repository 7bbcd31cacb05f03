from __future__ import annotations

import json

import pytest

from invoice_vlm.common import InvoiceVLMError, staged_dir
from invoice_vlm.data import read_split
from invoice_vlm.train.tasks import build_examples, to_dataset


def test_reads_a_split(text_dataset):
    samples = read_split(text_dataset, "train")
    assert [s.text for s in samples] == ["AB 12", "€ 7,50"]
    ds = to_dataset(build_examples(samples, {"ocr": 1.0}, seed=0))
    assert ds[1]["target"] == "€ 7,50" and ds[1]["prompt"] == "ocr" and ds[1]["image"].size == (64, 64)


def test_missing_folder(tmp_path):
    with pytest.raises(InvoiceVLMError, match=r"nope: dataset folder not found"):
        read_split(tmp_path / "nope", "train")


def test_missing_split_names_what_is_there(text_dataset):
    with pytest.raises(InvoiceVLMError, match=r"validation/metadata.jsonl: not found \(splits here: train, test\)"):
        read_split(text_dataset, "validation")


def _append(path, line):
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def test_line_that_is_not_json_names_file_and_line(text_dataset):
    meta = text_dataset / "train" / "metadata.jsonl"
    _append(meta, "{not json")
    with pytest.raises(InvoiceVLMError, match=r"train/metadata.jsonl:3: not valid JSON"):
        read_split(text_dataset, "train")


def test_image_that_does_not_open(text_dataset):
    (text_dataset / "train" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _append(text_dataset / "train" / "metadata.jsonl", json.dumps({"file_name": "bad.png", "text": "x"}))
    with pytest.raises(InvoiceVLMError, match=r"metadata.jsonl:3: .*bad.png: image does not open"):
        read_split(text_dataset, "train")


def test_missing_image(text_dataset):
    _append(text_dataset / "train" / "metadata.jsonl", json.dumps({"file_name": "gone.png", "text": "x"}))
    with pytest.raises(InvoiceVLMError, match=r"gone.png: image not found"):
        read_split(text_dataset, "train")


def test_empty_target(text_dataset):
    _append(text_dataset / "train" / "metadata.jsonl", json.dumps({"file_name": "0000.png", "id": "z", "text": " "}))
    with pytest.raises(InvoiceVLMError, match=r"metadata.jsonl:3: empty target 'text' for 0000.png"):
        read_split(text_dataset, "train")


def test_staged_dir_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with staged_dir(final) as stage:
            (stage / "bleu.json").write_text("{}")
            raise RuntimeError("boom")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []
    # a previous complete result survives a failed rewrite
    with staged_dir(final) as stage:
        (stage / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with staged_dir(final) as stage:
            raise RuntimeError("boom")
    assert (final / "a").read_text() == "1"


def test_sharded_split_reads_in_shard_order_and_names_the_shard(text_dataset):
    """A split cut into shard folders (train/00000/metadata.jsonl, ...) reads as one split."""
    train = text_dataset / "train"
    for k, name in enumerate(("0000.png", "0001.png")):
        shard = train / f"{k:05d}"
        shard.mkdir()
        (train / name).rename(shard / name)
        row = [r for r in map(json.loads, (train / "metadata.jsonl").read_text().splitlines())
               if r["file_name"] == name][0]
        (shard / "metadata.jsonl").write_text(json.dumps(row) + "\n")
    (train / "metadata.jsonl").unlink()
    assert [s.text for s in read_split(text_dataset, "train")] == ["AB 12", "€ 7,50"]
    _append(train / "00001" / "metadata.jsonl", '{"file_name": "0001.png"}')
    with pytest.raises(InvoiceVLMError, match=r"train/00001/metadata.jsonl:2: missing 'text'"):
        read_split(text_dataset, "train")
