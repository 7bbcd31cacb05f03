"""Preflight's memory estimate: its parts against the formula, and its total against a measured peak (allocated bytes
counted op by op on the CPU; torch.cuda.max_memory_allocated on a GPU)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from invoice_vlm.models import TinyModelConfig, build_model, build_processor, build_tokenizer, training_batch
from invoice_vlm.train import methods
from invoice_vlm.train.config import TrainConfig
from invoice_vlm.train.preflight import memory_estimate

VOCAB = 8192  # the logits matter at this size, as PaliGemma's 257,216 do at 896 px
LORA_TARGETS = r".*\.language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"


@pytest.fixture(scope="module")
def small(corpus):
    """A small PaliGemma 2 (Gemma 2 decoder: eager attention, soft-capping) and one training batch."""
    cfg = TinyModelConfig(variant="paligemma2", image_size=224, patch_size=16, vision_hidden=96, vision_layers=2,
                          vision_heads=2, vision_intermediate=192, text_hidden=128, text_layers=2, text_heads=2,
                          text_kv_heads=1, text_head_dim=64, text_intermediate=512, bpe_vocab=600)
    processor = build_processor(build_tokenizer(cfg.bpe_vocab, corpus), cfg.image_size, cfg.patch_size)
    return cfg, processor


def _model(small, lora: bool, dtype=torch.float32):
    from peft import LoraConfig, get_peft_model

    cfg, processor = small
    model = build_model(cfg, processor)
    model.resize_token_embeddings(VOCAB)
    model.to(dtype)
    if lora:
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=LORA_TARGETS))
        model.enable_input_require_grads()
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _batch(processor, batch: int, repeat: int):
    target = "Invoice 12345 total 99.00 EUR " * repeat
    b = training_batch(processor, [Image.new("RGB", (224, 224), "white")] * batch, ["ocr"] * batch, [target] * batch)
    labelled = int((b["labels"][0] != -100).sum())
    keep = labelled + 1  # as InvoiceTrainer cuts the logits
    return {**b, "labels": b["labels"][:, -keep:], "logits_to_keep": keep}, b["input_ids"].shape[1], keep


class PeakBytes(TorchDispatchMode):
    """The most bytes held at once by live tensor storages, checked after every op (the CPU's
    max_memory_allocated). Storages that exist when it starts (weights, optimizer states) are counted from the
    start."""

    def __init__(self, tensors=()):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0
        for t in tensors:
            self._add(t)

    def _add(self, t) -> None:
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            if st.data_ptr() and st.data_ptr() not in self.live:
                self.live[st.data_ptr()] = (StorageWeakRef(st), st.nbytes())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            self._add(t)
        for k in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            del self.live[k]
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))
        return out


def _measured_peak(model, batch, device: str) -> int:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    peak = 0
    for _ in range(2):  # the second step has the optimizer's states
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            tracker = PeakBytes([*model.parameters(), *(s for st in opt.state.values() for s in st.values())])
            with tracker:
                model(**batch).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            peak = tracker.peak
    return peak


def test_parts_follow_the_formula(small):
    _, processor = small
    model = _model(small, lora=True)
    batch, seq, keep = _batch(processor, 2, 10)
    sft = {"per_device_train_batch_size": 2, "gradient_checkpointing": True}
    parts, assumed = memory_estimate(model, sft, seq, 196, keep, cuda=False, unit=1)
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    assert parts["weights"] == sum(p.numel() * p.element_size() for p in params)
    assert parts["gradients"] == 4 * sum(p.numel() for p in trainable)  # fp32 LoRA weights
    assert parts["optimizer"] == 8 * sum(p.numel() for p in trainable)  # AdamW: two fp32 states
    assert parts["logits"] == 2 * keep * VOCAB * (4 + 12)  # B x P x V x (fp32 logits + fp32 log-probs + 2 grads)
    assert parts["layer_inputs"] == 2 * 2 * seq * 128 * 4  # L x B x S x H x 4: not divided, not multiplied
    assert parts["cuda_context"] == 0 and parts["cast_copies"] == 0
    assert assumed["logit_positions"] == keep and assumed["sequence"] == seq and assumed["image_tokens"] == 196
    assert parts["total"] == pytest.approx(
        sum(parts[k] for k in ("weights", "gradients", "optimizer", "cast_copies", "cuda_context", "layer_inputs",
                               "vision_tower", "attention_masks")) + max(parts["layer"], parts["logits"]))
    # under bf16 autocast the model-dtype logits are bf16, the loss's copy and gradients fp32
    mixed, _ = memory_estimate(model, {**sft, "bf16": True}, seq, 196, keep, cuda=True, unit=1)
    assert mixed["logits"] == 2 * keep * VOCAB * (2 + 12)
    assert mixed["cast_copies"] > 0  # fp32 weights under autocast: 16-bit copies of the output layer and a layer
    assert mixed["cuda_context"] == 0.75 * 2**30


def test_lora_on_a_bf16_base_halves_the_weights(small):
    sft = {"per_device_train_batch_size": 1, "gradient_checkpointing": True, "bf16": True}
    fp32, _ = memory_estimate(_model(small, True), sft, 400, 196, 100, cuda=True, unit=1)
    bf16, assumed = memory_estimate(_model(small, True, torch.bfloat16), sft, 400, 196, 100, cuda=True, unit=1)
    lora = fp32["gradients"]  # the fp32 LoRA weights' bytes: peft keeps adapters in fp32 on a bf16 base
    assert bf16["weights"] - lora == pytest.approx((fp32["weights"] - lora) / 2)
    assert bf16["cast_copies"] == 0 and fp32["cast_copies"] > 0
    assert bf16["layer_inputs"] == fp32["layer_inputs"] / 2  # the residual stream in the weights' dtype
    assert assumed["weights_dtype"] == "bfloat16" and bf16["total"] < fp32["total"]


def test_base_dtype_is_bf16_for_adapters_on_a_gpu(monkeypatch):
    assert methods.base_dtype(TrainConfig(method="lora")) is None  # this machine: no CUDA, fp32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert methods.base_dtype(TrainConfig(method="lora")) is torch.bfloat16
    assert methods.base_dtype(TrainConfig(method="qlora")) is torch.bfloat16
    assert methods.base_dtype(TrainConfig(method="full")) is None  # fp32 master weights


@pytest.mark.parametrize("lora,repeat", [(True, 10), (True, 40), (False, 10)],
                         ids=["lora-logits", "lora-attention", "full"])
def test_estimate_within_25_percent_of_the_measured_peak(small, lora, repeat):
    """CPU: the peak of live storages op by op, fp32. GPU: torch.cuda.max_memory_allocated under bf16 autocast,
    against the estimate less the CUDA context (which max_memory_allocated does not see)."""
    _, processor = small
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    model = _model(small, lora).to(device)
    batch, seq, keep = _batch(processor, 2, repeat)
    sft = {"per_device_train_batch_size": 2, "gradient_checkpointing": True, "bf16": cuda}
    parts, _ = memory_estimate(model, sft, seq, 196, keep, cuda=cuda, unit=1)
    if cuda:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            measured = _measured_peak(model, batch, device)
    else:
        measured = _measured_peak(model, batch, device)
    estimate = parts["total"] - parts["cuda_context"]
    assert 0.75 * measured <= estimate <= 1.25 * measured, (estimate, measured, parts)
