"""The sample record and dataset folders.

A dataset folder follows Hugging Face's imagefolder convention, so ``datasets.load_dataset("imagefolder",
data_dir=DIR)`` reads it as well::

    DIR/
      dataset.json                  # what made it (generator, seed, counts)
      train/metadata.jsonl          # one JSON object a line: file_name, id, text, fields, qa, meta
      train/00000000.png
      validation/...
      test/...

A split may also be sharded: ``train/00000/metadata.jsonl``, ``train/00001/...`` (each ``file_name`` relative to
its own metadata file), as the synthetic generator writes it; imagefolder reads that too.

``text`` is the page transcription in reading order: rows top to bottom, each row left to right, runs joined
by one space, rows by a newline. Every stage reads and writes :class:`Sample`.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from .common import InvoiceVLMError

SPLITS = ("train", "validation", "test")
# What Pillow raises for a file that is not an image, is truncated or corrupt, or is a decompression bomb; its
# decoders also raise TypeError, KeyError, IndexError, struct.error... on corrupt headers (found by fuzzing,
# scripts/fuzz.py), so decoding untrusted bytes catches every Exception and names its type.
_IMAGE_ERRORS = (Exception,)
METADATA = "metadata.jsonl"


@dataclass
class Sample:
    """One page: its image, its transcription and what is known about it."""

    id: str
    image: Path  # path of the page image
    text: str  # transcription in reading order
    fields: dict[str, Any] = field(default_factory=dict)  # key fields (see synth for the schema)
    qa: list[dict[str, str]] = field(default_factory=list)  # [{"question", "answer"}]
    meta: dict[str, Any] = field(default_factory=dict)  # layout, locale, fonts, augmentation...

    def to_metadata(self, folder: Path) -> dict[str, Any]:
        row = asdict(self)
        row.pop("image")
        return {"file_name": self.image.relative_to(folder).as_posix(), **row}


def metadata_files(folder: Path) -> list[Path]:
    """The split's metadata file, or its shards' metadata files in order."""
    if (folder / METADATA).is_file():
        return [folder / METADATA]
    return sorted(folder.glob(f"*/{METADATA}"))


def available_splits(root: str | Path) -> list[str]:
    root = Path(root)
    return [s for s in SPLITS if metadata_files(root / s)]


def _check_complete(root: Path) -> None:
    manifest = root / "dataset.json"
    if not manifest.is_file():
        return
    try:
        info = json.loads(manifest.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvoiceVLMError(f"{manifest}: not valid JSON ({e})") from None
    if isinstance(info, dict) and info.get("complete") is False:
        raise InvoiceVLMError(f"{root}: dataset is incomplete (its generation was interrupted); run the same "
                              "synth command again to finish it")


def read_split(root: str | Path, split: str, check_images: bool = True,
               require_text: bool = True, skipped: list[str] | None = None) -> list[Sample]:
    """Read and validate one split; any problem raises one line naming the file (and line). With ``skipped``
    (evaluation), a bad record is noted there and left out instead, so the rest can still be scored."""
    root = Path(root)
    if not root.exists():
        raise InvoiceVLMError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise InvoiceVLMError(f"{root}: not a folder")
    _check_complete(root)
    folder = root / split
    files = metadata_files(folder)
    if not files:
        found = available_splits(root)
        hint = f" (splits here: {', '.join(found)})" if found else " (no split folders with metadata.jsonl here)"
        raise InvoiceVLMError(f"{folder / METADATA}: not found{hint}")
    samples: list[Sample] = []
    seen: set[str] = set()
    for meta_path in files:
        samples.extend(_read_metadata(meta_path, seen, check_images, require_text, skipped))
    if not samples:
        raise InvoiceVLMError(f"{files[0]}: no samples")
    return samples


def _read_metadata(meta_path: Path, seen: set[str], check_images: bool, require_text: bool,
                   skipped: list[str] | None = None) -> list[Sample]:
    folder = meta_path.parent
    return _records(meta_path, lambda row, where: _record(row, folder, where, seen, check_images, require_text),
                    skipped)


def _records(path: Path, make, skipped: list[str] | None) -> list[Sample]:
    """``make(row, where)`` for every JSON line of ``path``; a bad line raises, or with ``skipped`` is noted."""
    samples: list[Sample] = []
    for where, line, bad in _lines(path):
        if bad is None and not line.strip():
            continue
        try:
            if bad is not None:
                raise bad
            samples.append(make(json_line(line, where), where))
        except InvoiceVLMError as e:
            if skipped is None:
                raise
            skipped.append(str(e))
    return samples


def json_line(line: str, where: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise InvoiceVLMError(f"{where}: not valid JSON ({e.msg})") from None
    except (RecursionError, ValueError) as e:  # nesting thousands deep; an integer of over 4,300 digits
        raise InvoiceVLMError(f"{where}: not valid JSON ({e.__class__.__name__}: {str(e)[:80]})") from None
    if not isinstance(row, dict):
        raise InvoiceVLMError(f"{where}: expected a JSON object")
    return row


def _record(row: dict[str, Any], folder: Path, where: str, seen: set[str], check_images: bool,
            require_text: bool) -> Sample:
    name = row.get("file_name")
    if not isinstance(name, str) or not name:
        raise InvoiceVLMError(f"{where}: missing 'file_name'")
    text = row.get("text")
    if not isinstance(text, str):
        raise InvoiceVLMError(f"{where}: missing 'text' (the transcription)")
    if require_text and not text.strip():
        raise InvoiceVLMError(f"{where}: empty target 'text' for {name}")
    sid = str(row.get("id") or Path(name).stem)
    if sid in seen:
        raise InvoiceVLMError(f"{where}: duplicate id {sid!r}")
    _check_types(row, where)
    image = inside(folder, name, where)  # the folder of the metadata file (a split, or one shard of it)
    if check_images:
        check_image(image, where)
    seen.add(sid)
    return Sample(id=sid, image=image, text=text, fields=row.get("fields") or {}, qa=row.get("qa") or [],
                  meta=row.get("meta") or {})


def _check_types(row: dict[str, Any], where: str) -> None:
    """The optional parts of a record, when present, have the shapes every stage reads them as."""
    for key, kind in (("fields", dict), ("meta", dict), ("qa", list)):
        if row.get(key) is not None and not isinstance(row[key], kind):
            raise InvoiceVLMError(f"{where}: '{key}' must be a JSON {'object' if kind is dict else 'array'}")
    for qa in row.get("qa") or []:
        if not (isinstance(qa, dict) and isinstance(qa.get("question"), str) and isinstance(qa.get("answer"), str)):
            raise InvoiceVLMError(f"{where}: each 'qa' entry must be {{\"question\": str, \"answer\": str}}")
    if row.get("id") is not None and not isinstance(row["id"], (str, int)):
        raise InvoiceVLMError(f"{where}: 'id' must be a string")


def check_image(path: Path, where: str | None = None) -> None:
    prefix = f"{where}: " if where else ""
    if not path.is_file():
        raise InvoiceVLMError(f"{prefix}{path}: image not found")
    if path.stat().st_size == 0:
        raise InvoiceVLMError(f"{prefix}{path}: empty file")
    try:
        with Image.open(path) as im:
            im.verify()
    except _IMAGE_ERRORS as e:
        raise InvoiceVLMError(f"{prefix}{path}: {_image_problem(e)}") from None


def _image_problem(e: Exception) -> str:
    """What a Pillow error means, in one line (its own message may name a BytesIO object or span lines)."""
    if isinstance(e, Image.DecompressionBombError):
        return f"image too large (a decompression bomb: {str(e).split(', could')[0]})"
    if isinstance(e, UnidentifiedImageError):
        return "image does not open: not an image or a PDF (unrecognised content)"
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"image does not open ({e.__class__.__name__}" + (f": {first})" if first else ")")


def inside(root: Path, name: str, where: str, what: str = "the dataset folder") -> Path:
    """``root / name``, refused when it leaves ``root``: an absolute path, ``..`` or a symlink pointing out. A
    dataset or manifest written by someone else must never make us read other files of the machine."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise InvoiceVLMError(f"{where}: path {name!r} is not a file name")
    path = root / name
    if Path(name).is_absolute() or not path.resolve().is_relative_to(root.resolve()):
        raise InvoiceVLMError(f"{where}: {name!r} is outside {what} (refused: only files inside it are read)")
    return path


def _lines(path: Path):
    """(file:line, text, None) for each line of a JSON-lines file; (file:line, "", error) for one not UTF-8."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                yield where, raw.decode("utf-8"), None
            except UnicodeDecodeError as e:
                yield where, "", InvoiceVLMError(
                    f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})")


MAX_PAGE_PIXELS = 50_000_000  # a letter page at 600 dpi is 34M pixels; a bigger "page" is a decompression bomb


def to_rgb(im: Image.Image) -> Image.Image:
    """Any page image as 8-bit RGB on white: transparency is composited onto white (not dropped, which turns
    transparent paper black), 16-bit and 32-bit greyscale are scaled (not clipped, which turns them white), CMYK
    and palette images are converted."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        import numpy as np

        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        return Image.fromarray((np.clip(a / top, 0, 1) * 255).round().astype("uint8"), "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info or im.mode in ("PA", "LA", "RGBA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        page = Image.new("RGBA", rgba.size, "white")
        page.alpha_composite(rgba)
        return page.convert("RGB")
    return im.convert("RGB")


def _check_pixels(name: str, size: tuple[int, int]) -> None:
    if size[0] * size[1] > MAX_PAGE_PIXELS:
        raise InvoiceVLMError(f"{name}: image too large ({size[0]}x{size[1]} pixels; at most "
                              f"{MAX_PAGE_PIXELS // 1_000_000}M per page)")
    if min(size) < 1:
        raise InvoiceVLMError(f"{name}: image has no pixels")


def image_from_bytes(data: bytes, name: str) -> Image.Image:
    import io
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                _check_pixels(name, im.size)  # before decoding: the header is enough
                im.load()
                return to_rgb(im)
    except InvoiceVLMError:
        raise
    except (*_IMAGE_ERRORS, Image.DecompressionBombWarning) as e:
        raise InvoiceVLMError(f"{name}: {_image_problem(e)}") from None


def image_pages(data: bytes, name: str, pages: list[int] | None = None,
                max_pages: int | None = None) -> list[tuple[int, Image.Image]]:
    """Every frame of an image as a page (a multi-page TIFF is how fax and scanner software files an invoice);
    ``pages`` picks frames. Each frame's size is checked from its header before it is decoded."""
    import io
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                n = _frames(im)
                wanted = _wanted(name, "image", n, pages, max_pages)
                out = []
                for k in wanted:
                    im.seek(k - 1)
                    _check_pixels(name if n == 1 else f"{name} page {k}", im.size)
                    im.load()
                    out.append((k, to_rgb(im)))
                return out
    except InvoiceVLMError:
        raise
    except (*_IMAGE_ERRORS, Image.DecompressionBombWarning) as e:
        raise InvoiceVLMError(f"{name}: {_image_problem(e)}") from None


def _wanted(name: str, kind: str, n: int, pages: list[int] | None, max_pages: int | None) -> list[int]:
    """The pages to read of a document of ``n``, checked before any is decoded."""
    wanted = pages or list(range(1, n + 1))
    if wanted[-1] > n:
        raise InvoiceVLMError(f"{name}: no page {wanted[-1]} (the {kind} has {n})")
    if max_pages and len(wanted) > max_pages:
        raise InvoiceVLMError(f"{name}: {len(wanted)} pages, at most {max_pages} per document")
    return wanted


def _frames(im: Image.Image) -> int:
    """Pages of an opened image: the frames of a TIFF or MPO (those of a GIF or APNG are an animation)."""
    return getattr(im, "n_frames", 1) if im.format in ("TIFF", "MPO") else 1


def image_page_count(path: Path) -> int:
    """Pages (frames) an image file will give, from its headers only."""
    try:
        with Image.open(path) as im:
            return _frames(im)
    except _IMAGE_ERRORS as e:
        raise InvoiceVLMError(f"{path}: {_image_problem(e)}") from None


def open_image(path: str | Path) -> Image.Image:
    """Open a page image as RGB, with a one-line error naming the file when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise InvoiceVLMError(f"{path}: file not found")
    return image_from_bytes(path.read_bytes(), str(path))


def parse_pages(spec: str | None) -> list[int] | None:
    """``"1-3,5"`` -> [1, 2, 3, 5] (1-based page numbers); None or "" -> None (every page)."""
    if not spec:
        return None
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()) or int(lo) < 1 or (hi and int(hi) < int(lo)):
            raise InvoiceVLMError(f"--pages {spec!r}: expected page numbers from 1 like 1-3,5")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return sorted(set(out))


def is_pdf(data: bytes) -> bool:
    return b"%PDF-" in data[:1024]  # the header may follow a little junk, as readers allow


def document_pages(data: bytes, name: str, pages: list[int] | None = None, dpi: int = 200,
                   max_pages: int | None = None) -> list[tuple[int, Image.Image]]:
    """(1-based page number, RGB image) for every page of an image or PDF given as bytes; ``pages`` picks some.
    Anything wrong is one :class:`InvoiceVLMError` naming ``name``: empty, not an image or PDF, encrypted or
    broken PDF, a page past the end, too many pages, a page too large to render."""
    if not data:
        raise InvoiceVLMError(f"{name}: empty file")
    if not is_pdf(data):
        return image_pages(data, name, pages, max_pages)
    pdf = _open_pdf(data, name)
    try:
        n = len(pdf)
        if n == 0:
            raise InvoiceVLMError(f"{name}: PDF has no pages")
        wanted = _wanted(name, "PDF", n, pages, max_pages)
        return [(k, _render(pdf, k, name, dpi)) for k in wanted]
    finally:
        pdf.close()


def _pdf_chars(tp) -> list[PdfChar]:
    """Every character pdfium reads from a text page (its own guessed spaces and line breaks left out)."""
    import ctypes

    import pypdfium2.raw as raw

    x, y = ctypes.c_double(), ctypes.c_double()
    l, r, b, t = (ctypes.c_double() for _ in range(4))
    chars = []
    for i in range(tp.count_chars()):
        if raw.FPDFText_IsGenerated(tp.raw, i):
            continue
        ch = chr(raw.FPDFText_GetUnicode(tp.raw, i))
        if ch in "\r\n\x00":
            continue
        raw.FPDFText_GetCharOrigin(tp.raw, i, x, y)
        raw.FPDFText_GetCharBox(tp.raw, i, l, r, b, t)  # the glyph's own box (left, right, bottom, top)
        obj = raw.FPDFText_GetTextObject(tp.raw, i)
        loose = tp.get_charbox(i, loose=True)
        chars.append(PdfChar(ch, round(y.value, 1), x.value, loose[2], loose,
                             raw.FPDFText_GetFontSize(tp.raw, i), (l.value, b.value, r.value, t.value),
                             bool(raw.FPDFText_HasUnicodeMapError(tp.raw, i)),
                             abs(raw.FPDFText_GetCharAngle(tp.raw, i)) > 1e-3,
                             bool(obj) and raw.FPDFTextObj_GetTextRenderMode(obj) in (3, 7)))
    return chars


def _row_text(chars: list[PdfChar]) -> str:
    """One row's characters left to right; a gap wider than a fifth of the type size becomes one space."""
    out, prev_right = [], None
    for c in sorted(chars, key=lambda c: c.x):
        if prev_right is not None and c.x - prev_right > 0.2 * c.size and out and out[-1] != " " and c.ch != " ":
            out.append(" ")
        out.append(c.ch)
        prev_right = c.right if c.ch != " " else max(prev_right or c.right, c.right)
    return " ".join("".join(out).split())


def _baseline_rows(chars: list[PdfChar]) -> list[list[PdfChar]]:
    rows: dict[float, list[PdfChar]] = {}
    for c in chars:
        rows.setdefault(c.baseline, []).append(c)
    return [rows[base] for base in sorted(rows, reverse=True)]  # PDF y grows upwards


def pdf_text(path: str | Path, page: int = 0) -> str:
    """The text layer of one PDF page in reading order: characters grouped into rows by baseline, rows top to
    bottom, each row left to right; a gap wider than a fifth of the type size becomes one space."""
    path = Path(path)
    pdf = _open_pdf(path)
    try:
        if not 0 <= page < len(pdf):
            raise InvoiceVLMError(f"{path}: no page {page + 1} (the PDF has {len(pdf)})")
        chars = _pdf_chars(pdf[page].get_textpage())
    finally:
        pdf.close()
    lines = [_row_text(row) for row in _baseline_rows(chars)]
    return "\n".join(line for line in lines if line)


@dataclass(frozen=True)
class PdfChar:
    ch: str
    baseline: float  # PDF points, y up, rounded to 0.1
    x: float  # origin
    right: float  # the loose box's right edge
    loose: tuple[float, float, float, float]  # the box of the font's full height: left, bottom, right, top
    size: float  # font size
    box: tuple[float, float, float, float]  # the glyph's box: left, bottom, right, top (PDF points)
    unmapped: bool  # the font maps this glyph to no Unicode text (what is read is a guess)
    rotated: bool
    invisible: bool  # render mode 3/7: an OCR layer over a scan, not printed text


@dataclass(frozen=True)
class PdfRow:
    """One row of a PDF page's text layer, as the transcription convention groups it, with its box in PDF points
    (left, top, right, bottom; y down from the page's top) and why it cannot be trusted as a label ("" if it can)."""

    text: str
    box: tuple[float, float, float, float]
    size: float
    problem: str = ""


def pdf_rows(page) -> list[PdfRow]:
    """The rows of a pdfium page: characters on one baseline form a row (as :func:`pdf_text` groups them); rows
    whose glyphs overlap vertically are joined when they do not overlap horizontally (one visual row set on two
    baselines), and marked with a problem when they do (their crops would hold each other's ink). A row is also
    marked when a glyph is invisible, rotated, or maps to no Unicode text."""
    _, height = page.get_size()
    rows = []
    for chars in _baseline_rows(_pdf_chars(page.get_textpage())):
        ink = [c for c in chars if not c.ch.isspace() and c.box[2] > c.box[0] and c.box[3] > c.box[1]]
        if not ink:
            continue
        rows.append({"chars": chars, "l": min(c.box[0] for c in ink), "r": max(c.box[2] for c in ink),
                     "top": height - max(c.box[3] for c in ink), "bottom": height - min(c.box[1] for c in ink),
                     "lt": height - max(c.loose[3] for c in ink), "lb": height - min(c.loose[1] for c in ink)})
    rows.sort(key=lambda r: (r["lt"] + r["lb"]) / 2)
    joined: list[dict] = []
    for row in rows:
        prev = joined[-1] if joined else None
        if prev is not None and not any(c.rotated for c in prev["chars"] + row["chars"]) and min(
                prev["lb"], row["lb"]) - max(prev["lt"], row["lt"]) > 0.5 * min(
                prev["lb"] - prev["lt"], row["lb"] - row["lt"]) and not any(
                c.x < o.right and o.x < c.right for c in row["chars"] for o in prev["chars"]):
            prev["chars"] = prev["chars"] + row["chars"]
            for k, f in (("l", min), ("r", max), ("top", min), ("bottom", max), ("lt", min), ("lb", max)):
                prev[k] = f(prev[k], row[k])
        else:
            joined.append(row)
    out = []
    for k, row in enumerate(joined):
        chars = row["chars"]
        problem = ""
        if any(c.invisible for c in chars):
            problem = "invisible text"
        elif any(c.rotated for c in chars):
            problem = "rotated text"
        elif any(c.unmapped or c.ch == "\ufffd" or 0xE000 <= ord(c.ch) <= 0xF8FF for c in chars):
            problem = "glyphs without Unicode text"
        else:
            for other in joined[max(0, k - 3):k] + joined[k + 1:k + 4]:
                if min(other["bottom"], row["bottom"]) > max(other["top"], row["top"]):
                    problem = "overlaps another row"
                    break
        size = float(statistics.median(c.size for c in chars))
        out.append(PdfRow(_row_text(chars), (row["l"], row["top"], row["r"], row["bottom"]), size, problem))
    return out


# ------------------------------------------------------------------------------------------ PDFs and manifests


def _open_pdf(source: Path | bytes, name: str | None = None):
    """A pdfium document from a file or from bytes (an upload; ``name`` for the error)."""
    import pypdfium2 as pdfium

    name = name or str(source)
    if isinstance(source, Path) and not source.is_file():
        raise InvoiceVLMError(f"{source}: file not found")
    try:
        return pdfium.PdfDocument(source if isinstance(source, bytes) else str(source))
    except (pdfium.PdfiumError, OSError) as e:
        # pdfium's error is its last one, process-wide: "Incorrect password error" for an encrypted file, "Data
        # format error" for a broken one, but a PDF without pages fails without setting one, so it shows the code
        # of the previous failure ("Success" if none). An encrypted PDF names its /Encrypt dictionary in the clear.
        try:
            data = source if isinstance(source, bytes) else source.read_bytes()
        except OSError:  # (unreadable: pdfium's own message below)
            data = b""
        if b"/Encrypt" in data:
            raise InvoiceVLMError(f"{name}: PDF does not open (encrypted: it needs a password; decrypt it "
                                  "first)") from None
        if getattr(e, "err_code", None) in (pdfium.raw.FPDF_ERR_SUCCESS, pdfium.raw.FPDF_ERR_PASSWORD):
            raise InvoiceVLMError(f"{name}: PDF does not open (it has no pages, or a structure PDFium cannot "
                                  "read)") from None
        raise InvoiceVLMError(f"{name}: PDF does not open ({e})") from None


def render_pdf_page(path: str | Path, page: int = 0, dpi: int = 200) -> Image.Image:
    """One PDF page as an RGB image at ``dpi`` (pdfium, the renderer Chrome uses)."""
    path = Path(path)
    pdf = _open_pdf(path)
    try:
        if not 0 <= page < len(pdf):
            raise InvoiceVLMError(f"{path}: no page {page + 1} (the PDF has {len(pdf)})")
        return _render(pdf, page + 1, str(path), dpi)
    finally:
        pdf.close()


def _render(pdf, k: int, name: str, dpi: int) -> Image.Image:
    """Page ``k`` (1-based) at ``dpi``; its size is checked before it is rendered."""
    import pypdfium2 as pdfium

    try:
        page = pdf[k - 1]  # a broken page tree fails here, not at opening (found by fuzzing)
        w, h = page.get_size()
    except pdfium.PdfiumError as e:
        raise InvoiceVLMError(f"{name} page {k}: does not load ({e})") from None
    _check_pixels(f"{name} page {k}", (int(w * dpi / 72), int(h * dpi / 72)))
    try:
        return page.render(scale=dpi / 72).to_pil().convert("RGB")
    except pdfium.PdfiumError as e:
        raise InvoiceVLMError(f"{name} page {k}: does not render ({e})") from None


def pdf_page_count(path: str | Path) -> int:
    pdf = _open_pdf(Path(path))
    try:
        return len(pdf)
    finally:
        pdf.close()


def read_manifest(path: str | Path, pages_dir: Path, dpi: int = 200, skipped: list[str] | None = None) -> list[Sample]:
    """A manifest of documents (``../shared/data/real-invoices/manifest.jsonl``): one JSON object a line with
    ``id``, ``pdf`` (or ``image``), ``page`` (0-based), ``text`` (path of the reference transcription) and
    ``fields``; paths relative to the manifest. PDF pages are rendered at ``dpi`` into ``pages_dir``. A bad
    record raises one line, or with ``skipped`` is noted there and left out."""
    path = Path(path)
    if not path.is_file():
        raise InvoiceVLMError(f"{path}: manifest not found")
    root = path.parent
    pages_dir.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    samples = _records(path, lambda row, where: _manifest_record(row, root, where, pages_dir, dpi, seen), skipped)
    if not samples:
        raise InvoiceVLMError(f"{path}: no documents could be read" + (f" ({skipped[0]})" if skipped else ""))
    return samples


def _manifest_record(row: dict[str, Any], root: Path, where: str, pages_dir: Path, dpi: int,
                     seen: set[str]) -> Sample:
    _check_types(row, where)
    sid = str(row.get("id") or "")
    if not sid:
        raise InvoiceVLMError(f"{where}: missing 'id'")
    if sid in seen:
        raise InvoiceVLMError(f"{where}: duplicate id {sid!r}")
    text_name = row.get("text")
    if not isinstance(text_name, str) or not text_name:
        raise InvoiceVLMError(f"{where}: {sid}: missing 'text' (path of the reference transcription)")
    text_path = inside(root, text_name, f"{where}: {sid}", "the manifest's folder")
    if not text_path.is_file():
        raise InvoiceVLMError(f"{where}: {sid}: reference {text_path} not found")
    try:
        text = text_path.read_text(encoding="utf-8").strip("\n")
    except UnicodeDecodeError as e:
        raise InvoiceVLMError(f"{where}: {sid}: reference {text_path} is not UTF-8 text (byte at {e.start})") from None
    if not text.strip():
        raise InvoiceVLMError(f"{where}: {sid}: reference {text_path} has no text")
    page = row.get("page", 0)
    if not isinstance(page, int) or isinstance(page, bool) or page < 0:
        raise InvoiceVLMError(f"{where}: {sid}: 'page' must be a page index >= 0, got {page!r}")
    if row.get("pdf"):
        image = pages_dir / f"{_safe_name(sid)}-p{page}-{dpi}dpi.png"
        if not image.is_file():
            source = inside(root, row["pdf"], f"{where}: {sid}", "the manifest's folder")
            render_pdf_page(source, page, dpi).save(image, compress_level=1)
    elif row.get("image"):
        image = inside(root, row["image"], f"{where}: {sid}", "the manifest's folder")
        check_image(image, where)
    else:
        raise InvoiceVLMError(f"{where}: {sid}: neither 'pdf' nor 'image' given")
    seen.add(sid)
    # the manifest's 0-based "page" becomes "pdf_page": in meta, "page" is 1-based (the page of an invoice)
    meta = {("pdf_page" if k == "page" else k): v for k, v in row.items() if k not in ("id", "text", "fields", "qa")}
    return Sample(id=sid, image=image, text=text, fields=row.get("fields") or {}, meta=meta)


def _safe_name(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)[:120]
