"""Pretraining the row reader (invoice_vlm.train.pretrain): exact resume, the CTC head's warm-up."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.slow
def test_pretraining_resumes_exactly(row_pages, pdf_bank, tmp_path):
    from safetensors.torch import load_file

    from invoice_vlm.train import pretrain

    sets = [f"data=[{row_pages}]", "split=train", "eval_split=test", f"output_dir={tmp_path}", "batch_size=4",
            "save_steps=2", "log_steps=2", "eval_steps=0", "threads=1", "workers=1", "max_steps=4",
            f"pdf_banks=[{pdf_bank}]", "font_packages=[fonts-dejavu-core]", "ctc_head_warmup=0",
            "stages=[{until: 2, strings: 1.0}, {until: 0, strings: 0.5, real: 0.5}]", "model.height=16", "model.max_width=256",
            "model.stem=8", "model.widths=[16, 32]", "model.depths=[1, 1]", "model.text_hidden=64",
            "model.text_layers=2", "model.text_heads=2", "model.text_intermediate=128"]
    whole = pretrain.main(pretrain.load_config("configs/tiny/pretrain.yaml", sets + ["name=whole"]), progress=False)
    half = pretrain.main(pretrain.load_config("configs/tiny/pretrain.yaml", sets + ["name=half", "max_steps=4",
                                                                                  "time_budget=1e-9"]),
                         progress=False)
    assert [p.name for p in pretrain.checkpoints(half)] == ["checkpoint-1"]  # the budget stopped it at once
    half = pretrain.main(pretrain.load_config("configs/tiny/pretrain.yaml", sets + ["name=half"]), resume=True,
                         progress=False)
    for name in ("model.safetensors", "optimizer.safetensors", "ctc_head.safetensors"):
        a, b = load_file(whole / "checkpoint-4" / name), load_file(half / "checkpoint-4" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert (whole / "model" / "config.json").is_file() and (whole / "model" / "ctc_head.safetensors").is_file()
    with pytest.raises(Exception, match="--resume"):
        pretrain.main(pretrain.load_config("configs/tiny/pretrain.yaml", sets + ["name=half"]), progress=False)
    # a later phase starts from a shipped model's weights with a schedule of its own
    more = pretrain.main(pretrain.load_config("configs/tiny/pretrain.yaml", sets + [
        "name=more", f"init={whole / 'model'}", "max_steps=1", "time_budget=1e-9"]), progress=False)
    start, ended = load_file(whole / "model" / "model.safetensors"), load_file(more / "checkpoint-1" / "model.safetensors")
    assert start.keys() == ended.keys() and any(not torch.equal(start[k], ended[k]) for k in start)
    weights = [k for k in start if start[k].is_floating_point() and "running_" not in k]  # not BatchNorm's stats
    assert max((start[k] - ended[k]).abs().max().item() for k in weights) < 0.05  # one small step from it


@pytest.mark.slow
def test_ctc_head_warmup_trains_the_head_alone_first(row_pages, tmp_path):
    """With ``ctc_head_warmup``, the first steps move the fresh CTC head and nothing of the init model; the steps
    after move the model too."""
    from safetensors.torch import load_file

    from invoice_vlm.train import pretrain

    sets = [f"data=[{row_pages}]", "split=train", "eval_split=test", f"output_dir={tmp_path}", "batch_size=4",
            "save_steps=1", "save_total_limit=5", "log_steps=1", "eval_steps=0", "threads=1", "workers=1",
            "max_steps=3", "ctc_head_warmup=2", "pdf_banks=[]", "font_packages=[]",
            "stages=[{until: 0, strings: 0.5}]", "name=warm"]
    run = pretrain.main(pretrain.load_config("configs/tiny/pretrain.yaml", sets), progress=False)
    start = load_file("models/invoice-vlm-tiny/model.safetensors")
    steps = {k: load_file(run / f"checkpoint-{k}" / "model.safetensors") for k in (1, 2, 3)}
    heads = {k: load_file(run / f"checkpoint-{k}" / "ctc_head.safetensors") for k in (1, 2)}
    for k in (1, 2):
        assert all(torch.equal(steps[k][n], start[n].float()) for n in start), f"step {k} moved the model"
    assert any(not torch.equal(heads[1][n], heads[2][n]) for n in heads[1])  # the head learns meanwhile
    assert any(not torch.equal(steps[3][n], start[n].float()) for n in start if start[n].is_floating_point())
    with pytest.raises(Exception, match="ctc_head_warmup needs ctc_weight"):
        pretrain.load_config("configs/tiny/pretrain.yaml", sets + ["ctc_weight=0"])
