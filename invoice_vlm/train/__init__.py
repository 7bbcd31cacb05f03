"""Supervised fine-tuning with TRL's ``SFTTrainer``: full, LoRA, QLoRA, frozen parts; mixed tasks; evaluation by
generation while training; resume; distributed under ``accelerate launch``.

Run as::

    invoice-vlm train --config configs/tiny/full.yaml --data data/synth

Modules: ``config`` (TrainConfig and its sections), ``tasks`` (ocr / extract / answer examples), ``collate``,
``methods`` (LoRA, QLoRA, freezing), ``preflight`` (token budget, resolution, dtype/device, memory),
``trainer`` (the run), ``bench`` (our step against a plain PyTorch loop).
"""

from .collate import Collator
from .config import (SFT_DEFAULTS, EvalSettings, FreezeSettings, LoraSettings, QuantSettings, TrainConfig,
                     load_config)
from .preflight import token_budget
from .tasks import Example, build_examples
from .trainer import InvoiceTrainer, TimeBudget, main

__all__ = ["Collator", "TimeBudget", "SFT_DEFAULTS", "EvalSettings", "FreezeSettings", "LoraSettings", "QuantSettings",
           "TrainConfig", "load_config", "token_budget", "Example", "build_examples",
           "InvoiceTrainer", "main"]
