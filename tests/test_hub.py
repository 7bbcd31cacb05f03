"""Export: a release folder in bf16 with a model card carrying measured numbers; the training-curve script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from invoice_vlm import evaluate as ev
from invoice_vlm import hub
from invoice_vlm.common import InvoiceVLMError
from invoice_vlm.models import load, row_batch


def test_export_casts_and_writes_a_card_with_the_measured_numbers(tiny_model, text_dataset, tmp_path):
    scores = ev.main(ev.EvalConfig(model=str(tiny_model), data=str(text_dataset), split="test",
                                   out=str(tmp_path / "eval-test"), max_new_tokens=4, report=False))
    out = hub.export(str(tiny_model), tmp_path / "release", "bfloat16", [tmp_path / "eval-test"], name="acme/tiny")
    weights = load_file(out / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["pipeline_tag"] == "image-text-to-text" and meta["library_name"] == "transformers"
    assert meta["license"] == "apache-2.0" and "invoice-vlm" in meta["tags"]
    [result] = meta["model-index"][0]["results"]
    assert result["dataset"]["name"] == "eval-test" and result["dataset"]["split"] == "test"
    assert {m["type"]: m["value"] for m in result["metrics"]} == {
        "bleu": round(scores["bleu"]["bleu"], 4), "ter": round(scores["ter"]["score"], 4), "cer": round(scores["cer"], 4)}
    assert f"| {scores['bleu']['bleu']:.4f} | {scores['ter']['score']:.2f} |" in card
    ev.main(ev.EvalConfig(model=str(tiny_model), data=str(text_dataset), split="test", limit=1,
                          out=str(tmp_path / "eval-first-page"), max_new_tokens=4, report=False))
    two = hub.export(str(tiny_model), tmp_path / "release2", "bf16", [tmp_path / "eval-test", tmp_path / "eval-first-page"])
    results = yaml.safe_load((two / "README.md").read_text().split("---\n")[1])["model-index"][0]["results"]
    assert [r["dataset"]["name"] for r in results] == ["eval-test", "eval-first-page"]  # same split, two entries
    assert all(len(r["metrics"]) == 3 for r in results)
    for section in ("## Intended use", "## Evaluation", "## Limitations", "## Use"):
        assert section in card
    assert 'model_id = "acme/tiny"' in hub.usage_snippet(card)
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


def test_export_averages_checkpoints_and_refuses_another_model(tiny_model, tiny_model_pg2, tmp_path):
    """--average: the exported weights are the mean of the checkpoints' (tied weights stay tied); a checkpoint of
    another model is refused in one line before anything is written."""
    a, processor = load(tiny_model)
    b, _ = load(tiny_model)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn_like(p))
    b.save_pretrained(tmp_path / "later", safe_serialization=True)
    processor.save_pretrained(tmp_path / "later")
    out = hub.export(str(tiny_model), tmp_path / "avg", "fp32", average=[tmp_path / "later"])
    m, _ = load(out)
    pa, pb, pm = dict(a.named_parameters()), dict(b.named_parameters()), dict(m.named_parameters())
    assert max(((pa[k] + pb[k]) / 2 - pm[k]).abs().max().item() for k in pm) < 1e-6
    emb, head = m.get_input_embeddings().weight, m.get_output_embeddings().weight
    if m.config.get_text_config().tie_word_embeddings:
        assert torch.equal(emb, head)
    assert json.loads((out / "export.json").read_text())["averaged_with"] == [str(tmp_path / "later")]
    assert f"averaged with `{tmp_path / 'later'}`" in (out / "README.md").read_text()
    with pytest.raises(InvoiceVLMError, match="not the same model"):
        hub.export(str(tiny_model), tmp_path / "bad", "fp32", average=[tiny_model_pg2])
    assert not (tmp_path / "bad").exists()


# --- export of a LoRA run: merged, adapter-only, plain transformers in a fresh process ------------------------------

@pytest.fixture(scope="module")
def lora_run(tiny_model, tmp_path_factory):
    from conftest import write_text_dataset

    from invoice_vlm import train

    root = tmp_path_factory.mktemp("lora")
    data = write_text_dataset(root / "data", {"train": ["AB 12", "€ 7,50"], "test": ["AB 12", "€ 7,50"]})
    cfg = train.TrainConfig(model=str(tiny_model), data=str(data), name="lora", output_root=str(root / "runs"),
                            method="lora", sft={"max_steps": 30, "learning_rate": 1e-2, "report_to": "none",
                                                "per_device_train_batch_size": 2, "save_strategy": "no",
                                                "warmup_steps": 0})
    return train.main(cfg), data


def _greedy(model_dir, images, max_new_tokens=512):
    from invoice_vlm.infer import Predictor

    return Predictor.from_pretrained(str(model_dir), max_new_tokens=max_new_tokens).predict(images)


def test_export_runs_its_card_snippet_in_plain_transformers_with_the_same_output(lora_run, tmp_path):
    from invoice_vlm.data import open_image, read_split

    run_dir, data = lora_run
    out = hub.export(str(run_dir), tmp_path / "release", "fp32", name="acme/invoice-ocr")  # the run's merged model
    assert not list(out.glob("*.bin")) and (out / "model.safetensors").is_file()
    page = read_split(data, "test")[1]
    expected = _greedy(run_dir / "model", [open_image(page.image)])[0]
    work = tmp_path / "user"
    work.mkdir()
    open_image(page.image).save(work / "invoice.png")
    snippet = hub.usage_snippet((out / "README.md").read_text())
    code = snippet.replace('"acme/invoice-ocr"', repr(str(out)))
    code += "\nimport sys\nassert not any(m.startswith('invoice_vlm') for m in sys.modules), 'imported invoice_vlm'"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == expected
    info = json.loads((out / "export.json").read_text())
    assert info["kind"] == "model" and info["training"]["method"] == "lora"
    assert "## Training" in (out / "README.md").read_text()


def test_merge_lora_equals_the_trainers_merge_and_adapter_only_is_a_peft_folder(lora_run, tmp_path):
    from peft import PeftModel

    from invoice_vlm.data import open_image, read_split

    run_dir, data = lora_run
    merged = hub.export(str(run_dir / "adapter"), tmp_path / "merged", "fp32", merge_lora=True)
    a, b = load_file(run_dir / "model" / "model.safetensors"), load_file(merged / "model.safetensors")
    assert set(a) == set(b) and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert json.loads((merged / "export.json").read_text())["merged"] is True

    adapter = hub.export(str(run_dir), tmp_path / "adapter", "fp32", adapter_only=True)
    assert sorted(p.name for p in adapter.glob("*.safetensors")) == ["adapter_model.safetensors"]
    assert (adapter / "adapter_config.json").is_file() and "peft" in (adapter / "README.md").read_text()
    base, processor = load(hub.adapter_base(adapter))
    model = PeftModel.from_pretrained(base, adapter).eval()
    from invoice_vlm.infer import Predictor

    images = [open_image(s.image) for s in read_split(data, "test")]
    assert Predictor(model, processor, max_new_tokens=12).predict(images) == _greedy(merged, images, 12)


@pytest.mark.parametrize("case,match", [
    ("empty", "no model here"),
    ("merge-full", "no LoRA adapter here"),
    ("adapter-plain", "a LoRA adapter, not a full model"),
    ("dtype", "dtype must be one of"),
])
def test_export_errors_are_one_line_and_write_nothing(case, match, lora_run, tiny_model, tmp_path):
    run_dir, _ = lora_run
    (tmp_path / "empty").mkdir()
    args = {"empty": (str(tmp_path / "empty"), {}), "merge-full": (str(tiny_model), {"merge_lora": True}),
            "adapter-plain": (str(run_dir / "adapter"), {}), "dtype": (str(tiny_model), {"dtype": "int3"})}[case]
    kwargs = {"dtype": "fp32", **args[1]}
    with pytest.raises(InvoiceVLMError, match=match):
        hub.export(args[0], tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


# --- push, with a stand-in for HfApi ------------------------------------------------------------------------------

class RecordingApi:
    """Records the calls and the files of each upload instead of talking to the Hub."""

    calls: list = []

    def __init__(self, token=None):
        self.token = token
        RecordingApi.calls.append(("init", token))

    def create_repo(self, repo_id, **kw):
        RecordingApi.calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, folder_path, repo_id, repo_type, commit_message):
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        RecordingApi.calls.append(("upload_folder", repo_id, repo_type, files))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()


@pytest.fixture
def fake_hub(monkeypatch):
    RecordingApi.calls = []
    monkeypatch.setattr(hub, "HfApi", RecordingApi)
    return RecordingApi


def test_push_uploads_the_export_folder(fake_hub, tiny_model, tmp_path):
    out = hub.export(str(tiny_model), tmp_path / "release", "bf16")
    url = hub.push(out, "acme/invoice-ocr", private=True, token="hf_x")
    assert url.endswith("/commit/0")
    assert fake_hub.calls[0] == ("init", "hf_x")
    assert fake_hub.calls[1] == ("create_repo", "acme/invoice-ocr", {"repo_type": "model", "private": True,
                                                                      "exist_ok": True})
    kind, repo, repo_type, files = fake_hub.calls[2]
    assert repo_type == "model" and {"model.safetensors", "README.md", "config.json"} <= set(files)


def test_push_errors_are_one_line(fake_hub, tiny_model, tmp_path, monkeypatch):
    out = hub.export(str(tiny_model), tmp_path / "release", "bf16")
    with pytest.raises(InvoiceVLMError, match="invalid repo id"):
        hub.push(out, "not a repo id", token="hf_x")
    with pytest.raises(InvoiceVLMError, match="invalid repo id"):
        hub.push(out, "just-a-name", token="hf_x")
    with pytest.raises(InvoiceVLMError, match="no model here"):
        hub.push(tmp_path, "acme/x", token="hf_x")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no saved login either
    with pytest.raises(InvoiceVLMError, match="no Hugging Face token"):
        hub.push(out, "acme/x")

    class Offline(RecordingApi):
        def create_repo(self, repo_id, **kw):
            raise ConnectionError("Failed to resolve 'huggingface.co'\nmore detail")

    monkeypatch.setattr(hub, "HfApi", Offline)
    with pytest.raises(InvoiceVLMError, match=r"push to acme/x failed: ConnectionError: Failed to resolve") as e:
        hub.push(out, "acme/x", token="hf_x")
    assert "\n" not in str(e.value)
    assert not [c for c in fake_hub.calls if c[0] == "upload_folder"]


def test_push_dataset_writes_parquet_with_images_and_a_card(fake_hub, text_dataset, tmp_path):
    import datasets
    from huggingface_hub import DatasetCard

    from invoice_vlm.data import read_split

    keep = tmp_path / "hub-dataset"
    hub.push_dataset(text_dataset, "acme/synthetic-invoices", token="hf_x", out=keep)
    kind, repo, repo_type, files = fake_hub.calls[-1]
    assert (kind, repo, repo_type) == ("upload_folder", "acme/synthetic-invoices", "dataset")
    assert "README.md" in files and "data/train-00000-of-00001.parquet" in files
    card = DatasetCard.load(keep / "README.md")
    assert {c["split"] for c in card.data.configs[0]["data_files"]} == {"train", "test"}
    ds = datasets.load_dataset("parquet", data_files={"train": str(keep / "data" / "train-00000-of-00001.parquet")},
                               cache_dir=str(tmp_path / "cache"))["train"]
    originals = read_split(text_dataset, "train")
    assert len(ds) == len(originals)
    row, sample = ds[0], originals[0]
    assert row["text"] == sample.text and json.loads(row["fields"]) == sample.fields
    from PIL import Image

    with Image.open(sample.image) as im:
        assert row["image"].size == im.size and row["image"].convert("RGB").tobytes() == im.convert("RGB").tobytes()


def test_cli_push_errors(tmp_path, tiny_model):
    from typer.testing import CliRunner

    from invoice_vlm.cli import app

    r = CliRunner().invoke(app, ["push", "--model", str(tmp_path), "--repo-id", "bad id", "--token", "x"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert [line for line in r.stderr.splitlines() if line.strip()] == [
        next(line for line in r.stderr.splitlines() if "invalid repo id" in line)]
    r = CliRunner().invoke(app, ["export", "--model", str(tmp_path), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "no model here" in r.stderr and not (tmp_path / "o").exists()


def test_row_model_card_snippet_runs_with_plain_transformers(row_model_ctc, tmp_path):
    """The exported card's snippet reads a row image in a fresh process that never imports invoice_vlm: with the
    decoder, then with the CTC head, as the engine does with each alone (``--decode generate``, ``--decode ctc``)."""
    import subprocess
    import sys

    from PIL import ImageDraw

    from invoice_vlm import hub

    out = hub.export(str(row_model_ctc), tmp_path / "release", "bfloat16", name="acme/rows")
    card = (out / "README.md").read_text()
    assert "reading unit: one text row, scaled to 16 px" in card
    row = Image.new("RGB", (200, 30), "white")
    ImageDraw.Draw(row).text((4, 8), "Total 12.50", fill="black")
    row.save(tmp_path / "row.png")
    code = hub.usage_snippet(card).replace('"acme/rows"', repr(str(out))).replace("max_new_tokens=256",
                                                                                 "max_new_tokens=4")
    code = "import sys; sys.modules['invoice_vlm'] = None\n" + code + "\nimport numpy; numpy.save('canvas.npy', numpy.asarray(canvas))"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    # the snippet gives the model the pixels the engine gives it for the same row (scale, white margin, canvas),
    # and so the same text
    from invoice_vlm.infer import Predictor
    from invoice_vlm.rows import row_image

    engine = Predictor.from_pretrained(str(out), device="cpu", dtype="bfloat16", max_new_tokens=4, decode="ctc")
    decoder = Predictor.from_pretrained(str(out), device="cpu", dtype="bfloat16", max_new_tokens=4, decode="generate")
    crop = np.asarray(row_image(row, (0, 0, row.width, row.height), engine.unit).convert("L"))
    pixels = row_batch([crop], None, engine.processor.tokenizer, engine.unit, 0)["pixel_values"][0, 0]
    assert np.array_equal(np.load(tmp_path / "canvas.npy"), ((pixels + 1) * 127.5).round().numpy().astype(np.uint8))
    generated, ctc = result.stdout.rstrip("\n").split("\n")
    assert engine.ctc_head is not None and ctc.strip() == engine.read_rows([crop])[0] != ""
    assert generated.strip() == decoder.read_rows([crop])[0]
