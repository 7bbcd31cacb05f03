"""Word lists the row reader's rescoring favours: among a row's readings, one more word found in a dictionary earns
RESCORE_LEXICON_BONUS (``infer.Predictor``). Classic OCR engines read with dictionaries too (Tesseract's word
lists). The decoder, a language model of our generator's rows, knows neither "Käufer" nor "Id" and scored "Käufez"
and "USt.-1d.-Nr." above the right readings the head had proposed (docs/embedded-model.md section 7).

The lists are the system's (``/usr/share/dict``, Debian's wamerican, wngerman, wfrench, wspanish and witalian:
``make install`` installs them), not shipped here. A list is kept as the sorted CRC-32 of its lowercase words (4 MB
for a million words; a word not in it matches one by chance once in 4,000 lookups), cached under the user's cache
folder so that a process loads it in milliseconds after the first has built it (two seconds)."""

from __future__ import annotations

import hashlib
import os
import re
import zlib
from pathlib import Path

import numpy as np

LEXICON_DIR = Path("/usr/share/dict")
# file under LEXICON_DIR: the Debian package that installs it (and its licence, as Debian records it)
LEXICON_FILES = {"american-english": "wamerican (SCOWL: permissive)", "ngerman": "wngerman (igerman98: GPL-2+)",
                 "french": "wfrench (GPL-2+)", "spanish": "wspanish (GPL-2+)", "italian": "witalian (GPL-2+)"}
WORD = re.compile(r"[^\W\d_]{2,}")  # a run of two letters or more: "USt.-Id.-Nr." holds USt, Id and Nr


def _hash(word: str) -> int:
    return zlib.crc32(word.lower().encode("utf-8"))


class Lexicon:
    def __init__(self, hashes: np.ndarray, files: list[str]):
        self.hashes = hashes  # sorted, unique uint32
        self.files = files

    def known(self, text: str) -> int:
        """How many of the text's words (runs of two letters or more) the lists hold, case aside."""
        words = WORD.findall(text)
        if not words:
            return 0
        h = np.fromiter((_hash(w) for w in words), np.uint32, len(words))
        at = np.searchsorted(self.hashes, h).clip(max=len(self.hashes) - 1)
        return int((self.hashes[at] == h).sum())

    def describe(self) -> dict:
        return {"files": self.files, "words": int(len(self.hashes))}

    @classmethod
    def from_files(cls, files: list[Path]) -> "Lexicon":
        from ..common import InvoiceVLMError

        key = hashlib.sha1(repr([(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]).encode())
        folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "invoice-vlm"
        cached = folder / f"lexicon-{key.hexdigest()[:16]}.npy"
        if cached.is_file():
            return cls(np.load(cached, allow_pickle=False), [str(f) for f in files])
        parts = []
        for f in files:
            try:
                words = f.read_text(encoding="utf-8").split()
            except (OSError, UnicodeDecodeError) as e:
                raise InvoiceVLMError(f"{f}: cannot read it as a word list (UTF-8, one word a line): {e}") from None
            parts.append(np.fromiter((_hash(w) for w in words if len(w) >= 2), np.uint32))
        hashes = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint32)
        try:  # a cache that cannot be written costs the next process the two seconds, nothing else
            folder.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.npy")
            np.save(tmp, hashes)
            os.replace(tmp, cached)
        except OSError:
            pass
        return cls(hashes, [str(f) for f in files])


def load_lexicon(spec: str) -> Lexicon | None:
    """``spec``: auto (the system's lists that are there; None, with a warning, when none is), none, or a file or
    folder of word lists."""
    import warnings

    from ..common import InvoiceVLMError

    if spec in ("none", ""):
        return None
    if spec == "auto":
        files = [LEXICON_DIR / name for name in LEXICON_FILES if (LEXICON_DIR / name).is_file()]
        if not files:
            packages = " ".join(v.split()[0] for v in LEXICON_FILES.values())
            warnings.warn(f"no word lists in {LEXICON_DIR} (apt-get install {packages}): rows are rescored without a "
                          "lexicon", stacklevel=2)
            return None
        return Lexicon.from_files(files)
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        if not files:
            raise InvoiceVLMError(f"lexicon {spec}: the folder holds no word list")
        return Lexicon.from_files(files)
    if path.is_file():
        return Lexicon.from_files([path])
    raise InvoiceVLMError(f"lexicon {spec}: no such file or folder (auto, none, or a word list)")
