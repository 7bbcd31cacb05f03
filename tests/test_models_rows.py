"""The row reader's model (invoice_vlm.models.rows): saved and loaded by plain transformers, its row
batches equal to its processor's, the training width grid, its character tokenizer, its CTC head's checks."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from invoice_vlm.models import ReadingUnit, build_char_tokenizer, load, reading_unit_of, row_batch
from invoice_vlm.train.rowdata import draw_string


def test_row_model_saves_and_loads_with_plain_transformers_and_records_its_reading_unit(row_model):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cfg = json.loads((row_model / "config.json").read_text())
    assert cfg["model_type"] == "fast_vlm" and cfg["vision_config"]["model_type"] == "resnet"
    assert cfg["reading"] == {"unit": "row", "height": 16, "max_width": 256, "multiple": 8, "grayscale": True}
    assert reading_unit_of(row_model) == ReadingUnit(height=16, max_width=256, multiple=8)
    assert not list(row_model.glob("*.bin")) and (row_model / "model.safetensors").is_file()
    model = AutoModelForImageTextToText.from_pretrained(row_model, use_safetensors=True)
    processor = AutoProcessor.from_pretrained(row_model)
    assert type(model).__name__ == "FastVlmForConditionalGeneration"
    assert type(processor).__name__ == "LlavaProcessor"


def test_row_batch_equals_what_the_processor_gives_and_logits_survive_a_reload(row_model, tmp_path):
    model, processor = load(row_model)
    unit = reading_unit_of(row_model)
    rng = random.Random(0)
    rows = [draw_string(rng, t, unit) for t in ("Total 12,50 €", "INV-0042")]
    ours = row_batch(rows, None, processor.tokenizer, unit, model.config.image_token_index)
    from invoice_vlm.models import ROW_MARGIN  # the engine's white margin is part of every row

    wide = [np.pad(r, ((0, 0), (0, ROW_MARGIN)), constant_values=255) for r in rows]
    width = -(-max(r.shape[1] for r in wide) // unit.multiple) * unit.multiple  # white on the right to one width
    images = [Image.fromarray(np.pad(r, ((0, 0), (0, width - r.shape[1])), constant_values=255)).convert("RGB")
              for r in wide]
    theirs = processor(images=images, text=["<image><bos>"] * 2, return_tensors="pt")
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.allclose(ours["pixel_values"], theirs["pixel_values"], atol=1e-6)
    model.save_pretrained(tmp_path / "again")
    processor.save_pretrained(tmp_path / "again")
    again, _ = load(tmp_path / "again")
    inputs = {k: ours[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, again(**inputs).logits)


def test_training_width_grid_keeps_each_rows_tokens_but_for_its_margins_end(row_model):
    """Training encodes rows a width group at a time (models.TRAIN_WIDTH_GRID): fewer tower calls, and every token
    over a row's ink and most of its white margin is the one inference computes (each row alone at its own width);
    tokens past a row's own columns stay zero and masked."""
    from invoice_vlm.models import ROW_MARGIN, row_model_inputs

    model, processor = load(row_model)
    model.eval()
    unit = reading_unit_of(row_model)
    rng = random.Random(3)
    rows = [draw_string(rng, t, unit) for t in ("Total 12,50 €", "INV-0042", "Rechnung Nr. 2024-117 vom 3.8.", "A")]
    batch = row_batch(rows, None, processor.tokenizer, unit, model.config.image_token_index)
    calls = []
    original = model.model.get_image_features
    model.model.get_image_features = lambda **kw: calls.append(kw["pixel_values"].shape[-1]) or original(**kw)
    with torch.no_grad():
        exact, inputs = row_model_inputs(model, batch)
        n_exact = len(calls)
        grouped, grouped_inputs = row_model_inputs(model, batch, grid=256)
    assert len(calls) - n_exact < n_exact  # fewer tower calls
    per_col = unit.height // unit.multiple
    cols = batch["pixel_values"].shape[-1] // unit.multiple
    a, b = exact.view(len(rows), per_col, cols, -1), grouped.view(len(rows), per_col, cols, -1)
    for i, r in enumerate(rows):
        keep = -(-(r.shape[1] + ROW_MARGIN // 2) // unit.multiple)  # the ink and half the margin
        assert torch.allclose(a[i, :, :keep], b[i, :, :keep], atol=1e-4), i
        own = int(batch["image_columns"][i])
        assert not b[i, :, own:].any()
    assert torch.equal(inputs["attention_mask"], grouped_inputs["attention_mask"])


def test_character_tokenizer_round_trips_every_character_the_invoices_print():
    tok = build_char_tokenizer()
    text = "Rechnungsbetrag: 1.234,56 € — Müller & Söhne, Façade n° 7"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert tok.unk_token_id not in ids


def test_a_ctc_head_that_does_not_fit_is_one_line_naming_the_file(row_model, row_model_ctc, tmp_path):
    import shutil

    from safetensors.torch import save_file

    from invoice_vlm.common import InvoiceVLMError
    from invoice_vlm.models import CTC_HEAD_FILE, CtcHead

    model, _ = load(row_model)
    assert CtcHead.load(row_model, model) is None  # none beside it: the decoder reads
    bad = tmp_path / "bad"
    shutil.copytree(row_model_ctc, bad)
    save_file({"weight": torch.zeros(10, 3), "bias": torch.zeros(10)}, str(bad / CTC_HEAD_FILE))
    with pytest.raises(InvoiceVLMError, match=rf"{CTC_HEAD_FILE}: a head of shape 10x3 does not fit"):
        CtcHead.load(bad, model)
    save_file({"bias": torch.zeros(10)}, str(bad / CTC_HEAD_FILE))
    with pytest.raises(InvoiceVLMError, match="not a CTC head"):
        CtcHead.load(bad, model)
