"""Checks before the first step: token budget, resolution, dtype/device, a memory estimate (``memory_estimate``:
its parts, and what it assumed, go to run.json).

A problem stops the run with the numbers and the fix; a doubtful setting is a warning in the run's log.
"""

from __future__ import annotations

from typing import Any

import torch

from ..common import InvoiceVLMError
from ..models import kind_of
from .config import TrainConfig
from .methods import part_of
from .tasks import Example


def token_budget(processor, examples: list[Example], kind=None) -> dict[str, int]:
    """Exact token counts of the worst case: the longest prompt and the longest target on a page of the data
    (its shape matters to models that cut pages into crops), as the model's kind (models.kind_of; default: the
    processor's page kind) builds its batch."""
    from ..data import open_image

    kind = kind or kind_of(processor)
    tok = processor.tokenizer
    long_prompt = max(examples, key=lambda e: len(tok(e.prompt, add_special_tokens=False)["input_ids"])).prompt
    long_target = max(examples, key=lambda e: len(tok(e.target, add_special_tokens=False)["input_ids"])).target
    return kind.token_budget(processor, open_image(examples[0].image), long_prompt, long_target)


def check(cfg: TrainConfig, model, processor, examples: list[Example]) -> dict[str, Any]:
    """Returns the figures (written to run.json); raises on what must not run; lists warnings."""
    sft = cfg.sft_settings()
    warnings: list[str] = []
    kind = kind_of(processor, getattr(model, "config", None))
    budget = token_budget(processor, examples, kind)
    if cfg.max_length and budget["total"] > cfg.max_length:
        raise InvoiceVLMError(
            f"{cfg.data}: the longest sample needs {budget['total']} tokens ({budget['image']} image + "
            f"{budget['prompt']} prompt + {budget['target']} target) but max_length is {cfg.max_length}; raise "
            "max_length (or set it to 0 to size it from the data) rather than truncating image tokens or targets")
    side = kind.image_side(processor)
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
    # InvoiceTrainer projects only the labelled positions (and the one before them) onto the vocabulary when the
    # model takes logits_to_keep; the worst case is the longest target
    positions = budget["target"] + 1 if _takes_logits_to_keep(model) else budget["total"]
    memory, assumed = memory_estimate(model, sft, budget["total"], budget["image"], positions, cuda)
    print(f"preflight: memory estimate {memory['total']:.2f} GiB (weights {memory['weights']:.2f}, logits "
          f"{memory['logits']:.2f}, one layer {memory['layer']:.2f}, layer inputs {memory['layer_inputs']:.2f}, "
          f"CUDA context {memory['cuda_context']:.2f}) for {assumed['weights_dtype']} weights, "
          f"{assumed['activations']} activations, batch {assumed['batch']}, sequence {assumed['sequence']} "
          f"({assumed['image_tokens']} image tokens), {assumed['logit_positions']} logit positions, gradient "
          f"checkpointing {'on' if assumed['gradient_checkpointing'] else 'off'}, {assumed['attention']} attention")
    return {"tokens": budget, "warnings": warnings, "memory_estimate_gb": memory, "memory_assumed": assumed}


def _takes_logits_to_keep(model) -> bool:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


GIB = 1024**3
# The CUDA context of one training process (driver context, cuBLAS/cuDNN workspaces, kernels loaded): 0.5-1 GiB on
# recent NVIDIA GPUs and CUDA 12; counted at its middle. Not in torch.cuda.max_memory_allocated, in nvidia-smi.
CUDA_CONTEXT_GIB = 0.75


def _text_config(model):
    cfg = model.config
    return getattr(cfg, "text_config", None) or cfg


def _attention(cfg) -> str:
    return str(getattr(cfg, "_attn_implementation", None) or "sdpa")


def _lora_inputs_per_layer(model, layers: int) -> tuple[int, int, int]:
    """(attention input features, MLP input features, bytes per feature) of the decoder's LoRA modules that keep a
    dropped-out copy of their input for backward, per decoder layer: peft applies each module's dropout to its own
    copy (plus a 1-byte mask)."""
    attn = mlp = 0
    nbytes = 4
    for name, m in model.named_modules():
        a = getattr(m, "lora_A", None)
        drop = getattr(m, "lora_dropout", None)
        if a is None or drop is None or "default" not in a or "default" not in drop:
            continue
        if part_of(name) != "language" or not isinstance(drop["default"], torch.nn.Dropout) or not drop["default"].p:
            continue
        if "attn" in name:
            attn += a["default"].in_features
        else:
            mlp += a["default"].in_features
        nbytes = a["default"].weight.element_size()
    return attn // max(1, layers), mlp // max(1, layers), nbytes


def memory_estimate(model, sft: dict[str, Any], seq_len: int, image_tokens: int = 0,
                    logit_positions: int | None = None, cuda: bool | None = None,
                    unit: int = GIB) -> tuple[dict[str, float], dict[str, Any]]:
    """The peak GPU memory of one training step, part by part in GiB (2**30 bytes; ``unit=1``: exact bytes), and
    what it assumed.

    B = per-device batch, S = sequence (image + prompt + target tokens), P = positions projected onto the vocabulary
    (the labelled ones and the one before them when the trainer cuts the logits,
    ``InvoiceTrainer.logits_where_labelled``; else S), V = vocabulary, H / I / L = the decoder's hidden size, MLP
    size and layers, h = attention heads, w = weight bytes (fp32 4, bf16 2), a = activation bytes (2 under bf16/fp16
    autocast or with 16-bit weights, else 4).

    - weights: every parameter at its own dtype (4-bit QLoRA weights at half a byte).
    - gradients + optimizer: trainable parameters x (their dtype + 8): AdamW keeps two fp32 states.
    - cast copies: with fp32 weights under 16-bit autocast, the 16-bit copies the backward needs: of the trainable
      weights, of a frozen output layer (V x H) and of the recomputed layer.
    - logits: B x P x V x (a + 12): the model-dtype logits (kept for Gemma 2's soft-capping), their fp32 copy's
      log-probabilities for the loss, and two fp32 gradients when the backward starts. Logits are not checkpointed.
    - layer inputs: under gradient checkpointing each decoder layer keeps its input, L x B x S x H x w (the residual
      stream stays in the weights' dtype under autocast); the vision tower's layers likewise when it trains.
    - layer: one layer's full activations while it is recomputed and differentiated. Per token, the attention half:
      norms and residual (w x 3 H, + 8 H for fp32 norm copies of 16-bit inputs), a x (q, k, v, rotated q and k,
      eager attention's repeated k and v, its output, H), LoRA's dropped-out input copies (their dtype + a 1-byte
      mask); then the larger of the MLP half (the same norms, a x (4 I + H), LoRA copies) - differentiated and freed
      first - and eager attention's B x h x S x S scores: soft-capped (a), fp32 softmax (4), its 16-bit cast, and
      the backward's gradients (a + 4, + 4 for the fp32 one under autocast): 18 bytes under bf16, 16 in fp32.
      Without checkpointing, L of them.
    - vision tower: its layer inputs and one layer when it trains; a frozen tower keeps nothing for the backward
      (its forward's working set is freed before the decoder's peak).
    - attention masks: eager attention's B x S x S float masks (one per mask kind: full, sliding window).
    - cuda context: CUDA_CONTEXT_GIB on a GPU, 0 on a CPU.

    The logits and the recomputed layer are not alive together (the logits are freed before the last layer is
    recomputed): the peak counts the larger. The estimate is of allocated memory plus the context; nvidia-smi also
    shows what PyTorch's caching allocator keeps reserved.

    PaliGemma 2 3B-896, LoRA r 8 on the decoder (3.05B parameters, 10.4M trainable), B 1, S 5,113 (4,096 image
    tokens, the longest synthetic target 1,001 tokens with this project's tokenizer: P 1,002), V 257,216, bf16
    autocast, checkpointing, eager attention (``python scripts/gpu_check.py estimate``), in GiB:
    fp32 base: weights 11.35 + LoRA gradients and AdamW 0.12 + cast copies 1.23 (the tied output layer, 257,216 x
    2,304 x 2 B, and one layer) + layer inputs 1.14 (26 x 5,113 x 2,304 x 4 B) + masks 0.20 + max(one layer 4.00 (of
    it the scores 8 x 5,113^2 x 18 B = 3.5), logits 1,002 x 257,216 x 14 B = 3.36) + context 0.75 = 18.8;
    bf16 base: 5.70 + 0.12 + 0 + 0.57 + 0.10 + 4.02 + 0.75 = 11.3.
    """
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    cuda = torch.cuda.is_available() if cuda is None else cuda
    text = _text_config(model)
    vision = getattr(model.config, "vision_config", None)
    H = getattr(text, "hidden_size", 0) or 0
    I = getattr(text, "intermediate_size", 0) or 4 * H
    L = getattr(text, "num_hidden_layers", 0) or 0
    heads = getattr(text, "num_attention_heads", 0) or 1
    kv = getattr(text, "num_key_value_heads", None) or heads
    hd = getattr(text, "head_dim", None) or (H // heads if heads else 0)
    V = getattr(text, "vocab_size", 0) or 0
    B = int(sft.get("per_device_train_batch_size", 8))
    S = int(seq_len)
    P = int(logit_positions or S)
    N = int(image_tokens)
    ckpt = bool(sft.get("gradient_checkpointing"))
    emb = model.get_input_embeddings().weight if hasattr(model, "get_input_embeddings") else params[0]
    w = emb.element_size()  # the residual stream's dtype follows the embeddings'
    autocast16 = bool(sft.get("bf16") or sft.get("fp16"))
    a = 2 if autocast16 or w == 2 else 4
    eager = _attention(text) == "eager"

    weights = sum(p.numel() * p.element_size() for p in params)
    grads = sum(p.numel() * p.element_size() for p in trainable)
    optim = 8 * sum(p.numel() for p in trainable)
    text_params = sum(p.numel() for n, p in model.named_parameters() if part_of(n) == "language")
    one_layer_params = max(0, text_params - 2 * V * H) // max(1, L)  # less the embeddings and the output layer
    casts = 0
    if w == 4 and autocast16:
        out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        frozen_out = out is not None and not out.weight.requires_grad
        casts = 2 * (sum(p.numel() for p in trainable) + (V * H if frozen_out else 0) + one_layer_params)
    elif w < 2:  # 4-bit weights are dequantized to the compute dtype a layer at a time
        casts = 2 * 2 * one_layer_params

    lora_attn, lora_mlp, lora_bytes = _lora_inputs_per_layer(model, L)
    norm32 = 8 * H if w == 2 else 0  # RMSNorm upcasts a 16-bit input to fp32 (two norms per half layer)
    attn_tok = (norm32 + w * 3 * H + a * (heads * hd * (3 + (2 if eager else 0)) + 3 * kv * hd + H)
                + lora_attn * (lora_bytes + 1))
    mlp_tok = norm32 + w * 3 * H + a * (4 * I + H) + lora_mlp * (lora_bytes + 1)
    softcap = getattr(text, "attn_logit_softcapping", None)
    score_bytes = ((a if softcap else 0) + 4 + (a if a < 4 else 0)  # kept: soft-capped, fp32 softmax, its cast
                   + a + 4 + (4 if a < 4 else 0))  # the backward's gradients
    scores = B * heads * S * S * score_bytes if eager else 0
    # the MLP's tensors are freed (differentiated first) before the attention's scores are
    layer = B * S * attn_tok + max(B * S * mlp_tok, scores)
    masks = B * S * S * (w if eager else 1) * (2 if getattr(text, "sliding_window", None) else 1)
    layer_inputs = (L * B * S * H * w) if ckpt else (L - 1) * layer

    vision_trains = any(p.requires_grad for n, p in model.named_parameters() if part_of(n) == "vision")
    vision_act = vision_layer = 0
    if vision is not None and vision_trains and N:
        Hv = getattr(vision, "hidden_size", 0) or 0
        Iv = getattr(vision, "intermediate_size", 0) or 4 * Hv
        Lv = getattr(vision, "num_hidden_layers", 0) or 0
        hv = getattr(vision, "num_attention_heads", 0) or 1
        vision_layer = B * N * (16 * Hv + w * 2 * Hv + a * (8 * Hv + 2 * Iv))
        if _attention(vision) == "eager":
            vision_layer += B * hv * N * N * (a + 4 + a + 8)
        vision_act = Lv * B * N * Hv * w if ckpt else (Lv - 1) * vision_layer

    logits = B * P * V * (a + 12)
    context = CUDA_CONTEXT_GIB * GIB if cuda else 0
    total = (weights + grads + optim + casts + context + layer_inputs + vision_act + masks
             + max(layer, vision_layer, logits))
    r = (lambda x: round(x / unit, 3)) if unit == GIB else (lambda x: x / unit)  # noqa: E731
    return {"weights": r(weights), "gradients": r(grads), "optimizer": r(optim), "cast_copies": r(casts),
            "logits": r(logits), "layer_inputs": r(layer_inputs), "layer": r(layer), "vision_tower": r(vision_act),
            "vision_layer": r(vision_layer),
            "attention_masks": r(masks), "cuda_context": r(context), "total": r(total)}, {
        "units": "GiB (2**30 bytes)", "weights_dtype": str(emb.dtype).replace("torch.", ""),
        "activations": "bfloat16/float16 autocast" if autocast16 else str(emb.dtype).replace("torch.", ""),
        "batch": B, "sequence": S, "image_tokens": N, "logit_positions": P, "vocabulary": V,
        "gradient_checkpointing": ckpt, "attention": _attention(text), "vision_tower_trains": vision_trains,
        "trainable_parameters": sum(p.numel() for p in trainable), "parameters": sum(p.numel() for p in params),
        "cuda_context_gib": CUDA_CONTEXT_GIB if cuda else 0}
