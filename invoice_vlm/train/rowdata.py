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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..models import ReadingUnit
from ..rows import ink_box, match_rows, row_image, segment_rows, union

# ------------------------------------------------------------------------------------------- row bank


def _page_rows(args: tuple[str, list, str, ReadingUnit, int]) -> list[tuple[np.ndarray, str]]:
    image_path, extents, text, unit, blanks = args
    with Image.open(image_path) as im:
        page = im.convert("L")
    texts = text.split("\n")
    if len(extents) != len(texts):
        return []
    rows = segment_rows(page)
    boxes = [union(r) for r in rows]
    matched = match_rows(boxes, extents, page.height, rows)
    out = [(np.asarray(row_image(page, row, unit).convert("L")), t)
           for row, t in zip(matched, texts) if row is not None and t.strip()]
    spans = [(a * page.height, b * page.height) for a, b in extents]
    empty = [r for b, r in zip(boxes, rows) if not any(min(b[3], s[1]) > max(b[1], s[0]) for s in spans)]
    out += [(np.asarray(row_image(page, row, unit).convert("L")), "") for row in empty[:blanks]]
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


def select_rows(bank: RowBank, keep: Sequence[int]) -> RowBank:
    """The bank's rows ``keep`` (in that order), as a bank of their own."""
    widths = np.diff(bank.starts)[list(keep)]
    strip = np.concatenate([bank.row(i) for i in keep], axis=1) if len(keep) else bank.strip[:, :0]
    return RowBank(strip, np.concatenate([[0], np.cumsum(widths)]).astype(bank.starts.dtype), [bank.texts[i] for i in keep])


# A table of contents' dot leaders ("2.1 Prerequisites . . . . . 12"): 2.8% of session 14's PDF rows. Invoices
# rarely print them, and a reader that learned them wrote dots at length over the dotted rules of real invoices.
DOT_LEADER = re.compile(r"(?:\.\s?){5,}")


def without_dot_leaders(bank: RowBank) -> RowBank:
    return select_rows(bank, [i for i, t in enumerate(bank.texts) if not DOT_LEADER.search(t)])


def concat_banks(banks: Sequence[RowBank]) -> RowBank:
    if len(banks) == 1:
        return banks[0]
    offsets = np.cumsum([0] + [b.strip.shape[1] for b in banks[:-1]])
    return RowBank(np.concatenate([b.strip for b in banks], axis=1),
                   np.concatenate([[0], *[b.starts[1:] + off for b, off in zip(banks, offsets)]]),
                   [t for b in banks for t in b.texts])


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


def draw_string(rng: random.Random, text: str, unit: ReadingUnit, fonts: Sequence[str] = ()) -> np.ndarray:
    """``text`` in an invoice font (or one of ``fonts``, files) at a random size, cut out as the segmenter would cut
    a row, scaled to height. With ``fonts``, the row's look varies as real documents do: grey and light type, now
    and then white on a dark band or a second size on the same baseline."""
    from PIL import ImageFont

    from ..synth import FONT_FAMILIES, get_font

    size = rng.uniform(11, 30)
    if fonts and rng.random() < 0.8:
        font = ImageFont.truetype(rng.choice(list(fonts)), round(size), layout_engine=ImageFont.Layout.BASIC)
    else:
        font = get_font(rng.choice(sorted(FONT_FAMILIES)), rng.random() < 0.25, size)
    paper, ink = 255, rng.randint(0, 70)
    if fonts:
        look = rng.random()
        if look < 0.15:
            ink = rng.randint(80, 170)  # light grey or coloured type, as greyscale sees it
        elif look < 0.2:
            # white on a dark band (row_image turns it dark on light, as it turns a page's)
            paper, ink = rng.randint(0, 110), rng.randint(215, 255)
    parts = [(text, font)]
    words = text.split(" ")
    if fonts and len(words) > 2 and rng.random() < 0.1:  # a label and a value of another size on one baseline
        cut = rng.randint(1, len(words) - 1)
        other = font.font_variant(size=max(8, round(font.size * rng.uniform(1.3, 1.8))))
        parts = [(" ".join(words[:cut]) + " ", font), (" ".join(words[cut:]), other)]
    ascent = max(f.getmetrics()[0] for _, f in parts)
    widths = [f.getlength(t) for t, f in parts]
    pad = int(max(f.size for _, f in parts))
    canvas = Image.new("L", (int(sum(widths)) + 2 * pad, ascent + 2 * pad + max(f.getmetrics()[1] for _, f in parts)),
                       paper)
    draw = ImageDraw.Draw(canvas)
    x = pad
    for (t, f), w in zip(parts, widths):
        draw.text((x, pad + ascent), t, font=f, fill=ink, anchor="ls")
        x += w
    box = ink_box(canvas if paper > ink else Image.fromarray(255 - np.asarray(canvas)))
    if box is None:
        return np.full((unit.height, unit.multiple), 255, np.uint8)
    return np.asarray(row_image(canvas, box, unit).convert("L"))


def row_fonts(packages: Sequence[str]) -> list[str]:
    """The font files of these Debian packages that print every Latin letter, digit and common accent (so no
    character of a drawn row comes out as a box the label does not hold). One error names what is missing."""
    import subprocess

    from ..common import InvoiceVLMError

    files, missing = [], []
    for package in packages:
        listed = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True)
        if listed.returncode:
            missing.append(package)
            continue
        files += [f for f in listed.stdout.splitlines() if f.lower().endswith((".ttf", ".otf"))]
    if missing:
        raise InvoiceVLMError(f"fonts for pretraining rows missing: apt-get install {' '.join(missing)}")
    return [f for f in sorted(set(files)) if _prints_latin(f)]


_LATIN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789€$%&@äöüéèàçñß.,:;-/()"


def _prints_latin(path: str) -> bool:
    from PIL import ImageFont

    try:
        font = ImageFont.truetype(path, 24, layout_engine=ImageFont.Layout.BASIC)
        def shape(c: str) -> bytes:
            mask = font.getmask(c)
            return bytes(mask) + bytes(str(mask.size), "ascii")

        missing = shape("\U0010fffd")  # the font's box for a glyph it lacks
        return all(shape(c) != missing for c in _LATIN)
    except OSError:
        return False


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

class RowSampler:
    """Batch ``step`` of a run: which rows (from the banks, each draw from one width bucket so little is padding),
    how many random strings, and their degradation — all drawn from Random(seed, step). ``real`` is a second bank
    (rows of real PDFs) that supplies a share of each batch of its own."""

    def __init__(self, bank: RowBank | None, unit: ReadingUnit, chars: str, seed: int, buckets: int = 4,
                 real: RowBank | None = None, fonts: Sequence[str] = ()):
        self.bank, self.real, self.unit, self.chars, self.seed = bank, real, unit, chars, seed
        self.fonts = list(fonts)  # with a real bank, half the drawn strings are its lines (prose) in these fonts
        self.buckets, self.bucket_widths = self._buckets(bank, buckets)
        self.real_buckets, _ = self._buckets(real, buckets)

    @staticmethod
    def _buckets(bank: RowBank | None, n: int) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
        if bank is None or not len(bank):
            return [], []
        widths = np.diff(bank.starts)
        order = np.argsort(widths, kind="stable")
        buckets = [b for b in np.array_split(order, n) if len(b)]
        return buckets, [(int(widths[b].min()), int(widths[b].max())) for b in buckets]

    def batch(self, step: int, size: int, strings: float, degrade_p: float = 0.5,
              real: float = 0.0) -> tuple[list[np.ndarray], list[str]]:
        rng = random.Random(f"{self.seed}/{step}")
        n_strings = size if not self.buckets else sum(rng.random() < strings for _ in range(size))
        n_real = sum(rng.random() < real for _ in range(size - n_strings)) if self.real_buckets and real else 0
        rows, texts = [], []
        if self.buckets:
            k = rng.randrange(len(self.buckets))
            bucket, (lo, hi) = self.buckets[k], self.bucket_widths[k]
            for _ in range(size - n_strings - n_real):
                i = int(bucket[rng.randrange(len(bucket))])
                rows.append(self.bank.row(i))
                texts.append(self.bank.texts[i])
            if n_real:
                bucket = self.real_buckets[rng.randrange(len(self.real_buckets))]
                for _ in range(n_real):
                    i = int(bucket[rng.randrange(len(bucket))])
                    rows.append(self.real.row(i))
                    texts.append(self.real.texts[i])
        else:
            lo, hi = self.unit.multiple, self.unit.max_width // 2
        for _ in range(n_strings):
            # as many characters as a row of this bucket's width holds (about 0.4 x height per character)
            most = max(1, int(rng.uniform(lo, hi) / (0.42 * self.unit.height)))
            if self.real is not None and self.fonts and rng.random() < 0.5:
                line = self.real.texts[rng.randrange(len(self.real))].split(" ")
                start = rng.randrange(len(line))
                text = " ".join(line[start:])[:max(most, 8)].strip() or line[0]
            else:
                text = random_string(rng, self.chars, most)
            rows.append(draw_string(rng, text, self.unit, self.fonts))
            texts.append(text)
        rows = [degrade(r, rng) if rng.random() < degrade_p else r for r in rows]
        return rows, texts


def chars_of(tokenizer) -> str:
    """The characters a character tokenizer knows (its non-special tokens)."""
    special = set(tokenizer.all_special_tokens)
    vocab = tokenizer.get_vocab()
    return "".join(t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if t not in special and len(t) == 1)


# ------------------------------------------------------------------------------------------- rows of real PDFs
# Born-digital PDFs carry exact labels in their text layer and the fonts real documents use. A row's crop is cut
# where the text layer puts the row, tightened to the ink and padded as the segmenter pads (rows._padded), so it
# looks like what the segmenter gives at inference; rows whose label cannot be trusted are left out, counted by
# reason (data.pdf_rows marks invisible, rotated and unmapped text and rows that overlap another).

_LIGATURES = {"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl", "\ufb05": "st",
              "\ufb06": "st", "\x02": "-", "\u00ad": "-", "\u2010": "-", "\u2011": "-", "\u00a0": " "}
MAX_PAGE_PIXELS = 40_000_000  # a page larger than this at its dpi is not rendered (posters, maps)


def _pdf_page_rows(args: tuple) -> tuple[list[tuple[np.ndarray, str]], dict[str, int]]:
    """The trusted rows of one PDF page rendered at ``dpi``, and the count of rows left out by reason."""
    import pypdfium2 as pdfium

    from ..data import pdf_rows
    from ..rows import _padded, row_image, tighten

    path, index, dpi, unit, chars, most, seed = args
    reasons: dict[str, int] = {}

    def drop(reason: str) -> None:
        reasons[reason] = reasons.get(reason, 0) + 1

    try:
        pdf = pdfium.PdfDocument(path)
    except (pdfium.PdfiumError, OSError):
        return [], {"PDF does not open": 1}
    try:
        page = pdf[index]
        w, h = page.get_size()
        if w * h * (dpi / 72) ** 2 > MAX_PAGE_PIXELS:
            return [], {"page too large": 1}
        rows = pdf_rows(page)
        if not rows:
            return [], {}
        gray = np.asarray(page.render(scale=dpi / 72, grayscale=True).to_pil().convert("L"))
    except pdfium.PdfiumError:
        return [], {"page does not load": 1}
    finally:
        pdf.close()
    image = Image.fromarray(gray)
    out = []
    scale = dpi / 72
    for r in rows:
        text = "".join(_LIGATURES.get(c, c) for c in r.text).strip()
        if r.problem:
            drop(r.problem)
            continue
        if not text:
            continue
        if any(c not in chars for c in text):
            drop("characters the tokenizer lacks")
            continue
        left, top = int(r.box[0] * scale) - 1, int(r.box[1] * scale) - 1
        right, bottom = int(np.ceil(r.box[2] * scale)) + 1, int(np.ceil(r.box[3] * scale)) + 1
        if left < 0 or top < 0 or right > gray.shape[1] or bottom > gray.shape[0] or bottom - top < 4:
            drop("outside the page or too small")
            continue
        tight = tighten(gray, [v * scale for v in r.box])
        if tight is None or tight[2] - tight[0] < 0.8 * (right - left) or tight[3] - tight[1] < 0.4 * (bottom - top):
            drop("ink and text disagree")  # hidden, white-on-white or clipped text
            continue
        box = _padded(*(int(v) for v in tight), gray.shape)
        out.append((np.asarray(row_image(image, box, unit).convert("L")), text))
    if len(out) > most:
        out = random.Random(seed).sample(out, most)
    return out, reasons


@dataclass
class PdfBankConfig:
    pdfs: str = ""  # a folder of PDFs (searched recursively)
    sources: str = ""  # a JSONL naming each file's source and licence (file relative to pdfs; default pdfs/sources.jsonl)
    out: str = "data/pdf-bank.npz"
    dpis: list[int] = None  # each page is rendered at one of these, drawn per page
    pages_per_pdf: int = 6
    rows_per_page: int = 40
    max_pages: int = 30000
    exclude: list[str] = None  # folders of evaluation documents: a PDF with the same content is never used
    seed: int = 0
    workers: int = 2

    def __post_init__(self) -> None:
        self.dpis = self.dpis or [100, 150, 200, 300]
        self.exclude = list(self.exclude or [])


def held_out_path(bank: Path) -> Path:
    """Where build_pdf_bank keeps the rows of its held-out PDFs (one in HELD_OUT, chosen by content hash)."""
    return bank.with_name(bank.stem + "-validation.npz")


HELD_OUT = 50


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_pdf_bank(cfg: PdfBankConfig, unit: ReadingUnit, chars: str, progress: bool = True,
                   say=print) -> dict:
    """Cut the rows of a folder of born-digital PDFs into a RowBank at ``cfg.out``; writes ``<out>.json`` beside it
    (sources and licences, pages, rows kept, rows left out by reason, the files excluded as evaluation data)."""
    import pypdfium2 as pdfium
    from rich.progress import track

    from ..common import InvoiceVLMError, environment_info, write_json

    root = Path(cfg.pdfs)
    if not root.is_dir():
        raise InvoiceVLMError(f"{root}: not a folder of PDFs")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".pdf" and p.is_file())
    if not files:
        raise InvoiceVLMError(f"{root}: no .pdf files")
    forbidden: dict[str, str] = {}
    for folder in cfg.exclude:
        if not Path(folder).is_dir():
            raise InvoiceVLMError(f"{folder}: exclusion folder not found")
        forbidden.update({_sha256(p): str(p) for p in Path(folder).rglob("*") if p.is_file()})
    known: dict[str, dict] = {}
    listing = Path(cfg.sources) if cfg.sources else root / "sources.jsonl"
    if cfg.sources and not listing.is_file():
        raise InvoiceVLMError(f"{listing}: sources file not found")
    if listing.is_file():
        for line in listing.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                known[str(rec["file"])] = rec
    rng = random.Random(cfg.seed)
    jobs, sources, excluded = [], [], []
    for path in track(files, description="PDFs", disable=not progress):
        digest = _sha256(path)
        if digest in forbidden:
            excluded.append(str(path))
            say(f"excluded: {path} has the content of evaluation file {forbidden[digest]}")
            continue
        rel = str(path.relative_to(root))
        try:
            pdf = pdfium.PdfDocument(str(path))
            n = len(pdf)
            pdf.close()
        except (pdfium.PdfiumError, OSError) as e:
            say(f"skipped: {path}: PDF does not open ({e})")
            continue
        rec = known.get(rel, {})
        sources.append({"file": rel, "sha256": digest, "source": rec.get("source", f"local:{rel}"),
                        "license": rec.get("license", "unknown"), "pages": n})
        held = int(digest[:8], 16) % HELD_OUT == 0
        sources[-1]["held_out"] = held
        for index in sorted(rng.sample(range(n), min(n, cfg.pages_per_pdf))):
            jobs.append(((str(path), index, rng.choice(cfg.dpis), unit, chars, cfg.rows_per_page,
                          rng.getrandbits(32)), held))
    rng.shuffle(jobs)
    jobs = jobs[:cfg.max_pages]
    rows: dict[bool, list[tuple[np.ndarray, str]]] = {False: [], True: []}
    reasons: dict[str, int] = {}
    args = [a for a, _ in jobs]
    if cfg.workers > 1:
        from multiprocessing import get_context

        with get_context("spawn").Pool(cfg.workers) as pool:
            results = list(track(pool.imap(_pdf_page_rows, args, chunksize=4), total=len(jobs),
                                 description="pages", disable=not progress))
    else:
        results = [_pdf_page_rows(a) for a in track(args, description="pages", disable=not progress)]
    for (found, why), (_, held) in zip(results, jobs):
        rows[held].extend(found)
        for k, v in why.items():
            reasons[k] = reasons.get(k, 0) + v
    if not rows[False]:
        raise InvoiceVLMError(f"{root}: no row of any PDF could be used (left out: {reasons})")
    out = Path(cfg.out)
    for held, path in ((False, out), (True, held_out_path(out))):
        if rows[held]:
            widths = np.array([0] + [r.shape[1] for r, _ in rows[held]], dtype=np.int64)
            RowBank(np.concatenate([r for r, _ in rows[held]], axis=1), np.cumsum(widths),
                    [t for _, t in rows[held]]).save(path)
    from dataclasses import asdict

    summary = {"config": asdict(cfg), "unit": unit.to_dict(), "environment": environment_info(),
               "pdfs": len(sources), "pages": len(jobs), "rows": len(rows[False]),
               "held_out_rows": len(rows[True]), "left_out": reasons,
               "excluded": excluded, "licenses": _count(s["license"] for s in sources), "sources": sources}
    write_json(out.with_suffix(".json"), summary)
    return summary


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
