"""Every command through the real entry point, on tiny data."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from invoice_vlm.cli import app
from invoice_vlm.data import read_split

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result) -> str:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_synth_train_eval_predict(tmp_path, tiny_model, text_dataset):
    r = invoke("synth", "--out", tmp_path / "synth", "--n", 6, "--dpi", 40, "--split", "train=0.5,test=0.5",
               "--max-items", 3, "--workers", 2, "--shard-size", 2)
    assert r.exit_code == 0, r.output
    assert len(read_split(tmp_path / "synth", "test")) == 3  # 3 short invoices: one page each
    assert sorted(p.name for p in (tmp_path / "synth" / "test").iterdir()) == ["00000", "00001"]

    r = invoke("train", "--config", "configs/tiny/full.yaml", "--data", text_dataset, "--model", tiny_model,
               "--name", "cli", "--output-root", tmp_path / "runs", "--max-steps", 3,
               "--set", "sft.report_to=none", "--set", "sft.per_device_train_batch_size=2")
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "cli"
    assert (run / "model" / "model.safetensors").is_file()
    assert json.loads((run / "run.json").read_text())["sft"]["max_steps"] == 3

    r = invoke("eval", "--model", run / "model", "--data", tmp_path / "synth", "--out", tmp_path / "ev",
               "--max-new-tokens", 5)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "ev" / "bleu.json").read_text()).keys() == {
        "bleu", "precisions", "brevity_penalty", "length_ratio", "translation_length", "reference_length"}
    assert json.loads((tmp_path / "ev" / "ter.json").read_text()).keys() == {"score", "num_edits", "ref_length"}
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert {"cer", "wer", "chrf", "signatures"} <= metrics.keys()
    from invoice_vlm.infer import default_dtype

    assert metrics["dtype"] == default_dtype("cpu")  # what it read in, beside what it measured
    preds = [json.loads(x) for x in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert [p.keys() for p in preds] == [{"id", "reference", "prediction", "cer", "fields"}] * 3
    assert (tmp_path / "ev" / "report.html").is_file() and (tmp_path / "ev" / "fields.json").is_file()
    assert '"translation_length"' in r.output and '"num_edits"' in r.output

    images = sorted((text_dataset / "test").glob("*.png"))
    r = invoke("predict", "--model", run / "model", "--max-new-tokens", 4, *images)
    assert r.exit_code == 0, r.output
    assert r.output.count("==> ") == 2


def test_init_model(tmp_path):
    r = invoke("init-model", "--out", tmp_path / "m", "--variant", "paligemma2")
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["architectures"] == ["PaliGemmaForConditionalGeneration"]
    assert cfg["text_config"]["model_type"] == "gemma2"
    r = invoke("init-model", "--out", tmp_path / "rows", "--variant", "rows")
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "rows" / "config.json").read_text())
    assert cfg["architectures"] == ["FastVlmForConditionalGeneration"] and cfg["reading"]["unit"] == "row"


def test_demo_runs_end_to_end(tmp_path):
    """The main job on the embedded model: a held-out style, scores before and after a (here 2-step) fine-tune."""
    r = invoke("demo", "--workdir", tmp_path, "--n", 20, "--max-steps", 2)
    assert r.exit_code == 0, r.output
    assert '"bleu"' in r.output and '"score"' in r.output and "before" in r.output and "after" in r.output
    run = tmp_path / "runs" / "demo"
    before = json.loads((run / "eval-before" / "metrics.json").read_text())
    after = json.loads((run / "eval-after" / "metrics.json").read_text())
    assert before["model"] == "invoice-vlm-tiny" and after["model"] == str(run / "model")
    assert before["num_samples"] == after["num_samples"] >= 2
    assert (run / "eval-after" / "report.html").is_file() and (run / "run.json").is_file()
    data = json.loads((tmp_path / "data" / "demo" / "dataset.json").read_text())
    assert data["identity"]["layouts"] == "modern" and data["identity"]["locales"] == "nl_NL"


@pytest.mark.parametrize("damage, expected", [
    (lambda d: (d / "train" / "metadata.jsonl").write_text('{"file_name": "0000.png", "text": "x"}\n{oops\n'),
     r"train/metadata.jsonl:2: not valid JSON"),
    (lambda d: (d / "train" / "0000.png").write_bytes(b"not a png"), r"0000.png: image does not open"),
    (lambda d: (d / "train" / "metadata.jsonl").write_text('{"file_name": "0000.png", "text": ""}\n'),
     r"empty target"),
])
def test_train_bad_input_is_one_line_and_writes_no_model(tmp_path, tiny_model, text_dataset, damage, expected):
    import re

    damage(text_dataset)
    r = invoke("train", "--data", text_dataset, "--model", tiny_model, "--name", "bad",
               "--output-root", tmp_path / "runs", "--max-steps", 1)
    assert re.search(expected, one_line_error(r))
    assert not (tmp_path / "runs" / "bad" / "model").exists()


def test_eval_missing_dataset_and_predict_bad_image(tmp_path, tiny_model, text_dataset):
    r = invoke("eval", "--model", tiny_model, "--data", tmp_path / "nothing", "--out", tmp_path / "ev")
    assert "nothing: dataset folder not found" in one_line_error(r)
    assert not (tmp_path / "ev").exists()

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG truncated")
    good = sorted((text_dataset / "test").glob("*.png"))[0]
    r = invoke("predict", "--model", tiny_model, "--max-new-tokens", 2, bad, good)
    assert r.exit_code == 1
    assert "bad.png: image does not open" in r.stderr
    assert f"==> {good} <==" in r.output  # the good file was still transcribed


def test_unknown_config_key_is_one_line(tmp_path, text_dataset):
    r = invoke("train", "--data", text_dataset, "--set", "sft.lr=3")
    assert "sft.lr is not a TRL SFTConfig setting" in one_line_error(r)


@pytest.mark.parametrize("args, expected", [
    (["--augment", "blurry"], "unknown augmentation preset 'blurry'"),
    (["--locales", "en_US,xx_XX"], "unknown locale 'xx_XX'"),
    (["--split", "train=0.9,dev=0.1"], "unknown split 'dev'"),
    (["--n", 0], "n must be positive"),
])
def test_synth_bad_settings_are_one_line(tmp_path, args, expected):
    r = invoke("synth", "--out", tmp_path / "ds", *args)
    assert expected in one_line_error(r)
    assert not (tmp_path / "ds").exists()


def test_synth_refuses_a_folder_with_other_content(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    r = invoke("synth", "--out", folder, "--n", 2, "--dpi", 40)
    assert "holds no synthetic dataset" in one_line_error(r)
    r = invoke("synth", "--out", folder, "--n", 2, "--dpi", 40, "--overwrite")
    assert "holds no synthetic dataset" in one_line_error(r)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_bench_train_compares_against_a_plain_loop():
    """The benchmark's shape (speed itself is measured by running it, not asserted here)."""
    from conftest import TINY

    from invoice_vlm.models import TinyModelConfig
    from invoice_vlm.bench import train as bench_mod

    rows = bench_mod.bench(steps=2, warmup=1, batch_size=2, model_cfg=TinyModelConfig(**TINY))
    assert [r["variant"] for r in rows] == ["plain", "invoice-vlm", "invoice-vlm, logits everywhere", "trl-default"]
    assert rows[0]["vs_plain"] == 1.0 and all(r["samples_per_s"] > 0 and r["peak_rss_mb"] > 0 for r in rows)
    assert rows[1]["data_wait_pct"] is not None and 0 <= rows[1]["data_wait_pct"] < 100


@pytest.mark.parametrize("command,cls,skip", [
    ("eval", "invoice_vlm.evaluate:EvalConfig", {"data", "ray"}),
    ("serve", "invoice_vlm.serve:ServeConfig", set()),
    ("predict", "invoice_vlm.jobs:PredictJobConfig", {"inputs", "out", "ray", "min_new_tokens"}),
])
def test_command_options_are_their_config_dataclass(command, cls, skip):
    """One place says what an option is: every field of the stage's config is an option of its command, with the
    field's default and help (``cli.config_options``), but for those the command declares in another form."""
    import dataclasses
    import importlib

    import typer.main

    from invoice_vlm.cli import app

    module, name = cls.split(":")
    config = getattr(importlib.import_module(module), name)
    click_cmd = typer.main.get_command(app).commands[command]
    params = {p.name: p for p in click_cmd.params}
    for f in dataclasses.fields(config):
        if f.name in skip:
            continue
        assert f.name in params, f"{command}: no --{f.name.replace('_', '-')}"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert params[f.name].default == default and params[f.name].help == f.metadata.get("help", ""), f.name
