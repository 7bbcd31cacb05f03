"""kill -9 in the middle of synth, train, eval, export and predict --out, then the same command again.

Each command runs as a real process (``python -c LAUNCH``: the console script's ``main``) with one function
wrapped so that, at a chosen call, it announces itself and waits: the kill lands at a known point in the middle of
writing (a shard half full, a checkpoint without its state, a staging folder half filled), never by luck of timing.
Then ``os.kill(pid, SIGKILL)``; nothing looks complete; the same command again exits 0 and its output equals an
uninterrupted run's (both through the same CLI, in this process).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from invoice_vlm.cli import app
from invoice_vlm.common import InvoiceVLMError

runner = CliRunner()

# FAULT_AT=module:attr[.attr]: the FAULT_CALL-th call (default 1) whose arguments' repr holds FAULT_ARG (if set)
# writes FAULT_MARKER and sleeps, before the real call: the parent then kills the process.
LAUNCH = r"""
import importlib, os, sys, time
if os.environ.get("FAULT_AT"):
    mod, _, path = os.environ["FAULT_AT"].partition(":")
    *owner_path, attr = path.split(".")
    owner = importlib.import_module(mod)
    for name in owner_path:
        owner = getattr(owner, name)
    real, calls = getattr(owner, attr), [0]
    def paused(*a, **k):
        if os.environ.get("FAULT_ARG", "") in repr((a, k)):
            calls[0] += 1
            if calls[0] == int(os.environ.get("FAULT_CALL", "1")):
                open(os.environ["FAULT_MARKER"], "w").close()
                time.sleep(600)
        return real(*a, **k)
    setattr(owner, attr, paused)
from invoice_vlm.cli import main
sys.argv[0] = "invoice-vlm"
main()
"""


def _env(**extra) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", **extra}


def kill_midway(args: list, tmp_path: Path, at: str, call: int = 1, arg: str = "", timeout: float = 600) -> None:
    """Start the command, wait until it reaches the fault point, SIGKILL it."""
    marker = tmp_path / f"paused-{time.monotonic_ns()}"
    log = open(tmp_path / "killed.log", "w")
    p = subprocess.Popen([sys.executable, "-c", LAUNCH, *map(str, args)], stdout=log, stderr=subprocess.STDOUT,
                         env=_env(FAULT_AT=at, FAULT_CALL=str(call), FAULT_ARG=arg, FAULT_MARKER=str(marker)))
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            if p.poll() is not None:
                pytest.fail(f"exited {p.returncode} before reaching {at}:\n{(tmp_path / 'killed.log').read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"did not reach {at} in {timeout} s")
            time.sleep(0.02)
        os.kill(p.pid, signal.SIGKILL)
        assert p.wait(30) == -signal.SIGKILL
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        log.close()


def run(args: list):
    """A command through the CLI in this process (a second process would only add seconds of imports)."""
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


run_again = uninterrupted = run


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def same_json(a: Path, b: Path, volatile: tuple[str, ...] = ("environment", "seconds", "pages_per_s")) -> None:
    x, y = (json.loads(p.read_text()) for p in (a, b))
    assert {k: v for k, v in x.items() if k not in volatile} == {k: v for k, v in y.items() if k not in volatile}


def staging_left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.glob(f".{folder.name}.*"))


def test_synth_killed_mid_shard(tmp_path):
    from invoice_vlm.data import read_split

    def args(out):
        return ["synth", "--out", out, "--n", 10, "--seed", 3, "--dpi", 30, "--split", "train=1", "--shard-size", 2,
                "--max-items", 3, "--workers", 1]

    out = tmp_path / "ds"
    # killed with invoice 4 (shard 00002's first) on disk and invoice 5 next
    kill_midway(args(out), tmp_path, "invoice_vlm.synth.generate:invoice_records", call=6)
    assert sorted(p.name for p in (out / "train").iterdir()) == [".00002.partial", "00000", "00001"]
    assert any((out / "train" / ".00002.partial").glob("*.png"))  # the kill did land mid-shard
    assert json.loads((out / "dataset.json").read_text())["complete"] is False
    with pytest.raises(InvoiceVLMError, match="incomplete"):
        read_split(out, "train")

    r = run_again(args(out))
    assert "wrote 10 invoices" in r.stdout
    uninterrupted(args(tmp_path / "ref"))
    got, want = files(out), files(tmp_path / "ref")
    assert sorted(got) == sorted(want)  # no .partial left
    assert all(got[k] == want[k] for k in want if k != "dataset.json")  # byte for byte: images and records
    same_json(out / "dataset.json", tmp_path / "ref" / "dataset.json")


@pytest.mark.parametrize("case", ["first dataset.json write", "--overwrite mid-delete"])
def test_synth_killed_before_any_shard(tmp_path, case):
    def args(out, seed=3, *more):
        return ["synth", "--out", out, "--n", 4, "--seed", seed, "--dpi", 30, "--split", "train=1", "--shard-size",
                2, "--max-items", 3, *more]

    out = tmp_path / "ds"
    if case == "first dataset.json write":  # only dataset.json.tmp is left: not a stranger's folder to refuse
        cmd = args(out)
        kill_midway(cmd, tmp_path, "os:replace", arg="dataset.json")
        assert sorted(p.name for p in out.iterdir()) == ["dataset.json.tmp"]
    else:  # killed while deleting the old dataset: its dataset.json goes last, so --overwrite still takes it
        run(args(out, 4))
        cmd = args(out, 3, "--overwrite")
        kill_midway(cmd, tmp_path, "os:unlink", arg="metadata.jsonl")
        assert json.loads((out / "dataset.json").read_text())["identity"]["seed"] == 4
        assert (out / "train" / "00000" / "metadata.jsonl").is_file()  # the first record file was next

    run_again(cmd)
    run(args(tmp_path / "ref"))
    got, want = files(out), files(tmp_path / "ref")
    assert sorted(got) == sorted(want)
    assert all(got[k] == want[k] for k in want if k != "dataset.json")
    same_json(out / "dataset.json", tmp_path / "ref" / "dataset.json")


def test_train_killed_mid_checkpoint_resumes_to_the_same_weights(tiny_model, text_dataset, tmp_path):
    import torch
    from safetensors.torch import load_file

    def args(name):
        return ["train", "--model", tiny_model, "--data", text_dataset, "--name", name, "--output-root",
                tmp_path / "runs", "--max-steps", 8, "--set", "sft.save_strategy=steps", "--set", "sft.save_steps=2",
                "--set", "sft.per_device_train_batch_size=2", "--set", "sft.learning_rate=3e-3", "--set",
                "sft.report_to=none", "--set", "sft.warmup_steps=0", "--set", "sft.lr_scheduler_type=constant"]

    run = tmp_path / "runs" / "cut"
    # killed while writing checkpoint-4: weights and optimizer written, RNG and trainer_state.json not yet
    kill_midway(args("cut"), tmp_path, "invoice_vlm.train.trainer:InvoiceTrainer._save_rng_state", call=2)
    assert (run / "checkpoint-2" / "trainer_state.json").is_file()
    assert (run / "checkpoint-4" / "model.safetensors").is_file()
    assert not (run / "checkpoint-4" / "trainer_state.json").exists()
    assert not (run / "model").exists() and not (run / "train_result.json").exists()
    at_2 = load_file(run / "checkpoint-2" / "model.safetensors")
    from invoice_vlm.hub import resolve_source

    assert resolve_source(str(run), False) == ("model", run / "checkpoint-2")  # export skips the cut one too

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed process ran (_env): float sums differ between thread counts
    try:
        run_again([*args("cut"), "--resume"])  # from checkpoint-2, the last whole one
        uninterrupted(args("straight"))
    finally:
        torch.set_num_threads(threads)
    assert json.loads((run / "train_result.json").read_text())["global_step"] == 8
    a = load_file(tmp_path / "runs" / "straight" / "model" / "model.safetensors")
    b = load_file(run / "model" / "model.safetensors")
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert any(not torch.equal(b[k], at_2[k]) for k in b)  # the resumed steps did train
    assert staging_left(run / "model") == []


def test_eval_killed_while_writing_leaves_no_result(reading_model, text_dataset, tmp_path):
    def args(out):
        return ["eval", "--model", reading_model, "--data", text_dataset, "--split", "test", "--out", out,
                "--max-new-tokens", 5]

    out = tmp_path / "eval"
    # killed with predictions.jsonl and bleu.json in the staging folder, ter.json next
    kill_midway(args(out), tmp_path, "invoice_vlm.evaluate:write_json", call=2)
    assert not out.exists()
    (stage,) = tmp_path.glob(".eval.partial-*")
    assert (stage / "bleu.json").is_file()  # the kill did land mid-write

    run_again(args(out))
    uninterrupted(args(tmp_path / "ref"))
    assert staging_left(out) == []  # the dead run's staging folder is cleared
    ref = tmp_path / "ref"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())
    for name in ("predictions.jsonl", "bleu.json", "ter.json"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    same_json(out / "metrics.json", ref / "metrics.json")


def test_export_killed_while_writing_keeps_the_previous_release(tiny_model, tmp_path):
    def args(out, *more):
        return ["export", "--model", tiny_model, "--out", out, "--name", "acme/tiny", *more]

    out = tmp_path / "release"
    uninterrupted(args(out, "--dtype", "fp32"))  # an earlier release in the same folder
    before = files(out)
    # killed with the weights and processor staged, the card and export.json next
    kill_midway(args(out), tmp_path, "invoice_vlm.hub:model_card")
    assert files(out) == before  # the earlier release, whole and untouched
    (stage,) = tmp_path.glob(".release.partial-*")
    assert (stage / "model.safetensors").is_file() and not (stage / "README.md").exists()

    run_again(args(out))
    uninterrupted(args(tmp_path / "ref"))
    got, want = files(out), files(tmp_path / "ref")
    assert sorted(got) == sorted(want) and got != before
    assert all(got[k] == want[k] for k in want if k != "export.json"), [k for k in want if got[k] != want[k]]
    same_json(out / "export.json", tmp_path / "ref" / "export.json")
    assert staging_left(out) == []


@pytest.mark.parametrize("case", ["mid-job", "first job.json write"])
def test_predict_out_killed_mid_job_resumes(reading_model, text_dataset, tmp_path, case):
    images = sorted(text_dataset.rglob("*.png"))  # 4 pages, one shard each

    def args(out):
        return ["predict", "--model", reading_model, "--max-new-tokens", 4, "--batch-size", 2, "--shard-size", 1,
                "--out", out, *images]

    out = tmp_path / "job"
    if case == "mid-job":
        # killed with shard 2 written under its temporary name, just before the rename that makes it count
        kill_midway(args(out), tmp_path, "os:replace", arg="shard-00002.jsonl")
        assert sorted(p.name for p in out.iterdir()) == [".shard-00002.jsonl.partial", "job.json",
                                                         "shard-00000.jsonl", "shard-00001.jsonl"]
        assert json.loads((out / "job.json").read_text())["complete"] is False
    else:  # only job.json.tmp is left: not a stranger's folder to refuse
        kill_midway(args(out), tmp_path, "os:replace", arg="job.json")
        assert sorted(p.name for p in out.iterdir()) == ["job.json.tmp"]

    r = run_again(args(out))
    assert f"({2 if case == 'mid-job' else 0} already done)" in r.stdout  # resumed, not redone
    uninterrupted(args(tmp_path / "ref"))
    got, want = files(out), files(tmp_path / "ref")
    assert sorted(got) == sorted(want)  # no .partial or .tmp left
    assert all(got[k] == want[k] for k in want if k != "job.json")
    same_json(out / "job.json", tmp_path / "ref" / "job.json")
