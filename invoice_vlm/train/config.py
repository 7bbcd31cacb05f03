"""Training configuration: dataclasses with defaults; YAML (``configs/<model>/<method>.yaml``) and flags override.

Top level: what to train on what (model, data, method, tasks, evaluation). ``sft:`` holds TRL ``SFTConfig``
settings, validated against the installed TRL.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..common import _coerce, build_config
from ..models import TinyModelConfig

# Our defaults where TRL's do not fit (TRL turns on bf16 and gradient checkpointing; we checkpoint to resume).
SFT_DEFAULTS: dict[str, Any] = {
    "per_device_train_batch_size": 8,
    "learning_rate": 1e-4,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.05,  # < 1: a ratio of total steps
    "weight_decay": 1e-6,
    "max_grad_norm": 1.0,
    "num_train_epochs": 1.0,
    "logging_steps": 10,
    "save_strategy": "steps",
    "save_steps": 200,
    "save_total_limit": 2,
    "report_to": "tensorboard",
    "bf16": False,
    "gradient_checkpointing": False,
    # one worker process decodes and resizes the next batches while the model trains: data waits fell from 6-7%
    # to under 1% of a step in `invoice-vlm bench train`
    "dataloader_num_workers": 1,
    "dataloader_persistent_workers": True,
    "dataloader_pin_memory": torch.cuda.is_available(),  # pinning without a GPU only warns
}
# Settings invoice-vlm decides from its own config; setting them under sft: would contradict it.
SFT_RESERVED = ("output_dir", "seed", "max_length", "remove_unused_columns", "dataset_kwargs", "eval_strategy",
                "eval_steps", "metric_for_best_model", "greater_is_better", "load_best_model_at_end")
METHODS = ("full", "lora", "qlora")
TASKS = ("ocr", "extract", "answer")
METRICS = {"cer": False, "wer": False, "ter": False, "bleu": True, "chrf": True}  # name -> greater is better
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraSettings:
    r: int = field(default=8, metadata={"help": "LoRA rank"})
    alpha: int = field(default=16, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA path"})
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS),
                               metadata={"help": "module names to adapt"})
    scope: str = field(default="language_model",
                       metadata={"help": "language_model: adapt the decoder only (not SigLIP's q/k/v); all"})

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora.r must be >= 1, got {self.r}")
        if self.scope not in ("language_model", "all"):
            raise ValueError(f"lora.scope must be language_model or all, got {self.scope!r}")
        if not self.targets:
            raise ValueError("lora.targets is empty")


@dataclass
class QuantSettings:
    """QLoRA: 4-bit base weights through bitsandbytes (CUDA only)."""

    quant_type: str = field(default="nf4", metadata={"help": "nf4 or fp4"})
    double_quant: bool = field(default=True, metadata={"help": "quantize the quantization constants too"})
    compute_dtype: str = field(default="bfloat16", metadata={"help": "dtype of the matmuls: bfloat16 or float16"})

    def __post_init__(self) -> None:
        if self.quant_type not in ("nf4", "fp4"):
            raise ValueError(f"quant.quant_type must be nf4 or fp4, got {self.quant_type!r}")
        if self.compute_dtype not in ("bfloat16", "float16"):
            raise ValueError(f"quant.compute_dtype must be bfloat16 or float16, got {self.compute_dtype!r}")


@dataclass
class FreezeSettings:
    vision: bool = field(default=False, metadata={"help": "freeze the vision tower"})
    projector: bool = field(default=False, metadata={"help": "freeze the vision-to-text projector"})
    language: bool = field(default=False, metadata={"help": "freeze the language model"})


@dataclass
class EvalSettings:
    """Evaluation by generation on a whole split while training; keeps the best checkpoint."""

    steps: int = field(default=0, metadata={"help": "evaluate every N steps (0: no evaluation while training)"})
    split: str = field(default="validation", metadata={"help": "split to evaluate on"})
    metric: str = field(default="cer", metadata={"help": "metric that picks the best checkpoint: cer wer ter bleu chrf"})
    early_stopping_patience: int = field(default=0, metadata={"help": "stop after N evaluations without a "
                                                                         "better metric (0: never)"})
    limit: int = field(default=0, metadata={"help": "evaluate on the first N pages only (0: all)"})
    max_new_tokens: int = field(default=0, metadata={"help": "0: 1.1 x the longest reference + 8"})
    batch_size: int = field(default=8, metadata={"help": "generation batch size"})
    keep_best: bool = field(default=True, metadata={"help": "checkpoint at each evaluation and end with the best "
                                                            "one; false: keep sft.save_steps, end with the last"})

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"eval.metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.steps < 0 or self.early_stopping_patience < 0 or self.limit < 0:
            raise ValueError("eval.steps, eval.early_stopping_patience and eval.limit must be >= 0")


@dataclass
class TrainConfig:
    model: str = field(default="invoice-vlm-tiny",
                       metadata={"help": "base model: invoice-vlm-tiny (embedded), a folder, a hub id, or "
                                         "tiny-random[-paligemma2|-idefics3|-<family>] (fresh random weights; "
                                         "docs/fine-tuning.md)"})
    data: str = field(default="", metadata={"help": "dataset folder (imagefolder layout with splits)"})
    name: str = field(default="run", metadata={"help": "run name: the run is written to <output_root>/<name>"})
    output_root: str = field(default="runs", metadata={"help": "where runs are written"})
    method: str = field(default="full", metadata={"help": "full, lora or qlora"})
    lora: LoraSettings = field(default_factory=LoraSettings)
    quant: QuantSettings = field(default_factory=QuantSettings)
    freeze: FreezeSettings = field(default_factory=FreezeSettings)
    tasks: dict = field(default_factory=lambda: {"ocr": 1.0},
                        metadata={"help": "task ratios: ocr (transcription), extract (fields as JSON), answer (QA); "
                                          "a row reader (invoice-vlm-tiny) ignores them and reads rows"})
    repeat: int = field(default=1, metadata={"help": "passes over the training pages, each drawing tasks afresh"})
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig,
                                  metadata={"help": "architecture of a tiny-random model (ignored otherwise)"})
    prompt: str = field(default="ocr", metadata={"help": "prompt of the transcription task"})
    ctc_weight: float = field(default=1.0, metadata={"help": "a row reader with a CTC head (ctc_head.safetensors): "
                                                             "weight of the head's loss beside the decoder's; the "
                                                             "head trains and is saved with the model (0: left out, "
                                                             "the model then reads with its decoder)"})
    train_split: str = field(default="train", metadata={"help": "split to train on"})
    max_length: int = field(default=0, metadata={"help": "token budget per sample; 0 = from the data"})
    seed: int = field(default=0, metadata={"help": "random seed for init, shuffling, task mixing and dropout"})
    time_budget: float = field(default=0.0, metadata={"help": "seconds: shorten sft.max_steps (and the schedule) to "
                                                               "what the measured speed fits in them (0: off)"})
    raw_pixels: bool = field(default=True, metadata={"help": "collate pages as uint8 and normalise them on the "
                                                               "device (PaliGemma, PIL processor; same numbers, less "
                                                               "CPU per batch)"})
    resume: bool = field(default=False, metadata={"help": "continue from the run's last checkpoint"})
    trust_remote_code: bool = field(default=False, metadata={"help": "run code shipped with a hub model"})
    eval: EvalSettings = field(default_factory=EvalSettings)
    sft: dict = field(default_factory=dict, metadata={"help": "TRL SFTConfig settings (override SFT_DEFAULTS)"})

    def __post_init__(self) -> None:
        from trl import SFTConfig

        fields = {f.name: f for f in dataclasses.fields(SFTConfig)}
        known = set(fields)
        for key, value in list(self.sft.items()):
            if key not in known:
                continue
            default = fields[key].default
            # an unquoted `no` in YAML is False; string settings such as save_strategy mean the word
            if value is False and isinstance(default, str):
                self.sft[key] = "no"
            elif type(default) in (bool, int, float) and value is not None:
                # YAML reads 3e-3 (no dot) as a string; check and convert against TRL's own field types
                target = float if type(default) is int and isinstance(value, float) else type(default)
                self.sft[key] = _coerce(value, target, f"sft.{key}")
        for key in self.sft:
            if key not in known:
                raise ValueError(f"sft.{key} is not a TRL SFTConfig setting")
            if key in SFT_RESERVED:
                raise ValueError(f"sft.{key} is set by invoice-vlm; use the top-level setting instead "
                                 "(max_length, seed, eval.*)")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.max_length < 0:
            raise ValueError("max_length must be >= 0")
        if self.repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {self.repeat}")
        for task, ratio in self.tasks.items():
            if task not in TASKS:
                raise ValueError(f"tasks: unknown task {task!r} (known: {', '.join(TASKS)})")
            if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or ratio < 0:
                raise ValueError(f"tasks.{task}: expected a ratio >= 0, got {ratio!r}")
        if not sum(self.tasks.values()) > 0:
            raise ValueError("tasks: the ratios add up to 0")
        f = self.freeze
        if f.vision and f.projector and f.language and self.method == "full":
            raise ValueError("freeze: everything is frozen; nothing would train")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_root) / self.name

    def sft_settings(self) -> dict[str, Any]:
        return {**SFT_DEFAULTS, **self.sft}


def load_config(path: str | None = None, overrides: dict | None = None, sets: list[str] | None = None) -> TrainConfig:
    return build_config(TrainConfig, path, overrides, sets)
