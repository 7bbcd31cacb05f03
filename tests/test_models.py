from __future__ import annotations

import pytest
import torch
from PIL import Image

from invoice_vlm.common import InvoiceVLMError
from invoice_vlm.infer import Predictor
from invoice_vlm.models import load

SAMPLES = [
    "Rechnung Nr. 2024-001 Gesamtbetrag: 1.234,56 € Straße Fällig",  # de
    "Facture N° 7 — Total TTC : 99,00 € Échéance déjà reçu «œuvre»",  # fr
    "Factura Nº 3 Descripción Cant. Año señor 12,50 €",  # es
    "Fattura n. 5 Q.tà Caffè perché 1.000,00 €",  # it
    "Factuur aan Omschrijving Bedrag € 1.234,56 ĳs",  # nl
    "INVOICE #42 Total due £1,234.56 $99.00 ¥500 ₹12",  # en
]


@pytest.mark.parametrize("text", SAMPLES)
def test_tokenizer_round_trips_invoice_text_of_six_languages(tiny_model, text):
    _, processor = load(tiny_model)
    tok = processor.tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    # the processor's special tokens exist and are distinct
    specials = {tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, processor.image_token_id}
    assert len(specials) == 4 and None not in specials


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_model_pg2"])
def test_save_load_round_trip_gives_identical_outputs(fixture, request, tmp_path):
    path = request.getfixturevalue(fixture)
    model, processor = load(path)
    expected_text = "gemma2" if fixture == "tiny_model_pg2" else "gemma"
    assert model.config.text_config.model_type == expected_text
    assert type(model).__name__ == "PaliGemmaForConditionalGeneration"
    image = Image.new("RGB", (80, 50), (200, 30, 30))
    inputs = processor(images=[image], text=["<image>ocr"], suffix=["Total 12,00 €"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits

    model.save_pretrained(tmp_path / "copy")
    processor.save_pretrained(tmp_path / "copy")
    assert (tmp_path / "copy" / "model.safetensors").is_file()
    assert not list((tmp_path / "copy").glob("*.bin")), "weights must be safetensors only"
    model2, processor2 = load(tmp_path / "copy")
    inputs2 = processor2(images=[image], text=["<image>ocr"], suffix=["Total 12,00 €"], return_tensors="pt")
    assert torch.equal(inputs["input_ids"], inputs2["input_ids"])
    with torch.no_grad():
        logits2 = model2(**inputs2).logits
    assert torch.equal(logits, logits2)
    a = Predictor(model, processor, max_new_tokens=8).predict([image])
    b = Predictor(model2, processor2, max_new_tokens=8).predict([image])
    assert a == b


def test_hub_id_goes_through_from_pretrained_and_fails_in_one_line_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InvoiceVLMError) as e:
        load("google/paligemma2-3b-pt-448")
    assert str(e.value).startswith("google/paligemma2-3b-pt-448: cannot load model")
    assert "\n" not in str(e.value)


def test_missing_model_folder_is_one_line(tmp_path):
    with pytest.raises(InvoiceVLMError, match="model folder not found"):
        load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvoiceVLMError, match="config.json missing"):
        load(tmp_path / "empty")


def test_batched_prediction_equals_one_by_one(tiny_model):
    model, processor = load(tiny_model)
    images = [Image.new("RGB", (60 + 10 * i, 40), (20 * i, 100, 200)) for i in range(5)]
    batched = Predictor(model, processor, max_new_tokens=6, batch_size=4).predict(images)
    single = [Predictor(model, processor, max_new_tokens=6, batch_size=1).predict([im])[0] for im in images]
    assert batched == single


def test_folder_with_broken_config_or_pickle_weights_is_one_line(tmp_path, tiny_model):
    import shutil

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(InvoiceVLMError, match=r"broken/config.json: not valid JSON"):
        load(broken)
    # weights only as a pickle (.bin): refused, safetensors only
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(InvoiceVLMError, match=r"pickled: only pickle weights here \(pytorch_model.bin\); refused"):
        load(pickled)


def test_the_embedded_model_is_shipped_tiny_and_loads_by_name():
    """invoice-vlm-tiny: in the repository, at most 30M parameters and 30 MB of bf16 safetensors, a model card,
    loaded by its name like a hub checkpoint (what demo, predict and train use by default); a row reader of
    FastVLM's architecture with a ResNet tower."""
    import json

    from safetensors import safe_open

    from invoice_vlm.models import EMBEDDED_DIR, count_parameters, load

    weights = EMBEDDED_DIR / "model.safetensors"
    assert weights.stat().st_size <= 30e6
    with safe_open(str(weights), "pt") as f:  # every float is bf16 (BatchNorm's step counters are integers)
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} <= {"BF16", "I64"}
    card = (EMBEDDED_DIR / "README.md").read_text()
    assert "## Evaluation" in card and "| BLEU |" in card and "model-index:" in card and "reading unit" in card
    model, processor = load("invoice-vlm-tiny")
    assert type(model).__name__ == "FastVlmForConditionalGeneration" and count_parameters(model) <= 30e6
    assert type(model.vision_tower if hasattr(model, "vision_tower") else model.model.vision_tower).__name__ == \
        "ResNetModel"
    assert model.config.reading["unit"] == "row" and type(processor).__name__ == "LlavaProcessor"
    info = json.loads((EMBEDDED_DIR / "export.json").read_text())
    assert info["dtype"] == "bfloat16" and info["evaluations"]
    # its CTC head ships beside the weights, bf16 too, and fits them (the engine reads with it)
    from invoice_vlm.models import CTC_HEAD_FILE, CtcHead

    with safe_open(str(EMBEDDED_DIR / CTC_HEAD_FILE), "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"BF16"}
    head = CtcHead.load(EMBEDDED_DIR, model)
    assert head is not None and info["ctc_head"] == {"file": CTC_HEAD_FILE, "frames": head.frames}
    assert "ctc_head.safetensors" in card
