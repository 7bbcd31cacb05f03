"""Full fine-tuning, LoRA, QLoRA, and freezing parts of the model.

Parts are found by parameter path, per family: vision tower (``vision_tower`` PaliGemma and Gemma 3,
``vision_model`` Idefics3, ``visual`` Qwen2-VL and PaddleOCR-VL, ``vision_encoder`` LightOnOCR), projector
(``multi_modal_projector``, ``connector``, ``visual.merger``, ``projector`` PaddleOCR-VL, ``vision_projection``
LightOnOCR, DeepSeek-OCR 2's ``view_separator`` embedding) and language model (``language_model``, ``text_model``,
``lm_head``).
"""

from __future__ import annotations

from typing import Any

import torch

from ..common import InvoiceVLMError
from .config import TrainConfig

_PROJECTOR = ("multi_modal_projector", "connector", "visual.merger", "projector", "vision_projection",
              "view_separator")
_VISION = ("vision_tower", "vision_model", "visual", "vision_encoder")
_LANGUAGE = ("language_model", "text_model", "lm_head")


def part_of(name: str) -> str:
    parts = name.split(".")
    dotted = "." + name
    if any(f".{p}." in dotted + "." for p in _PROJECTOR):
        return "projector"
    if any(p in parts for p in _VISION):
        return "vision"
    if any(p in parts for p in _LANGUAGE):
        return "language"
    return "other"


def base_dtype(cfg: TrainConfig) -> torch.dtype | None:
    """The dtype the base is loaded in: bf16 for LoRA and QLoRA on a GPU with bf16 (the frozen base needs no fp32
    master copy: half the weights' memory, as TRL's and Google's PaliGemma LoRA recipes load it; peft keeps the
    adapters in fp32); fp32 (None: ``models.load``'s default) for full fine-tuning, which keeps fp32 master weights,
    and on a CPU."""
    if cfg.method in ("lora", "qlora") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def quantization_config(cfg: TrainConfig):
    """bitsandbytes 4-bit settings for QLoRA (only called on a CUDA machine: preflight says so otherwise)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.quant.quant_type,
                              bnb_4bit_use_double_quant=cfg.quant.double_quant,
                              bnb_4bit_compute_dtype=getattr(torch, cfg.quant.compute_dtype))


def apply(cfg: TrainConfig, model) -> tuple[Any, dict[str, int]]:
    """Freeze and/or wrap with LoRA; returns (model, counts of total/trainable parameters per part)."""
    frozen = {"vision": cfg.freeze.vision, "projector": cfg.freeze.projector, "language": cfg.freeze.language}
    if cfg.method == "full":
        for name, p in model.named_parameters():
            if frozen.get(part_of(name)):
                p.requires_grad_(False)
    else:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if cfg.method == "qlora":
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=bool(cfg.sft_settings().get("gradient_checkpointing")))
        names = "|".join(cfg.lora.targets)
        # a regex restricts LoRA to the decoder: SigLIP's attention has q/k/v/out projections too
        targets: Any = (rf".*\.(language_model|text_model)\..*\.({names})$" if cfg.lora.scope == "language_model"
                        else list(cfg.lora.targets))
        lcfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=targets, bias="none", task_type="CAUSAL_LM")
        try:
            model = get_peft_model(model, lcfg)
        except ValueError as e:
            raise InvoiceVLMError(f"lora.targets {cfg.lora.targets} (scope {cfg.lora.scope}): {e}") from None
        for name, p in model.named_parameters():  # freezing also applies to LoRA weights in a frozen part
            if "lora_" in name and frozen.get(part_of(name)):
                p.requires_grad_(False)
    counts: dict[str, int] = {}
    for name, p in model.named_parameters():
        part = part_of(name)
        counts[f"{part}_total"] = counts.get(f"{part}_total", 0) + p.numel()
        if p.requires_grad:
            counts[f"{part}_trainable"] = counts.get(f"{part}_trainable", 0) + p.numel()
    counts["total"] = sum(p.numel() for p in model.parameters())
    counts["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if counts["trainable"] == 0:
        raise InvoiceVLMError(f"method {cfg.method} with freeze {vars(cfg.freeze)}: no parameter would train")
    return model, counts
