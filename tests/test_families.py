"""Each chat family through the same commands, offline: a tiny random model of the real architecture, built with
the project's own tokenizer, trains one step from the family's shipped config (full and LoRA), is masked so that
only the answer carries loss, predicts greedily through the engine (new tokens only), and exports to a folder that
plain transformers reloads with identical logits. docs/fine-tuning.md has the table of families."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from invoice_vlm import hub, train
from invoice_vlm.cli import app
from invoice_vlm.data import open_image, read_split
from invoice_vlm.infer import Predictor
from invoice_vlm.models import (TINY_CHAT_FAMILIES, TinyChatConfig, TinyIdefics3Config, create_tiny_idefics3,
                                image_token_count, load, training_batch)
from invoice_vlm.train.methods import part_of

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# family -> (shipped config folder, hub id it names, the model class transformers builds)
FAMILIES = {
    "gemma3": ("gemma-3-4b-pt", "google/gemma-3-4b-pt", "Gemma3ForConditionalGeneration"),
    "lighton_ocr": ("lightonocr-2-1b-base", "lightonai/LightOnOCR-2-1B-base", "LightOnOcrForConditionalGeneration"),
    "paddleocr_vl": ("paddleocr-vl", "PaddlePaddle/PaddleOCR-VL", "PaddleOCRVLForConditionalGeneration"),
    "granite_docling": ("granite-for-docling-500m", "ibm-granite/granite-for-docling-500m",
                        "GraniteDoclingForConditionalGeneration"),
    "deepseek_ocr2": ("deepseek-ocr-2", "deepseek-community/DeepSeek-OCR-2", "DeepseekOcr2ForConditionalGeneration"),
    "got_ocr2": ("got-ocr-2.0", "stepfun-ai/GOT-OCR-2.0-hf", "GotOcr2ForConditionalGeneration"),
    "florence2": ("florence-2-large", "florence-community/Florence-2-large", "Florence2ForConditionalGeneration"),
    # granite-docling-258M is an Idefics3 (as SmolVLM v1 is): the Idefics3 builder, the checkpoint's config
    "idefics3": ("granite-docling-258m", "ibm-granite/granite-docling-258M", "Idefics3ForConditionalGeneration"),
}
assert set(FAMILIES) == {*TINY_CHAT_FAMILIES, "idefics3"}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_model(request, tmp_path_factory, corpus) -> tuple[str, Path]:
    name = request.param
    out = tmp_path_factory.mktemp(name) / "model"
    if name == "idefics3":
        return name, create_tiny_idefics3(out, TinyIdefics3Config(crop_size=32, longest_edge=64, hidden=64,
                                                                  bpe_vocab=600), corpus)
    return name, TINY_CHAT_FAMILIES[name](out, TinyChatConfig(), corpus)


@pytest.fixture(scope="module")
def family_data(tmp_path_factory) -> Path:
    from conftest import write_text_dataset

    return write_text_dataset(tmp_path_factory.mktemp("family-data") / "data",
                              {"train": ["AB 12", "€ 7,50"], "test": ["AB 12", "€ 7,50"]})


def _train(family: str, method: str, base: Path, data: Path, tmp_path: Path) -> tuple[Path, train.TrainConfig]:
    folder, hub_id, _ = FAMILIES[family]
    path = CONFIGS / folder / f"{method}.yaml"
    assert train.load_config(str(path), sets=["data=x"]).model == hub_id  # the shipped config names the checkpoint
    cfg = train.load_config(str(path), sets=[
        f"model={base}", f"data={data}", f"name={method}", f"output_root={tmp_path}", "eval.steps=0",
        "sft.max_steps=1", "sft.per_device_train_batch_size=2", "sft.gradient_accumulation_steps=1",
        "sft.learning_rate=1e-2", "sft.warmup_steps=0", "sft.bf16=false", "sft.gradient_checkpointing=false",
        "sft.report_to=none", "sft.save_strategy=no", "sft.dataloader_num_workers=0",
        "sft.dataloader_persistent_workers=false"])
    return train.main(cfg), cfg


def test_only_the_answer_carries_loss_and_image_tokens_match_the_features(family_model, family_data):
    family, base = family_model
    model, processor = load(base)
    images = [open_image(s.image) for s in read_split(family_data, "train")]
    targets = ["AB 12", "€ 7,50 Total"]
    batch = training_batch(processor, images, ["ocr", "ocr"], targets)
    tok = processor.tokenizer
    for row, target in enumerate(targets):
        labelled = batch["labels"][row][batch["labels"][row] != -100]
        assert tok.decode(labelled, skip_special_tokens=True).strip() == target  # Idefics3 writes ': ' + answer
        assert labelled[-1] == tok.eos_token_id  # the end-of-turn token is learned: generation stops there
    # the placeholders the processor wrote are exactly the features the vision tower gives (none cut)
    image_inputs = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", "labels",
                                                               "token_type_ids", "mm_token_type_ids")}
    with torch.no_grad():
        feats = model.model.get_image_features(**image_inputs).pooler_output
    flat = feats if isinstance(feats, (list, tuple)) else [feats.reshape(-1, feats.shape[-1])]
    n = sum(f.shape[0] for f in flat)
    assert image_token_count(processor, batch) == n > 0


@pytest.mark.parametrize("method", ["full", "lora"])
def test_family_trains_predicts_and_exports(method, family_model, family_data, tmp_path):
    family, base = family_model
    run_dir, cfg = _train(family, method, base, family_data, tmp_path / "runs")
    assert json.loads((run_dir / "run.json").read_text())["preflight"]["tokens"]["image"] > 0  # counted per family
    model, processor = load(run_dir / "model")
    before = dict(load(base)[0].named_parameters())
    moved = {part_of(k) for k, w in model.named_parameters() if not torch.equal(w, before[k])}
    # full: every part the config leaves unfrozen moved; LoRA (scope language_model): the decoder, merged, only
    parts = {p for p in ("vision", "projector", "language") if not getattr(cfg.freeze, p)}
    assert moved == (parts if method == "full" else {"language"})
    assert type(model).__name__ == FAMILIES[family][2]
    images = [open_image(s.image) for s in read_split(family_data, "test")]
    # greedy, one new token: a decoded prompt would show the question
    preds = Predictor(model, processor, max_new_tokens=1).predict(images, "answer en What is the total?")
    assert len(preds) == 2 and not any("total" in p for p in preds)

    if method == "lora":
        return
    out = hub.export(str(run_dir / "model"), tmp_path / "release", "fp32")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    plain = AutoModelForImageTextToText.from_pretrained(out).eval()
    plain_processor = AutoProcessor.from_pretrained(out)
    assert type(plain_processor).__name__ == type(processor).__name__
    inputs = training_batch(plain_processor, images, ["ocr", "ocr"], ["AB 12", "€ 7,50"])  # labels: an encoder-
    with torch.no_grad():  # decoder's logits are the decoder's
        assert torch.equal(plain(**inputs).logits, model(**inputs).logits)


def test_shipped_config_stops_with_one_line_without_the_weights(family_data, tmp_path, monkeypatch):
    from huggingface_hub import constants

    # as a machine without the weights and without the network (read at call time, whatever was imported first)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    result = CliRunner().invoke(app, ["train", "--config", str(CONFIGS / "paddleocr-vl" / "lora.yaml"),
                                      "--data", str(family_data), "--output-root", str(tmp_path), "--eval-steps", "0"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("error: PaddlePaddle/PaddleOCR-VL: cannot load model"), result.output
    assert "Traceback" not in result.output
