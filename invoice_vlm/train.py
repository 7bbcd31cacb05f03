"""Supervised fine-tuning with TRL's ``SFTTrainer``.

Run as::

    invoice-vlm train --config configs/tiny/full.yaml --data data/synth --set sft.max_steps=100

Sections below: config, collator, preflight, then ``main`` (model, data, training, saving). A run writes
``runs/<name>/``: ``run.json`` (resolved config, library versions, seed) at the start, TRL checkpoints and
TensorBoard logs while training, and ``model/`` (weights + processor, loadable with ``from_pretrained``) at the
end; ``model/`` appears only once it is complete.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .common import InvoiceVLMError, build_config, environment_info, staged_dir, write_json

# ------------------------------------------------------------------------------------------ config

# Our defaults where TRL's do not fit a small model on a CPU (TRL turns on bf16 and gradient checkpointing).
SFT_DEFAULTS: dict[str, Any] = {
    "per_device_train_batch_size": 8,
    "learning_rate": 1e-4,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.05,  # < 1: a ratio of total steps
    "weight_decay": 1e-6,
    "max_grad_norm": 1.0,
    "num_train_epochs": 1.0,
    "logging_steps": 10,
    "save_strategy": "no",
    "report_to": "tensorboard",
    "bf16": False,
    "gradient_checkpointing": False,
    "dataloader_num_workers": 0,
    "dataloader_pin_memory": torch.cuda.is_available(),  # pinning without a GPU only warns
}


@dataclass
class TrainConfig:
    model: str = field(default="tiny-random",
                       metadata={"help": "base model: a folder, a hub id, or tiny-random[-paligemma2]"})
    data: str = field(default="", metadata={"help": "dataset folder (imagefolder layout with splits)"})
    name: str = field(default="run", metadata={"help": "run name: the run is written to <output_root>/<name>"})
    output_root: str = field(default="runs", metadata={"help": "where runs are written"})
    prompt: str = field(default="ocr", metadata={"help": "task prompt before the image's text"})
    train_split: str = field(default="train", metadata={"help": "split to train on"})
    max_length: int = field(default=0, metadata={"help": "token budget per sample; 0 = from the data"})
    seed: int = field(default=0, metadata={"help": "random seed for init, shuffling and dropout"})
    resume: bool = field(default=False, metadata={"help": "continue from the run's last checkpoint"})
    sft: dict = field(default_factory=dict, metadata={"help": "TRL SFTConfig settings (override SFT_DEFAULTS)"})

    def __post_init__(self) -> None:
        from trl import SFTConfig

        known = {f.name for f in dataclasses.fields(SFTConfig)}
        for key in self.sft:
            if key not in known:
                raise ValueError(f"sft.{key} is not a TRL SFTConfig setting")
        for key in ("output_dir", "seed", "max_length", "remove_unused_columns", "dataset_kwargs"):
            if key in self.sft:
                raise ValueError(f"sft.{key} is set by invoice-vlm; use the top-level setting instead")
        if self.max_length < 0:
            raise ValueError("max_length must be >= 0")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_root) / self.name


def load_config(path: str | None = None, overrides: dict | None = None, sets: list[str] | None = None) -> TrainConfig:
    return build_config(TrainConfig, path, overrides, sets)


# ------------------------------------------------------------------------------------------ collator


class PaliGemmaCollator:
    """Batches samples with the processor's prefix/suffix API.

    ``<image>`` x N, bos, prompt, ``\\n`` form the prefix (attended bidirectionally, ``token_type_ids`` 0, labels
    -100); the target text + eos is the suffix (causal, ``token_type_ids`` 1, labels = ids). Padding is on the
    right and masked out of the loss. Nothing is truncated: preflight checks the budget beforehand.
    """

    def __init__(self, processor, prompt: str = "ocr"):
        self.processor = processor
        self.prompt = prompt

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images = [ex["image"].convert("RGB") for ex in examples]
        tok = self.processor.tokenizer
        side, tok.padding_side = tok.padding_side, "right"
        try:
            batch = self.processor(images=images, text=[f"<image>{self.prompt}"] * len(examples),
                                   suffix=[ex["text"] for ex in examples], return_tensors="pt", padding="longest")
        finally:
            tok.padding_side = side
        labels = batch["input_ids"].clone()
        labels[batch["token_type_ids"] == 0] = -100
        labels[batch["attention_mask"] == 0] = -100
        batch["labels"] = labels
        return dict(batch)


# ------------------------------------------------------------------------------------------ preflight


def token_budget(processor, prompt: str, texts: list[str]) -> tuple[int, int, int]:
    """(image tokens, prefix tokens after the image, longest target tokens incl. eos)."""
    tok = processor.tokenizer
    prefix = len(tok(f"{tok.bos_token}{prompt}\n", add_special_tokens=False)["input_ids"])
    longest = max(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts) + 1
    return processor.image_seq_length, prefix, longest


def preflight(cfg: TrainConfig, processor, texts: list[str]) -> int:
    image, prefix, target = token_budget(processor, cfg.prompt, texts)
    need = image + prefix + target
    if cfg.max_length and need > cfg.max_length:
        raise InvoiceVLMError(
            f"{cfg.data}: the longest sample needs {need} tokens ({image} image + {prefix} prompt + {target} "
            f"target) but max_length is {cfg.max_length}; raise max_length (or set it to 0 to size it from the "
            "data) rather than truncating image tokens or targets")
    return need


# ------------------------------------------------------------------------------------------ main


def main(cfg: TrainConfig) -> Path:
    """Fine-tune and save; returns the run folder."""
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from .data import read_split, to_hf_dataset
    from .models import load, resolve_model

    run_dir = cfg.run_dir
    if not cfg.data:
        raise InvoiceVLMError("train: no dataset given (--data DIR or data: in the config)")
    if cfg.resume and not any(run_dir.glob("checkpoint-*")):
        raise InvoiceVLMError(f"{run_dir}: --resume given but there is no checkpoint-* folder to resume from")
    if (run_dir / "model").exists() and not cfg.resume:
        raise InvoiceVLMError(f"{run_dir}: a finished run is already here; choose another --name")

    # Data first: bad input must fail before any model is built.
    samples = read_split(cfg.data, cfg.train_split)

    # Model
    set_seed(cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    base = resolve_model(cfg.model, run_dir)
    model, processor = load(base)
    model.train()
    need = preflight(cfg, processor, [s.text for s in samples])

    # Record what the run is before it starts
    sft_settings = {**SFT_DEFAULTS, **cfg.sft}
    write_json(run_dir / "run.json", {"config": dataclasses.asdict(cfg), "sft": sft_settings, "base_model": base,
                                      "max_tokens_per_sample": need, "num_train_samples": len(samples),
                                      "seed": cfg.seed, "environment": environment_info()})

    # Training
    args = SFTConfig(output_dir=str(run_dir), seed=cfg.seed, max_length=None, remove_unused_columns=False,
                     dataset_kwargs={"skip_prepare_dataset": True}, **sft_settings)
    trainer = SFTTrainer(model=model, args=args, train_dataset=to_hf_dataset(samples), processing_class=processor,
                         data_collator=PaliGemmaCollator(processor, cfg.prompt))
    result = trainer.train(resume_from_checkpoint=True if cfg.resume else None)

    # Saving
    with staged_dir(run_dir / "model") as stage:
        trainer.model.save_pretrained(stage, safe_serialization=True)
        processor.save_pretrained(stage)
    write_json(run_dir / "train_result.json", {**result.metrics, "global_step": result.global_step,
                                               "log_history": trainer.state.log_history})
    return run_dir
