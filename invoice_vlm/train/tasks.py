"""Tasks, mixed by ratio: each training page becomes one (image, prompt, target) example.

- ``ocr``: prompt ``ocr`` (configurable), target the transcription.
- ``extract``: prompt ``extract``, target the key fields as canonical JSON (schema order, compact, UTF-8); only
  pages that hold the whole invoice (one-page invoices), since the fields describe all of it.
- ``answer``: prompt ``answer en <question>`` (PaliGemma's QA prefix), target the answer as printed.

A model that reads rows (the shipped invoice-vlm-tiny) ignores the ratios: its examples are the rows of the pages
(:func:`row_examples`), each with the transcription prompt.

The choice is a pure function of (seed, page id), so a resumed or re-run training sees the same examples.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from ..data import Sample
from ..fields import EXTRACT_PROMPT, canonical_fields


@dataclass
class Example:
    id: str
    image: Path
    task: str
    prompt: str
    target: str
    box: tuple[int, int, int, int] | None = None  # row: the row's box on the page (a row model's example)
    angle: float = 0.0  # row: the page is turned by this much (rows.deskew) before the box is cut


def can_do(sample: Sample, task: str) -> bool:
    if task == "ocr":
        return bool(sample.text.strip())
    if task == "extract":
        return bool(sample.fields) and sample.meta.get("pages", 1) == 1
    if task == "answer":
        return bool(sample.qa)
    return False


# Words no language model can guess: the row reader's pretraining mixes them into its random strings
# (rowdata.random_string), so that from the first step only the image lowers their loss.
_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZéèàüöäßç"
_PUNCT = ".,:-/#%€$£()"


def _word(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.3:  # an amount or a number, grouped like invoices print them
        n = rng.randrange(1, 10 ** rng.randint(1, 7))
        sep, dec = rng.choice([(",", "."), (".", ","), (" ", ","), ("", ".")])
        whole = f"{n:,}".replace(",", sep)
        return whole + (f"{dec}{rng.randrange(100):02d}" if rng.random() < 0.6 else "")
    if kind < 0.5:  # a code: INV-2024-0042, AB12C
        return "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789-/") for _ in range(rng.randint(3, 12)))
    if kind < 0.6:
        return rng.choice(_PUNCT) + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 4)))
    word = "".join(rng.choice(_LETTERS[:26]) for _ in range(rng.randint(2, 10)))
    return word.capitalize() if rng.random() < 0.4 else word.upper() if rng.random() < 0.15 else word


def build_examples(samples: list[Sample], ratios: dict[str, float], seed: int, ocr_prompt: str = "ocr",
                   repeat: int = 1) -> list[Example]:
    """One example per page and pass; ``repeat`` passes draw tasks afresh, so a long run over a fixed dataset keeps
    seeing new examples while staying a pure function of (seed, pass, page)."""
    tasks = [t for t, r in ratios.items() if r > 0]
    out = []
    for p in range(repeat):
        for s in samples:
            out.append(_example(s, tasks, ratios, random.Random(f"tasks/{seed}/{s.id}" + (f"/{p}" if p else "")),
                                ocr_prompt))
    return out


def _example(s: Sample, tasks: list[str], ratios: dict[str, float], rng: random.Random, ocr_prompt: str) -> Example:
    possible = [t for t in tasks if can_do(s, t)] or ["ocr"]
    task = rng.choices(possible, weights=[ratios.get(t, 1.0) for t in possible])[0]
    if task == "extract":
        return Example(s.id, s.image, task, EXTRACT_PROMPT, canonical_fields(s.fields))
    if task == "answer":
        qa = rng.choice(s.qa)
        return Example(s.id, s.image, task, f"answer en {qa['question']}", qa["answer"])
    return Example(s.id, s.image, "ocr", ocr_prompt, s.text)


def row_examples(samples: list[Sample], prompt: str = "ocr", repeat: int = 1) -> tuple[list[Example], list[str]]:
    """A row model's examples: every text row of every page, cut by the segmenter (invoice_vlm.rows) as at
    inference. Which box is which line: the record's row extents where it has them (synthetic clean renders),
    else the order of the boxes when there are exactly as many as the text has lines. Pages where neither holds
    are returned as skipped (with the reason), never guessed."""
    from ..data import open_image
    from ..rows import match_rows, page_for_rows, segment_rows, union

    out: list[Example] = []
    skipped: list[str] = []
    for s in samples:
        lines = s.text.split("\n")
        extents = s.meta.get("rows") if s.meta.get("augment", "none") == "none" else None
        rendered = bool(extents) and len(extents) == len(lines)
        # cut as the engine cuts it (``rows.page_for_rows``: a photo flat, a scan's dust off, a small scan enlarged),
        # as the collator crops it again; a clean render is not turned: its extents are in its own geometry
        page, noisy, angle = page_for_rows(open_image(s.image), 0.0 if rendered else None)
        rows = segment_rows(page, noisy=noisy)
        if rendered:
            matched = match_rows([union(r) for r in rows], extents, page.height, rows)
        else:
            matched = rows
            if len(matched) != len(lines):
                skipped.append(f"{s.id}: {len(matched)} text rows found on the page, {len(lines)} lines in its text")
                continue
        for i, (row, line) in enumerate(zip(matched, lines)):
            if row is not None and line.strip():
                # a row in parts keeps each part's four numbers in turn (``rows.row_image`` reads them so)
                box = tuple(v for part in row for v in part)
                out.append(Example(f"{s.id}/row{i}", s.image, "row", prompt, line, box=box, angle=angle))
    return out * max(1, repeat), skipped


def to_dataset(examples: list[Example]):
    """A ``datasets.Dataset`` with an ``image`` column (decoded lazily), as TRL's vision path expects."""
    import datasets

    ds = datasets.Dataset.from_dict({
        "id": [e.id for e in examples], "image": [str(e.image) for e in examples],
        "prompt": [e.prompt for e in examples], "target": [e.target for e in examples],
        "box": [list(e.box) if e.box else [] for e in examples],
        "angle": [e.angle for e in examples],
        "length": [len(e.target) for e in examples],  # for train_sampling_strategy: group_by_length
    })
    return ds.cast_column("image", datasets.Image())
