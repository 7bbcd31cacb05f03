"""Models: build the tiny PaliGemma the project ships, and load any checkpoint the same way as a hub one.

Run as::

    invoice-vlm init-model --out models/tiny-random            # a fresh random tiny PaliGemma, saved like a hub repo

The tiny model is the real architecture (``PaliGemmaForConditionalGeneration``: SigLIP vision tower, linear
projector, Gemma or Gemma 2 decoder) with a byte-level BPE tokenizer trained here on synthetic invoice text in
six languages (so every character an invoice prints encodes, and common invoice words are single tokens) and a
``PaliGemmaProcessor``. It is written with ``save_pretrained`` and read back with ``from_pretrained``, the code
path a hub id such as ``google/paligemma2-3b-pt-448`` takes too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from .common import InvoiceVLMError

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"]
# Built fresh (random weights) by `train` when its config names it, instead of a folder or hub id.
TINY_RANDOM = "tiny-random"
TINY_RANDOM_2 = "tiny-random-paligemma2"

# Every character our locales print, so they are merged into tokens even if the sampled corpus misses some.
_ALPHABET_LINE = ("€ £ $ ¥ ₹ CHF % ° № º ª ß ä ö ü Ä Ö Ü é è ê ë à â ç î ï ô û ù ÿ œ æ É È Ê À Ç Ô Œ ñ á í ó ú "
                  "Ñ Á Í Ó Ú ì ò Ì Ò ø å Ø Å ĳ – — · • « » „ “ ” ‘ ’ @ # & * / \\ ( ) [ ] + - = : ; , . ! ? _ |")


@dataclass
class TinyModelConfig:
    variant: Literal["paligemma", "paligemma2"] = field(default="paligemma",
                                                        metadata={"help": "Gemma (1) or Gemma 2 decoder"})
    image_size: int = 224
    patch_size: int = 16
    vision_hidden: int = 192
    vision_layers: int = 4
    vision_heads: int = 3
    vision_intermediate: int = 768
    text_hidden: int = 256
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 1
    text_head_dim: int = 64
    text_intermediate: int = 1024
    bpe_vocab: int = 2048
    max_position_embeddings: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.vision_hidden % self.vision_heads:
            raise ValueError("vision_hidden must be divisible by vision_heads")

    @property
    def image_seq_length(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def build_tokenizer(vocab_size: int = 2048, corpus: list[str] | None = None):
    """A byte-level BPE tokenizer (no unknown characters possible) trained on synthetic invoice text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if corpus is None:
        from .synth import text_corpus

        corpus = text_corpus()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([*corpus, *[_ALPHABET_LINE] * 20], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", padding_side="right")


def build_processor(tokenizer, image_size: int, patch_size: int):
    from transformers import PaliGemmaProcessor, SiglipImageProcessorPil

    seq = (image_size // patch_size) ** 2
    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size},
                                              image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    image_processor.image_seq_length = seq
    # The processor adds <image> (already ours) and PaliGemma's 1024 <locNNNN> + 128 <segNNN> tokens.
    return PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_model(cfg: TinyModelConfig, processor):
    from transformers import (Gemma2Config, GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration,
                              SiglipVisionConfig)

    tok = processor.tokenizer
    vision = SiglipVisionConfig(hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_intermediate,
                                num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
                                image_size=cfg.image_size, patch_size=cfg.patch_size, vision_use_head=False)
    common = dict(hidden_size=cfg.text_hidden, intermediate_size=cfg.text_intermediate,
                  num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
                  num_key_value_heads=cfg.text_kv_heads, head_dim=cfg.text_head_dim, vocab_size=len(tok),
                  max_position_embeddings=cfg.max_position_embeddings, pad_token_id=tok.pad_token_id,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if cfg.variant == "paligemma2":
        # Gemma 2: sliding-window layers alternate with global ones, logits soft-capped, as in PaliGemma 2.
        text = Gemma2Config(**common, sliding_window=512, query_pre_attn_scalar=cfg.text_head_dim)
    else:
        text = GemmaConfig(**common)
    config = PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=processor.image_token_id,
                             vocab_size=len(tok), projection_dim=cfg.text_hidden, hidden_size=cfg.text_hidden)
    torch.manual_seed(cfg.seed)
    model = PaliGemmaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    return model


def create_tiny(out: str | Path, cfg: TinyModelConfig | None = None) -> Path:
    """Build a random tiny PaliGemma with its tokenizer and processor and save it like a hub checkpoint."""
    cfg = cfg or TinyModelConfig()
    tokenizer = build_tokenizer(cfg.bpe_vocab)
    processor = build_processor(tokenizer, cfg.image_size, cfg.patch_size)
    model = build_model(cfg, processor)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


def resolve_model(spec: str, workdir: Path) -> str:
    """A folder or hub id as is; ``tiny-random`` / ``tiny-random-paligemma2`` built into ``workdir/base``."""
    if spec in (TINY_RANDOM, TINY_RANDOM_2):
        base = workdir / "base"
        if not (base / "config.json").is_file():
            create_tiny(base, TinyModelConfig(variant="paligemma2" if spec == TINY_RANDOM_2 else "paligemma"))
        return str(base)
    return spec


def load(name_or_path: str | Path, dtype: torch.dtype | None = None, device: str | None = None,
         trust_remote_code: bool = False):
    """Load (model, processor) from a folder or a hub id. Safetensors only; remote code only when asked."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    name = str(name_or_path)
    p = Path(name)
    if p.exists() and not (p / "config.json").is_file():
        raise InvoiceVLMError(f"{p}: no model here (config.json missing)")
    if not p.exists() and (name.startswith((".", "/", "~")) or name.count("/") != 1):
        raise InvoiceVLMError(f"{name}: model folder not found (and not a hub id of the form owner/name)")
    try:
        processor = AutoProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype or torch.float32,
                                                            use_safetensors=True,
                                                            trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:  # missing files, no safetensors, offline hub, unreadable config
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise InvoiceVLMError(f"{name}: cannot load model ({first})") from None
    if device:
        model.to(device)
    model.eval()
    return model, processor


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
