"""Pretraining the row reader (invoice-vlm-tiny) from scratch: one command, its config in ``configs/``.

    invoice-vlm pretrain --config configs/tiny/pretrain.yaml            # --resume continues after a stop

A plain PyTorch loop, because what it needs is not what SFTTrainer does: batches of rows cut from synthetic pages
(invoice_vlm.train.rowdata) mixed with random strings by a curriculum, and an auxiliary CTC loss on the image
tokens (``models.CtcHead``: a linear head over each feature column; the engine reads with it, and it is saved
beside the plain FastVLM as ctc_head.safetensors). Every batch
is a pure function of (seed, step), and a checkpoint holds the weights, the CTC head and AdamW's moments (all
safetensors) and the step, so ``--resume`` continues exactly where an uninterrupted run would be (tested).
``time_budget`` ends an invocation with a checkpoint after that many seconds; the schedule is planned over
``max_steps`` whatever the budget, so a run spread over several sessions is one run.

The run folder: ``run.json`` (config, versions, seed), ``log.jsonl`` (loss, CTC loss, learning rate, seconds per
step; held-out CER of the decoder and of the CTC read-out at every evaluation), ``checkpoint-<step>/``, and
``model/`` (the plain model, its CTC head, processor and ``pretrain.json``) when ``max_steps`` is reached.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common import InvoiceVLMError, build_config, environment_info, staged_dir, write_json
from ..common import complete_checkpoints as checkpoints  # written to the end: trainer_state.json last
from ..models import RowModelConfig

CKPT = "checkpoint-"


@dataclass
class PretrainConfig:
    name: str = field(default="invoice-vlm-tiny", metadata={"help": "run name: the run is written to "
                                                                     "<output_dir>/<name>"})
    output_dir: str = "runs"
    data: list[str] = field(default_factory=lambda: ["data/pretrain"],
                            metadata={"help": "synthetic dataset folders (clean renders: their records hold row extents)"})
    split: str = "train"
    eval_split: str = "validation"
    model: RowModelConfig = field(default_factory=RowModelConfig)
    init: str = field(default="", metadata={"help": "start from this row model's weights (a folder) instead of random "
                                                     "ones; the schedule starts afresh"})
    seed: int = 0
    batch_size: int = 32
    max_steps: int = field(default=20000, metadata={"help": "steps the schedule is planned over"})
    learning_rate: float = 1e-3
    min_lr_ratio: float = 0.05  # cosine decay to this share of the peak
    warmup_steps: int = 200
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    ctc_weight: float = 1.0
    ctc_frames: int = 4  # CTC frames per feature column: a 16 px column holds one or two characters
    # steps that train the CTC head alone (the model frozen): a fresh head on an `init` model starts at a loss of
    # ~20, and its gradients through the tower cost the shipped weights what they read (session 14's first 250 steps)
    ctc_head_warmup: int = 0
    degrade: float = 0.5  # share of rows blurred, noised, JPEG-compressed (rowdata.degrade)
    # curriculum: each stage runs to its `until` step (0: the end) with this share of random strings per batch and
    # (optional `real`) this share of the other rows taken from the rows of real PDFs (pdf_banks)
    stages: list[dict] = field(default_factory=lambda: [{"until": 1000, "strings": 1.0}, {"until": 0, "strings": 0.3}])
    blank_rows: int = 2  # per page: rows the segmenter finds where the record has no text (target "")
    save_steps: int = 250
    save_total_limit: int = 2
    eval_steps: int = 500
    eval_rows: int = 128
    log_steps: int = 25
    time_budget: float = field(default=0.0, metadata={"help": "seconds for this invocation (0: none); it ends "
                                                              "with a checkpoint"})
    threads: int = 0  # torch threads (0: all cores)
    workers: int = 2  # processes that cut the pages into rows (once per dataset, cached in the run folder)
    pdf_banks: list[str] = field(default_factory=list, metadata={
        "help": "row banks cut from born-digital PDFs (`invoice-vlm pdf-bank`): real fonts and text"})
    font_packages: list[str] = field(default_factory=list, metadata={
        "help": "Debian font packages whose Latin fonts draw the random strings (besides the invoice fonts)"})
    freeze_batchnorm: bool = True  # keep the tower's BatchNorm statistics (rows are encoded a width at a time)

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("data: give at least one dataset folder")
        last = 0
        for i, st in enumerate(self.stages):
            if set(st) - {"until", "strings", "real"} or "strings" not in st:
                raise ValueError(f"stages[{i}]: expected {{until, strings, real}}, got {st}")
            if not 0.0 <= float(st["strings"]) <= 1.0 or not 0.0 <= float(st.get("real", 0)) <= 1.0:
                raise ValueError(f"stages[{i}]: strings and real must be in [0, 1]")
            if float(st.get("real", 0)) and not self.pdf_banks:
                raise ValueError(f"stages[{i}].real needs pdf_banks")
            until = int(st.get("until", 0))
            if until and until <= last:
                raise ValueError("stages: `until` must grow from stage to stage (0 = to the end, last only)")
            last = until or last
        if self.ctc_weight < 0 or self.batch_size < 1 or self.max_steps < 1:
            raise ValueError("ctc_weight >= 0, batch_size >= 1 and max_steps >= 1 are required")
        if self.ctc_head_warmup and not self.ctc_weight:
            raise ValueError("ctc_head_warmup needs ctc_weight > 0 (it trains the CTC head)")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def stage_at(self, step: int) -> dict:
        for st in self.stages:
            if not st.get("until") or step < int(st["until"]):
                return st
        return self.stages[-1]

    def strings_at(self, step: int) -> float:
        return float(self.stage_at(step)["strings"])


def load_config(path: str | None, sets: list[str] | None = None, overrides: dict | None = None) -> PretrainConfig:
    return build_config(PretrainConfig, path, overrides=overrides, sets=sets)


def lr_at(cfg: PretrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` of the peak. While the CTC head trains alone it runs at
    the peak; the model's own warm-up starts when it unfreezes (fresh AdamW moments make the first updates the
    largest: at the full rate they cost an ``init`` model what it read)."""
    if step < cfg.ctc_head_warmup:
        return cfg.learning_rate
    step, total = step - cfg.ctc_head_warmup, cfg.max_steps - cfg.ctc_head_warmup
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.learning_rate * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# ------------------------------------------------------------------------------------------- checkpoints

def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for idx, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            out[f"{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)


def save_checkpoint(run_dir: Path, step: int, model, processor, head, opt, history: list[dict], limit: int) -> Path:
    from safetensors.torch import save_file

    final = run_dir / f"{CKPT}{step}"
    with staged_dir(final) as stage:  # a stop in the middle leaves the previous checkpoint as the newest
        model.save_pretrained(stage, safe_serialization=True)
        processor.save_pretrained(stage)
        head.save(stage)
        save_file({k: v.contiguous() for k, v in _optimizer_tensors(opt).items()}, str(stage / "optimizer.safetensors"))
        write_json(stage / "trainer_state.json", {"step": step, "history": history})
    for old in checkpoints(run_dir)[:-limit] if limit > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ------------------------------------------------------------------------------------------- data

def _bank_path(run_dir: Path, data: str, split: str, unit) -> Path:
    from ..rows import SEGMENTER_VERSION

    key = hashlib.sha1(f"{Path(data).resolve()}|{split}|{json.dumps(unit.to_dict(), sort_keys=True)}"
                       f"|{SEGMENTER_VERSION}".encode())
    return run_dir / "banks" / f"{Path(data).name}-{split}-{key.hexdigest()[:8]}.npz"


def load_banks(cfg: PretrainConfig, split: str, unit, progress: bool = True):
    """The rows of ``split`` of every dataset, cut once and cached in the run folder."""
    from ..data import read_split
    from .rowdata import RowBank, concat_banks

    banks = []
    for data in cfg.data:
        path = _bank_path(cfg.run_dir, data, split, unit)
        if path.is_file():
            banks.append(RowBank.load(path))
            continue
        samples = read_split(data, split)
        bank = RowBank.build(samples, unit, workers=cfg.workers, blanks=cfg.blank_rows, progress=progress)
        bank.save(path)
        banks.append(bank)
    return concat_banks(banks)


def eval_set(cfg: PretrainConfig, bank, unit, chars: str) -> dict[str, tuple[list, list[str]]]:
    """Held-out rows from the evaluation split's pages, and random strings from a seed no batch uses."""
    from .rowdata import draw_string, random_string

    rng = random.Random(1234)
    idx = [i for i in range(len(bank)) if bank.texts[i]]
    pick = sorted(rng.sample(idx, min(cfg.eval_rows, len(idx))))
    strings_rng = random.Random("held-out strings")
    texts = [random_string(strings_rng, chars, strings_rng.randint(3, 60)) for _ in range(cfg.eval_rows // 2)]
    return {"rows": ([bank.row(i) for i in pick], [bank.texts[i] for i in pick]),
            "strings": ([draw_string(strings_rng, t, unit) for t in texts], texts)}


# ------------------------------------------------------------------------------------------- model parts

def _cer(refs: list[str], hyps: list[str]) -> float:
    from ..evaluate import cer

    return cer(hyps, refs)


# ------------------------------------------------------------------------------------------- the loop

def main(cfg: PretrainConfig, resume: bool = False, progress: bool = True) -> Path:
    from safetensors.torch import load_file
    from transformers import AutoProcessor, FastVlmForConditionalGeneration

    from ..models import (CTC_HEAD_FILE, TRAIN_WIDTH_GRID, CtcHead, ReadingUnit, build_char_tokenizer, build_row_model,
                          build_row_processor, row_batch, row_image_tokens, row_model_inputs)
    from .rowdata import RowSampler, chars_of

    run_dir = cfg.run_dir
    if run_dir.exists() and checkpoints(run_dir) and not resume:
        raise InvoiceVLMError(f"{run_dir}: holds checkpoints of an earlier run; add --resume to continue it, or "
                              "choose another --name")
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    torch.manual_seed(cfg.seed)
    write_json(run_dir / "run.json", {"kind": "pretrain", "config": asdict(cfg), "environment": environment_info(),
                                      "seed": cfg.seed, "resume": resume})
    found = checkpoints(run_dir) if resume else []
    if found:
        last = found[-1]
        model = FastVlmForConditionalGeneration.from_pretrained(last, dtype=torch.float32, use_safetensors=True)
        processor = AutoProcessor.from_pretrained(last)
        state = json.loads((last / "trainer_state.json").read_text())
        step, history = int(state["step"]), list(state["history"])
    elif cfg.init:
        from ..models import reading_unit_of, resolve_model

        init = resolve_model(cfg.init, run_dir)
        if reading_unit_of(init) is None:
            raise InvoiceVLMError(f"{cfg.init}: init must be a row model (its config.json records reading.unit row)")
        model = FastVlmForConditionalGeneration.from_pretrained(init, dtype=torch.float32, use_safetensors=True)
        processor = AutoProcessor.from_pretrained(init)
        step, history = 0, []
    else:
        tokenizer = build_char_tokenizer()
        processor = build_row_processor(tokenizer, cfg.model)
        model = build_row_model(cfg.model, tokenizer)
        step, history = 0, []
    tokenizer = processor.tokenizer
    unit = ReadingUnit.from_config(model.config)
    head = CtcHead.for_model(model, cfg.ctc_frames)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name or "embed" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.ctc_weight:
        groups.append({"params": list(head.parameters()), "weight_decay": cfg.weight_decay})
    opt = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.98))
    if found:
        head.load_state_dict(load_file(str(found[-1] / CTC_HEAD_FILE)))
        _load_optimizer(opt, load_file(str(found[-1] / "optimizer.safetensors")))
    elif cfg.init and cfg.ctc_weight:  # an init model that ships a head (models.CtcHead) continues with it
        shipped = CtcHead.load(init, model)
        if shipped is not None:
            if shipped.frames != cfg.ctc_frames:
                raise InvoiceVLMError(f"{cfg.init}: its CTC head has {shipped.frames} frames a column, the config "
                                      f"{cfg.ctc_frames} (set ctc_frames to match)")
            head.load_state_dict(shipped.float().state_dict())
    chars = chars_of(tokenizer)
    bank = load_banks(cfg, cfg.split, unit, progress)
    evals = eval_set(cfg, load_banks(cfg, cfg.eval_split, unit, progress), unit, chars)
    real = None
    if cfg.pdf_banks:
        from .rowdata import RowBank, concat_banks, held_out_path, without_dot_leaders

        for path in cfg.pdf_banks:
            if not Path(path).is_file():
                raise InvoiceVLMError(f"{path}: row bank not found (build it with `invoice-vlm pdf-bank`)")
        real = without_dot_leaders(concat_banks([RowBank.load(Path(p)) for p in cfg.pdf_banks]))
        held = [held_out_path(Path(p)) for p in cfg.pdf_banks if held_out_path(Path(p)).is_file()]
        if held:  # rows of PDFs the training bank does not hold
            pool = concat_banks([RowBank.load(p) for p in held])
            pick = random.Random(4321).sample(range(len(pool)), min(cfg.eval_rows, len(pool)))
            evals["real"] = ([pool.row(i) for i in pick], [pool.texts[i] for i in pick])
    from .rowdata import row_fonts

    fonts = row_fonts(cfg.font_packages) if cfg.font_packages else []
    write_json(run_dir / "fonts.json", fonts)
    sampler = RowSampler(bank, unit, chars, cfg.seed, real=real, fonts=fonts)
    model.train()
    if cfg.freeze_batchnorm:  # the tower sees rows a width at a time (models.row_model_inputs): groups are too
        for m in model.modules():  # small and uneven for batch statistics, so the learned ones are kept
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
    log = open(run_dir / "log.jsonl", "a", encoding="utf-8")
    t_start = time.monotonic()
    recent: list[dict[str, float]] = []
    step_times: list[float] = []

    from ..infer import Predictor

    reader = Predictor(model, processor)  # the engine's own row path: evaluation reads as inference does

    def evaluate() -> dict[str, Any]:
        point: dict[str, Any] = {"step": step, "eval": True}
        for key, (rows, texts) in evals.items():
            hyp = reader.read_rows(rows)
            if key == "rows":
                point["example"] = [texts[0], hyp[0]]
            point[f"{key}_cer"] = round(_cer(texts, hyp), 4)
            point[f"{key}_exact"] = round(sum(a == b for a, b in zip(texts, hyp)) / len(texts), 4)
            if cfg.ctc_weight:
                with torch.no_grad():
                    was = {m: m.training for m in model.modules()}
                    model.eval()
                    inputs = row_batch(rows, None, tokenizer, unit, model.config.image_token_index)
                    ids = head.read(row_image_tokens(model, inputs), inputs["image_columns"])
                    for m, training in was.items():
                        m.training = training
                point[f"{key}_ctc_cer"] = round(_cer(texts, tokenizer.batch_decode(ids)), 4)
        return point

    from ..common import progress_bar

    bar = progress_bar("pretrain", "steps", info=True, disable=not progress)
    stopped = "max_steps"
    with bar:
        task = bar.add_task("steps", total=cfg.max_steps, completed=step, info="")
        while step < cfg.max_steps:
            if cfg.time_budget and step_times:
                per_step = float(np.median(step_times[-50:]))
                if time.monotonic() - t_start + per_step > cfg.time_budget:
                    stopped = "time_budget"
                    break
            t0 = time.monotonic()
            stage = cfg.stage_at(step)
            rows, texts = sampler.batch(step, cfg.batch_size, float(stage["strings"]), cfg.degrade,
                                        float(stage.get("real", 0.0)))
            inputs = row_batch(rows, texts, tokenizer, unit, model.config.image_token_index)
            columns, ctc_targets, ctc_lengths = (inputs[k] for k in ("image_columns", "ctc_targets", "ctc_lengths"))
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step)
            warming = step < cfg.ctc_head_warmup
            for p in model.parameters():  # frozen while the head warms up: AdamW skips what has no gradient
                p.requires_grad_(not warming)
            with torch.set_grad_enabled(not warming):
                image_tokens, model_inputs = row_model_inputs(model, inputs, TRAIN_WIDTH_GRID)
            if warming:
                loss, entry = torch.zeros(()), {}
            else:
                out = model(**model_inputs)
                loss = out.loss
                entry = {"loss": float(out.loss.detach())}
            if cfg.ctc_weight:
                ctc = head.loss(image_tokens, columns, ctc_targets, ctc_lengths)
                loss = loss + cfg.ctc_weight * ctc
                entry["ctc"] = float(ctc.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"] if p.grad is not None],
                                           cfg.max_grad_norm)
            opt.step()
            step += 1
            step_times.append(time.monotonic() - t0)
            recent.append(entry)
            if step % cfg.log_steps == 0 or step == cfg.max_steps:
                point = {"step": step, "lr": lr_at(cfg, step - 1),
                         "s_per_step": round(float(np.median(step_times[-cfg.log_steps:])), 3),
                         **{k: round(float(np.mean([r[k] for r in recent if k in r])), 4) for k in recent[-1]}}
                recent = []
                history.append(point)
                log.write(json.dumps(point) + "\n")
                log.flush()
                bar.update(task, info=" ".join(f"{k} {point[k]:.3f}" for k in ("loss", "ctc") if k in point))
            if cfg.eval_steps and (step % cfg.eval_steps == 0 or step == cfg.max_steps):
                point = evaluate()
                history.append(point)
                log.write(json.dumps(point, ensure_ascii=False) + "\n")
                log.flush()
                bar.console.print(f"step {step}: " + ", ".join(f"{k} {v}" for k, v in point.items()
                                                               if k.endswith(("cer", "exact"))))
            if step % cfg.save_steps == 0 or step == cfg.max_steps:
                save_checkpoint(run_dir, step, model, processor, head, opt, history, cfg.save_total_limit)
            bar.update(task, completed=step)
    log.close()
    if stopped == "time_budget":
        if not checkpoints(run_dir) or checkpoints(run_dir)[-1].name != f"{CKPT}{step}":
            save_checkpoint(run_dir, step, model, processor, head, opt, history, cfg.save_total_limit)
        print(f"time budget reached at step {step}/{cfg.max_steps}: checkpoint saved; add --resume to continue")
        return run_dir
    with staged_dir(run_dir / "model") as stage:
        model.save_pretrained(stage, safe_serialization=True)
        processor.save_pretrained(stage)
        if cfg.ctc_weight:
            head.save(stage)
        write_json(stage / "pretrain.json", {"config": asdict(cfg), "steps": step, "versions": environment_info(),
                                             "evaluations": [h for h in history if h.get("eval")]})
    print(f"pretraining done: {step} steps; model in {run_dir / 'model'}")
    return run_dir
