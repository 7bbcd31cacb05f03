"""Tasks, mixed by ratio: each training page becomes one (image, prompt, target) example.

- ``ocr``: prompt ``ocr`` (configurable), target the transcription.
- ``extract``: prompt ``extract``, target the key fields as canonical JSON (schema order, compact, UTF-8); only
  pages that hold the whole invoice (one-page invoices), since the fields describe all of it.
- ``answer``: prompt ``answer en <question>`` (PaliGemma's QA prefix), target the answer as printed.
- ``lines``: the ``ocr`` task on a band of a few consecutive rows, the rest of the page painted white; target those
  rows. A curriculum step for pretraining from scratch: short targets that only the image can explain, at the
  page's own scale and position, so what the model learns carries over to whole pages. Needs ``meta.rows``
  (row extents, written by ``invoice-vlm synth`` for clean renders).

The choice is a pure function of (seed, page id), so a resumed or re-run training sees the same examples.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data import Sample

if TYPE_CHECKING:
    from PIL import Image

EXTRACT_PROMPT = "extract"
FIELD_ORDER = ("invoice_number", "date", "due_date", "vendor", "vendor_address", "customer", "customer_address",
               "currency", "subtotal", "tax", "total", "line_items")
ITEM_ORDER = ("description", "quantity", "unit_price", "amount")


GLYPH_SIZE = (12.0, 18.0)  # the glyphs task's default font px: page-size text


@dataclass
class Example:
    id: str
    image: Path
    task: str
    prompt: str
    target: str
    window: tuple[float, float] = (0.0, 1.0)  # visible band (top, bottom) as fractions of the height
    render: str = ""  # glyphs: the seed the collator draws the image from (the target is the text drawn)
    zoom: float = 1.0  # lines: the band's text enlarged up to this factor (as far as the page allows)
    glyph_size: tuple[float, float] = GLYPH_SIZE  # glyphs: font size range in px on the 850 x 1100 page
    glyph_fixed: bool = False  # glyphs: one font, size and place for every image (see render_rows)
    box: tuple[int, int, int, int] | None = None  # row: the row's box on the page (a row model's example)
    angle: float = 0.0  # row: the page is turned by this much (rows.deskew) before the box is cut


def canonical_fields(fields: dict[str, Any]) -> str:
    """The extraction target: key fields as printed, in schema order, compact JSON."""
    out: dict[str, Any] = {}
    for key in FIELD_ORDER:
        if key == "line_items":
            out[key] = [{k: item.get(k, "") for k in ITEM_ORDER} for item in fields.get(key) or []]
        elif key in fields:
            out[key] = fields[key]
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def can_do(sample: Sample, task: str) -> bool:
    if task == "ocr":
        return bool(sample.text.strip())
    if task == "extract":
        return bool(sample.fields) and sample.meta.get("pages", 1) == 1
    if task == "answer":
        return bool(sample.qa)
    if task == "glyphs":
        return True  # draws its own image: any page will do as its slot
    if task == "lines":
        rows = sample.meta.get("rows")
        return bool(rows) and sample.meta.get("augment", "none") == "none" and len(rows) == len(sample.text.split("\n"))
    return False


def pick_band(rows: list[list[float]], rng: random.Random, max_rows: int = 12) -> tuple[int, int, float, float]:
    """Rows ``i..j`` (inclusive) and the visible band (top, bottom). The band grows until no other row's ink
    enters it, and its edges sit halfway to the neighbouring rows, so no cut glyph is ever shown."""
    n = len(rows)
    k = min(n, int(round(math.exp(rng.uniform(0, math.log(max_rows))))))  # log-uniform: short bands are common
    i = rng.randrange(n - k + 1)
    j = i + k - 1
    while True:
        top, bottom = min(r[0] for r in rows[i:j + 1]), max(r[1] for r in rows[i:j + 1])
        grow_i = any(rows[m][1] > top for m in range(i))
        grow_j = any(rows[m][0] < bottom for m in range(j + 1, n))
        if not (grow_i or grow_j):
            break
        i, j = (i - 1 if grow_i else i), (j + 1 if grow_j else j)
    above = max((rows[m][1] for m in range(i)), default=0.0)
    below = min((rows[m][0] for m in range(j + 1, n)), default=1.0)
    return i, j, (top + above) / 2 if i else 0.0, (bottom + below) / 2 if j < n - 1 else 1.0


# --- glyphs: text no language model can guess -------------------------------------------------------------------
# A decoder trained from scratch first learns the language of invoices, which predicts most of a page without
# looking; meanwhile the image tokens drift to one constant vector (measured: the loss with another page's image
# equals the loss with the right one). Random strings give no such shortcut: from the first step, only the image
# lowers their loss.
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


def random_rows(rng: random.Random) -> str:
    """1-5 rows of 1-6 random words (numbers, codes, letters in the invoice alphabet)."""
    return "\n".join(" ".join(_word(rng) for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 5)))


GLYPH_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz0123456789"


def random_chars(rng: random.Random, most: int) -> str:
    """1 to ``most`` random characters, space-separated: the first stage of a big-glyph curriculum."""
    return " ".join(rng.choice(GLYPH_CHARS) for _ in range(rng.randint(1, most)))


def glyph_text(key: str, glyph_chars: int = 0) -> str:
    """The ``glyphs`` task's target for ``key``: 1..``glyph_chars`` characters, or (0) rows of random words."""
    return random_chars(random.Random(key), glyph_chars) if glyph_chars else random_rows(random.Random(key))


def glyph_examples(prefix: str, n: int, glyph_size: tuple[float, float] = GLYPH_SIZE,
                   glyph_chars: int = 0, fixed: bool = False) -> tuple[list[str], list]:
    """``n`` (target, image) pairs drawn exactly as the ``glyphs`` task draws them, from keys ``prefix/0..n-1``
    (a prefix no run trains on gives held-out examples)."""
    keys = [f"{prefix}/{k}" for k in range(n)]
    texts = [glyph_text(k, glyph_chars) for k in keys]
    return texts, [render_rows(k, t, font_px=tuple(glyph_size), fixed=fixed) for k, t in zip(keys, texts)]


def render_rows(key: str, text: str, size: tuple[int, int] = (850, 1100),
                font_px: tuple[float, float] = GLYPH_SIZE, fixed: bool = False) -> Image.Image:
    """``text`` drawn at the top of a white letter page at 100 dpi (the pretraining pages' size), in an invoice font
    and size picked by ``key`` (from ``font_px``, smaller where the text would not fit the page): rows top to bottom,
    each left to right, as the transcription convention reads.

    ``fixed``: one font (the first family, regular), the middle of ``font_px``, one place and black ink for every
    image, so that only the text differs. The first stage of learning to read: from scratch, the tiny model learned
    one big character in one rendering within 300 steps and stayed at chance with fonts, or sizes and places,
    drawn at random (README, "What starts the reading")."""
    from PIL import Image, ImageDraw

    from ..synth import FONT_FAMILIES, get_font

    rng = random.Random(key + "/draw")
    if fixed:
        family, bold, px, x, y, spacing, ink = sorted(FONT_FAMILIES)[0], False, sum(font_px) / 2, 70, 20, 1.5, 0
    else:
        family, bold, px = rng.choice(sorted(FONT_FAMILIES)), rng.random() < 0.2, rng.uniform(*font_px)
        x, y, spacing, ink = rng.randint(20, 120), rng.randint(8, 30), rng.uniform(1.3, 1.8), None
    font = get_font(family, bold, px)
    page = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(page)
    rows = text.split("\n")
    # Big glyphs: every row, and all rows together, must fit (a cut glyph would make the target a lie)
    for _ in range(8):  # sizes are whole pixels and hinting is not linear: shrink until it fits
        wide = max(font.getlength(r) for r in rows) / max(1.0, size[0] - x - 10)
        tall = (font.size * spacing * (len(rows) - 1) + font.size * 1.3) / max(1.0, size[1] - y - 10)
        if max(wide, tall) <= 1 or font.size <= 4:
            break
        font = get_font(family, bold, max(4.0, min(font.size - 1, 0.98 * font.size / max(wide, tall))))
    for row in rows:
        draw.text((x, y), row, fill=(rng.randint(0, 60) if ink is None else ink,) * 3, font=font)
        y += font.size * spacing
    return page


def build_examples(samples: list[Sample], ratios: dict[str, float], seed: int, ocr_prompt: str = "ocr",
                   repeat: int = 1, lines_zoom: float = 1.0, glyph_size: tuple[float, float] = GLYPH_SIZE,
                   glyph_chars: int = 0, glyph_fixed: bool = False) -> list[Example]:
    """One example per page and pass; ``repeat`` passes draw tasks (and bands) afresh, so a long run over a fixed
    dataset keeps seeing new examples while staying a pure function of (seed, pass, page)."""
    tasks = [t for t, r in ratios.items() if r > 0]
    out = []
    for p in range(repeat):
        for s in samples:
            out.append(_example(s, tasks, ratios, random.Random(f"tasks/{seed}/{s.id}" + (f"/{p}" if p else "")),
                                ocr_prompt, lines_zoom, glyph_size, glyph_chars, glyph_fixed))
    return out


def _example(s: Sample, tasks: list[str], ratios: dict[str, float], rng: random.Random, ocr_prompt: str,
             lines_zoom: float = 1.0, glyph_size: tuple[float, float] = GLYPH_SIZE, glyph_chars: int = 0,
             glyph_fixed: bool = False) -> Example:
    possible = [t for t in tasks if can_do(s, t)] or ["ocr"]
    task = rng.choices(possible, weights=[ratios.get(t, 1.0) for t in possible])[0]
    if task == "extract":
        return Example(s.id, s.image, task, EXTRACT_PROMPT, canonical_fields(s.fields))
    if task == "answer":
        qa = rng.choice(s.qa)
        return Example(s.id, s.image, task, f"answer en {qa['question']}", qa["answer"])
    if task == "glyphs":
        key = f"glyphs/{rng.random()}"
        return Example(s.id, s.image, task, ocr_prompt, glyph_text(key, glyph_chars), render=key,
                       glyph_size=tuple(glyph_size), glyph_fixed=glyph_fixed)
    if task == "lines":
        i, j, top, bottom = pick_band(s.meta["rows"], rng)
        # Log-uniform in [1, lines_zoom]; no draw at 1, so runs without zoom keep their examples.
        zoom = math.exp(rng.uniform(0, math.log(lines_zoom))) if lines_zoom > 1 else 1.0
        return Example(s.id, s.image, task, ocr_prompt, "\n".join(s.text.split("\n")[i:j + 1]), (top, bottom),
                       zoom=zoom)
    return Example(s.id, s.image, "ocr", ocr_prompt, s.text)


def row_examples(samples: list[Sample], prompt: str = "ocr", repeat: int = 1) -> tuple[list[Example], list[str]]:
    """A row model's examples: every text row of every page, cut by the segmenter (invoice_vlm.rows) as at
    inference. Which box is which line: the record's row extents where it has them (synthetic clean renders),
    else the order of the boxes when there are exactly as many as the text has lines. Pages where neither holds
    are returned as skipped (with the reason), never guessed."""
    from ..data import open_image
    from ..rows import deskew, match_rows, segment, skew_angle

    out: list[Example] = []
    skipped: list[str] = []
    for s in samples:
        image = open_image(s.image)
        lines = s.text.split("\n")
        extents = s.meta.get("rows") if s.meta.get("augment", "none") == "none" else None
        angle = 0.0
        if extents and len(extents) == len(lines):  # a clean render: its extents are in its own geometry
            matched = match_rows(segment(image), extents, image.height)
        else:
            angle = skew_angle(image)
            boxes = segment(deskew(image, angle))
            if len(boxes) != len(lines):
                skipped.append(f"{s.id}: {len(boxes)} text rows found on the page, {len(lines)} lines in its text")
                continue
            matched = list(boxes)
        for i, (box, line) in enumerate(zip(matched, lines)):
            if box is not None and line.strip():
                out.append(Example(f"{s.id}/row{i}", s.image, "row", prompt, line, box=tuple(box), angle=angle))
    return out * max(1, repeat), skipped


def to_dataset(examples: list[Example]):
    """A ``datasets.Dataset`` with an ``image`` column (decoded lazily), as TRL's vision path expects."""
    import datasets

    ds = datasets.Dataset.from_dict({
        "id": [e.id for e in examples], "image": [str(e.image) for e in examples],
        "prompt": [e.prompt for e in examples], "target": [e.target for e in examples],
        "window": [list(e.window) for e in examples], "render": [e.render for e in examples],
        "zoom": [e.zoom for e in examples], "glyph_size": [list(e.glyph_size) for e in examples],
        "glyph_fixed": [e.glyph_fixed for e in examples],
        "box": [list(e.box) if e.box else [] for e in examples],
        "angle": [e.angle for e in examples],
        "length": [len(e.target) for e in examples],  # for train_sampling_strategy: group_by_length
    })
    return ds.cast_column("image", datasets.Image())
