"""The training run: data -> examples -> model (+ method) -> preflight -> TRL SFTTrainer -> saved model.

Run as::

    invoice-vlm train --config configs/tiny/full.yaml --data data/synth --set sft.max_steps=100

A run writes ``runs/<name>/``: ``run.json`` (resolved config, preflight figures, library versions, seed) before
the first step; checkpoints (``checkpoint-N/`` with ``trainer_state.json``) and TensorBoard logs while training;
``model/`` (weights + processor, loadable with ``from_pretrained``; the best checkpoint's weights when evaluation
picks one) and ``train_result.json`` at the end. ``model/`` appears only once complete.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import shutil
import time
from pathlib import Path

import torch
from transformers import TrainerCallback
from trl import SFTTrainer

from ..common import InvoiceVLMError, complete_checkpoints, environment_info, staged_dir, write_json
from . import methods, preflight
from .collate import Collator
from .config import METRICS, TrainConfig
from .tasks import build_examples, row_examples, to_dataset


class InvoiceTrainer(SFTTrainer):
    """SFTTrainer with the plain loss and evaluation by generation.

    ``compute_loss``: the model's own cross-entropy, from the logits of the labelled positions only. TRL's adds
    token-accuracy and entropy metrics through a fused, chunked log-prob pass that, off Triton, scores every
    position (image tokens included) a second time: a third of a CPU step for the tiny PaliGemma (``invoice-vlm
    bench train`` measures both, and the loss from every position's logits).
    ``evaluate``: greedy generation on the whole evaluation split, scored with BLEU, TER, CER, WER and chrF, so
    the best checkpoint and early stopping follow the metric people care about, not the loss.
    """

    def __init__(self, *args, generation_eval=None, ctc_head=None, ctc_weight: float = 1.0, **kwargs):
        # the row reader's CTC head (models.CtcHead) trains beside the model: its loss joins the decoder's, its
        # parameters join the optimizer, and it is saved next to every checkpoint and the final model
        self.ctc_head, self.ctc_weight = ctc_head, ctc_weight
        self._ctc_losses: list[float] = []
        super().__init__(*args, **kwargs)
        self.generation_eval = generation_eval
        from ..models import kind_of

        unwrapped = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self.kind = kind_of(self.processing_class, getattr(unwrapped, "config", None))

    def create_optimizer(self, *args, **kwargs):
        opt = super().create_optimizer(*args, **kwargs)
        if self.ctc_head is not None and not any(p is q for g in opt.param_groups for p in g["params"]
                                                 for q in self.ctc_head.parameters()):
            opt.add_param_group({"params": list(self.ctc_head.parameters()), "weight_decay": self.args.weight_decay})
        return opt

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict)
        if self.ctc_head is not None:
            self.ctc_head.save(output_dir or self.args.output_dir)

    def _init_training_state(self, max_steps, *args, **kwargs):
        out = super()._init_training_state(max_steps, *args, **kwargs)
        # transformers restores logging/eval/save intervals from the checkpoint on resume (only warning that they
        # differ); the run's own config wins, so a resumed pretraining can checkpoint more often than it did
        self.state.compute_steps(self.args, max_steps)
        return out

    def _prepare_inputs(self, inputs):
        inputs = super()._prepare_inputs(inputs)
        pixels = inputs.get("pixel_values")
        if pixels is not None and pixels.dtype == torch.uint8:  # a raw-pixel collator's batch: normalise here
            from ..models import normalize_pixels

            inputs["pixel_values"] = normalize_pixels(pixels, self.processing_class.image_processor)
        return inputs

    # Logits only from the first labelled position on: the image tokens and the prompt carry no loss, yet the
    # model's own loss path projects every position onto the vocabulary (a tenth of a tiny PaliGemma's CPU step on
    # short targets). The same loss: the model shifts the cut labels against the cut logits exactly as the whole ones.
    logits_where_labelled = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from transformers import Trainer

        ctc = None
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base = self.accelerator.unwrap_model(base)
        # the model's kind turns the collated batch into its forward's inputs (the row reader: rows read as at
        # inference, models.RowKind.model_inputs) and gives the image tokens a CTC head reads
        tokens, model_in = self.kind.model_inputs(base, inputs)
        if tokens is not None and self.ctc_head is not None and self.ctc_weight:
            self.ctc_head.to(tokens.device)
            ctc = self.ctc_head.loss(tokens, inputs["image_columns"].to(tokens.device),
                                     inputs["ctc_targets"].to(tokens.device), inputs["ctc_lengths"].to(tokens.device))
        inputs = model_in
        labels = inputs.get("labels")
        if (self.logits_where_labelled and labels is not None and self.label_smoother is None
                and self.compute_loss_func is None and _accepts_logits_to_keep(model)):
            cols = (labels != -100).any(0).nonzero()
            if len(cols) and int(cols[0]) > 0:
                keep = labels.shape[1] - int(cols[0]) + 1  # one position before the first label predicts it
                inputs = {**inputs, "labels": labels[:, -keep:], "logits_to_keep": keep}
        out = Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                   num_items_in_batch=num_items_in_batch)
        if ctc is None:
            return out
        self._ctc_losses.append(float(ctc.detach()))
        if return_outputs:
            return out[0] + self.ctc_weight * ctc, out[1]
        return out + self.ctc_weight * ctc

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self._ctc_losses and "loss" in logs:  # the CTC head's share of the training loss since the last log
            logs = {**logs, "ctc_loss": round(sum(self._ctc_losses) / len(self._ctc_losses), 4)}
            self._ctc_losses = []
        super().log(logs, *args, **kwargs)

    # Checkpoints are written with save_pretrained, which in transformers 5 renames PaliGemma's keys to the hub
    # layout (language_model.model.*); Trainer's resume and load-best read the file raw with strict=False and so
    # load nothing, silently. Read full-model checkpoints back the way they were written. (PEFT adapters,
    # DeepSpeed and FSDP checkpoints take Trainer's own path.)
    def _load_weights(self, folder: str) -> bool:
        from peft import PeftModel

        model = self.accelerator.unwrap_model(self.model)
        if isinstance(model, PeftModel) or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return False
        loaded = type(model).from_pretrained(folder, dtype=next(model.parameters()).dtype, use_safetensors=True)
        model.load_state_dict(loaded.state_dict(), strict=True)
        return True

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        self._load_head(resume_from_checkpoint)
        if (model is None or model is self.model) and self._load_weights(resume_from_checkpoint):
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        self._load_head(self.state.best_model_checkpoint)
        if not self._load_weights(self.state.best_model_checkpoint):
            super()._load_best_model()

    def _load_head(self, folder: str) -> None:
        from ..models import CTC_HEAD_FILE, CtcHead

        if self.ctc_head is None:
            return
        saved = CtcHead.load(folder, self.accelerator.unwrap_model(self.model))
        if saved is None:
            raise InvoiceVLMError(f"{folder}: no {CTC_HEAD_FILE} in this checkpoint of a run that trains one")
        with torch.no_grad():
            for p, q in zip(self.ctc_head.parameters(), saved.parameters()):
                p.copy_(q)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        if self.generation_eval is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        scores = self.generation_eval(self.model, self.processing_class, self.ctc_head)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in scores.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def _accepts_logits_to_keep(model) -> bool:
    """Whether the model under any wrappers (DDP, PEFT) takes ``logits_to_keep`` and cuts its labels' logits."""
    import inspect

    while hasattr(model, "module"):
        model = model.module
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


class GenerationEval:
    """Transcribes the evaluation pages and scores them against their targets."""

    def __init__(self, samples, prompt: str, max_new_tokens: int, batch_size: int):
        self.samples, self.prompt = samples, prompt
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size

    def __call__(self, model, processor, ctc_head=None) -> dict[str, float]:
        from ..data import open_image
        from ..evaluate import score_all
        from ..infer import Predictor

        predictor = Predictor(model, processor, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                              ctc_head=ctc_head)
        images = [open_image(s.image) for s in self.samples]
        preds = predictor.predict(images, self.prompt)
        scores = score_all(preds, [s.text for s in self.samples])
        return {"bleu": scores["bleu"]["bleu"], "ter": scores["ter"]["score"], "cer": scores["cer"],
                "wer": scores["wer"], "chrf": scores["chrf"], "exact_match": scores["exact_match"],
                "distinct": len(set(preds)) / len(preds),
                # a page-model diagnostic; a row model's pages are many inputs (its CER shows whether it reads)
                **(image_gap(model, processor, images[:8], [s.text for s in self.samples[:8]], self.prompt)
                   if predictor.unit is None else {})}


@torch.no_grad()
def image_gap(model, processor, images: list, targets: list[str], prompt: str) -> dict[str, float]:
    """Does the model read the image? The loss of the targets with their own images and with the images rolled by
    one (each target beside another page). A decoder trained from scratch can learn the language of invoices and
    ignore the image; then the two losses are equal (``image_gap`` 0) and every page gets the same text."""
    from ..models import training_batch

    if len(images) < 2:
        return {}
    was_training = model.training
    model.eval()
    try:
        batch = {k: v.to(model.device) for k, v in training_batch(processor, images, [prompt] * len(images),
                                                                   targets).items()}
        right = model(**batch).loss.item()
        rolled = training_batch(processor, images[1:] + images[:1], [prompt] * len(images), targets)
        batch["pixel_values"] = rolled["pixel_values"].to(model.device, batch["pixel_values"].dtype)
        wrong = model(**batch).loss.item()
    finally:
        if was_training:
            model.train()
    return {"loss_right_image": right, "loss_other_image": wrong, "image_gap": wrong - right}


class RankChecksum(TrainerCallback):
    """After a distributed run, each rank writes a checksum of its weights: DDP ranks must agree."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if args.world_size <= 1 or model is None:
            return
        h = hashlib.sha256()
        for name, p in sorted(model.named_parameters()):
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
        folder = self.run_dir / "ranks"
        folder.mkdir(exist_ok=True)
        write_json(folder / f"{args.process_index}.json", {"rank": args.process_index, "sha256": h.hexdigest(),
                                                          "global_step": state.global_step})


class TimeBudget(TrainerCallback):
    """Fit the run into ``seconds`` of wall-clock time: measure the speed, then shorten ``max_steps`` (and the
    learning-rate schedule with it, so the cosine still ends at zero) to what the time allows.

    One config then serves a 2-core CPU and a GPU: the same recipe, each machine doing as many steps as its budget
    holds. The plan is made after ``calibrate`` steps (timed from step 10: the first steps pay for dataloader
    start-up and kernel warm-up), and again halfway, when the evaluations so far are in the measured rate. Past the
    budget the run stops and saves. The plan is written to ``time_budget.json`` in the run folder.
    """

    def __init__(self, seconds: float, run_dir: Path, calibrate: int = 40, clock=time.monotonic):
        self.seconds, self.run_dir, self.calibrate, self.clock = seconds, run_dir, calibrate, clock
        self.plans: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.t0 = self.clock()
        self.first = state.global_step
        self.mark = None
        self.replan_at = self.first + self.calibrate

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        now = self.clock()
        done = state.global_step - self.first
        if done == min(10, self.calibrate // 2):
            self.mark = (now, state.global_step)
        if state.global_step == self.replan_at and self.mark is not None:
            rate = (now - self.mark[0]) / max(1, state.global_step - self.mark[1])  # seconds per step
            left = self.seconds - (now - self.t0)
            # capped by the configured max_steps, not by the first plan: the halfway plan may lengthen the run
            steps = min(args.max_steps, state.global_step + max(1, int(0.97 * left / rate)))
            self._replan(args, state, lr_scheduler, steps, rate)
            if len(self.plans) == 1:  # once more halfway, with the evaluations since in the measured rate
                self.mark = (now, state.global_step)
                self.replan_at = (state.global_step + steps) // 2
        if now - self.t0 > self.seconds and not control.should_training_stop:
            control.should_training_stop = True
            control.should_save = True
            self.plans.append({"stopped_at": state.global_step, "elapsed_s": round(now - self.t0, 1)})
            write_json(self.run_dir / "time_budget.json", {"seconds": self.seconds, "plans": self.plans})
        return control

    def _replan(self, args, state, scheduler, steps: int, rate: float) -> None:
        state.max_steps = steps
        warmup = args.get_warmup_steps(steps)
        if scheduler is not None:
            for i, f in enumerate(scheduler.lr_lambdas):
                if isinstance(f, functools.partial) and "num_training_steps" in f.keywords:
                    keywords = {**f.keywords, "num_training_steps": steps}
                    if "num_warmup_steps" in keywords:
                        keywords["num_warmup_steps"] = warmup
                    scheduler.lr_lambdas[i] = functools.partial(f.func, *f.args, **keywords)
        self.plans.append({"at_step": state.global_step, "seconds_per_step": round(rate, 4), "max_steps": steps,
                           "warmup_steps": warmup, "elapsed_s": round(self.clock() - self.t0, 1)})
        write_json(self.run_dir / "time_budget.json", {"seconds": self.seconds, "plans": self.plans})
        print(f"time budget: {rate:.3f} s/step -> max_steps {steps}")


def _sft_args(cfg: TrainConfig, run_dir: Path):
    from trl import SFTConfig

    settings = cfg.sft_settings()
    if not torch.cuda.is_available() and os.environ.get("LOCAL_RANK") is not None:
        # launched by accelerate/torchrun on a machine without a GPU: accelerate sets up DDP over gloo only when
        # told the run is on the CPU; otherwise each process would train alone
        settings.setdefault("use_cpu", True)
    if cfg.eval.steps:
        settings.update(eval_strategy="steps", eval_steps=cfg.eval.steps, metric_for_best_model=f"eval_{cfg.eval.metric}",
                        greater_is_better=METRICS[cfg.eval.metric])
        if cfg.eval.keep_best:
            # every evaluation is followed by a checkpoint, so the best one can be restored at the end
            if settings.get("save_steps") not in (None, cfg.eval.steps):
                print(f"note: sft.save_steps={settings['save_steps']} becomes eval.steps={cfg.eval.steps} to keep "
                      "the best checkpoint (set eval.keep_best: false to checkpoint more often)")
            settings.update(save_strategy="steps", save_steps=cfg.eval.steps, load_best_model_at_end=True)
    return SFTConfig(output_dir=str(run_dir), seed=cfg.seed, max_length=None, remove_unused_columns=False,
                     dataset_kwargs={"skip_prepare_dataset": True}, **settings)


def main(cfg: TrainConfig, callbacks: list | None = None) -> Path:
    """Fine-tune and save; returns the run folder. ``callbacks``: extra transformers TrainerCallbacks."""
    from transformers import EarlyStoppingCallback, set_seed

    from ..data import read_split
    from ..evaluate import max_new_tokens_for
    from ..models import kind_of, load, raw_pixels_supported, reading_unit_of, resolve_model

    run_dir = cfg.run_dir
    if not cfg.data:
        raise InvoiceVLMError("train: no dataset given (--data DIR or data: in the config)")
    resume_from = None
    if cfg.resume:
        # not Trainer's newest checkpoint-N: one cut short by a kill mid-save would be taken as it is
        done = complete_checkpoints(run_dir)
        if not done:
            if any(run_dir.glob("checkpoint-*")):
                raise InvoiceVLMError(f"{run_dir}: --resume given but every checkpoint-* folder was cut short mid-save "
                                      "(no trainer_state.json): nothing to resume from")
            raise InvoiceVLMError(f"{run_dir}: --resume given but there is no checkpoint-* folder to resume from")
        resume_from = str(done[-1])
    if (run_dir / "model").exists() and not cfg.resume:
        raise InvoiceVLMError(f"{run_dir}: a finished run is already here; choose another --name")

    # Data first: bad input must fail before any model is built.
    samples = read_split(cfg.data, cfg.train_split)
    base = resolve_model(cfg.model, run_dir, cfg.tiny)
    unit = reading_unit_of(base)
    if unit is not None:  # a row reader (models.RowKind) trains on the rows of the pages, cut as at inference
        examples, skipped = row_examples(samples, cfg.prompt, cfg.repeat)
        for line in skipped:
            print(f"warning: skipped page {line}")
        if not examples:
            raise InvoiceVLMError(f"{cfg.data}: no page could be cut into rows that match its text")
    else:
        examples = build_examples(samples, cfg.tasks, cfg.seed, cfg.prompt, cfg.repeat)
    eval_samples = []
    if cfg.eval.steps:
        eval_samples = read_split(cfg.data, cfg.eval.split)
        if cfg.eval.limit:
            eval_samples = eval_samples[: cfg.eval.limit]

    # Model and method
    set_seed(cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    quant = None
    if cfg.method == "qlora":
        if not torch.cuda.is_available():
            raise InvoiceVLMError("method qlora: 4-bit QLoRA needs a CUDA GPU (bitsandbytes); this machine has "
                                  "none - use method: lora")
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise InvoiceVLMError("method qlora needs bitsandbytes: pip install 'invoice-vlm[gpu]' "
                                  "(or pip install bitsandbytes)")
        quant = methods.quantization_config(cfg)
    model, processor = load(base, dtype=methods.base_dtype(cfg), trust_remote_code=cfg.trust_remote_code,
                            quantization_config=quant)
    head = None
    if unit is not None and cfg.ctc_weight:
        from ..models import CtcHead

        head = CtcHead.load(base, model)
        if head is not None:
            head = head.float().train()
    model, params = methods.apply(cfg, model)
    model.train()
    checks = preflight.check(cfg, model, processor, examples)

    # Record what the run is before it starts
    tasks_used: dict[str, int] = {}
    for e in examples:
        tasks_used[e.task] = tasks_used.get(e.task, 0) + 1
    main_process = int(os.environ.get("RANK", "0")) == 0  # under accelerate launch / torchrun: rank 0 writes
    if main_process:
        write_json(run_dir / "run.json", {
            "config": dataclasses.asdict(cfg), "sft": cfg.sft_settings(), "base_model": base,
            "parameters": params, "preflight": checks, "examples": tasks_used,
            "num_eval_samples": len(eval_samples), "seed": cfg.seed, "environment": environment_info()})
        for w in checks["warnings"]:
            print(f"warning: {w}")

    # Training
    generation_eval = None
    if cfg.eval.steps:
        generation_eval = GenerationEval(
            eval_samples, cfg.prompt,
            cfg.eval.max_new_tokens or max_new_tokens_for(processor, [s.text for s in eval_samples]),
            cfg.eval.batch_size)
    cbs: list[TrainerCallback] = [RankChecksum(run_dir)]
    if cfg.eval.steps and cfg.eval.early_stopping_patience:
        cbs.append(EarlyStoppingCallback(early_stopping_patience=cfg.eval.early_stopping_patience))
    if cfg.time_budget:
        cbs.append(TimeBudget(cfg.time_budget, run_dir))
    cbs += callbacks or []
    train_ds = to_dataset(examples)
    kind = kind_of(processor, getattr(model, "config", None))
    collator = Collator(processor, raw_pixels=cfg.raw_pixels and kind.unit is None and raw_pixels_supported(processor),
                        kind=kind)
    trainer = InvoiceTrainer(model=model, args=_sft_args(cfg, run_dir), train_dataset=train_ds,
                             eval_dataset=train_ds.select(range(1)) if cfg.eval.steps else None,
                             processing_class=processor, data_collator=collator, callbacks=cbs,
                             generation_eval=generation_eval, ctc_head=head, ctc_weight=cfg.ctc_weight)
    if resume_from and main_process:  # a cut-short checkpoint would be rewritten in place, or outlive good ones
        for c in run_dir.glob("checkpoint-*"):
            if c.is_dir() and c.name.split("-")[-1].isdigit() and c not in done:
                shutil.rmtree(c, ignore_errors=True)
    result = trainer.train(resume_from_checkpoint=resume_from)

    # Saving (rank 0 only under accelerate/torchrun)
    if trainer.is_world_process_zero():
        final = trainer.model
        if cfg.method != "full":  # the adapter alone (PEFT format), then for LoRA the merged model
            with staged_dir(run_dir / "adapter") as stage:
                final.save_pretrained(stage, safe_serialization=True)
                processor.save_pretrained(stage)
                if head is not None:
                    head.save(stage)
        if cfg.method != "qlora":  # 4-bit weights are not merged here: export merges onto the full-precision base
            if cfg.method == "lora":
                final = final.merge_and_unload()
            with staged_dir(run_dir / "model") as stage:
                final.save_pretrained(stage, safe_serialization=True)
                processor.save_pretrained(stage)
                if head is not None:
                    head.save(stage)
        trainer.save_state()
        state = trainer.state
        write_json(run_dir / "train_result.json", {
            **result.metrics, "global_step": result.global_step, "best_metric": state.best_metric,
            "best_checkpoint": state.best_model_checkpoint, "log_history": state.log_history})
    return run_dir
