from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from invoice_vlm import train
from invoice_vlm.common import InvoiceVLMError
from invoice_vlm.data import open_image, read_split
from invoice_vlm.infer import Predictor
from invoice_vlm.models import load


def _cfg(tiny_model, data, tmp_path, **sft):
    settings = {"max_steps": 120, "learning_rate": 3e-3, "per_device_train_batch_size": 2, "logging_steps": 5,
                "report_to": "none", "warmup_steps": 0, "lr_scheduler_type": "constant", **sft}
    return train.TrainConfig(model=str(tiny_model), data=str(data), name="t", output_root=str(tmp_path / "runs"),
                             sft=settings)


def test_training_changes_weights_lowers_loss_and_learns_to_read(tiny_model, text_dataset, tmp_path):
    run_dir = train.main(_cfg(tiny_model, text_dataset, tmp_path))

    before = load_file(tiny_model / "model.safetensors")
    after = load_file(run_dir / "model" / "model.safetensors")
    changed = [k for k in before if not (before[k] == after[k]).all()]
    assert len(changed) > 0.9 * len(before), "most tensors should move"

    history = json.loads((run_dir / "train_result.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < 0.5 * losses[0]

    run = json.loads((run_dir / "run.json").read_text())
    assert run["seed"] == 0 and run["environment"]["torch"] and run["config"]["data"] == str(text_dataset)

    # The collator and the inference engine agree: a model trained on two images reads them back.
    samples = read_split(text_dataset, "test")
    model, processor = load(run_dir / "model")
    predictions = Predictor(model, processor, max_new_tokens=12).predict([open_image(s.image) for s in samples])
    assert predictions == [s.text for s in samples]
    # ...and not from the language prior alone: different images, different outputs
    assert len(set(predictions)) == 2


def test_preflight_stops_when_targets_exceed_the_budget(tiny_model, text_dataset, tmp_path):
    cfg = _cfg(tiny_model, text_dataset, tmp_path)
    cfg.max_length = 10
    with pytest.raises(InvoiceVLMError, match=r"needs \d+ tokens \(16 image"):
        train.main(cfg)
    assert not (tmp_path / "runs" / "t" / "model").exists()


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny-random\nlearning_rat: 3\n")
    with pytest.raises(InvoiceVLMError, match=r"bad.yaml: unknown key 'learning_rat'"):
        train.load_config(str(bad))
    bad.write_text("sft:\n  max_stepz: 3\n")
    with pytest.raises(InvoiceVLMError, match=r"sft.max_stepz is not a TRL SFTConfig setting"):
        train.load_config(str(bad))
    bad.write_text("seed: many\n")
    with pytest.raises(InvoiceVLMError, match=r"seed: expected an integer"):
        train.load_config(str(bad))


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted(Path(__file__).parent.parent.glob("configs/**/*.yaml"))
    assert configs
    for path in configs:
        cfg = train.load_config(str(path), sets=["data=x"])
        assert cfg.sft, path
