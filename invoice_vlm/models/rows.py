"""The row reader (invoice-vlm-tiny's kind): FastVLM with a ResNet tower and a character decoder, its row
batches, the CTC read-out, and the reading unit a config records."""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch

from ..common import InvoiceVLMError, ReadingUnit
from .base import EMBEDDED, _ALPHABET_LINE, embedded_model
from .batches import image_token_id


# ------------------------------------------------------------------------------------------ row reader
# invoice-vlm-tiny reads one text row at a time (invoice_vlm.rows cuts pages into rows). Its architecture is
# FastVLM's (FastVlmForConditionalGeneration, native in transformers): a convolutional tower — transformers' own
# ResNetModel — whose feature map is flattened into image tokens, an MLP projector and a Qwen2 decoder that writes
# the row character by character. Trained from scratch on this CPU, a convolutional front end starts reading many
# times sooner than a ViT with linear patches (docs/embedded-model.md has the bake-off).

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

    from ..synth import text_corpus

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


def row_image_tokens(model, batch: dict[str, torch.Tensor], grid: int = 0) -> torch.Tensor:
    """The image tokens of a batch of rows (``row_batch``): (batch, cells, hidden), zero where a row is padded.
    The tower sees each row at its own width (rows of one width share a call; a convolution near a row's right edge
    would otherwise see the white padding of a wider neighbour); training passes ``grid``, see TRAIN_WIDTH_GRID.
    What the CTC head reads, and what row_model_inputs gives the decoder."""
    pixels, columns = batch["pixel_values"], batch["image_columns"]
    unit = ReadingUnit.from_config(model.config)
    n, per_col, cols = len(pixels), pixels.shape[2] // unit.multiple, pixels.shape[3] // unit.multiple
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
    return tokens.view(n, per_col * cols, hidden)


def row_model_inputs(model, batch: dict[str, torch.Tensor], grid: int = 0,
                     tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The decoder's inputs for a batch of rows (``row_batch``), such that a row reads the same whatever its batch:
    its image tokens as ``row_image_tokens`` gives them, those of padded columns kept out of attention, and
    positions counting only the tokens attended to. Returns the image tokens and ``inputs_embeds``,
    ``attention_mask``, ``position_ids`` (and ``labels`` when the batch has them) for the model's forward or
    ``generate``. ``tokens``: the batch's image tokens when the caller has them already."""
    ids, columns = batch["input_ids"], batch["image_columns"]
    tokens = row_image_tokens(model, batch, grid) if tokens is None else tokens
    unit = ReadingUnit.from_config(model.config)
    per_col, cols = batch["pixel_values"].shape[2] // unit.multiple, batch["pixel_values"].shape[3] // unit.multiple
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


class RowKind:
    """The row reader's kind, with the page kinds' interface (models.batches): it trains on and reads text rows of
    its reading unit, which invoice_vlm.rows cuts from pages; a row's prompt is its reading (there is no other)."""

    name = "row"

    def __init__(self, unit: ReadingUnit):
        self.unit = unit

    def training_batch(self, processor, images: list, prompts: list[str], targets: list[str],
                       raw_pixels: bool = False) -> dict[str, torch.Tensor]:
        """``images``: row crops (uint8 arrays of the unit's height); the batch also holds what a CTC head trains
        on (``row_batch``)."""
        return row_batch(images, targets, processor.tokenizer, self.unit, image_token_id(processor))

    def generation_inputs(self, processor, images: list, prompts: list[str]) -> dict[str, torch.Tensor]:
        return row_batch(images, None, processor.tokenizer, self.unit, image_token_id(processor))

    def model_inputs(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A training step's (image tokens, the decoder's inputs): rows read as at inference, on the width grid
        (``row_model_inputs``). The tower meets rows a width at a time, too few and too uneven for batch
        statistics: its BatchNorm layers keep their learned ones."""
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        return row_model_inputs(model, batch, TRAIN_WIDTH_GRID)

    def token_budget(self, processor, image, prompt: str, target: str) -> dict[str, int]:
        """The worst case of a row: the widest the unit allows (``image``, a page, does not change it), ``target``
        + <eos>."""
        cells = (self.unit.height // self.unit.multiple) * (self.unit.max_width // self.unit.multiple)
        n = len(processor.tokenizer(target, add_special_tokens=False)["input_ids"]) + 1
        return {"total": cells + 1 + n, "image": cells, "prompt": 1, "target": n}

    def image_side(self, processor) -> int:
        return 0  # rows keep their aspect: no square side


# ------------------------------------------------------------------------------------------ the CTC read-out
# The row reader also reads without its decoder: a linear CTC head over the image tokens (each feature column's
# cells side by side, ``frames`` CTC frames a column). It trains beside the decoder (pretraining and fine-tuning
# add its loss) and ships beside the checkpoint as ctc_head.safetensors, which plain transformers ignores (the
# decoder still answers ``generate``). On real documents it reads far better than the decoder: no run-on, no
# repetition, no invented tail (docs/embedded-model.md section 6), and in one pass instead of a token at a time.

CTC_HEAD_FILE = "ctc_head.safetensors"


class CtcHead(torch.nn.Linear):
    """(rows x hidden) of a feature column -> ``frames`` x (vocabulary + blank) logits; the blank is the last
    index. Its state is a plain Linear's (weight, bias)."""

    def __init__(self, rows: int, hidden: int, vocab: int, frames: int):
        super().__init__(rows * hidden, frames * (vocab + 1))
        self.rows, self.frames, self.blank = rows, frames, vocab

    @classmethod
    def for_model(cls, model, frames: int) -> "CtcHead":
        unit = ReadingUnit.from_config(model.config)
        if unit is None:
            raise InvoiceVLMError("a CTC head reads rows: this model reads pages")
        return cls(unit.height // unit.multiple, model.config.text_config.hidden_size,
                   model.config.text_config.vocab_size, frames)

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, rows * cols, D) image tokens -> (B, cols * frames, V + 1)."""
        b, n, d = tokens.shape
        cols = n // self.rows
        grid = tokens.view(b, self.rows, cols, d).permute(0, 2, 1, 3).reshape(b, cols, self.rows * d)
        return super().forward(grid.to(self.weight.dtype)).view(b, cols * self.frames, -1)

    def loss(self, tokens: torch.Tensor, columns: torch.Tensor, targets: torch.Tensor,
             lengths: torch.Tensor) -> torch.Tensor:
        lp = self.logits(tokens).float().log_softmax(-1)
        return torch.nn.functional.ctc_loss(lp.transpose(0, 1), targets, columns * self.frames, lengths,
                                            blank=self.blank, zero_infinity=True)

    def read(self, tokens: torch.Tensor, columns: torch.Tensor) -> list[list[int]]:
        """Best path over each row's own frames: repeats collapsed, blanks dropped."""
        return greedy_ctc(self.logits(tokens), columns * self.frames, self.blank)

    def save(self, folder: str | Path, dtype: torch.dtype | None = None) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().to(dtype or v.dtype).contiguous() for k, v in self.state_dict().items()},
                  str(Path(folder) / CTC_HEAD_FILE), metadata={"format": "pt", "frames": str(self.frames)})

    @classmethod
    def load(cls, folder: str | Path, model) -> "CtcHead | None":
        """The head saved beside ``model``'s checkpoint in ``folder``, or None when it has none."""
        from safetensors import safe_open

        f = Path(folder) / CTC_HEAD_FILE
        if not f.is_file():
            return None
        with safe_open(str(f), "pt") as fh:
            weights = {k: fh.get_tensor(k) for k in fh.keys()}
        if "weight" not in weights or weights["weight"].ndim != 2:
            raise InvoiceVLMError(f"{f}: not a CTC head (no 2-D 'weight')")
        vocab = model.config.text_config.vocab_size
        out_dim, in_dim = weights["weight"].shape
        head = cls.for_model(model, max(1, out_dim // (vocab + 1)))
        if (out_dim, in_dim) != tuple(head.weight.shape):
            raise InvoiceVLMError(f"{f}: a head of shape {out_dim}x{in_dim} does not fit this model's image tokens "
                                  f"and vocabulary ({head.weight.shape[0]}x{head.weight.shape[1]} for "
                                  f"{head.frames} frames)")
        head.load_state_dict(weights)
        p = next(model.parameters())
        return head.to(p.device, p.dtype).eval()

    def nbest(self, tokens: torch.Tensor, columns: torch.Tensor, beam: int,
              margin: float) -> list[list[tuple[list[int], float]]]:
        """Each row's most likely label sequences (CTC prefix beam search, ``ctc_nbest``), best first, those more
        than ``margin`` (natural log) below the best left out."""
        lp = self.logits(tokens).float().log_softmax(-1).cpu().numpy()
        out = []
        for row, n in zip(lp, (columns * self.frames).tolist()):
            found = ctc_nbest(row[:n], self.blank, beam)
            out.append([(ids, score) for ids, score in found if score >= found[0][1] - margin])
        return out

    def log_probs(self, tokens: torch.Tensor, columns: torch.Tensor, readings: list[list[int]]) -> list[float]:
        """log p(reading | its row) under the head, summed over every frame path that spells it (what ``nbest``
        scores); -inf for a reading its row's frames cannot spell."""
        lp = self.logits(tokens).float().log_softmax(-1)
        frames = columns.to(lp.device) * self.frames
        targets = torch.tensor([t for r in readings for t in r], dtype=torch.long, device=lp.device)
        nll = torch.nn.functional.ctc_loss(lp.transpose(0, 1), targets, frames,
                                           torch.tensor([len(r) for r in readings], device=lp.device),
                                           blank=self.blank, reduction="none")
        return [-x for x in nll.tolist()]


def greedy_ctc(logits: torch.Tensor, lengths: torch.Tensor, blank: int) -> list[list[int]]:
    """Best path of CTC logits (B, T, V) over each row's first ``lengths`` frames: repeats collapsed, blanks
    dropped."""
    best = logits.argmax(-1).tolist()
    out = []
    for row, n in zip(best, lengths.tolist()):
        seq, prev = [], None
        for t in row[:n]:
            if t != prev and t != blank:
                seq.append(t)
            prev = t
        out.append(seq)
    return out


_NEG = -math.inf


def _logaddexp(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    return a if b == _NEG else a + math.log1p(math.exp(b - a))


def ctc_nbest(logprobs: np.ndarray, blank: int, beam: int, prune: float = -7.0) -> list[tuple[list[int], float]]:
    """CTC prefix beam search over one row's frames (T, labels + blank, log-probabilities): up to ``beam`` label
    sequences with their log-probability summed over all the paths that spell them, best first. Labels under
    ``prune`` at a frame are not tried there. A beam of 1 is not the best path: it sums paths."""
    tried = logprobs > prune
    tried[:, blank] = False
    labelled = tried.any(1)
    # Python floats and lists: the search is scalar work, and numpy scalars cost several times more per operation.
    # Only the columns of labels some frame tries leave the array, and the blank's (a prefix ends in a tried label):
    # a row's frames try some 30 of the alphabet's labels. The search runs on their columns' indices.
    keep = np.flatnonzero(tried.any(0))
    cols = keep.tolist() + [blank]
    b = len(cols) - 1
    frames = logprobs[:, cols].tolist()
    tries = iter([np.flatnonzero(t).tolist() for t in tried[np.ix_(labelled, keep)]])
    labelled = labelled.tolist()
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, _NEG)}  # prefix -> (ends in blank, in a label)
    t = 0
    while t < len(frames):
        if not labelled[t]:
            # a run of frames that try only the blank (or hold the last label): no new reading, the beam keeps its
            # prefixes, each carried through the run at once (7 frames in 10 on real rows; the same sums in the same
            # order as frame by frame)
            u = t + 1
            while u < len(frames) and not labelled[u]:
                u += 1
            held = {}
            for p, (pb, pnb) in beams.items():
                for row in frames[t:u]:
                    pb, pnb = _logaddexp(pb, pnb) + row[b], (pnb + row[p[-1]] if p else _NEG)
                held[p] = (pb, pnb)
            beams, t = held, u
            continue
        row, labels, p_blank = frames[t], next(tries), frames[t][b]
        nxt: dict[tuple[int, ...], tuple[float, float]] = {}
        get = nxt.get
        for prefix, (pb, pnb) in beams.items():
            total = _logaddexp(pb, pnb)
            if (x := total + p_blank) != _NEG:  # a blank: the prefix, ending in a blank
                ob, onb = get(prefix, (_NEG, _NEG))
                nxt[prefix] = (_logaddexp(ob, x), onb)
            last = prefix[-1] if prefix else None
            if last is not None and (x := pnb + row[last]) != _NEG:  # the last label held for another frame
                ob, onb = get(prefix, (_NEG, _NEG))
                nxt[prefix] = (ob, _logaddexp(onb, x))
            for c in labels:
                # the same label again counts only after a blank; another label extends from either
                if (x := (pb if c == last else total) + row[c]) != _NEG:
                    longer = prefix + (c,)
                    ob, onb = get(longer, (_NEG, _NEG))
                    nxt[longer] = (ob, _logaddexp(onb, x))
        scored = sorted(((_logaddexp(*v), p) for p, v in nxt.items()), key=lambda sp: -sp[0])[:beam]
        beams = {p: nxt[p] for _, p in scored}
        t += 1
    return [([cols[j] for j in p], _logaddexp(*v))
            for p, v in sorted(beams.items(), key=lambda kv: -_logaddexp(*kv[1]))]


_RESCORE_GROUP = 48  # remainders a forward pass


class RowPrefix(NamedTuple):
    """A row's image tokens as the decoder's KV cache holds them after reading them (``DecoderScores.prefix``), for
    ``decoder_readings`` to write on from without reading the image again."""

    keys: list[torch.Tensor]  # one a decoder layer: (key/value heads, image tokens, head dim)
    values: list[torch.Tensor]
    mask: torch.Tensor  # (image tokens,): 1 where attended (a row's padded columns are not)


class DecoderScores(NamedTuple):
    log_probs: torch.Tensor  # log p(candidate + <eos> | its row), one a candidate
    greedy: torch.Tensor  # bool, one a candidate: the decoder's most likely token at each of its steps, <eos> last
    # included, is the candidate's own (greedy decoding would write exactly this candidate)
    leads: list[list[int]]  # one a candidate: what greedy decoding writes first, known from this pass: the
    # candidate's tokens up to the first step where the decoder's most likely token is another, and that token (the
    # whole candidate and its <eos> where it is greedy)
    lead_log_probs: list[float]  # log p(lead | its row), one a candidate
    prefix: list[RowPrefix]  # one a row: its image tokens as the decoder's KV cache holds them


def decoder_log_probs(model, batch: dict[str, torch.Tensor], tokens: torch.Tensor, candidates: list[list[int]],
                      owner: list[int], eos: int, pad: int) -> DecoderScores:
    """log p(candidate + <eos> | its row) under the decoder, for token sequences each of a row of ``batch`` (a
    ``row_batch`` without texts; ``owner``: each candidate's row), and whether the decoder would write the candidate
    itself. A row's image prefix and the first tokens all its candidates share run once; its KV cache is repeated
    for the candidates' remainders, which run in groups of similar length."""
    dev = tokens.device
    n, head = batch["input_ids"].shape
    seqs = [list(c) + [eos] for c in candidates]
    members: list[list[int]] = [[] for _ in range(n)]
    for i, o in enumerate(owner):
        members[o].append(i)
    common = [0] * n  # tokens every candidate of the row starts with (each keeps one of its own at least)
    for r, m in enumerate(members):
        if m:
            lead = seqs[m[0]]
            k = min(len(seqs[i]) for i in m) - 1
            common[r] = next((t for t in range(k) if any(seqs[i][t] != lead[t] for i in m)), k)
    width = max(common)
    ids = torch.cat([batch["input_ids"], torch.full((n, width), pad, dtype=batch["input_ids"].dtype)], 1)
    mask = torch.cat([batch["attention_mask"], torch.zeros((n, width), dtype=batch["attention_mask"].dtype)], 1)
    for r, m in enumerate(members):
        if common[r]:
            ids[r, head:head + common[r]] = torch.tensor(seqs[m[0]][:common[r]])
            mask[r, head:head + common[r]] = 1
    _, inputs = row_model_inputs(model, {**batch, "input_ids": ids.to(dev), "attention_mask": mask.to(dev)},
                                 tokens=tokens)
    out = model(**inputs, use_cache=True)
    lp = out.logits.float().log_softmax(-1)
    ids = ids.to(dev)
    shared = torch.stack([lp[r, head - 1:head - 1 + common[r]].gather(-1, ids[r, head:head + common[r], None]).sum()
                          for r in range(n)])
    # each step's own token's log-probability and the most likely token (with its own), from the step that writes
    # the first token on: what greedy decoding would write is read off these (DecoderScores.leads)
    top_lp, top = lp[:, head - 1:head + width].max(-1)
    step_lps = lp[:, head - 1:head - 1 + width].gather(-1, ids[:, head:head + width, None])[..., 0].tolist()
    step_top, step_top_lp = top.tolist(), top_lp.tolist()
    tails = [s[common[o]:] for s, o in zip(seqs, owner)]
    idx = torch.tensor(owner, device=dev)
    start = lp[idx, head - 1 + torch.tensor([common[o] for o in owner], device=dev)]
    first_ids = torch.tensor([t[0] for t in tails], device=dev)
    first = start.gather(1, first_ids[:, None])[:, 0]
    # per candidate, at each step of its remainder: its token's log-probability, the most likely token and its own
    own: list = [None] * len(seqs)
    firsts = first.tolist()
    cache, name = _cache_of(out), _cache_name(model)
    n_image = head - 1
    prefix = [RowPrefix([layer.keys[r, :, :n_image] for layer in cache.layers],
                        [layer.values[r, :, :n_image] for layer in cache.layers], inputs["attention_mask"][r, :n_image])
              for r in range(n)]
    rest = torch.zeros(len(tails), device=dev)
    # the remainders run in groups of similar length (padded to one length, a batch of them was mostly padding),
    # each on its own copy of its rows' caches
    order = sorted(range(len(tails)), key=lambda i: len(tails[i]))
    groups = [order[g:g + _RESCORE_GROUP] for g in range(0, len(order), _RESCORE_GROUP)]
    for k, group in enumerate(groups):
        sel = idx[group]
        past = cache if k == len(groups) - 1 else copy.deepcopy(cache)
        past.reorder_cache(sel)
        length = max(len(tails[i]) for i in group)
        cand = torch.full((len(group), length), pad, device=dev)
        cmask = torch.zeros_like(cand)
        for row, i in enumerate(group):
            cand[row, :len(tails[i])] = torch.tensor(tails[i])
            cmask[row, :len(tails[i])] = 1
        positions = inputs["attention_mask"][sel].sum(-1, keepdim=True) + torch.arange(length, device=dev)[None]
        logits = model(input_ids=cand, attention_mask=torch.cat([inputs["attention_mask"][sel], cmask], 1),
                       position_ids=positions, **{name: past}).logits.float().log_softmax(-1)
        step_lp = logits[:, :-1].gather(-1, cand[:, 1:, None])[..., 0]
        rest[group] = (step_lp * cmask[:, 1:]).sum(-1)
        best_lp, best = logits[:, :-1].max(-1)
        for row, (a, b, c) in enumerate(zip(step_lp.tolist(), best.tolist(), best_lp.tolist())):
            own[group[row]] = (a, b, c)
    leads, lead_lps, greedy = [], [], []
    for i, (seq, o) in enumerate(zip(seqs, owner)):
        c, t = common[o], len(tails[i]) - 1
        a, b, v = own[i]
        written = step_lps[o][:c] + [firsts[i]] + a[:t]
        top_ids = step_top[o][:c + 1] + b[:t]
        agree = next((k for k in range(len(seq)) if top_ids[k] != seq[k]), len(seq))
        greedy.append(agree == len(seq))
        leads.append(seq[:agree] + ([top_ids[agree]] if agree < len(seq) else []))
        lead_lps.append(sum(written[:agree]) + ((step_top_lp[o][:c + 1] + v[:t])[agree] if agree < len(seq) else 0.0))
    return DecoderScores(shared[idx] + first + rest, torch.tensor(greedy, device=dev), leads, lead_lps, prefix)


def row_token_budget(width: int, unit: ReadingUnit, most: int | None = None) -> int:
    """The most tokens a row ``width`` pixels wide (its own width, without ROW_MARGIN) can hold: a character is at
    least a sixth of the row's height wide, plus 8. Each row keeps to its own budget, so that a wider neighbour in its
    batch does not let it run on."""
    budget = width * 6 // unit.height + 8
    return budget if most is None else min(most, budget)


def decoder_readings(model, batch: dict[str, torch.Tensor], tokens: torch.Tensor, budgets: list[int], eos: int,
                     pad: int, leads: list[list[int]] | None = None, lead_log_probs: list[float] | None = None,
                     prefixes: list[RowPrefix] | None = None) -> list[tuple[list[int], float] | None]:
    """The decoder's own greedy reading of each row of ``batch`` (a ``row_batch`` without texts, ``tokens`` its image
    tokens) with its log p(reading + <eos> | row); None for a row that has not ended within its budget (it ran on).
    ``leads``: tokens each row's greedy reading is known to start with (``DecoderScores.leads``, with their
    ``lead_log_probs``): they are read after the row's image and <bos>, and the decoder writes on from there.
    ``prefixes``: the rows' image tokens as a scoring pass's KV cache held them (``DecoderScores.prefix``), read
    instead of the image. A row's prompt is padded between its image and its <bos>, kept out of attention and of the
    positions, so that every row's next token comes from the same place and a row reads as it would alone."""
    leads = leads if leads is not None else [[] for _ in budgets]
    lead_lps = lead_log_probs if lead_log_probs is not None else [0.0] * len(budgets)
    readings: list[tuple[list[int], float] | None] = [None] * len(budgets)
    todo = []
    for k, (lead, budget) in enumerate(zip(leads, budgets)):
        if lead and lead[-1] == eos:  # the lead ends the reading: nothing is left to write
            readings[k] = (lead[:-1], lead_lps[k]) if len(lead) <= budget else None
        elif len(lead) < budget:  # room for one token at least (its <eos>); a longer lead has run past its budget
            todo.append(k)
    if not todo:
        return readings
    dev = tokens.device
    n_image = batch["input_ids"].shape[1] - 1  # a row_batch without texts: its image tokens, then <bos>
    most = max(len(leads[k]) for k in todo) + 1
    # each row's <bos> and lead, padded before them to one length
    ids = torch.full((len(todo), most), pad, dtype=batch["input_ids"].dtype)
    mask = torch.zeros_like(ids)
    for row, k in enumerate(todo):
        seq = batch["input_ids"][k, n_image:].tolist() + leads[k]
        ids[row, -len(seq):], mask[row, -len(seq):] = torch.tensor(seq), 1
    if prefixes is None:
        ids = torch.cat([batch["input_ids"][todo, :n_image], ids], 1)
        mask = torch.cat([batch["attention_mask"][todo, :n_image], mask], 1)
        sub = {**{n: v[todo] for n, v in batch.items()}, "input_ids": ids.to(dev), "attention_mask": mask.to(dev)}
        _, inputs = row_model_inputs(model, sub, tokens=tokens[todo])
    else:
        inputs = _on_prefixes(model, [prefixes[k] for k in todo], ids.to(dev), mask.to(dev))
    for k, (row, row_lp) in zip(todo, _greedy(model, inputs, [budgets[k] - len(leads[k]) for k in todo], eos)):
        if row[-1] == eos:
            readings[k] = (leads[k] + row[:-1], lead_lps[k] + row_lp)
    return readings


def _on_prefixes(model, prefixes: list[RowPrefix], ids: torch.Tensor, mask: torch.Tensor) -> dict:
    """A forward's inputs for ``ids`` (with their ``mask``) read after each row's cached image tokens: the prefixes
    padded before them to one length (kept out of attention), positions counting only the tokens attended to."""
    from transformers import DynamicCache

    longest = max(len(p.mask) for p in prefixes)
    cache = DynamicCache()
    for layer in range(len(prefixes[0].keys)):
        keys, values = (torch.stack([torch.nn.functional.pad(getattr(p, part)[layer], (0, 0, longest - len(p.mask), 0))
                                     for p in prefixes]) for part in ("keys", "values"))
        cache.update(keys, values, layer)
    seen = torch.stack([torch.nn.functional.pad(p.mask, (longest - len(p.mask), 0)) for p in prefixes]).to(mask)
    full = torch.cat([seen, mask], 1)
    positions = (full.cumsum(-1) - 1).clamp_(min=0)[:, longest:]
    return {"input_ids": ids, "attention_mask": full, "position_ids": positions, _cache_name(model): cache}


def _cache_name(model) -> str:
    """The name ``model``'s forward takes a KV cache by (transformers 5.25 renamed past_key_values to cache; the old
    name warns until 5.40)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(out):
    """A forward's KV cache, by either name (``_cache_name``)."""
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


def _greedy(model, inputs: dict[str, torch.Tensor], rooms: list[int], eos: int) -> list[tuple[list[int], float]]:
    """Greedy decoding of each prompt of ``inputs`` (``row_model_inputs``, ``_on_prefixes``) to its <eos> or its room,
    whichever comes first (a room is one token at least): (tokens written, <eos> last where it ended; their
    log-probability). A row that has ended leaves the batch (``generate`` goes on computing it to the last row's end,
    which on real rows was most of the steps: one that runs on keeps the batch going for a hundred more)."""
    out = model(**inputs, use_cache=True)
    cache, name = _cache_of(out), _cache_name(model)
    logits = out.logits[:, -1]
    mask, positions = inputs["attention_mask"], inputs["position_ids"][:, -1:]
    written: list[list[int]] = [[] for _ in rooms]
    scores = [0.0] * len(rooms)
    rows = list(range(len(rooms)))  # the rows still writing, in the batch's order
    while rows:
        best_lp, best = logits.float().log_softmax(-1).max(-1)
        going = []
        for q, (k, t, v) in enumerate(zip(rows, best.tolist(), best_lp.tolist())):
            written[k].append(t)
            scores[k] += v
            if t != eos and len(written[k]) < rooms[k]:
                going.append(q)
        if not going:
            break
        if len(going) < len(rows):
            keep = torch.tensor(going, device=logits.device)
            cache.reorder_cache(keep)
            best, mask, positions = best[keep], mask[keep], positions[keep]
            rows = [rows[q] for q in going]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], 1)
        positions = positions + 1
        logits = model(input_ids=best[:, None], attention_mask=mask, position_ids=positions, use_cache=True,
                       **{name: cache}).logits[:, -1]
    return list(zip(written, scores))


def create_row_model(out: str | Path, cfg: RowModelConfig | None = None) -> Path:
    """A random row reader (FastVLM architecture) with its character tokenizer and processor, saved like a hub
    checkpoint; ``config.json`` records the reading unit."""
    from ..common import staged_dir

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
