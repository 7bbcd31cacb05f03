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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from .common import InvoiceVLMError

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"]
# Built fresh (random weights) by `train` when its config names it, instead of a folder or hub id.
TINY_RANDOM = "tiny-random"
# The embedded default: invoice-vlm-tiny, pretrained by this project (configs/tiny/pretrain.yaml) and shipped in the
# repository. `demo`, `predict`, `serve` and `train` use it unless told otherwise.
EMBEDDED = "invoice-vlm-tiny"
EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "models" / EMBEDDED
TINY_RANDOM_2 = "tiny-random-paligemma2"
TINY_RANDOM_IDEFICS3 = "tiny-random-idefics3"
TINY_RANDOM_ROWS = "tiny-random-rows"  # a fresh row reader of invoice-vlm-tiny's architecture

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
    from .common import staged_dir

    cfg = cfg or TinyModelConfig()
    tokenizer = build_tokenizer(cfg.bpe_vocab)
    processor = build_processor(tokenizer, cfg.image_size, cfg.patch_size)
    model = build_model(cfg, processor)
    out = Path(out)
    with staged_dir(out) as stage:  # a reader (another rank, say) never sees a half-written folder
        model.save_pretrained(stage, safe_serialization=True)
        processor.save_pretrained(stage)
    return out


# ------------------------------------------------------------------------------------------ row reader
# invoice-vlm-tiny reads one text row at a time (invoice_vlm.rows cuts pages into rows). Its architecture is
# FastVLM's (FastVlmForConditionalGeneration, native in transformers): a convolutional tower — transformers' own
# ResNetModel — whose feature map is flattened into image tokens, an MLP projector and a Qwen2 decoder that writes
# the row character by character. Trained from scratch on this CPU, a convolutional front end starts reading many
# times sooner than a ViT with linear patches (docs/embedded-model.md has the bake-off).

@dataclass(frozen=True)
class ReadingUnit:
    """How a model reads, recorded in its config.json under ``reading``."""

    unit: str = "row"  # "row": one text row an input; "page": the whole page (PaliGemma hub checkpoints)
    height: int = 32  # a row is scaled to this height, its width following the aspect ratio
    max_width: int = 1536  # wider rows are squeezed to this
    multiple: int = 16  # widths are padded to a multiple of the vision tower's stride (white on the right)
    grayscale: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_config(cls, config) -> "ReadingUnit | None":
        """The unit recorded in a model's config (or config dict); None for a page model."""
        data = config.get("reading") if isinstance(config, dict) else getattr(config, "reading", None)
        if not data or data.get("unit", "page") == "page":
            return None
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


ROW_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"]


@dataclass
class RowModelConfig:
    height: int = field(default=32, metadata={"help": "row image height in px (the tower's stride divides it)"})
    max_width: int = 1536
    stem: int = 32  # ResNet embedding width
    widths: list[int] = field(default_factory=lambda: [64, 128, 256])  # ResNet stage widths
    depths: list[int] = field(default_factory=lambda: [1, 1, 1])
    text_hidden: int = 256
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 1
    text_intermediate: int = 1024
    max_position_embeddings: int = 1024
    seed: int = 0

    @property
    def stride(self) -> int:
        return 4 * 2 ** (len(self.widths) - 1)  # stem /4, then /2 in every stage but the first

    def __post_init__(self) -> None:
        if self.height % self.stride:
            raise ValueError(f"height {self.height} is not a multiple of the tower's stride {self.stride}")
        if len(self.widths) != len(self.depths):
            raise ValueError("widths and depths need one entry per ResNet stage")


def row_alphabet() -> list[str]:
    """Every character the synthetic invoices print, plus printable ASCII and the locales' symbols."""
    import string

    from .synth import text_corpus

    chars = set(string.printable[:95]) | set(_ALPHABET_LINE.replace(" ", "")) | set("".join(text_corpus()))
    return sorted(c for c in chars if c not in "\n\r\t\x0b\x0c")


def build_char_tokenizer(chars: list[str] | None = None):
    """One token per character (a BPE model with no merges; anything else is <unk>): a reader learned from scratch
    aligns characters to pixels, which word pieces would hide."""
    from tokenizers import Tokenizer, decoders, models as tk_models
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(ROW_SPECIALS + (chars or row_alphabet()))}
    tok = Tokenizer(tk_models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", extra_special_tokens={"image_token": "<image>"},
                                   clean_up_tokenization_spaces=False, padding_side="right")


def build_row_processor(tokenizer, cfg: RowModelConfig):
    from transformers import LlavaProcessor, SiglipImageProcessorPil

    # Rows arrive already scaled to cfg.height and padded to a multiple of the stride (invoice_vlm.rows), so the
    # image processor only rescales and normalises; LlavaProcessor writes one <image> per feature-map cell.
    image_processor = SiglipImageProcessorPil(do_resize=False, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=cfg.stride,
                          vision_feature_select_strategy="full", image_token="<image>")


def build_row_model(cfg: RowModelConfig, tokenizer):
    from transformers import FastVlmConfig, FastVlmForConditionalGeneration, Qwen2Config, ResNetConfig

    vision = ResNetConfig(num_channels=3, embedding_size=cfg.stem, hidden_sizes=list(cfg.widths),
                          depths=list(cfg.depths), layer_type="basic", downsample_in_first_stage=False)
    vision.hidden_size = cfg.widths[-1]  # FastVLM's projector reads the tower's output width from here
    text = Qwen2Config(hidden_size=cfg.text_hidden, intermediate_size=cfg.text_intermediate,
                       num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
                       num_key_value_heads=cfg.text_kv_heads, head_dim=cfg.text_hidden // cfg.text_heads,
                       vocab_size=len(tokenizer), max_position_embeddings=cfg.max_position_embeddings,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    config = FastVlmConfig(vision_config=vision, text_config=text,
                           image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                           image_seq_length=(cfg.height // cfg.stride) * (cfg.max_width // cfg.stride))
    config.reading = ReadingUnit(unit="row", height=cfg.height, max_width=cfg.max_width,
                                 multiple=cfg.stride).to_dict()
    torch.manual_seed(cfg.seed)
    model = FastVlmForConditionalGeneration(config)
    for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    return model


# White added to the right of every row before it is encoded, part of the row (attended, the same in every batch):
# the tower's last columns then see paper, as they did when rows were trained padded to a wider neighbour.
ROW_MARGIN = 192


def row_batch(rows: Sequence[np.ndarray], texts: Sequence[str] | None, tokenizer, unit: ReadingUnit,
              image_token_id: int) -> dict[str, torch.Tensor]:
    """Model inputs for rows (uint8, height x width each): pixels padded white to one width, then
    [<image> x cells, <bos>] (+ target + <eos> with labels when ``texts`` is given). ``ctc_targets`` and
    ``image_columns`` (each row's own width in feature columns) feed a CTC head."""
    rows = [np.pad(r, ((0, 0), (0, ROW_MARGIN)), constant_values=255) for r in rows] if ROW_MARGIN else rows
    widths = [r.shape[1] for r in rows]
    width = -(-max(widths) // unit.multiple) * unit.multiple
    pix = np.full((len(rows), unit.height, width), 255, np.uint8)
    for i, r in enumerate(rows):
        pix[i, :, :r.shape[1]] = r
    x = torch.from_numpy(pix).float().div_(127.5).sub_(1.0)  # the processor's rescale + normalise (mean=std=0.5)
    pixel_values = x[:, None].expand(-1, 3, -1, -1).contiguous()
    cells = (unit.height // unit.multiple) * (width // unit.multiple)
    head = [image_token_id] * cells + [tokenizer.bos_token_id]
    out: dict[str, torch.Tensor] = {"pixel_values": pixel_values,
                                    "image_columns": torch.tensor([-(-w // unit.multiple) for w in widths])}
    if texts is None:
        ids = torch.tensor([head] * len(rows))
        out.update(input_ids=ids, attention_mask=torch.ones_like(ids))
        return out
    targets = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    length = len(head) + max(len(t) for t in targets) + 1
    ids = torch.full((len(rows), length), tokenizer.pad_token_id)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, t in enumerate(targets):
        seq = head + t + [tokenizer.eos_token_id]
        ids[i, :len(seq)] = torch.tensor(seq)
        labels[i, len(head):len(seq)] = torch.tensor(t + [tokenizer.eos_token_id])
        mask[i, :len(seq)] = 1
    out.update(input_ids=ids, attention_mask=mask, labels=labels,
               ctc_targets=torch.tensor([c for t in targets for c in t], dtype=torch.long),
               ctc_lengths=torch.tensor([len(t) for t in targets]))
    return out


# Training encodes rows in groups of widths rounded up to this many pixels: a batch of 32 rows has some 25 distinct
# widths, and one tower call each made a fine-tuning step 3x slower. A row's pixels, its white margin and its
# attended tokens are as at inference; only the margin's last columns see more white paper past the crop's edge
# (inference encodes each row at its own width, exactly).
TRAIN_WIDTH_GRID = 256


def row_model_inputs(model, batch: dict[str, torch.Tensor],
                     grid: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The decoder's inputs for a batch of rows (``rowdata.row_batch``), such that a row reads the same whatever its
    batch: the tower sees each row at its own width (rows of one width share a call; a convolution near a row's
    right edge would otherwise see the white padding of a wider neighbour; training passes ``grid``, see
    TRAIN_WIDTH_GRID), the image tokens of padded columns are
    kept out of attention, and positions count only the tokens attended to. Returns the image tokens
    (batch, cells, hidden; zero where padded: the CTC head reads them) and ``inputs_embeds``, ``attention_mask``,
    ``position_ids`` (and ``labels`` when the batch has them) for the model's forward or ``generate``."""
    pixels, ids, columns = batch["pixel_values"], batch["input_ids"], batch["image_columns"]
    unit = ReadingUnit.from_config(model.config)
    n, per_col, cols = len(ids), pixels.shape[2] // unit.multiple, pixels.shape[3] // unit.multiple
    hidden = model.config.text_config.hidden_size
    tokens = None
    step = max(1, grid // unit.multiple)  # grid 0: each row at its own width
    encoded = torch.clamp(-(-columns // step) * step, max=cols)
    for c in torch.unique(encoded).tolist():
        idx = torch.nonzero(encoded == c).flatten()
        feats = model.model.get_image_features(pixel_values=pixels[idx, :, :, :c * unit.multiple]).pooler_output
        if tokens is None:
            tokens = feats.new_zeros(n, per_col, cols, hidden)
        tokens[idx, :, :c] = feats.view(len(idx), per_col, c, hidden)
    if grid:  # zero past each row's own columns, as the CTC head expects
        tokens = tokens * (torch.arange(cols, device=tokens.device)[None, :] < columns.to(tokens.device)[:, None])[
            :, None, :, None].to(tokens.dtype)
    tokens = tokens.view(n, per_col * cols, hidden)
    is_image = ids.eq(model.config.image_token_id)
    embeds = model.get_input_embeddings()(ids).masked_scatter(is_image[..., None], tokens.to(model.dtype))
    padded = (torch.arange(cols, device=ids.device)[None, :] >= columns.to(ids.device)[:, None]).repeat(1, per_col)
    mask = batch["attention_mask"].clone()
    mask[is_image] = (~padded).to(mask.dtype).flatten()
    positions = (mask.cumsum(-1) - 1).clamp_(min=0)
    out = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions}
    if "labels" in batch:
        out["labels"] = batch["labels"]
    return tokens, out


def create_row_model(out: str | Path, cfg: RowModelConfig | None = None) -> Path:
    """A random row reader (FastVLM architecture) with its character tokenizer and processor, saved like a hub
    checkpoint; ``config.json`` records the reading unit."""
    from .common import staged_dir

    cfg = cfg or RowModelConfig()
    tokenizer = build_char_tokenizer()
    processor = build_row_processor(tokenizer, cfg)
    model = build_row_model(cfg, tokenizer)
    out = Path(out)
    with staged_dir(out) as stage:
        model.save_pretrained(stage, safe_serialization=True)
        processor.save_pretrained(stage)
    return out


def reading_unit_of(name_or_path: str | Path):
    """The reading unit a model's config.json records (invoice_vlm.rows.ReadingUnit), or None (it reads pages)."""
    import json

    name = str(embedded_model()) if str(name_or_path) == EMBEDDED else str(name_or_path)
    cfg = Path(name) / "config.json"
    if cfg.is_file():
        try:
            return ReadingUnit.from_config(json.loads(cfg.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as e:
            raise InvoiceVLMError(f"{cfg}: unreadable reading unit ({e})") from None
    return None  # a hub id: the hub's PaliGemma checkpoints read pages


def embedded_model() -> Path:
    if not (EMBEDDED_DIR / "config.json").is_file():
        raise InvoiceVLMError(f"{EMBEDDED}: the embedded model is missing ({EMBEDDED_DIR}); this needs a source "
                              "checkout of invoice-vlm, or give a model folder or hub id")
    return EMBEDDED_DIR


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


# ------------------------------------------------------------------------------------------ Idefics3
# A second family, trained by the same command through its chat template. Idefics3 (SmolVLM's architecture:
# SigLIP, pixel-shuffle connector, Llama decoder) because its processor needs no torchvision; Qwen2-VL's and
# SmolVLM's processors carry a video processor that does.

IDEFICS3_BOS, IDEFICS3_EOU, IDEFICS3_PAD = "<|begin_of_text|>", "<end_of_utterance>", "<|finetune_right_pad_id|>"
IDEFICS3_SPECIALS = [IDEFICS3_BOS, "<|end_of_text|>", IDEFICS3_PAD, IDEFICS3_EOU, "<fake_token_around_image>",
                     "<image>", "<global-img>", *[f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]]
# HuggingFaceM4/Idefics3-8B-Llama3's template, which also accepts plain-string content.
IDEFICS3_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


@dataclass
class TinyIdefics3Config:
    crop_size: int = 128  # side of each image crop the vision encoder sees
    patch_size: int = 16
    scale_factor: int = 2  # pixel shuffle: (crop / patch)^2 / scale^2 tokens per crop
    longest_edge: int = 256  # the page is resized to this, then cut into crops (+ one global crop)
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    bpe_vocab: int = 2048
    seed: int = 0


def create_tiny_idefics3(out: str | Path, cfg: TinyIdefics3Config | None = None, corpus: list[str] | None = None) -> Path:
    """A random tiny ``Idefics3ForConditionalGeneration`` with its tokenizer, chat template and processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil,
                              Idefics3Processor, PreTrainedTokenizerFast)

    cfg = cfg or TinyIdefics3Config()
    if corpus is None:
        from .synth import text_corpus

        corpus = text_corpus()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([*corpus, *[_ALPHABET_LINE] * 20, "User: Assistant:"], trainers.BpeTrainer(
        vocab_size=cfg.bpe_vocab, special_tokens=IDEFICS3_SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    # no post-processor: the chat template writes the bos token itself
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=IDEFICS3_BOS, eos_token=IDEFICS3_EOU,
                                  pad_token=IDEFICS3_PAD, unk_token=None, padding_side="right",
                                  chat_template=IDEFICS3_CHAT_TEMPLATE)
    image_processor = Idefics3ImageProcessorPil(do_resize=True, size={"longest_edge": cfg.longest_edge},
                                                do_image_splitting=True,
                                                max_image_size={"longest_edge": cfg.crop_size})
    seq = (cfg.crop_size // cfg.patch_size) ** 2 // cfg.scale_factor**2
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=seq,
                                  chat_template=IDEFICS3_CHAT_TEMPLATE)
    text = dict(model_type="llama", vocab_size=len(tok), hidden_size=cfg.hidden, intermediate_size=4 * cfg.hidden,
                num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads // 2,
                max_position_embeddings=4096, rms_norm_eps=1e-5, pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    vision = dict(hidden_size=cfg.hidden, intermediate_size=4 * cfg.hidden, num_hidden_layers=cfg.layers,
                  num_attention_heads=cfg.heads, image_size=cfg.crop_size, patch_size=cfg.patch_size)
    config = Idefics3Config(text_config=text, vision_config=vision, scale_factor=cfg.scale_factor,
                            image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id,
                            tie_word_embeddings=False)
    torch.manual_seed(cfg.seed)
    model = Idefics3ForConditionalGeneration(config)
    for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tok, key))
    from .common import staged_dir

    out = Path(out)
    with staged_dir(out) as stage:
        model.save_pretrained(stage, safe_serialization=True)
        processor.save_pretrained(stage)
    return out


# ------------------------------------------------------------------------------------------ more chat families
# Tiny random models of the document-OCR families that the installed transformers builds natively and whose
# processor needs no torchvision (docs/fine-tuning.md has the table, and why Qwen2.5-VL, Qwen3-VL, SmolVLM and
# GLM-OCR are not among them). Each is the real architecture at a few dozen hidden units with a byte-level BPE
# trained here and the family's chat format; all go through the same chat path (training_batch,
# generation_inputs) as Idefics3.


@dataclass
class TinyChatConfig:
    image_size: int = 64  # side (or longest edge) of the page the vision tower sees
    patch_size: int = 16  # pixels per image token side, after any merge or pooling
    hidden: int = 64  # decoder width; the vision tower is half as wide
    layers: int = 2
    heads: int = 2
    bpe_vocab: int = 600
    seed: int = 0


def _chat_tokenizer(specials: list[str], template: str, corpus: list[str] | None, vocab: int, **tokens):
    """A byte-level BPE trained on synthetic invoice text, with a family's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if corpus is None:
        from .synth import text_corpus

        corpus = text_corpus()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([*corpus, *[_ALPHABET_LINE] * 20, "User: user Assistant: assistant model"],
                            trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, padding_side="right", chat_template=template, **tokens)


def _save_chat_model(out: str | Path, model, processor) -> Path:
    from .common import staged_dir

    for key in ("eos_token_id", "pad_token_id", "bos_token_id"):  # generation stops at the end-of-turn token
        setattr(model.generation_config, key, getattr(processor.tokenizer, key))
    out = Path(out)
    with staged_dir(out) as stage:
        model.save_pretrained(stage, safe_serialization=True)
        processor.save_pretrained(stage)
    return out


# google/gemma-3-*'s turn format (without its system-prompt handling): the processor expands <start_of_image>.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>{{ 'model' if message['role'] == 'assistant' "
    "else message['role'] }}\n{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>{% elif item['type'] == "
    "'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def create_tiny_gemma3(out: str | Path, cfg: TinyChatConfig | None = None, corpus: list[str] | None = None) -> Path:
    """A random tiny ``Gemma3ForConditionalGeneration`` (SigLIP, average-pooled image tokens, Gemma 3 decoder)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor

    cfg = cfg or TinyChatConfig()
    specials = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                "<image_soft_token>"]
    tok = _chat_tokenizer(specials, GEMMA3_CHAT_TEMPLATE, corpus, cfg.bpe_vocab, bos_token="<bos>",
                          eos_token="<end_of_turn>", pad_token="<pad>",
                          extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                                "image_token": "<image_soft_token>"})
    vit_patch = cfg.patch_size // 2  # the tower's patches; Gemma 3 pools them 2x2 here (4x4 at 896 px)
    tokens = (cfg.image_size // cfg.patch_size) ** 2
    processor = Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": cfg.image_size,
                                                                              "width": cfg.image_size}),
                                tokenizer=tok, chat_template=GEMMA3_CHAT_TEMPLATE, image_seq_length=tokens)
    text = dict(vocab_size=len(tok), hidden_size=cfg.hidden, intermediate_size=2 * cfg.hidden,
                num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=1,
                head_dim=cfg.hidden // cfg.heads, max_position_embeddings=1024, sliding_window=64,
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    vision = dict(hidden_size=cfg.hidden // 2, intermediate_size=cfg.hidden, num_hidden_layers=cfg.layers,
                  num_attention_heads=cfg.heads, image_size=cfg.image_size, patch_size=vit_patch,
                  vision_use_head=False)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=tokens,
                          boi_token_index=tok.boi_token_id, eoi_token_index=tok.eoi_token_id,
                          image_token_index=tok.image_token_id)
    torch.manual_seed(cfg.seed)
    model = Gemma3ForConditionalGeneration(config)
    # transformers starts the projector at zero (a trained checkpoint replaces it): from scratch, no gradient would
    # reach the vision tower
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight,
                          std=config.text_config.hidden_size ** -0.5)
    return _save_chat_model(out, model, processor)


def _chatml_template(image: str) -> str:
    """Qwen's ChatML turns, with the family's image placeholder (the processor expands it)."""
    return ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
            "{{ message['content'] }}{% else %}{% for item in message['content'] %}{% if item['type'] == 'image' %}"
            + image + "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
            "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def create_tiny_lighton_ocr(out: str | Path, cfg: TinyChatConfig | None = None,
                            corpus: list[str] | None = None) -> Path:
    """A random tiny ``LightOnOcrForConditionalGeneration`` (Pixtral tower at native resolution, 2x2 patch merge,
    Qwen3 decoder, ChatML)."""
    from transformers import (LightOnOcrConfig, LightOnOcrForConditionalGeneration, LightOnOcrProcessor,
                              PixtralImageProcessorPil)

    cfg = cfg or TinyChatConfig()
    template = _chatml_template("<|image_pad|>")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|vision_pad|>", "<|vision_end|>"]
    tok = _chat_tokenizer(specials, template, corpus, cfg.bpe_vocab, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                          extra_special_tokens={"image_token": "<|image_pad|>", "image_break_token": "<|vision_pad|>",
                                                "image_end_token": "<|vision_end|>"})
    merge = 2
    patch = cfg.patch_size // merge
    # the page keeps its aspect ratio (longest edge image_size), cut to whole merged patches
    ip = PixtralImageProcessorPil(size={"longest_edge": cfg.image_size},
                                  patch_size={"height": cfg.patch_size, "width": cfg.patch_size})
    processor = LightOnOcrProcessor(image_processor=ip, tokenizer=tok, patch_size=patch, spatial_merge_size=merge,
                                    chat_template=template)
    vision = dict(model_type="pixtral", hidden_size=cfg.hidden // 2, intermediate_size=cfg.hidden,
                  num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, head_dim=cfg.hidden // 2 // cfg.heads,
                  image_size=cfg.image_size, patch_size=patch)
    text = dict(model_type="qwen3", vocab_size=len(tok), hidden_size=cfg.hidden, intermediate_size=2 * cfg.hidden,
                num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=1,
                head_dim=cfg.hidden // cfg.heads, max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id, bos_token_id=None, tie_word_embeddings=True)
    config = LightOnOcrConfig(vision_config=vision, text_config=text, spatial_merge_size=merge,
                              image_token_id=tok.image_token_id)
    torch.manual_seed(cfg.seed)
    return _save_chat_model(out, LightOnOcrForConditionalGeneration(config), processor)


# PaddleOCR-VL's (ERNIE 4.5) turns: "User: <image>prompt\nAssistant:\nanswer</s>".
PADDLEOCR_VL_CHAT_TEMPLATE = (
    "<s>{% for message in messages %}{% if message['role'] == 'user' %}User: {% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for item in message['content'] %}{% if item['type'] == 'image' %}"
    "<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>{% elif item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{{ '\\n' }}{% else %}Assistant:\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for item in message['content'] %}{{ item['text'] }}{% endfor %}{% endif %}"
    "</s>{% endif %}{% endfor %}{% if add_generation_prompt %}Assistant:\n{% endif %}")


def create_tiny_paddleocr_vl(out: str | Path, cfg: TinyChatConfig | None = None,
                             corpus: list[str] | None = None) -> Path:
    """A random tiny ``PaddleOCRVLForConditionalGeneration`` (NaViT-style SigLIP at native resolution, 2x2 merge,
    ERNIE 4.5 decoder with 3-D rotary positions)."""
    from transformers import (PaddleOCRVLConfig, PaddleOCRVLForConditionalGeneration, PaddleOCRVLImageProcessorPil,
                              PaddleOCRVLProcessor)

    cfg = cfg or TinyChatConfig()
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|IMAGE_START|>", "<|IMAGE_PLACEHOLDER|>", "<|IMAGE_END|>",
                "<|video_pad|>"]
    tok = _chat_tokenizer(specials, PADDLEOCR_VL_CHAT_TEMPLATE, corpus, cfg.bpe_vocab, bos_token="<s>",
                          eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                          extra_special_tokens={"image_token": "<|IMAGE_PLACEHOLDER|>"})
    merge = 2
    patch = cfg.patch_size // merge
    ip = PaddleOCRVLImageProcessorPil(size={"shortest_edge": (cfg.image_size // 2) ** 2,
                                            "longest_edge": cfg.image_size ** 2},  # in pixels, as the real one
                                      patch_size=patch, merge_size=merge, temporal_patch_size=1)
    processor = PaddleOCRVLProcessor(image_processor=ip, tokenizer=tok, chat_template=PADDLEOCR_VL_CHAT_TEMPLATE)
    head = cfg.hidden // cfg.heads
    vision = dict(hidden_size=cfg.hidden // 2, intermediate_size=cfg.hidden, num_hidden_layers=cfg.layers,
                  num_attention_heads=cfg.heads, image_size=cfg.image_size, patch_size=patch,
                  spatial_merge_size=merge)
    text = dict(vocab_size=len(tok), hidden_size=cfg.hidden, intermediate_size=2 * cfg.hidden,
                num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=1, head_dim=head,
                max_position_embeddings=1024, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                # the rotary frequencies split over (time, height, width) positions, as 16/24/24 of 64 in the real one
                rope_parameters={"rope_type": "default", "rope_theta": 500000.0,
                                 "mrope_section": [head // 8, 3 * head // 16, 3 * head // 16]})
    config = PaddleOCRVLConfig(vision_config=vision, text_config=text, image_token_id=tok.image_token_id,
                               video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
                               vision_start_token_id=tok.convert_tokens_to_ids("<|IMAGE_START|>"),
                               vision_end_token_id=tok.convert_tokens_to_ids("<|IMAGE_END|>"))
    torch.manual_seed(cfg.seed)
    return _save_chat_model(out, PaddleOCRVLForConditionalGeneration(config), processor)


def create_tiny_granite_docling(out: str | Path, cfg: TinyChatConfig | None = None,
                                corpus: list[str] | None = None) -> Path:
    """A random tiny ``GraniteDoclingForConditionalGeneration`` (granite-for-docling's architecture: SigLIP tiles
    with a deep-stack pixel-shuffle connector, Granite decoder; Idefics3's tile markup and turns). Not the
    258M granite-docling, which is an Idefics3."""
    from transformers import (GraniteDoclingConfig, GraniteDoclingForConditionalGeneration,
                              GraniteDoclingImageProcessorPil, GraniteDoclingProcessor)

    cfg = cfg or TinyChatConfig()
    tok = _chat_tokenizer(IDEFICS3_SPECIALS, IDEFICS3_CHAT_TEMPLATE, corpus, cfg.bpe_vocab, bos_token=IDEFICS3_BOS,
                          eos_token=IDEFICS3_EOU, pad_token=IDEFICS3_PAD,
                          extra_special_tokens={"image_token": "<image>"})
    tile, scale = cfg.image_size // 2, 2  # up to 4 tiles of the page (plus a thumbnail); pixel shuffle 2x2
    vit_patch = cfg.patch_size // scale
    ip = GraniteDoclingImageProcessorPil(size={"height": tile, "width": tile}, max_patches=4)
    processor = GraniteDoclingProcessor(image_processor=ip, tokenizer=tok, image_seq_len=(tile // cfg.patch_size) ** 2,
                                        chat_template=IDEFICS3_CHAT_TEMPLATE)
    vision = dict(hidden_size=cfg.hidden // 2, intermediate_size=cfg.hidden, num_hidden_layers=cfg.layers,
                  num_attention_heads=cfg.heads, image_size=tile, patch_size=vit_patch, out_hidden_size=cfg.hidden,
                  scale_factor=scale, deepstack_visual_indexes=[0], use_fine_route=False)
    text = dict(vocab_size=len(tok), hidden_size=cfg.hidden, intermediate_size=2 * cfg.hidden,
                num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=1,
                max_position_embeddings=1024, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id)
    config = GraniteDoclingConfig(vision_config=vision, text_config=text, image_token_id=tok.image_token_id,
                                  pad_token_id=tok.pad_token_id)
    torch.manual_seed(cfg.seed)
    return _save_chat_model(out, GraniteDoclingForConditionalGeneration(config), processor)


# DeepSeek's User/Assistant turns; the processor expands <image> into the global view's and the tiles' queries.
DEEPSEEK_OCR2_CHAT_TEMPLATE = (
    "<｜begin▁of▁sentence｜>{% for message in messages %}{% if message['role'] == 'user' %}<|User|>"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% else %}<|Assistant|>{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}{{ item['text'] }}{% endfor %}{% endif %}"
    "<｜end▁of▁sentence｜>{% endif %}{% endfor %}{% if add_generation_prompt %}<|Assistant|>{% endif %}")


def create_tiny_deepseek_ocr2(out: str | Path, cfg: TinyChatConfig | None = None,
                              corpus: list[str] | None = None) -> Path:
    """A random tiny ``DeepseekOcr2ForConditionalGeneration`` (SAM ViT, a Qwen2-style encoder reading the image
    through learned queries, a DeepSeek MoE decoder). Its query counts are fixed by the architecture (16x16 for the
    global view, 12x12 per tile), so the tiny one keeps them and shrinks the patches instead: a 128 px page at
    2 px patches (4096 SAM tokens: the slowest of the tiny families)."""
    from transformers import (DeepseekOcr2Config, DeepseekOcr2ForConditionalGeneration,
                              DeepseekOcr2ImageProcessorPil, DeepseekOcr2Processor)

    cfg = cfg or TinyChatConfig()
    specials = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<|User|>", "<|Assistant|>",
                "<image>"]
    tok = _chat_tokenizer(specials, DEEPSEEK_OCR2_CHAT_TEMPLATE, corpus, cfg.bpe_vocab, bos_token=specials[0],
                          eos_token=specials[1], pad_token=specials[2],
                          extra_special_tokens={"image_token": "<image>"})
    patch, down = 2, 4  # SAM patch; its neck's two stride-2 convolutions
    ip = DeepseekOcr2ImageProcessorPil(size={"height": 16 * patch * down, "width": 16 * patch * down},
                                       tile_size=12 * patch * down, min_patches=1, max_patches=2)
    processor = DeepseekOcr2Processor(image_processor=ip, tokenizer=tok, chat_template=DEEPSEEK_OCR2_CHAT_TEMPLATE,
                                      patch_size=patch, downsample_ratio=down)
    enc = cfg.hidden // 2
    sam = dict(hidden_size=16, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
               image_size=16 * patch * down, patch_size=patch, window_size=8, global_attn_indexes=[1],
               downsample_channels=[16, enc])
    encoder = dict(vocab_size=len(tok), hidden_size=enc, intermediate_size=cfg.hidden, num_hidden_layers=cfg.layers,
                   num_attention_heads=cfg.heads, num_key_value_heads=1, max_position_embeddings=2048)
    text = dict(vocab_size=len(tok), hidden_size=cfg.hidden, intermediate_size=2 * cfg.hidden,
                num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
                max_position_embeddings=2048, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2,
                moe_intermediate_size=cfg.hidden, mlp_layer_types=["dense"] + ["sparse"] * (cfg.layers - 1),
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = DeepseekOcr2Config(vision_config=dict(sam_config=sam, encoder_config=encoder), text_config=text,
                                image_token_id=tok.image_token_id)
    torch.manual_seed(cfg.seed)
    return _save_chat_model(out, DeepseekOcr2ForConditionalGeneration(config), processor)


# GOT-OCR 2.0's checkpoint ships no chat template (its processor writes the prompt by hand); this is that prompt as
# a template, the user's text in place of its "OCR: " query. _chat_template uses it for GotOcr2Processor.
GOT_OCR2_CHAT_TEMPLATE = (
    "<|im_start|>system\nYou should follow the instructions carefully and explain your answers in detail.<|im_end|>"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for item in message['content'] %}{% if item['type'] == 'image' %}"
    "<img><imgpad></img>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def create_tiny_got_ocr2(out: str | Path, cfg: TinyChatConfig | None = None, corpus: list[str] | None = None) -> Path:
    """A random tiny ``GotOcr2ForConditionalGeneration`` (SAM ViT, two stride-2 convolutions, Qwen2 decoder). Its
    processor always writes 256 image tokens, so the tiny one keeps them: a 128 px page at 2 px patches. Like the
    real checkpoint it has no chat template of its own (GOT_OCR2_CHAT_TEMPLATE stands in)."""
    from transformers import (GotOcr2Config, GotOcr2ForConditionalGeneration, GotOcr2ImageProcessorPil,
                              GotOcr2Processor)

    cfg = cfg or TinyChatConfig()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<imgpad>"]
    tok = _chat_tokenizer(specials, None, corpus, cfg.bpe_vocab, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    patch = 2
    size = 64 * patch  # (64 / 4)^2 = 256 image tokens after the convolutions, as the processor writes
    processor = GotOcr2Processor(image_processor=GotOcr2ImageProcessorPil(size={"height": size, "width": size}),
                                 tokenizer=tok)
    vision = dict(hidden_size=16, output_channels=16, num_hidden_layers=2, num_attention_heads=2, image_size=size,
                  patch_size=patch, window_size=8, global_attn_indexes=[1], mlp_dim=32)
    text = dict(model_type="qwen2", vocab_size=len(tok), hidden_size=cfg.hidden, intermediate_size=2 * cfg.hidden,
                num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=1,
                max_position_embeddings=1024, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                bos_token_id=None, tie_word_embeddings=True)
    config = GotOcr2Config(vision_config=vision, text_config=text, image_seq_length=256,
                           image_token_index=tok.convert_tokens_to_ids("<imgpad>"))
    torch.manual_seed(cfg.seed)
    return _save_chat_model(out, GotOcr2ForConditionalGeneration(config), processor)


def create_tiny_florence2(out: str | Path, cfg: TinyChatConfig | None = None, corpus: list[str] | None = None) -> Path:
    """A random tiny ``Florence2ForConditionalGeneration``: DaViT tower, BART encoder-decoder. The image and the
    prompt go to the encoder, the answer comes from the decoder (training_batch's seq2seq path)."""
    from transformers import (CLIPImageProcessorPil, Florence2Config, Florence2ForConditionalGeneration,
                              Florence2Processor)

    cfg = cfg or TinyChatConfig()
    tok = _chat_tokenizer(["<s>", "<pad>", "</s>", "<unk>", "<image>"], None, corpus, cfg.bpe_vocab, bos_token="<s>",
                          eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                          extra_special_tokens={"image_token": "<image>"})
    size = 2 * cfg.image_size  # DaViT's four stages divide by 32: a 4x4 grid, + 1 pooled token
    ip = CLIPImageProcessorPil(size={"height": size, "width": size}, crop_size={"height": size, "width": size},
                               do_center_crop=False)
    ip.image_seq_length = (size // 32) ** 2 + 1
    processor = Florence2Processor(image_processor=ip, tokenizer=tok)
    h = cfg.hidden
    vision = dict(depths=[1, 1, 1, 1], embed_dim=[8, 16, 32, 64], num_heads=[1, 1, 2, 2], num_groups=[1, 1, 2, 2],
                  window_size=2, projection_dim=h, max_position_embeddings=16, drop_path_rate=0.0)
    # BART's convention, as Florence-2's: the decoder starts from </s>, answers are "<s>answer</s>"
    text = dict(model_type="bart", vocab_size=len(tok), d_model=h, encoder_layers=cfg.layers,
                decoder_layers=cfg.layers, encoder_attention_heads=cfg.heads, decoder_attention_heads=cfg.heads,
                encoder_ffn_dim=2 * h, decoder_ffn_dim=2 * h, max_position_embeddings=1024,
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=tok.eos_token_id)
    config = Florence2Config(vision_config=vision, text_config=text, image_token_id=tok.image_token_id)
    torch.manual_seed(cfg.seed)
    model = Florence2ForConditionalGeneration(config)
    model.generation_config.decoder_start_token_id = tok.eos_token_id
    return _save_chat_model(out, model, processor)


# family -> builder of its tiny random model; `tiny-random-<family>` as a model name builds one (resolve_model)
TINY_CHAT_FAMILIES = {"gemma3": create_tiny_gemma3, "lighton_ocr": create_tiny_lighton_ocr,
                      "paddleocr_vl": create_tiny_paddleocr_vl, "granite_docling": create_tiny_granite_docling,
                      "deepseek_ocr2": create_tiny_deepseek_ocr2, "got_ocr2": create_tiny_got_ocr2,
                      "florence2": create_tiny_florence2}


def load(name_or_path: str | Path, dtype: torch.dtype | None = None, device: str | None = None,
         trust_remote_code: bool = False, quantization_config=None):
    """Load (model, processor) from a folder or a hub id. Safetensors only; remote code only when asked."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    name = str(embedded_model()) if str(name_or_path) == EMBEDDED else str(name_or_path)
    p = Path(name)
    if p.exists() and not (p / "config.json").is_file():
        raise InvoiceVLMError(f"{p}: no model here (config.json missing)")
    if not p.exists() and (name.startswith((".", "/", "~")) or name.count("/") != 1):
        raise InvoiceVLMError(f"{name}: model folder not found (and not a hub id of the form owner/name)")
    if p.is_dir():
        check_model_folder(p, trust_remote_code)
    try:
        processor = AutoProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
        extra = {"quantization_config": quantization_config, "device_map": {"": 0}} if quantization_config else {}
        model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype or torch.float32,
                                                            use_safetensors=True,
                                                            trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError) as e:  # missing files, no safetensors, offline hub, unreadable config
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise InvoiceVLMError(f"{name}: cannot load model ({first})") from None
    if device:
        model.to(device)
    model.eval()
    return model, processor


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
JSON_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
              "processor_config.json", "generation_config.json", "special_tokens_map.json")


def check_model_folder(folder: Path, trust_remote_code: bool = False) -> None:
    """What a model folder must be before transformers sees it, each problem one line naming the file: weights in
    safetensors (a pickle file can run code when loaded, so it is never loaded), JSON files that parse, and no
    code of its own unless the user asked for it."""
    import json

    parsed = {}
    for name in JSON_FILES:
        f = folder / name
        if f.is_file():
            try:
                parsed[name] = json.loads(f.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise InvoiceVLMError(f"{f}: not valid JSON ({e}); the model's {name} is damaged") from None
    if not any(folder.glob("*.safetensors")) and not (folder / "adapter_config.json").is_file():
        pickles = sorted(f.name for f in folder.iterdir() if f.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise InvoiceVLMError(f"{folder}: only pickle weights here ({', '.join(pickles[:3])}); refused, "
                                  "safetensors only: a pickle file can run code when it is loaded. Convert it "
                                  "where you trust it (model.save_pretrained(..., safe_serialization=True))")
    config = parsed.get("config.json", {})
    if isinstance(config, dict) and config.get("auto_map") and not trust_remote_code:
        raise InvoiceVLMError(f"{folder / 'config.json'}: the model asks to run its own code (remote code, "
                              "auto_map); refused unless you trust it and set trust_remote_code (train: --set "
                              "trust_remote_code=true)")


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------ families
# How each family turns (image, prompt, target) into model inputs. PaliGemma uses its processor's prefix/suffix
# API (prompt: bidirectional prefix, token_type_ids 0; target: causal suffix, 1); encoder-decoders (Florence-2) take
# image + prompt in the encoder and the target as labels; chat models (Idefics3, Gemma 3, LightOnOCR, PaddleOCR-VL,
# ...) use their chat template: user turn = image + prompt, assistant turn = target.


def family(processor) -> str:
    """``paligemma``, ``seq2seq`` (Florence-2) or ``chat`` (every other family)."""
    name = type(processor).__name__
    return {"PaliGemmaProcessor": "paligemma", "Florence2Processor": "seq2seq"}.get(name, "chat")


def generated_tokens(model, inputs, out: torch.Tensor) -> torch.Tensor:
    """The new tokens of ``generate``'s output: a decoder-only model returns the prompt too, an encoder-decoder only
    the decoder's tokens (its start token is special and decodes to nothing)."""
    return out if model.config.is_encoder_decoder else out[:, inputs["input_ids"].shape[1]:]


def image_token_id(processor) -> int:
    """The id of the tokens that stand for image features in ``input_ids`` (one per feature: a batch holds exactly
    as many as the vision tower gives). Gemma 3's processor calls its begin-of-image token ``image_token``; the
    feature slots are the tokenizer's image token."""
    tok = processor.tokenizer
    if getattr(tok, "image_token", None) is not None:
        return tok.image_token_id
    if getattr(processor, "image_token_id", None) is not None:
        return processor.image_token_id
    return tok.convert_tokens_to_ids("<image>")


def image_token_count(processor, batch) -> int:
    """Image-feature tokens in a batch (``training_batch`` or ``generation_inputs``): what must never be cut."""
    return int((batch["input_ids"] == image_token_id(processor)).sum())


def _padding(processor, side: str):
    tok = processor.tokenizer
    old, tok.padding_side = tok.padding_side, side
    return tok, old


# ------------------------------------------------------------------------------------------ raw pixels
# The image processor's float path (PIL resize, then numpy rescale and normalise, then a float32 copy per image)
# is most of a training batch's CPU cost, and a float32 page is 7 MB to send from a DataLoader worker. A collator
# can instead send the resized page as uint8 (a quarter of the bytes, less than half the CPU time: `invoice-vlm
# bench collate`) and the trainer rescales and normalises it on the device. Same numbers: the resize is the
# processor's own PIL resize, and normalize_pixels computes what its rescale + normalise do (tested equal to 1e-5).


def raw_pixels_supported(processor) -> bool:
    """Only the PIL backend with a fixed output size: its resize is the one done here (the torchvision backend
    resizes differently, so it keeps its own path)."""
    ip = getattr(processor, "image_processor", None)
    size = getattr(ip, "size", None)
    return (family(processor) == "paligemma" and getattr(ip, "backend", None) == "pil"
            and bool(getattr(ip, "do_resize", False)) and getattr(size, "height", None) is not None
            and getattr(size, "width", None) is not None)


def _resized(processor, images: list) -> list:
    from PIL import Image

    ip = processor.image_processor
    out = []
    for im in images:
        if ip.do_convert_rgb and im.mode != "RGB":
            im = im.convert("RGB")
        if im.size != (ip.size.width, ip.size.height):
            im = im.resize((ip.size.width, ip.size.height), resample=Image.Resampling(int(ip.resample)))
        out.append(im)
    return out


def normalize_pixels(pixel_values: torch.Tensor, image_processor, dtype=torch.float32) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> what the image processor's rescale and normalise give, in ``dtype``."""
    ip = image_processor
    scale = torch.full((3,), float(ip.rescale_factor) if ip.do_rescale else 1.0, dtype=torch.float32)
    shift = torch.zeros(3)
    if ip.do_normalize:
        mean, std = torch.tensor(ip.image_mean, dtype=torch.float32), torch.tensor(ip.image_std, dtype=torch.float32)
        scale, shift = scale / std, -mean / std
    x = pixel_values.to(torch.float32)  # in place from here: half the memory traffic of x * scale + shift
    x.mul_(scale.to(x.device).view(1, -1, 1, 1)).add_(shift.to(x.device).view(1, -1, 1, 1))
    return x.to(dtype)


def training_batch(processor, images: list, prompts: list[str], targets: list[str],
                   raw_pixels: bool = False) -> dict[str, torch.Tensor]:
    """Inputs with ``labels``: -100 on image, prompt and padding tokens; the target (+ end token) elsewhere.
    ``raw_pixels`` (PaliGemma with a PIL image processor, see raw_pixels_supported): ``pixel_values`` are the
    resized pages as uint8, for normalize_pixels on the device."""
    if family(processor) == "paligemma":
        tok, old = _padding(processor, "right")
        raw = {}
        if raw_pixels:
            if not raw_pixels_supported(processor):
                raise ValueError(f"raw pixels need a PaliGemma processor with a PIL image processor of fixed size, "
                                 f"not {type(processor.image_processor).__name__}")
            images = _resized(processor, images)
            raw = {"do_resize": False, "do_rescale": False, "do_normalize": False}
        try:
            batch = processor(images=images, text=[f"<image>{p}" for p in prompts], suffix=targets,
                              return_tensors="pt", padding="longest", **raw)
        finally:
            tok.padding_side = old
        labels = batch["input_ids"].clone()
        labels[batch["token_type_ids"] == 0] = -100
        labels[batch["attention_mask"] == 0] = -100
        batch["labels"] = labels
        return dict(batch)
    if family(processor) == "seq2seq":
        return _seq2seq_training_batch(processor, images, prompts, targets)
    return _chat_training_batch(processor, images, prompts, targets)


def generation_inputs(processor, images: list, prompts: list[str]):
    """Prompt-only inputs, left-padded so every prompt ends where generation starts."""
    if family(processor) == "paligemma":
        tok, old = _padding(processor, "left")
        try:
            return processor(images=images, text=[f"<image>{p}" for p in prompts], return_tensors="pt",
                             padding="longest")
        finally:
            tok.padding_side = old
    if family(processor) == "seq2seq":
        return processor(images=images, text=prompts, padding=True, return_tensors="pt")
    return _chat_generation_inputs(processor, images, prompts)


def _seq2seq_training_batch(processor, images: list, prompts: list[str], targets: list[str]) -> dict[str, torch.Tensor]:
    """The image and the prompt for the encoder; labels "<s>target</s>" (the model shifts them right behind its
    decoder start token), padding -100: only the answer carries loss."""
    tok = processor.tokenizer
    batch = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    answers = tok([f"{tok.bos_token}{t}{tok.eos_token}" for t in targets], add_special_tokens=False, padding=True,
                  padding_side="right", return_tensors="pt")
    batch["labels"] = answers["input_ids"].masked_fill(answers["attention_mask"] == 0, -100)
    return dict(batch)


def _conversation(prompt: str, target: str | None = None) -> list[dict]:
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    if target is not None:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": target}]})
    return msgs


# The few per-processor differences of the chat path. GOT-OCR 2.0's processor takes one image per text as a flat list
# (the others a list of images per text) and its checkpoint has no chat template.
_FLAT_IMAGES = ("GotOcr2Processor",)


def _chat_template(processor) -> str:
    template = processor.chat_template or (GOT_OCR2_CHAT_TEMPLATE if type(processor).__name__ == "GotOcr2Processor"
                                           else None)
    if template is None:
        raise InvoiceVLMError(f"{type(processor).__name__}: the model has no chat template; cannot build the "
                              "prompt and answer turns")
    return template


def _chat_images(processor, images: list) -> list:
    return list(images) if type(processor).__name__ in _FLAT_IMAGES else [[im] for im in images]


def _chat_training_batch(processor, images: list, prompts: list[str], targets: list[str]) -> dict[str, torch.Tensor]:
    tok = processor.tokenizer
    template = _chat_template(processor)
    full = [processor.apply_chat_template(_conversation(p, t), tokenize=False, chat_template=template)
            for p, t in zip(prompts, targets)]
    heads = [processor.apply_chat_template(_conversation(p), add_generation_prompt=True, tokenize=False,
                                           chat_template=template) for p in prompts]
    batch = processor(text=full, images=_chat_images(processor, images), padding=True, padding_side="right",
                      return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    labels = torch.full_like(ids, -100)
    for row, (text, head) in enumerate(zip(full, heads)):
        if not text.startswith(head):
            raise InvoiceVLMError(f"{type(processor).__name__}: the chat template's prompt is not a prefix of the "
                                  "full conversation; cannot tell the answer from the prompt")
        answer = tok(text[len(head):], add_special_tokens=False)["input_ids"]
        end = int(mask[row].sum())
        start = end - len(answer)
        if ids[row, start:end].tolist() != answer:
            raise InvoiceVLMError(f"{type(processor).__name__}: the answer tokenizes differently inside the "
                                  "conversation; cannot place the labels")
        stop = answer.index(tok.eos_token_id) + 1 if tok.eos_token_id in answer else len(answer)
        labels[row, start:start + stop] = ids[row, start:start + stop]  # the answer and its end-of-turn token
    batch["labels"] = labels
    return dict(batch)


def _chat_generation_inputs(processor, images: list, prompts: list[str]):
    template = _chat_template(processor)
    texts = [processor.apply_chat_template(_conversation(p), add_generation_prompt=True, tokenize=False,
                                           chat_template=template) for p in prompts]
    return processor(text=texts, images=_chat_images(processor, images), padding=True, padding_side="left",
                     return_tensors="pt")
