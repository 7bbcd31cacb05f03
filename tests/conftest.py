"""Tiny models and tiny datasets, built once per test session, offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from invoice_vlm.models import TinyModelConfig, build_processor, build_tokenizer, build_model  # noqa: E402
from invoice_vlm.synth import get_font, text_corpus  # noqa: E402

# A few dozen hidden units, 2 layers, 64 px images with 16 px patches (16 image tokens): seconds on a CPU.
TINY = dict(image_size=64, patch_size=16, vision_hidden=32, vision_layers=2, vision_heads=2, vision_intermediate=64,
            text_hidden=64, text_layers=2, text_heads=2, text_kv_heads=1, text_head_dim=32, text_intermediate=128,
            bpe_vocab=600, max_position_embeddings=1024)


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return text_corpus(60)


def make_tiny(out: Path, corpus: list[str], variant: str = "paligemma") -> Path:
    cfg = TinyModelConfig(variant=variant, **TINY)
    processor = build_processor(build_tokenizer(cfg.bpe_vocab, corpus), cfg.image_size, cfg.patch_size)
    model = build_model(cfg, processor)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, corpus) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny") / "model", corpus)


@pytest.fixture(scope="session")
def tiny_model_pg2(tmp_path_factory, corpus) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny2") / "model", corpus, "paligemma2")


def write_text_dataset(root: Path, texts: dict[str, list[str]], size: int = 64) -> Path:
    """A dataset folder whose images show their (short) texts in big letters."""
    font = get_font("DejaVuSans", True, 14)
    for split, items in texts.items():
        folder = root / split
        folder.mkdir(parents=True)
        with open(folder / "metadata.jsonl", "w", encoding="utf-8") as f:
            for i, text in enumerate(items):
                im = Image.new("RGB", (size, size), "white")
                ImageDraw.Draw(im).multiline_text((2, 2), text, font=font, fill="black")
                name = f"{i:04d}.png"
                im.save(folder / name)
                f.write(json.dumps({"file_name": name, "id": f"{split}-{i}", "text": text, "fields": {}}) + "\n")
    return root


@pytest.fixture()
def text_dataset(tmp_path) -> Path:
    return write_text_dataset(tmp_path / "data", {"train": ["AB 12", "€ 7,50"], "test": ["AB 12", "€ 7,50"]})


@pytest.fixture(scope="session")
def reading_model(tiny_model, tmp_path_factory):
    """The tiny PaliGemma with weights that make its text depend on the page (the random one writes newlines
    only): tests that compare texts compare real ones."""
    import torch

    from invoice_vlm.models import load

    model, processor = load(tiny_model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for w in model.parameters():
            if w.dim() >= 2:
                w.copy_(torch.randn(w.shape, generator=g) * 0.2)
    out = tmp_path_factory.mktemp("reading") / "model"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
