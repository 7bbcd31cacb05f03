"""Page models of the PaliGemma family at a tiny size: SigLIP tower, linear projector, Gemma (or Gemma 2)
decoder and a byte-level BPE tokenizer trained on synthetic invoice text."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from .base import SPECIAL_TOKENS, _ALPHABET_LINE


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
        from ..synth import text_corpus

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
    # White paper maps to 0 and ink to -2 (mean 1, not SigLIP's 0.5). With 0.5 every blank patch carries the same
    # large vector and the ink is a small change on top of it: trained from scratch, the vision tower collapsed to
    # one output for every patch and the decoder learned to ignore the image (features varied 0.3% across patches
    # after 500 steps). With blank = 0, a patch's embedding is its ink plus its position.
    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size},
                                              image_mean=[1.0, 1.0, 1.0], image_std=[0.5, 0.5, 0.5])
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
    from ..common import staged_dir

    cfg = cfg or TinyModelConfig()
    tokenizer = build_tokenizer(cfg.bpe_vocab)
    processor = build_processor(tokenizer, cfg.image_size, cfg.patch_size)
    model = build_model(cfg, processor)
    out = Path(out)
    with staged_dir(out) as stage:  # a reader (another rank, say) never sees a half-written folder
        model.save_pretrained(stage, safe_serialization=True)
        processor.save_pretrained(stage)
    return out
