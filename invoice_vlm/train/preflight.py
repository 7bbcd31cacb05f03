"""Checks before the first step: token budget, resolution, dtype/device, a memory estimate.

A problem stops the run with the numbers and the fix; a doubtful setting is a warning in the run's log.
"""

from __future__ import annotations

from typing import Any

import torch

from ..common import InvoiceVLMError
from ..models import training_batch
from .config import TrainConfig
from .tasks import Example


def token_budget(processor, examples: list[Example]) -> dict[str, int]:
    """Exact token counts of the worst case: the longest prompt and the longest target on a page of the data
    (its shape matters to models that cut pages into crops)."""
    from ..data import open_image

    tok = processor.tokenizer
    long_prompt = max(examples, key=lambda e: len(tok(e.prompt, add_special_tokens=False)["input_ids"])).prompt
    long_target = max(examples, key=lambda e: len(tok(e.target, add_special_tokens=False)["input_ids"])).target
    batch = training_batch(processor, [open_image(examples[0].image)], [long_prompt], [long_target])
    total = int(batch["attention_mask"].sum())
    images = int((batch["input_ids"] == tok.convert_tokens_to_ids("<image>")).sum())
    target = int((batch["labels"] != -100).sum())  # the target and its end token
    return {"total": total, "image": images, "prompt": total - images - target, "target": target}


def image_size(processor) -> int:
    size = getattr(processor.image_processor, "size", None) or {}
    return int(size.get("height") or size.get("shortest_edge") or size.get("longest_edge") or 0)


def row_token_budget(processor, examples: list[Example], unit) -> dict[str, int]:
    """A row model's worst case: the widest row the unit allows and the longest row target."""
    tok = processor.tokenizer
    image = (unit.height // unit.multiple) * (unit.max_width // unit.multiple)
    target = max(len(tok(e.target, add_special_tokens=False)["input_ids"]) for e in examples) + 1
    return {"total": image + 1 + target, "image": image, "prompt": 1, "target": target}


def check(cfg: TrainConfig, model, processor, examples: list[Example], unit=None) -> dict[str, Any]:
    """Returns the figures (written to run.json); raises on what must not run; lists warnings. ``unit``: the
    model reads rows (its examples are rows of pages)."""
    sft = cfg.sft_settings()
    warnings: list[str] = []
    budget = row_token_budget(processor, examples, unit) if unit is not None else token_budget(processor, examples)
    if cfg.max_length and budget["total"] > cfg.max_length:
        raise InvoiceVLMError(
            f"{cfg.data}: the longest sample needs {budget['total']} tokens ({budget['image']} image + "
            f"{budget['prompt']} prompt + {budget['target']} target) but max_length is {cfg.max_length}; raise "
            "max_length (or set it to 0 to size it from the data) rather than truncating image tokens or targets")
    side = image_size(processor) if unit is None else 0
    if side and side < 448:
        warnings.append(f"{side} px input: an A4 page's small text is 2-3 px tall at 224 px; PaliGemma's 448 and "
                        "896 px checkpoints are the ones for documents (DocVQA ANLS 43.7 / 78.0 / 84.8)")
    cuda = torch.cuda.is_available()
    if sft.get("fp16") and not cuda:
        raise InvoiceVLMError("sft.fp16 needs a CUDA GPU; on a CPU train in fp32 (fp16: false)")
    if sft.get("bf16") and not cuda:
        warnings.append("sft.bf16 on a CPU: bf16 autocast measured ~20x slower than fp32 on this project's CPUs")
    if sft.get("bf16") and cuda and not torch.cuda.is_bf16_supported():
        raise InvoiceVLMError("sft.bf16: this GPU has no bf16 support; use fp16: true")
    memory = memory_estimate(model, sft, budget["total"])
    return {"tokens": budget, "warnings": warnings, "memory_estimate_gb": memory}


def memory_estimate(model, sft: dict[str, Any], seq_len: int) -> dict[str, float]:
    """A rough upper estimate: weights + gradients + AdamW states, and activations of one micro-batch."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    wbytes = next(model.parameters()).element_size()
    cfg = getattr(model.config, "text_config", model.config)
    hidden = getattr(cfg, "hidden_size", 0)
    layers = getattr(cfg, "num_hidden_layers", 0)
    vocab = getattr(cfg, "vocab_size", 0)
    batch = sft.get("per_device_train_batch_size", 8)
    act_bytes = 2 if sft.get("bf16") or sft.get("fp16") else 4
    # ~16 hidden-sized tensors per layer per token kept for backward, plus the logits
    activations = batch * seq_len * (16 * hidden * layers + 2 * vocab) * act_bytes
    if sft.get("gradient_checkpointing"):
        activations /= max(1, layers)
    gb = 1024**3
    return {"weights": round(total * wbytes / gb, 3), "gradients": round(trainable * 4 / gb, 3),
            "optimizer": round(trainable * 8 / gb, 3), "activations": round(activations / gb, 3),
            "total": round((total * wbytes + trainable * 12 + activations) / gb, 3)}
