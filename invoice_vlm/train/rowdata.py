"""Row examples for a row reader: rows cut from synthetic pages by the project's own segmenter, and random strings
drawn as rows, each batch a pure function of (seed, step) so that a resumed run sees the batches an uninterrupted
one would.

A :class:`RowBank` holds the rows of a dataset split as one uint8 strip (every row scaled to the reading unit's
height and laid end to end) with their targets: the pages are read and segmented once, and a step's batch is then a
few slices of memory. Rows the segmenter finds where the record has no text (a signature, a logo's remains) are kept
with an empty target: the model learns to write nothing for them.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from ..rows import ReadingUnit, match_rows, row_image, segment, ink_box

# ------------------------------------------------------------------------------------------- row bank


def _page_rows(args: tuple[str, list, str, ReadingUnit, int]) -> list[tuple[np.ndarray, str]]:
    image_path, extents, text, unit, blanks = args
    with Image.open(image_path) as im:
        page = im.convert("L")
    texts = text.split("\n")
    if len(extents) != len(texts):
        return []
    boxes = segment(page)
    matched = match_rows(boxes, extents, page.height)
    out = [(np.asarray(row_image(page, box, unit).convert("L")), t)
           for box, t in zip(matched, texts) if box is not None and t.strip()]
    spans = [(a * page.height, b * page.height) for a, b in extents]
    empty = [b for b in boxes if not any(min(b[3], s[1]) > max(b[1], s[0]) for s in spans)]
    out += [(np.asarray(row_image(page, box, unit).convert("L")), "") for box in empty[:blanks]]
    return out


@dataclass
class RowBank:
    strip: np.ndarray  # (height, total width) uint8
    starts: np.ndarray  # (n + 1,) column offsets
    texts: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def row(self, i: int) -> np.ndarray:
        return self.strip[:, self.starts[i]:self.starts[i + 1]]

    def width(self, i: int) -> int:
        return int(self.starts[i + 1] - self.starts[i])

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:  # numpy arrays, no pickle
            np.savez(f, strip=self.strip, starts=self.starts,
                     texts=np.frombuffer(json.dumps(self.texts).encode(), dtype=np.uint8))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "RowBank":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["strip"], z["starts"], json.loads(bytes(z["texts"]).decode()))

    @classmethod
    def build(cls, samples: Sequence, unit: ReadingUnit, workers: int = 1, blanks: int = 2,
              progress: bool = True) -> "RowBank":
        """Segment every page that carries row extents (clean synthetic renders) and keep its matched rows."""
        jobs = [(str(s.image), s.meta["rows"], s.text, unit, blanks) for s in samples
                if s.meta.get("rows") and s.meta.get("augment", "none") == "none"]
        if not jobs:
            raise ValueError("no pages with row extents (meta.rows, written by `invoice-vlm synth` for clean renders)")
        rows: list[tuple[np.ndarray, str]] = []
        from rich.progress import track

        if workers > 1:
            from multiprocessing import get_context

            with get_context("spawn").Pool(workers) as pool:
                results = pool.imap(_page_rows, jobs, chunksize=8)
                for r in track(results, total=len(jobs), description="rows", disable=not progress):
                    rows.extend(r)
        else:
            for job in track(jobs, description="rows", disable=not progress):
                rows.extend(_page_rows(job))
        widths = np.array([0] + [r.shape[1] for r, _ in rows], dtype=np.int64)
        return cls(np.concatenate([r for r, _ in rows], axis=1), np.cumsum(widths), [t for _, t in rows])


# ------------------------------------------------------------------------------------------- random strings
_WORDS: list[str] = []
_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _corpus_words() -> list[str]:
    global _WORDS
    if not _WORDS:
        from ..synth import text_corpus

        _WORDS = sorted({w for line in text_corpus() for w in line.split()})
    return _WORDS


def random_string(rng: random.Random, chars: str, most: int) -> str:
    """Words no language model can guess (random letters, codes, amounts) mixed with invoice words."""
    from .tasks import _word

    words = _corpus_words()
    out: list[str] = []
    while len(" ".join(out)) < most:
        r = rng.random()
        if r < 0.35:
            out.append(_word(rng))
        elif r < 0.6:
            out.append(rng.choice(words))
        else:  # mostly letters and digits; every other character the tokenizer knows now and then
            pool = chars if rng.random() < 0.3 else _ALNUM
            out.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 10))))
    text = " ".join(out)[:most].strip()
    return text or rng.choice(chars.strip() or "x")


def draw_string(rng: random.Random, text: str, unit: ReadingUnit) -> np.ndarray:
    """``text`` in an invoice font at a random size, cut out as the segmenter would cut a row, scaled to height."""
    from ..synth import FONT_FAMILIES, get_font

    family = rng.choice(sorted(FONT_FAMILIES))
    font = get_font(family, rng.random() < 0.25, rng.uniform(11, 30))
    left, top, right, bottom = font.getbbox(text)
    pad = int(font.size)
    canvas = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 255)
    ImageDraw.Draw(canvas).text((pad - left, pad - top), text, font=font, fill=rng.randint(0, 70))
    box = ink_box(canvas)
    if box is None:
        return np.full((unit.height, unit.multiple), 255, np.uint8)
    return np.asarray(row_image(canvas, box, unit).convert("L"))


# ------------------------------------------------------------------------------------------- augmentation

def degrade(row: np.ndarray, rng: random.Random) -> np.ndarray:
    """What scans and photos do to a row, mildly: blur, contrast and brightness, noise, JPEG, a little stretch."""
    im = Image.fromarray(row)
    if rng.random() < 0.3:
        w = max(8, round(im.width * rng.uniform(0.85, 1.15)))
        im = im.resize((w, im.height), Image.Resampling.BILINEAR)
    if rng.random() < 0.3:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    a = np.asarray(im, dtype=np.float32)
    if rng.random() < 0.4:
        lo, hi = rng.uniform(0, 90), rng.uniform(190, 255)
        a = lo + a * (hi - lo) / 255.0
    if rng.random() < 0.3:
        a = a + np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(3, 18), a.shape)
    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if rng.random() < 0.25:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=rng.randint(30, 85))
        im = Image.open(buf).convert("L")
    return np.asarray(im)


# ------------------------------------------------------------------------------------------- batches

def row_batch(rows: Sequence[np.ndarray], texts: Sequence[str] | None, tokenizer, unit: ReadingUnit,
              image_token_id: int) -> dict[str, torch.Tensor]:
    """Model inputs for rows (uint8, height x width each): pixels padded white to one width, then
    [<image> x cells, <bos>] (+ target + <eos> with labels when ``texts`` is given). ``ctc_targets`` and
    ``image_columns`` (each row's own width in feature columns) feed a CTC head."""
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


class RowSampler:
    """Batch ``step`` of a run: which rows (from the banks, in a width bucket so little is padding), how many random
    strings, and their degradation — all drawn from Random(seed, step)."""

    def __init__(self, bank: RowBank | None, unit: ReadingUnit, chars: str, seed: int, buckets: int = 4):
        self.bank, self.unit, self.chars, self.seed = bank, unit, chars, seed
        if bank is not None and len(bank):
            widths = np.diff(bank.starts)
            order = np.argsort(widths, kind="stable")
            self.buckets = [b for b in np.array_split(order, buckets) if len(b)]
            self.bucket_widths = [(int(widths[b].min()), int(widths[b].max())) for b in self.buckets]
        else:
            self.buckets, self.bucket_widths = [], []

    def batch(self, step: int, size: int, strings: float, degrade_p: float = 0.5) -> tuple[list[np.ndarray], list[str]]:
        rng = random.Random(f"{self.seed}/{step}")
        n_strings = size if not self.buckets else sum(rng.random() < strings for _ in range(size))
        rows, texts = [], []
        if self.buckets:
            k = rng.randrange(len(self.buckets))
            bucket, (lo, hi) = self.buckets[k], self.bucket_widths[k]
            for _ in range(size - n_strings):
                i = int(bucket[rng.randrange(len(bucket))])
                rows.append(self.bank.row(i))
                texts.append(self.bank.texts[i])
        else:
            lo, hi = self.unit.multiple, self.unit.max_width // 2
        for _ in range(n_strings):
            # as many characters as a row of this bucket's width holds (about 0.4 x height per character)
            most = max(1, int(rng.uniform(lo, hi) / (0.42 * self.unit.height)))
            text = random_string(rng, self.chars, most)
            rows.append(draw_string(rng, text, self.unit))
            texts.append(text)
        rows = [degrade(r, rng) if rng.random() < degrade_p else r for r in rows]
        return rows, texts


def chars_of(tokenizer) -> str:
    """The characters a character tokenizer knows (its non-special tokens)."""
    special = set(tokenizer.all_special_tokens)
    vocab = tokenizer.get_vocab()
    return "".join(t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if t not in special and len(t) == 1)


def greedy_ctc(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int) -> list[list[int]]:
    """Best path of a CTC head (B, T, V): repeats collapsed, blanks dropped."""
    best = log_probs.argmax(-1).tolist()
    out = []
    for row, n in zip(best, lengths.tolist()):
        seq, prev = [], None
        for t in row[:n]:
            if t != prev and t != blank:
                seq.append(t)
            prev = t
        out.append(seq)
    return out


