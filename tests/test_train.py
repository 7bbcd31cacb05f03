from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from invoice_vlm import train
from invoice_vlm.common import InvoiceVLMError
from invoice_vlm.data import Sample, open_image, read_split
from invoice_vlm.infer import Predictor
from invoice_vlm.models import load

from conftest import write_text_dataset

CONFIGS = Path(__file__).parent.parent / "configs"


def _cfg(tiny_model, data, tmp_path, name="t", **sft):
    settings = {"max_steps": 120, "learning_rate": 3e-3, "per_device_train_batch_size": 2, "logging_steps": 5,
                "report_to": "none", "warmup_steps": 0, "lr_scheduler_type": "constant", "save_strategy": "no",
                **sft}
    return train.TrainConfig(model=str(tiny_model), data=str(data), name=name,
                             output_root=str(tmp_path / "runs"), sft=settings)


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
    assert run["preflight"]["tokens"]["image"] == 16 and run["preflight"]["memory_estimate_gb"]["total"] > 0
    assert any("px input" in w for w in run["preflight"]["warnings"])  # 64 px pages: the resolution warning
    assert (run_dir / "trainer_state.json").is_file()

    # The collator and the inference engine agree: a model trained on two images reads them back.
    samples = read_split(text_dataset, "test")
    model, processor = load(run_dir / "model")
    predictions = Predictor(model, processor, max_new_tokens=12).predict([open_image(s.image) for s in samples])
    assert predictions == [s.text for s in samples]
    # ...and not from the language prior alone: different images, different outputs
    assert len(set(predictions)) == 2


def test_lora_trains_only_the_adapter_and_merges(tiny_model, text_dataset, tmp_path):
    cfg = _cfg(tiny_model, text_dataset, tmp_path, max_steps=4)
    cfg.method = "lora"
    run_dir = train.main(cfg)
    run = json.loads((run_dir / "run.json").read_text())
    params = run["parameters"]
    assert 0 < params["trainable"] < 0.2 * params["total"]
    assert "vision_trainable" not in params  # scope language_model: SigLIP's q/k/v are left alone
    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k and "language_model" in k for k in adapter)
    base = load_file(tiny_model / "model.safetensors")
    merged = load_file(run_dir / "model" / "model.safetensors")
    assert set(merged) == set(base)  # a plain model again, loadable without PEFT
    moved = {k for k in base if not torch.equal(base[k], merged[k])}
    assert moved and all("language_model" in k for k in moved)


def test_freezing_the_vision_tower_keeps_it(tiny_model, text_dataset, tmp_path):
    cfg = _cfg(tiny_model, text_dataset, tmp_path, max_steps=3)
    cfg.freeze = train.FreezeSettings(vision=True)
    run_dir = train.main(cfg)
    base = load_file(tiny_model / "model.safetensors")
    after = load_file(run_dir / "model" / "model.safetensors")
    vision = [k for k in base if "vision_tower" in k]
    assert vision and all(torch.equal(base[k], after[k]) for k in vision)
    assert any(not torch.equal(base[k], after[k]) for k in base if "language_model" in k)
    assert any(not torch.equal(base[k], after[k]) for k in base if "multi_modal_projector" in k)


def test_resume_ends_with_the_same_weights(tiny_model, text_dataset, tmp_path):
    """Interrupted after 4 of 6 steps (checkpoints every 2), then resumed: the weights of an uninterrupted run."""
    from transformers import TrainerCallback

    settings = dict(max_steps=6, save_strategy="steps", save_steps=2, logging_steps=1)
    straight = train.main(_cfg(tiny_model, text_dataset, tmp_path, "straight", **settings))

    class PowerCut(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 4:
                raise KeyboardInterrupt

    cfg = _cfg(tiny_model, text_dataset, tmp_path, "cut", **settings)
    with pytest.raises(KeyboardInterrupt):
        train.main(cfg, callbacks=[PowerCut()])
    assert not (cfg.run_dir / "model").exists() and (cfg.run_dir / "checkpoint-4").is_dir()
    cfg.resume = True
    resumed = train.main(cfg)
    assert json.loads((resumed / "train_result.json").read_text())["global_step"] == 6
    a = load_file(straight / "model" / "model.safetensors")
    b = load_file(resumed / "model" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert any(not torch.equal(a[k], load_file(cfg.run_dir / "checkpoint-4" / "model.safetensors")[k]) for k in a)


def test_resume_follows_the_new_checkpoint_interval(tiny_model, text_dataset, tmp_path):
    """transformers keeps the checkpoint's save interval on resume; ours follows the resumed run's config."""
    cfg = _cfg(tiny_model, text_dataset, tmp_path, "r", max_steps=2, save_strategy="steps", save_steps=2,
               save_total_limit=10)
    train.main(cfg)
    import shutil

    shutil.rmtree(cfg.run_dir / "model")
    cfg.resume = True
    cfg.sft.update(max_steps=5, save_steps=1)
    train.main(cfg)
    assert sorted(p.name for p in cfg.run_dir.glob("checkpoint-*")) == [f"checkpoint-{i}" for i in range(2, 6)]


def test_length_grouped_batches_resume_exactly(tiny_model, tmp_path):
    """train_sampling_strategy: group_by_length (pretrain.yaml) batches targets of similar length from the dataset's
    ``length`` column; a run cut at step 3 and resumed takes the same pages in the same order."""
    from transformers import TrainerCallback

    from invoice_vlm.train.trainer import InvoiceTrainer

    # more examples than one mega-batch (50 x batch size), so the order depends on the sampler's random draws
    texts = [f"{i:03d} " + "AB CD"[: i % 6] for i in range(120)]
    data = write_text_dataset(tmp_path / "data", {"train": texts})
    settings = dict(max_steps=6, save_strategy="steps", save_steps=1, logging_steps=1, per_device_train_batch_size=1,
                    train_sampling_strategy="group_by_length")
    seen: dict[str, list] = {"straight": [], "cut": []}

    orig = InvoiceTrainer.training_step

    def spy(self, model, inputs, *a, **k):
        seen[self.args.output_dir.split("/")[-1]].append(round(float(inputs["pixel_values"].sum()), 1))
        return orig(self, model, inputs, *a, **k)

    InvoiceTrainer.training_step = spy
    try:
        straight = train.main(_cfg(tiny_model, data, tmp_path, "straight", **settings))

        class PowerCut(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if state.global_step == 3:
                    raise KeyboardInterrupt

        cfg = _cfg(tiny_model, data, tmp_path, "cut", **settings)
        with pytest.raises(KeyboardInterrupt):
            train.main(cfg, callbacks=[PowerCut()])
        cfg.resume = True
        resumed = train.main(cfg)
    finally:
        InvoiceTrainer.training_step = orig
    # the same pages in the same order after the cut at step 3
    assert seen["cut"] == seen["straight"] and len(seen["straight"]) == 6
    a = load_file(straight / "model" / "model.safetensors")
    b = load_file(resumed / "model" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_evaluation_while_training_keeps_the_best_and_stops_early(tiny_model, text_dataset, tmp_path):
    # learning rate 0: the metric never improves after the first evaluation, so patience 1 stops at the second
    cfg = _cfg(tiny_model, text_dataset, tmp_path, max_steps=20, learning_rate=0.0)
    cfg.eval = train.EvalSettings(steps=2, split="test", metric="cer", early_stopping_patience=1, max_new_tokens=4)
    run_dir = train.main(cfg)
    result = json.loads((run_dir / "train_result.json").read_text())
    evals = [h for h in result["log_history"] if "eval_cer" in h]
    assert [h["step"] for h in evals] == [2, 4]
    assert {"eval_bleu", "eval_ter", "eval_cer", "eval_wer", "eval_chrf", "eval_distinct"} <= evals[0].keys()
    # the image check: loss with each page's own image vs another page's (learning rate 0: the untrained model)
    e = evals[0]
    assert e["eval_image_gap"] == pytest.approx(e["eval_loss_other_image"] - e["eval_loss_right_image"])
    assert e["eval_loss_right_image"] > 0 and e["eval_loss_right_image"] != e["eval_loss_other_image"]
    assert result["global_step"] == 4 and result["best_checkpoint"].endswith("checkpoint-2")
    assert result["best_metric"] == evals[0]["eval_cer"]


def test_evaluation_without_keep_best_checkpoints_on_its_own_schedule(tiny_model, text_dataset, tmp_path):
    """Pretraining evaluates rarely and checkpoints often: with keep_best off, save_steps is kept as set."""
    cfg = _cfg(tiny_model, text_dataset, tmp_path, max_steps=4, save_strategy="steps", save_steps=1,
               save_total_limit=10)
    cfg.eval = train.EvalSettings(steps=4, split="test", metric="cer", max_new_tokens=4, keep_best=False)
    run_dir = train.main(cfg)
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == [f"checkpoint-{i}" for i in range(1, 5)]
    result = json.loads((run_dir / "train_result.json").read_text())
    assert [h["step"] for h in result["log_history"] if "eval_cer" in h] == [4]


def _sample(i, **kw) -> Sample:
    base = dict(id=f"p{i}", image=Path("x.png"), text=f"page {i}", fields={"invoice_number": f"N{i}", "total": "€ 1"},
                qa=[{"question": "What is the total?", "answer": "€ 1"}], meta={"pages": 1})
    return Sample(**{**base, **kw})


def test_tasks_are_mixed_by_ratio_and_deterministic():
    samples = [_sample(i) for i in range(600)]
    ex = train.build_examples(samples, {"ocr": 0.5, "extract": 0.3, "answer": 0.2}, seed=1)
    counts = {t: sum(e.task == t for e in ex) for t in ("ocr", "extract", "answer")}
    assert abs(counts["ocr"] - 300) < 45 and abs(counts["extract"] - 180) < 40 and abs(counts["answer"] - 120) < 35
    assert [e.target for e in ex] == [e.target for e in train.build_examples(samples, {"ocr": 0.5, "extract": 0.3,
                                                                                        "answer": 0.2}, seed=1)]
    e = next(e for e in ex if e.task == "answer")
    assert e.prompt == "answer en What is the total?" and e.target == "€ 1"
    e = next(e for e in ex if e.task == "extract")
    assert e.prompt == "extract" and json.loads(e.target)["invoice_number"] == e.id.replace("p", "N")
    # a page of a two-page invoice never gets the extraction task: its fields describe both pages
    two = train.build_examples([_sample(i, meta={"pages": 2}) for i in range(50)], {"extract": 1.0}, seed=0)
    assert {e.task for e in two} == {"ocr"}


def test_repeat_draws_each_pass_afresh():
    samples = [_sample(i) for i in range(200)]
    once = train.build_examples(samples, {"ocr": 0.5, "extract": 0.5}, seed=3)
    twice = train.build_examples(samples, {"ocr": 0.5, "extract": 0.5}, seed=3, repeat=2)
    assert len(twice) == 400 and [e.target for e in twice[:200]] == [e.target for e in once]
    assert [e.task for e in twice[200:]] != [e.task for e in once]  # the second pass is not a copy


@pytest.mark.slow
def test_idefics3_trains_through_its_chat_template(text_dataset, tmp_path, corpus):
    """Another family, the same command: a tiny Idefics3 learns through its chat template."""
    from invoice_vlm.models import TinyIdefics3Config, create_tiny_idefics3

    base = create_tiny_idefics3(tmp_path / "idefics3", TinyIdefics3Config(crop_size=32, longest_edge=64, hidden=64,
                                                                          bpe_vocab=600), corpus)
    cfg = train.load_config(str(CONFIGS / "tiny-idefics3" / "full.yaml"), sets=[
        f"model={base}", f"data={text_dataset}", "name=idefics3", f"output_root={tmp_path / 'runs'}",
        "sft.max_steps=150", "sft.learning_rate=3e-3", "sft.per_device_train_batch_size=2", "sft.report_to=none",
        "sft.logging_steps=5", "sft.warmup_steps=0", "sft.save_strategy=no"])
    run_dir = train.main(cfg)
    losses = [h["loss"] for h in json.loads((run_dir / "train_result.json").read_text())["log_history"]
              if "loss" in h]
    assert losses[-1] < 0.3 * losses[0]
    model, processor = load(run_dir / "model")
    assert type(model).__name__ == "Idefics3ForConditionalGeneration"
    samples = read_split(text_dataset, "test")
    preds = Predictor(model, processor, max_new_tokens=12).predict([open_image(s.image) for s in samples])
    assert preds == [s.text for s in samples]


def test_preflight_stops_when_targets_exceed_the_budget(tiny_model, text_dataset, tmp_path):
    cfg = _cfg(tiny_model, text_dataset, tmp_path)
    cfg.max_length = 10
    with pytest.raises(InvoiceVLMError, match=r"needs \d+ tokens \(16 image"):
        train.main(cfg)
    assert not (tmp_path / "runs" / "t" / "model").exists()


def test_qlora_without_cuda_is_one_line(tiny_model, text_dataset, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: QLoRA would run")
    cfg = train.load_config(str(CONFIGS / "tiny" / "qlora.yaml"), sets=[
        f"model={tiny_model}", f"data={text_dataset}", f"output_root={tmp_path}"])
    with pytest.raises(InvoiceVLMError, match="QLoRA needs a CUDA GPU"):
        train.main(cfg)


def test_resume_without_checkpoint(tiny_model, text_dataset, tmp_path):
    cfg = _cfg(tiny_model, text_dataset, tmp_path)
    cfg.resume = True
    with pytest.raises(InvoiceVLMError, match="no checkpoint-\\* folder to resume from"):
        train.main(cfg)


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    cases = [("model: tiny-random\nlearning_rat: 3\n", r"bad.yaml: unknown key 'learning_rat'"),
             ("sft:\n  max_stepz: 3\n", r"sft.max_stepz is not a TRL SFTConfig setting"),
             ("seed: many\n", r"seed: expected an integer"),
             ("method: dora\n", r"method must be one of full, lora, qlora"),
             ("tasks: {ocr: 1, translate: 1}\n", r"unknown task 'translate'"),
             ("lora: {rank: 8}\n", r"lora: unknown key 'rank'"),
             ("eval: {metric: accuracy}\n", r"eval.metric must be one of"),
             ("sft: {max_length: 5}\n", r"sft.max_length is set by invoice-vlm")]
    for text, message in cases:
        bad.write_text(text)
        with pytest.raises(InvoiceVLMError, match=message):
            train.load_config(str(bad))


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configs_load(path):
    if path.parent.name == "accelerate":
        import yaml

        cfg = yaml.safe_load(path.read_text())
        assert cfg["distributed_type"] in ("MULTI_GPU", "FSDP", "DEEPSPEED") and cfg["num_processes"] >= 1
        return
    if path.name == "pretrain.yaml":  # the embedded row reader's pretraining: `invoice-vlm pretrain`
        from invoice_vlm.train import pretrain

        cfg = pretrain.load_config(str(path))
        assert cfg.ctc_weight > 0 and cfg.stages[-1]["until"] == 0 and path.read_text().startswith("#")
        return
    cfg = train.load_config(str(path), sets=["data=x"])
    assert cfg.sft and path.read_text().startswith("#")  # each opens with what it is and how to run it
    if path.parent.name.startswith("paligemma2"):
        res = path.parent.name.rsplit("-", 1)[1]
        assert cfg.model == f"google/paligemma2-3b-pt-{res}" and cfg.sft["bf16"] is True
        assert 1e-5 <= cfg.sft["learning_rate"] <= 2e-4 and cfg.sft["max_grad_norm"] == 1.0


@pytest.mark.parametrize("name", ["tiny/full.yaml", "tiny/lora.yaml", "tiny/freeze-vision.yaml"])
def test_tiny_configs_run_a_step(name, tiny_model, text_dataset, tmp_path):
    cfg = train.load_config(str(CONFIGS / name), sets=[
        f"model={tiny_model}", f"data={text_dataset}", f"output_root={tmp_path}", "name=step",
        "sft.max_steps=1", "sft.per_device_train_batch_size=2", "sft.report_to=none"])
    run_dir = train.main(cfg)
    assert json.loads((run_dir / "train_result.json").read_text())["global_step"] == 1
    assert (run_dir / "model" / "model.safetensors").is_file()


def test_accelerate_launch_runs_ddp_on_two_cpu_processes(tiny_model, text_dataset, tmp_path):
    """The same command under `accelerate launch` (2 processes, gloo): both ranks end with the same weights."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
           str(CONFIGS / "accelerate" / "ddp.yaml"), "--num_processes", "2", "-m", "invoice_vlm", "train",
           "--config", str(CONFIGS / "tiny" / "full.yaml"), "--model", str(tiny_model), "--data", str(text_dataset),
           "--name", "ddp", "--output-root", str(tmp_path), "--max-steps", "3",
           "--set", "sft.per_device_train_batch_size=1", "--set", "sft.report_to=none"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / "ddp" / "ranks" / f"{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["sha256"] == ranks[1]["sha256"] and ranks[0]["global_step"] == 3
    state = json.loads((tmp_path / "ddp" / "trainer_state.json").read_text())
    # 2 processes x 1 page per step: 3 steps see 6 pages, i.e. 3 epochs of the 2-page dataset
    assert state["global_step"] == 3 and state["epoch"] == pytest.approx(3.0)


class _Clock:
    """Half a second per reading: the time budget sees a steady 0.5 s/step (one reading per step)."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 0.5
        return self.t


def test_time_budget_shortens_the_run_and_its_schedule(tiny_model, text_dataset, tmp_path):
    cfg = _cfg(tiny_model, text_dataset, tmp_path, max_steps=1000, lr_scheduler_type="cosine", warmup_steps=0.1,
               logging_steps=1)
    budget = train.TimeBudget(30, cfg.run_dir, calibrate=20, clock=_Clock())
    run_dir = train.main(cfg, callbacks=[budget])
    plan = json.loads((run_dir / "time_budget.json").read_text())["plans"]
    result = json.loads((run_dir / "train_result.json").read_text())
    assert [p["at_step"] for p in plan] == [20, (20 + plan[0]["max_steps"]) // 2]
    assert plan[0]["seconds_per_step"] == pytest.approx(0.5, rel=0.1)
    assert 40 < plan[-1]["max_steps"] < 80  # 20 steps + what is left of 30 s at 0.5 s/step, not 1000
    assert result["global_step"] == plan[-1]["max_steps"]
    lrs = [h["learning_rate"] for h in result["log_history"] if "learning_rate" in h]
    assert max(lrs) > 0.5 * 3e-3  # the warmup (10% of the new plan, not of 1000 steps) is over by the replan
    assert lrs[-1] < 0.01 * max(lrs)  # and the cosine still ends at zero


def test_time_budget_stops_and_saves_when_time_runs_out(tiny_model, text_dataset, tmp_path):
    cfg = _cfg(tiny_model, text_dataset, tmp_path, max_steps=1000, save_strategy="steps", save_steps=500)
    run_dir = train.main(cfg, callbacks=[train.TimeBudget(10, cfg.run_dir, calibrate=500, clock=_Clock())])
    plan = json.loads((run_dir / "time_budget.json").read_text())["plans"]
    assert plan == [{"stopped_at": 21, "elapsed_s": 10.5}]
    assert (run_dir / "checkpoint-21").is_dir() and (run_dir / "model").is_dir()


def test_raw_pixel_training_is_the_same_training(tiny_model, text_dataset, tmp_path):
    """uint8 batches normalised on the device by the trainer: the same losses and weights as float batches."""
    settings = dict(max_steps=3, logging_steps=1)
    runs = {}
    for raw in (True, False):
        cfg = _cfg(tiny_model, text_dataset, tmp_path, f"raw-{raw}", **settings)
        cfg.raw_pixels = raw
        runs[raw] = train.main(cfg)
    # a wrong normalisation moves the vision tower by the learning rate (3e-3 a step)
    _assert_same_training(runs[True], runs[False])


def _assert_same_training(run_a: Path, run_b: Path, steps: int = 3) -> None:
    """Two runs of ``steps`` logged steps: the same losses and the same final weights."""
    losses = [[h["loss"] for h in json.loads((d / "trainer_state.json").read_text())["log_history"] if "loss" in h]
              for d in (run_a, run_b)]
    assert len(losses[0]) == steps
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)
    a, b = (load_file(d / "model" / "model.safetensors") for d in (run_a, run_b))
    # Adam turns float-rounding differences of near-zero gradients into updates of ~1e-4
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 5e-4


def test_logits_only_where_labelled_is_the_same_training(tiny_model, text_dataset, tmp_path, monkeypatch):
    """The loss from logits cut to the labelled positions: the same losses and weights as from every position's
    logits, with the vocabulary projection run on fewer positions than the sequence has."""
    from transformers import TrainerCallback

    from invoice_vlm.train.trainer import InvoiceTrainer

    class Positions(TrainerCallback):  # what the vocabulary projection sees, against the batch's length
        def __init__(self):
            self.seen: list[tuple[int, int]] = []

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            head = model.get_output_embeddings()
            model.register_forward_pre_hook(lambda m, a, kw: self.seen.append((kw["input_ids"].shape[1], 0)),
                                            with_kwargs=True)
            head.register_forward_hook(lambda m, a, out: self.seen.append((0, out.shape[1])))

    runs, seen = {}, {}
    for cut in (True, False):
        monkeypatch.setattr(InvoiceTrainer, "logits_where_labelled", cut)
        spy = Positions()
        runs[cut] = train.main(_cfg(tiny_model, text_dataset, tmp_path, f"cut-{cut}", max_steps=3, logging_steps=1),
                               callbacks=[spy])
        seq = [s for s, _ in spy.seen if s]
        head = [h for _, h in spy.seen if h]
        seen[cut] = list(zip(seq, head))
    assert len(seen[True]) == 3
    assert all(h < s for s, h in seen[True]), seen[True]   # cut: fewer positions than the sequence
    assert all(h == s for s, h in seen[False]), seen[False]  # uncut: every position
    _assert_same_training(runs[True], runs[False])


def test_fine_tuning_trains_the_ctc_head_and_saves_it_with_the_model(row_model_ctc, row_pages, tmp_path):
    """The head's loss joins the decoder's (logged as ctc_loss), it moves, and the model folder carries it, as
    does every checkpoint; with ctc_weight 0 the model is saved without one."""
    from safetensors.torch import load_file

    from invoice_vlm.common import build_config
    from invoice_vlm.models import CTC_HEAD_FILE
    from invoice_vlm.train import main as train_main
    from invoice_vlm.train.config import TrainConfig

    def run(name, *sets):
        cfg = build_config(TrainConfig, "configs/tiny/full.yaml", sets=[
            f"model={row_model_ctc}", f"data={row_pages}", f"name={name}", f"output_root={tmp_path}",
            "sft.max_steps=2", "sft.per_device_train_batch_size=4", "sft.logging_steps=1", "sft.save_steps=2",
            "sft.report_to=none", *sets])
        return train_main(cfg)

    before = load_file(str(row_model_ctc / CTC_HEAD_FILE))
    out = run("ctc")
    after = load_file(str(out / "model" / CTC_HEAD_FILE))
    assert before.keys() == after.keys() and not torch.equal(before["weight"], after["weight"])
    assert torch.equal(load_file(str(out / "checkpoint-2" / CTC_HEAD_FILE))["weight"], after["weight"])
    logs = json.loads((out / "train_result.json").read_text())["log_history"]
    assert any(e.get("ctc_loss", 0) > 0 for e in logs)
    plain = run("plain", "ctc_weight=0")
    assert (plain / "model" / "model.safetensors").is_file() and not (plain / "model" / CTC_HEAD_FILE).exists()


def test_row_examples_pair_each_box_with_its_line(row_pages):
    from invoice_vlm.train.tasks import row_examples

    samples = read_split(row_pages, "train")[:2]
    examples, skipped = row_examples(samples)
    assert not skipped
    lines = {t for s in samples for t in s.text.split("\n") if t.strip()}
    assert {e.target for e in examples} <= lines and len(examples) >= 0.95 * len(lines)
    assert all(e.box and e.task == "row" for e in examples)


def test_a_scans_row_examples_are_cropped_as_the_engine_crops_its_rows(tmp_path):
    """Training crops must look like inference crops: a scanned page's row examples (no row extents: cut by the
    segmenter) are cropped by the collator from the page as ``rows.page_rows`` prepares it (dust off, a small scan
    enlarged twice, deskewed), pixel for pixel."""
    import random

    import numpy as np
    from PIL import Image, ImageDraw

    from invoice_vlm.common import ReadingUnit
    from invoice_vlm.rows import page_rows
    from invoice_vlm.synth import get_font
    from invoice_vlm.train.collate import Collator
    from invoice_vlm.synth.augment import augment
    from invoice_vlm.train.tasks import row_examples

    lines = ["Invoice number 2024-118", "Total 12.50 EUR"]
    page = Image.new("RGB", (827, 300), "white")
    draw = ImageDraw.Draw(page)
    for k, line in enumerate(lines):
        draw.text((60, 40 + 40 * k), line, font=get_font("DejaVuSans", False, 14), fill="black")
    scanned, quality = augment(page, "scan", random.Random(3))
    path = tmp_path / "scan.jpg"
    scanned.save(path, quality=quality)
    sample = Sample(id="scan", image=path, text="\n".join(lines), meta={"augment": "scan"})
    examples, skipped = row_examples([sample])
    assert not skipped and [e.target for e in examples] == lines
    unit = ReadingUnit()

    class Kind:  # the collator's model kind, keeping the crops it is given
        def __init__(self):
            self.unit = unit

        def training_batch(self, processor, images, prompts, targets, raw_pixels=False):
            return images

    with Image.open(path) as im:
        engine = page_rows(im, unit)
        cut = Collator(None, kind=Kind())([{"image": im, "box": list(e.box), "angle": e.angle, "prompt": e.prompt,
                                            "target": e.target} for e in examples])
    assert len(cut) == len(engine) == 2 and all(np.array_equal(a, b) for a, b in zip(cut, engine))
