"""Models: the shipped row reader, tiny random page models, and loading any checkpoint the same way as a hub one.

Run as::

    invoice-vlm init-model --out models/tiny-rows --variant rows  # a fresh random row reader (invoice-vlm-tiny's shape)
    invoice-vlm init-model --out models/tiny-random               # a fresh random tiny PaliGemma, saved like a hub repo

Two kinds of model read invoices here:

- the row reader, ``invoice-vlm-tiny`` (shipped in ``models/``): ``FastVlmForConditionalGeneration`` with a small
  ResNet tower, a Qwen2 decoder and one token per character. It reads one text row at a time, cut from the page by
  the segmenter (``invoice_vlm.rows``) as its config's reading unit (``config.reading``) says.
- page models, which read whole pages: the real PaliGemma architecture at a tiny size (SigLIP vision tower, linear
  projector, Gemma or Gemma 2 decoder, a byte-level BPE tokenizer trained here on synthetic invoice text in six
  languages, ``PaliGemmaProcessor``), and a tiny Idefics3 (chat template). They are the families that hub
  checkpoints such as ``google/paligemma2-3b-pt-448`` fine-tune in.

Every model is written with ``save_pretrained`` and read back with ``from_pretrained``, the code path a hub id takes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .base import (
    EMBEDDED, EMBEDDED_DIR, JSON_FILES, PICKLE_SUFFIXES, SPECIAL_TOKENS, TINY_RANDOM, TINY_RANDOM_2,
    TINY_RANDOM_IDEFICS3, TINY_RANDOM_ROWS, check_model_folder, count_parameters, embedded_model, load,
)
from .batches import (
    PageKind, family, generated_tokens, generation_inputs, image_token_count, image_token_id, kind_of,
    normalize_pixels, raw_pixels_supported, training_batch,
)
from .chat import (
    DEEPSEEK_OCR2_CHAT_TEMPLATE, GEMMA3_CHAT_TEMPLATE, GOT_OCR2_CHAT_TEMPLATE, IDEFICS3_CHAT_TEMPLATE,
    IDEFICS3_SPECIALS, PADDLEOCR_VL_CHAT_TEMPLATE, TINY_CHAT_FAMILIES, TinyChatConfig, TinyIdefics3Config,
    create_tiny_deepseek_ocr2, create_tiny_florence2, create_tiny_gemma3, create_tiny_got_ocr2,
    create_tiny_granite_docling, create_tiny_idefics3, create_tiny_lighton_ocr, create_tiny_paddleocr_vl,
)
from .paligemma import (
    TinyModelConfig, build_model, build_processor, build_tokenizer, create_tiny,
)
from .rows import (
    CTC_HEAD_FILE, CtcHead, DecoderScores, ROW_MARGIN, ROW_SPECIALS, ReadingUnit, RowKind, RowModelConfig, RowPrefix,
    TRAIN_WIDTH_GRID, build_char_tokenizer, build_row_model, build_row_processor, create_row_model, ctc_nbest,
    decoder_log_probs, decoder_readings, greedy_ctc, reading_unit_of, row_alphabet, row_batch, row_image_tokens,
    row_model_inputs, row_token_budget,
)

__all__ = [  # the package's names: each kind's module, and resolve_model below
    "EMBEDDED", "EMBEDDED_DIR", "JSON_FILES", "PICKLE_SUFFIXES", "SPECIAL_TOKENS", "TINY_RANDOM", "TINY_RANDOM_2",
    "TINY_RANDOM_IDEFICS3", "TINY_RANDOM_ROWS", "check_model_folder", "count_parameters", "embedded_model", "load",
    "PageKind", "family", "kind_of", "generated_tokens", "generation_inputs", "image_token_count", "image_token_id",
    "normalize_pixels", "raw_pixels_supported", "training_batch", "DEEPSEEK_OCR2_CHAT_TEMPLATE", "GEMMA3_CHAT_TEMPLATE",
    "GOT_OCR2_CHAT_TEMPLATE", "IDEFICS3_CHAT_TEMPLATE", "IDEFICS3_SPECIALS", "PADDLEOCR_VL_CHAT_TEMPLATE",
    "TINY_CHAT_FAMILIES", "TinyChatConfig", "TinyIdefics3Config", "create_tiny_deepseek_ocr2",
    "create_tiny_florence2", "create_tiny_gemma3", "create_tiny_got_ocr2", "create_tiny_granite_docling",
    "create_tiny_idefics3", "create_tiny_lighton_ocr", "create_tiny_paddleocr_vl", "TinyModelConfig", "build_model",
    "build_processor", "build_tokenizer", "create_tiny", "CTC_HEAD_FILE", "CtcHead", "DecoderScores", "ROW_MARGIN",
    "ROW_SPECIALS", "ReadingUnit", "RowKind", "RowModelConfig", "TRAIN_WIDTH_GRID", "build_char_tokenizer",
    "build_row_model", "build_row_processor", "create_row_model", "ctc_nbest", "decoder_log_probs",
    "decoder_readings", "greedy_ctc", "RowPrefix", "reading_unit_of", "row_alphabet", "row_batch", "row_image_tokens",
    "row_model_inputs", "row_token_budget", "resolve_model",
]


def resolve_model(spec: str, workdir: Path, tiny: TinyModelConfig | None = None) -> str:
    """A folder or hub id as is; ``invoice-vlm-tiny`` the shipped folder; ``tiny-random[-paligemma2|-idefics3]``
    and ``tiny-random-<family>`` (TINY_CHAT_FAMILIES: gemma3, lighton-ocr, paddleocr-vl, granite-docling,
    deepseek-ocr2, got-ocr2, florence2) built into ``workdir/base`` (PaliGemma with the architecture ``tiny``, if
    given)."""
    if spec == EMBEDDED:
        return str(embedded_model())
    chat = spec.removeprefix("tiny-random-").replace("-", "_")
    if spec in (TINY_RANDOM, TINY_RANDOM_2, TINY_RANDOM_IDEFICS3, TINY_RANDOM_ROWS) or (
            spec.startswith("tiny-random-") and chat in TINY_CHAT_FAMILIES):
        base = workdir / "base"
        if not (base / "config.json").is_file():
            if chat in TINY_CHAT_FAMILIES:
                TINY_CHAT_FAMILIES[chat](base)
            elif spec == TINY_RANDOM_ROWS:
                create_row_model(base)
            elif spec == TINY_RANDOM_IDEFICS3:
                create_tiny_idefics3(base)
            else:
                arch = dataclasses.replace(tiny or TinyModelConfig(),
                                           variant="paligemma2" if spec == TINY_RANDOM_2 else "paligemma")
                create_tiny(base, arch)
        return str(base)
    return spec
