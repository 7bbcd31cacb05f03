"""Dataset generation: invoices -> pages -> images (+ PDFs) in sharded imagefolder splits, in parallel, resumable.

Run as::

    invoice-vlm synth --out data/synth --n 100000 --seed 0 --workers 2 --augment scan --pdf

Folder layout (``datasets.load_dataset("imagefolder", data_dir=DIR)`` reads it; so does :func:`read_split`)::

    DIR/dataset.json                         # config, counts, versions; "complete": true once every shard is done
    DIR/train/00000/metadata.jsonl           # one record per page: file_name, id, text, fields, qa, meta
    DIR/train/00000/00000000-p1.png          # page images (.jpg for the scan/photo presets)
    DIR/train/00000/00000000.pdf             # with --pdf: the invoice as a vector PDF whose text layer is the target
    DIR/validation/...  DIR/test/...

Invoice ``i`` is a pure function of (seed, i, config), so shards can be written in any order by any process.
A shard folder appears only when complete (written under a temporary name, then renamed); re-running the same
command skips finished shards, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..common import InvoiceVLMError, environment_info, write_json
from ..data import METADATA, SPLITS, Sample
from .augment import PRESETS, augment
from .content import make_invoice, make_qa, public_fields
from .fonts import FONT_FAMILIES, check_fonts
from .layouts import LAYOUTS, LayoutOverflow, Style, lay_out, random_style
from .locales import LOCALES
from .page import Page, write_pdf

MANIFEST = "dataset.json"
# PNG zlib level: grayscale document pages compress well at a low level, which is ~2x faster than the default.
PNG_LEVEL = 3


@dataclass
class SynthConfig:
    out: str = field(default="data/synth", metadata={"help": "output dataset folder"})
    n: int = field(default=1000, metadata={"help": "number of invoices (pages >= n: long invoices take two)"})
    seed: int = field(default=0, metadata={"help": "random seed; same seed and settings, same dataset"})
    split: str = field(default="train=0.9,validation=0.05,test=0.05", metadata={"help": "split ratios"})
    workers: int = field(default=1, metadata={"help": "worker processes"})
    dpi: int = field(default=150, metadata={"help": "render resolution"})
    augment: str = field(default="none", metadata={"help": "none | scan | photo"})
    pdf: bool = field(default=False, metadata={"help": "also write each invoice as a PDF with a text layer"})
    locales: str = field(default=",".join(LOCALES), metadata={"help": "comma list of locales"})
    layouts: str = field(default=",".join(LAYOUTS), metadata={"help": "comma list of layout families"})
    fonts: str = field(default=",".join(FONT_FAMILIES), metadata={"help": "comma list of font families"})
    max_items: int = field(default=30, metadata={"help": "most line items per invoice (1-30)"})
    shard_size: int = field(default=250, metadata={"help": "invoices per shard folder"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing dataset in --out"})

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ValueError(f"n must be positive, got {self.n}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if not 30 <= self.dpi <= 600:
            raise ValueError(f"dpi must be between 30 and 600, got {self.dpi}")
        if not 1 <= self.max_items <= 30:
            raise ValueError(f"max_items must be between 1 and 30, got {self.max_items}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {self.shard_size}")
        if self.augment not in PRESETS:
            raise ValueError(f"unknown augmentation preset {self.augment!r} (known: {', '.join(PRESETS)})")
        for kind, names, known in (("locale", self.locale_list, LOCALES), ("layout", self.layout_list, LAYOUTS),
                                   ("font family", self.font_list, FONT_FAMILIES)):
            if not names:
                raise ValueError(f"no {kind} given")
            for name in names:
                if name not in known:
                    raise ValueError(f"unknown {kind} {name!r} (known: {', '.join(known)})")
        self.split_counts()  # validates the split spec

    @property
    def locale_list(self) -> list[str]:
        return _names(self.locales)

    @property
    def layout_list(self) -> list[str]:
        return _names(self.layouts)

    @property
    def font_list(self) -> list[str]:
        return _names(self.fonts)

    def split_counts(self) -> dict[str, int]:
        return parse_split(self.split, self.n)

    def identity(self) -> dict[str, Any]:
        """The settings that decide the content; a folder made with other ones is another dataset."""
        d = asdict(self)
        for k in ("out", "workers", "overwrite"):
            d.pop(k)
        return d


def _names(spec: str) -> list[str]:
    return [c.strip() for c in spec.split(",") if c.strip()]


def parse_split(spec: str, n: int) -> dict[str, int]:
    """``train=0.9,validation=0.05,test=0.05`` -> counts that add up to ``n`` (largest split absorbs rounding)."""
    ratios: dict[str, float] = {}
    for part in spec.split(","):
        if "=" not in part:
            raise ValueError(f"split spec {spec!r}: expected name=ratio pairs, e.g. train=0.9,test=0.1")
        name, value = (s.strip() for s in part.split("=", 1))
        if name not in SPLITS:
            raise ValueError(f"split spec {spec!r}: unknown split {name!r} (known: {', '.join(SPLITS)})")
        if name in ratios:
            raise ValueError(f"split spec {spec!r}: {name} given twice")
        try:
            ratios[name] = float(value)
        except ValueError:
            raise ValueError(f"split spec {spec!r}: {value!r} is not a number") from None
        if not ratios[name] >= 0:
            raise ValueError(f"split spec {spec!r}: ratio for {name} must be >= 0")
    total = sum(ratios.values())
    if total <= 0:
        raise ValueError(f"split spec {spec!r}: ratios add up to 0")
    counts = {k: int(n * v / total) for k, v in ratios.items()}
    largest = max(ratios, key=ratios.__getitem__)
    counts[largest] += n - sum(counts.values())
    return counts


# ------------------------------------------------------------------------------------------- one invoice


@dataclass
class Invoice:
    index: int
    pages: list[Page]
    content: dict[str, Any]
    style: Style
    layout: str
    locale: str


def generate_invoice(seed: int, index: int, cfg: SynthConfig) -> Invoice:
    """Invoice ``index`` of the dataset seeded ``seed``, laid out but not drawn."""
    rng = random.Random(f"invoice-vlm/{seed}/{index}")
    loc = LOCALES[rng.choice(cfg.locale_list)]
    layout = rng.choice(cfg.layout_list)
    st = random_style(rng, cfg.font_list)
    inv = make_invoice(rng, loc, cfg.max_items, hours=layout == "timesheet")
    layout_seed = rng.getrandbits(64)
    for _ in range(8):  # smaller type until it fits two pages and the page width
        try:
            pages = lay_out(layout, inv, loc, st, random.Random(layout_seed))
        except LayoutOverflow:
            st.size *= 0.92
            continue
        if all(_fits(p) for p in pages):
            return Invoice(index, pages, inv, st, layout, loc.code)
        st.size *= 0.92
    raise RuntimeError(f"invoice {index} (seed {seed}, layout {layout}): could not fit the page")


def _fits(page: Page) -> bool:
    """Every run inside the page and clear of its neighbours on the same row (a long address beside another
    column, say); the full check, :func:`check_page`, is quadratic and runs in the tests."""
    rows: dict[float, list] = {}
    for r in page.runs:
        if r.x < 0 or r.x + r.width > page.width:
            return False
        rows.setdefault(round(r.y, 2), []).append(r)
    for row in rows.values():
        row.sort(key=lambda r: r.x)
        for a, b in zip(row, row[1:]):
            if b.x - (a.x + a.width) < 0.2 * min(a.size, b.size):
                return False
    return True


def invoice_records(inv: Invoice, cfg: SynthConfig, folder: Path) -> list[dict[str, Any]]:
    """Draw, augment and save every page of one invoice (and its PDF); returns the metadata rows."""
    stem = f"{inv.index:08d}"
    pdf_name = ""
    if cfg.pdf:
        pdf_name = f"{stem}.pdf"
        write_pdf(inv.pages, str(folder / pdf_name), {"title": f"{inv.content['invoice_number']}",
                                                      "author": inv.content["vendor"]})
    fields = public_fields(inv.content)
    st = inv.style
    elements = [k for k in ("logo", "qr", "barcode", "stamp", "signature", "notes", "footer") if getattr(st, k)]
    qa_rng = random.Random(f"invoice-vlm/{cfg.seed}/{inv.index}/qa")
    rows = []
    n = len(inv.pages)
    for i, page in enumerate(inv.pages, 1):
        im = page.render(cfg.dpi)
        if cfg.augment != "none":
            im, quality = augment(im, cfg.augment,
                                  random.Random(f"invoice-vlm/{cfg.seed}/{inv.index}/{i}/{cfg.augment}"))
            name = f"{stem}-p{i}.jpg"
            im.save(folder / name, quality=quality)
        else:
            name = f"{stem}-p{i}.png"
            im.save(folder / name, compress_level=PNG_LEVEL)
        rows.append(Sample(
            id=f"inv-{stem}-p{i}", image=folder / name, text=page.transcription(), fields=fields,
            qa=make_qa(qa_rng, inv.content, page.fields_shown(), all_items=n == 1),
            meta={"invoice": inv.index, "page": i, "pages": n, "layout": inv.layout, "locale": inv.locale,
                     "font": st.family, "heading_font": st.head_family, "font_size": round(st.size, 2),
                     "table": st.table, "elements": elements, "augment": cfg.augment, "dpi": cfg.dpi,
                     "pdf": pdf_name, "rows": [list(e) for e in page.row_extents()]},
        ).to_metadata(folder))  # the one record format every stage reads
    return rows


# ------------------------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class Shard:
    split: str
    number: int
    start: int  # first invoice index
    stop: int

    @property
    def path(self) -> str:
        return f"{self.split}/{self.number:05d}"


def plan_shards(cfg: SynthConfig) -> list[Shard]:
    """Invoices 0..n-1 in split order (train, validation, test), cut into shards of ``shard_size``."""
    shards, start = [], 0
    counts = cfg.split_counts()
    for split in SPLITS:
        count = counts.get(split, 0)
        for k, lo in enumerate(range(0, count, cfg.shard_size)):
            shards.append(Shard(split, k, start + lo, start + min(count, lo + cfg.shard_size)))
        start += count
    return shards


def write_shard(cfg: SynthConfig, shard: Shard) -> int:
    """Write one shard folder; it appears under its final name only when complete. Returns its page count."""
    final = Path(cfg.out) / shard.path
    tmp = final.with_name(f".{final.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    pages = 0
    with open(tmp / METADATA, "w", encoding="utf-8") as f:
        for index in range(shard.start, shard.stop):
            for row in invoice_records(generate_invoice(cfg.seed, index, cfg), cfg, tmp):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                pages += 1
    os.replace(tmp, final)
    return pages


def shard_done(cfg: SynthConfig, shard: Shard) -> bool:
    return (Path(cfg.out) / shard.path / METADATA).is_file()


def _prepare(cfg: SynthConfig) -> None:
    """Refuse to touch a folder that holds anything but this same dataset (unless --overwrite on a dataset)."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise InvoiceVLMError(f"{out}: exists and is not a folder")
    # dataset.json.tmp alone: a kill during the very first write of dataset.json, nothing else was written
    if not out.exists() or all(p.name == MANIFEST + ".tmp" for p in out.iterdir()):
        return
    manifest = out / MANIFEST
    if not manifest.is_file():
        raise InvoiceVLMError(f"{out}: folder is not empty and holds no synthetic dataset ({MANIFEST} missing); "
                              "choose a new or empty folder")
    try:
        old = json.loads(manifest.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvoiceVLMError(f"{manifest}: not valid JSON ({e}); choose a new or empty folder") from None
    if cfg.overwrite:
        if old.get("generator") != "invoice_vlm.synth":
            raise InvoiceVLMError(f"{manifest}: not written by invoice-vlm synth; --overwrite only replaces "
                                  "synthetic datasets")
        for p in out.iterdir():  # dataset.json last: a kill mid-delete leaves a folder --overwrite still takes
            if p.name != MANIFEST:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        shutil.rmtree(out)
        return
    theirs = old.get("identity") or {}
    mine = cfg.identity()
    if theirs != mine:
        diff = ", ".join(f"{k}={theirs.get(k)!r}" for k in mine if theirs.get(k) != mine[k]) or "unknown settings"
        raise InvoiceVLMError(f"{out}: holds another dataset ({diff}); choose another --out or pass --overwrite")


def main(cfg: SynthConfig, progress: bool = True, run_shards: Callable | None = None) -> Path:
    """Generate (or finish) the dataset; returns its folder. ``run_shards(cfg, todo, done)``, if given, writes the
    unfinished shards instead of the worker processes (``invoice_vlm.jobs`` hands them to Ray) and calls
    ``done(shard)`` as each is in place."""
    check_fonts(cfg.font_list)
    _prepare(cfg)
    try:
        return _generate(cfg, progress, run_shards)
    except KeyboardInterrupt:
        raise InvoiceVLMError(f"{cfg.out}: interrupted; finished shards are kept, run the same command again to "
                              "resume") from None


def _generate(cfg: SynthConfig, progress: bool, run_shards: Callable | None = None) -> Path:
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    from ..common import progress_bar

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    shards = plan_shards(cfg)
    todo = [s for s in shards if not shard_done(cfg, s)]
    manifest: dict[str, Any] = {
        "generator": "invoice_vlm.synth", "identity": cfg.identity(), "splits": cfg.split_counts(),
        "shards": len(shards), "complete": False, "environment": environment_info(),
    }
    write_json(out / MANIFEST, manifest)
    t0 = time.perf_counter()
    with progress_bar("synth", "invoices", disable=not progress) as bar:
        task = bar.add_task("synth", total=cfg.n, completed=cfg.n - sum(s.stop - s.start for s in todo))
        if run_shards is not None:
            run_shards(cfg, todo, lambda s: bar.advance(task, s.stop - s.start))
        elif cfg.workers == 1 or len(todo) <= 1:
            for s in todo:
                write_shard(cfg, s)
                bar.advance(task, s.stop - s.start)
        else:
            from .content import _faker

            for code in cfg.locale_list:  # build Faker once here; forked workers inherit it
                _faker(code)
            with ProcessPoolExecutor(max_workers=cfg.workers) as pool:
                pending = {pool.submit(write_shard, cfg, s): s for s in todo}
                try:
                    while pending:
                        done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                        for fut in done:
                            s = pending.pop(fut)
                            fut.result()  # re-raises a worker's error; finished shards stay for the next run
                            bar.advance(task, s.stop - s.start)
                except BaseException:
                    for fut in pending:  # an error or Ctrl-C: start nothing new
                        fut.cancel()
                    raise
    pages = 0
    for s in shards:
        with open(out / s.path / METADATA, encoding="utf-8") as f:
            pages += sum(1 for _ in f)
    manifest.update(complete=True, pages=pages, seconds=round(time.perf_counter() - t0, 2))
    write_json(out / MANIFEST, manifest)
    return out


def text_corpus(n: int = 400, seed: int = 12345) -> list[str]:
    """Transcriptions, questions and answers in every locale and layout (laid out, not drawn), e.g. to train a
    tokenizer."""
    cfg = SynthConfig(n=1, max_items=12)
    out = []
    for i in range(n):
        inv = generate_invoice(seed, i, cfg)
        qa = make_qa(random.Random(i), inv.content, inv.pages[0].fields_shown(), all_items=True)
        out.append("\n".join(p.transcription() for p in inv.pages))
        out.append("\n".join(f"{x['question']} {x['answer']}" for x in qa))
    return out
