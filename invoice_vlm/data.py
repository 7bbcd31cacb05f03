"""The sample record and dataset folders.

A dataset folder follows Hugging Face's imagefolder convention, so ``datasets.load_dataset("imagefolder",
data_dir=DIR)`` reads it as well::

    DIR/
      dataset.json                  # what made it (generator, seed, counts)
      train/metadata.jsonl          # one JSON object a line: file_name, id, text, fields, qa, meta
      train/00000000.png
      validation/...
      test/...

``text`` is the page transcription in reading order: rows top to bottom, each row left to right, runs joined
by one space, rows by a newline. Every stage reads and writes :class:`Sample`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from PIL import Image, UnidentifiedImageError

from .common import InvoiceVLMError

SPLITS = ("train", "validation", "test")
# What Pillow raises for a file that is not an image, is truncated or corrupt, or is a decompression bomb.
_IMAGE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)
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


def split_dir(root: str | Path, split: str) -> Path:
    return Path(root) / split


def write_split(folder: Path, samples: Iterable[Sample]) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(folder / METADATA, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s.to_metadata(folder), ensure_ascii=False) + "\n")
            n += 1
    return n


def available_splits(root: str | Path) -> list[str]:
    root = Path(root)
    return [s for s in SPLITS if (root / s / METADATA).is_file()]


def read_split(root: str | Path, split: str, check_images: bool = True,
               require_text: bool = True) -> list[Sample]:
    """Read and validate one split; any problem raises one line naming the file (and line)."""
    root = Path(root)
    if not root.exists():
        raise InvoiceVLMError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise InvoiceVLMError(f"{root}: not a folder")
    folder = root / split
    meta_path = folder / METADATA
    if not meta_path.is_file():
        found = available_splits(root)
        hint = f" (splits here: {', '.join(found)})" if found else " (no split folders with metadata.jsonl here)"
        raise InvoiceVLMError(f"{meta_path}: not found{hint}")
    samples: list[Sample] = []
    seen: set[str] = set()
    with open(meta_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{meta_path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InvoiceVLMError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise InvoiceVLMError(f"{where}: expected a JSON object")
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
            seen.add(sid)
            image = folder / name
            if check_images:
                check_image(image, where)
            samples.append(Sample(id=sid, image=image, text=text, fields=row.get("fields") or {},
                                  qa=row.get("qa") or [], meta=row.get("meta") or {}))
    if not samples:
        raise InvoiceVLMError(f"{meta_path}: no samples")
    return samples


def check_image(path: Path, where: str | None = None) -> None:
    prefix = f"{where}: " if where else ""
    if not path.is_file():
        raise InvoiceVLMError(f"{prefix}{path}: image not found")
    try:
        with Image.open(path) as im:
            im.verify()
    except _IMAGE_ERRORS as e:
        raise InvoiceVLMError(f"{prefix}{path}: image does not open ({e.__class__.__name__}: {e})") from None


def open_image(path: str | Path) -> Image.Image:
    """Open a page image as RGB, with a one-line error naming the file when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise InvoiceVLMError(f"{path}: file not found")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except _IMAGE_ERRORS as e:
        raise InvoiceVLMError(f"{path}: image does not open ({e.__class__.__name__}: {e})") from None


def to_hf_dataset(samples: list[Sample]):
    """A ``datasets.Dataset`` with an ``image`` column (decoded lazily), as TRL's vision path expects."""
    import datasets

    ds = datasets.Dataset.from_dict({
        "id": [s.id for s in samples],
        "image": [str(s.image) for s in samples],
        "text": [s.text for s in samples],
    })
    return ds.cast_column("image", datasets.Image())
