"""Export: a release folder in bf16 with a model card carrying measured numbers; the training-curve script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from invoice_vlm import evaluate as ev
from invoice_vlm import hub
from invoice_vlm.common import InvoiceVLMError
from invoice_vlm.models import load


def test_export_casts_and_writes_a_card_with_the_measured_numbers(tiny_model, text_dataset, tmp_path):
    scores = ev.main(ev.EvalConfig(model=str(tiny_model), data=str(text_dataset), split="test",
                                   out=str(tmp_path / "eval-test"), max_new_tokens=4, report=False))
    out = hub.export(str(tiny_model), tmp_path / "release", "bfloat16", [tmp_path / "eval-test"], name="acme/tiny")
    weights = load_file(out / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: image-text-to-text")
    assert f"| {scores['bleu']['bleu']:.4f} | {scores['ter']['score']:.2f} |" in card
    assert 'AutoProcessor.from_pretrained("acme/tiny")' in card
    info = json.loads((out / "export.json").read_text())
    assert info["dtype"] == "bfloat16" and info["evaluations"][0]["pages"] == 2
    a, _ = load(tiny_model)
    b, _ = load(out)  # loads back (as float32) and agrees to bf16 precision
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert max((pa[k] - pb[k]).abs().max().item() for k in pa) < 0.02


def test_export_refuses_a_folder_without_metrics(tiny_model, tmp_path):
    with pytest.raises(InvoiceVLMError, match="no metrics.json"):
        hub.export(str(tiny_model), tmp_path / "release", "bfloat16", [tmp_path])
    assert not (tmp_path / "release").exists()


def test_training_curve_plots_cer_against_examples_seen(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint-20").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"sft": {"per_device_train_batch_size": 8}, "num_eval_samples": 16,
                                              "config": {"tiny": {"image_size": 768}}}))
    history = [{"step": s, "loss": 5 - s / 10} for s in range(10, 21, 10)]
    history += [{"step": 10, "eval_cer": 0.9}, {"step": 20, "eval_cer": 0.5}]
    (run / "checkpoint-20" / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    sys.path.insert(0, str(Path(__file__).parent.parent / "scripts"))
    try:
        import training_curve
    finally:
        sys.path.pop(0)
    points, _ = training_curve.load_points(run)
    assert points == [(80, 0.9, 4.0), (160, 0.5, 3.0)]
    out = tmp_path / "curve.png"
    r = subprocess.run([sys.executable, str(Path(__file__).parent.parent / "scripts" / "training_curve.py"), str(run),
                        str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from PIL import Image

    with Image.open(out) as im:
        assert im.size == (770, 440) and len(set(im.convert("L").getdata())) > 10
