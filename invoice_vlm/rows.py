"""The reading unit: a page image cut into text rows, and rows made into a row model's input images.

A model that reads rows (invoice-vlm-tiny) says so in its ``config.json`` (``reading: {"unit": "row", ...}``);
every entry point then goes page -> rows -> batched generation -> page text (``invoice_vlm.infer``), and rows
joined by a newline are the transcription convention (rows top to bottom, each row left to right).

The segmenter works on pixels only (a PDF's text layer is never read): a horizontal projection profile of the ink,
after removing what is not text — table rules and box borders (long straight runs of ink), and components far
taller than the text (QR codes, barcodes, logos, signatures). What is left separates into bands of rows where the
profile is empty; a band's left and right ink edges give the row's box. Training crops rows the same way (the
synthetic records' row extents only say which band is which row), so the model sees at training what the
segmenter gives it at inference.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image

from .models import ReadingUnit

Box = tuple[int, int, int, int]  # left, top, right, bottom (exclusive), pixels


# Bumped whenever segment() cuts rows differently: cached training rows (pretraining's row banks) are keyed by it.
SEGMENTER_VERSION = 3


def _otsu(gray: np.ndarray) -> float:
    hist = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    levels = np.arange(256)
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * levels)
    w1 = total - w0
    mean_all = m0[-1] / total
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_all * w0 - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = 0
    return float(np.argmax(between))


def _long_runs(mask: np.ndarray, length: int, axis: int) -> np.ndarray:
    """Pixels that belong to a straight run of at least ``length`` ink pixels along ``axis``."""
    from scipy.ndimage import maximum_filter1d, uniform_filter1d

    if mask.shape[axis] < length:
        return np.zeros_like(mask)
    full = uniform_filter1d(mask.astype(np.float32), length, axis=axis, mode="constant") > 1 - 0.5 / length
    return maximum_filter1d(full, length, axis=axis, mode="constant") & mask


def ink_mask(gray: np.ndarray) -> np.ndarray:
    """The ink of a page (see :func:`_ink`)."""
    return _ink(gray, noisy_paper(gray))[1]


def noisy_paper(gray: np.ndarray) -> bool:
    """Whether the paper is noise (a scan) rather than one grey level (a render): more than 2% of neighbouring
    paper pixels differ by 3 levels or more (synthetic test pages: at most 0.9%; `scan` preset pages: at least
    4.3%). Scans get their own treatment in a few places below; rendered pages are cut as the model was trained."""
    paper = int(np.argmax(np.bincount(gray.ravel(), minlength=256)))
    g = gray.astype(np.int16)
    a, b = g[:, :-1], g[:, 1:]
    on_paper = (np.abs(a - paper) <= 25) & (np.abs(b - paper) <= 25)
    return bool(on_paper.any() and (np.abs(a - b)[on_paper] >= 3).mean() > 0.02)


def _ink(gray: np.ndarray, noisy: bool) -> tuple[np.ndarray, np.ndarray]:
    """(dark ink, ink). Dark pixels: below Otsu's threshold, kept between 90 and 200 so a blank page or a light
    background band (zebra tables, coloured header bands) is not read as ink; on rendered paper then grown into
    light pixels (below 225) within 2 px of that ink. Thin or grey type at 100 dpi is mostly anti-aliased grey:
    without the growth its glyphs fall apart into specks, which the dust filter drops and which cut rows short
    (docs/embedded-model.md). The growth stays next to dark ink, so a light band is still no ink. On a scan's noisy
    paper it would fatten every speck of dust into a glyph, so there the ink is the dark pixels alone."""
    from scipy.ndimage import maximum_filter

    core = gray < min(200.0, max(90.0, _otsu(gray)))
    if noisy:
        return core, core
    paper = int(np.argmax(np.bincount(gray.ravel(), minlength=256)))
    return core, core | ((gray < min(225, paper - 30)) & maximum_filter(core, size=5, mode="constant"))


def text_mask(gray: np.ndarray, noisy: bool | None = None) -> np.ndarray:
    """Ink without rules, borders and components much taller than text."""
    from scipy.ndimage import find_objects, label

    noisy = noisy_paper(gray) if noisy is None else noisy
    dark, ink = _ink(gray, noisy)
    h, w = ink.shape
    lines = _long_runs(ink, max(24, w // 25), axis=1) | _long_runs(ink, max(20, h // 40), axis=0)
    text = ink & ~lines
    # A QR code falls apart into modules the size of letters, some joined, some not. It is found as a square
    # of page-scale size (1/17 of the width, larger than a heading's letter, smaller than any printed QR code)
    # that is more than a third ink: text, headings included, is far sparser at that scale.
    from scipy.ndimage import maximum_filter, uniform_filter

    size = max(30, w // 17)
    # (measured on the dark ink: grown anti-aliasing would make bold headings that dense)
    dense = uniform_filter((dark & ~lines).astype(np.float32), size=size, mode="constant") > 0.35
    if dense.any() and noisy:
        # A scan's blur makes a block of bold type that dense too, in a band no taller than a few rows; a QR code's
        # dense area is as tall as it is wide. Without this, scans lost whole paragraphs next to bold headings.
        blobs, _ = label(dense)
        for i, (ys, xs) in enumerate(find_objects(blobs), 1):
            if ys.stop - ys.start < size // 2 or xs.stop - xs.start < size // 2:
                dense[ys, xs] &= blobs[ys, xs] != i
    if dense.any():
        text &= ~maximum_filter(dense, size=int(1.6 * size), mode="constant")  # out to the edges
    labels, n = label(text, structure=np.ones((3, 3), bool))
    if n == 0:
        return text
    slices = find_objects(labels)
    heights = np.array([s[0].stop - s[0].start for s in slices])
    widths = np.array([s[1].stop - s[1].start for s in slices])
    glyphs = heights[(heights >= 3) & (widths <= 4 * heights)]
    if len(glyphs) == 0:
        return text
    typical = float(np.median(glyphs))
    too_big = np.flatnonzero(heights > 4.5 * max(typical, 4.0)) + 1  # barcodes, logos, stamps' boxes
    if len(too_big):
        text &= ~np.isin(labels, too_big)
    # Dust and noise on scans: specks far from any letter. A mark smaller than half a glyph's height squared is kept
    # only within a glyph's height of a letter (a full stop, an i's dot, a decimal point always are).
    areas = np.bincount(labels[text], minlength=n + 1)
    small = (areas > 0) & (areas < (0.5 * max(typical, 4.0)) ** 2)
    small[0] = False
    letters = text & ~small[labels]
    reach = int(2 * max(typical, 4.0)) + 1
    near = maximum_filter(letters, size=reach, mode="constant")
    touching = np.bincount(labels[near & text], minlength=n + 1) > 0
    lone = small & ~touching
    if lone.any():
        text &= ~lone[labels]
    return text


def _bands(profile: np.ndarray) -> list[list[int]]:
    rows = np.flatnonzero(profile > 0)
    if len(rows) == 0:
        return []
    cuts = np.flatnonzero(np.diff(rows) > 1)
    starts = np.concatenate([[rows[0]], rows[cuts + 1]])
    stops = np.concatenate([rows[cuts], [rows[-1]]]) + 1
    return [[int(a), int(b)] for a, b in zip(starts, stops)]


def _text_lines(text: np.ndarray) -> np.ndarray:
    """Pixel rows that hold a run of text: ink smeared across gaps of 1.5 glyph heights (letters and words join)
    with a run of 3 glyph heights or more. On a scan, dust and the broken remains of table borders fill the gaps
    between rows with a few pixels of ink each and joined whole tables into one band; they make no such run."""
    from scipy.ndimage import binary_closing, find_objects, label, uniform_filter1d

    labels, _ = label(text, structure=np.ones((3, 3), bool))
    spans = [(s[0].stop - s[0].start, s[1].stop - s[1].start) for s in find_objects(labels)]
    glyphs = [h for h, w in spans if h >= 4 and w <= 4 * h]
    glyph = float(np.median(glyphs)) if glyphs else 8.0
    smeared = binary_closing(text, structure=np.ones((1, max(3, round(1.5 * glyph))), bool))
    run = max(4, round(3 * glyph))
    return (uniform_filter1d(smeared.astype(np.float32), run, axis=1, mode="constant") > 1 - 0.5 / run).any(axis=1)


def segment(image: Image.Image) -> list[Box]:
    """Text rows of a page, top to bottom, as boxes around their ink with a margin."""
    gray = np.asarray(image.convert("L"))
    noisy = noisy_paper(gray)
    text = text_mask(gray, noisy)
    profile = text.sum(axis=1)
    if noisy:
        profile = profile * _text_lines(text)
    bands = _bands(profile)
    if not bands:
        return []
    # a row's typical height, from bands that hold at least two glyphs' worth of ink (not dust)
    inks = [int(text[a:b].sum()) for a, b in bands]
    solid = [b - a for (a, b), ink in zip(bands, inks) if ink >= 2 * (b - a) ** 2] or [b - a for a, b in bands]
    typical = float(np.median(solid))
    # Fragments of a row (an i's dot, an accent, a comma's tail) sit within half a row of a taller band: join them.
    merged: list[list[int]] = []
    for band in bands:
        small = band[1] - band[0] < 0.4 * typical
        if merged and (small or merged[-1][1] - merged[-1][0] < 0.4 * typical) and band[0] - merged[-1][1] <= 0.35 * typical:
            merged[-1][1] = band[1]
        else:
            merged.append(band)
    boxes = []
    for top, bottom in merged:
        height = bottom - top
        ink = int(text[top:bottom].sum())
        if height < 0.5 * typical and ink < typical * typical * 0.5:  # specks of dust, not a row
            continue
        left, right = _ink_span(text[top:bottom], height)
        boxes.append(_padded(left, top, right, bottom, gray.shape))
    return boxes


def _ink_span(band: np.ndarray, height: int) -> tuple[int, int]:
    """Left and right edge of a row's ink, leaving out specks at either end: a cluster of ink (columns closer than
    two row heights) at an end is dropped if it holds less ink than a fifth of a glyph and stands less than half
    the row high (a lone "1" or "-" at the end of a row is kept)."""
    columns = band.sum(axis=0)
    cols = np.flatnonzero(columns)
    cuts = np.flatnonzero(np.diff(cols) > 2 * height)
    starts = np.concatenate([[0], cuts + 1])
    stops = np.concatenate([cuts + 1, [len(cols)]])
    clusters = [(int(cols[a]), int(cols[b - 1]) + 1) for a, b in zip(starts, stops)]

    def speck(c: tuple[int, int]) -> bool:
        part = band[:, c[0]:c[1]]
        rows = np.flatnonzero(part.any(axis=1))
        return part.sum() < 0.2 * height * height and rows[-1] - rows[0] + 1 < 0.5 * height

    while len(clusters) > 1 and speck(clusters[0]):
        clusters.pop(0)
    while len(clusters) > 1 and speck(clusters[-1]):
        clusters.pop()
    return clusters[0][0], clusters[-1][1]


def _padded(left: int, top: int, right: int, bottom: int, shape: tuple[int, ...]) -> Box:
    """A row's ink box with the margin every crop gets (training and inference alike)."""
    height = bottom - top
    pad_v, pad_h = max(1, round(0.15 * height)), max(2, round(0.5 * height))
    return (max(0, left - pad_h), max(0, top - pad_v), min(shape[1], right + pad_h), min(shape[0], bottom + pad_v))


def tighten(gray: np.ndarray, box: Sequence[float]) -> tuple[float, float, float, float] | None:
    """A text-layer row's box (pixels; the segmentation benchmark's truth, the PDF row bank's crops) shrunk to the ink inside it (one pixel of slack around the box); None when
    nothing is drawn there (white or hidden text)."""
    h, w = gray.shape
    left, top = max(0, int(box[0]) - 1), max(0, int(box[1]) - 1)
    right, bottom = min(w, int(np.ceil(box[2])) + 1), min(h, int(np.ceil(box[3])) + 1)
    if right - left < 2 or bottom - top < 2:
        return None
    ink = ink_mask(gray[top:bottom, left:right])
    cols, lines = np.flatnonzero(ink.any(axis=0)), np.flatnonzero(ink.any(axis=1))
    if len(cols) == 0:
        return None
    return (float(left + cols[0]), float(top + lines[0]), float(left + cols[-1] + 1), float(top + lines[-1] + 1))


def ink_box(image: Image.Image) -> Box | None:
    """The padded box around all the ink of an image that shows one row (drawn training strings)."""
    ink = ink_mask(np.asarray(image.convert("L")))
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if len(rows) == 0:
        return None
    return _padded(int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1, ink.shape)


def skew_angle(image: Image.Image, most: float = 3.0, step: float = 0.25) -> float:
    """The rotation (degrees, counter-clockwise) that makes the text rows horizontal: the angle whose horizontal
    projection of the ink is sharpest (largest change between neighbouring pixel rows), on a 600 px wide copy;
    every 0.25 degrees, then every 0.05 around the best."""
    gray = image.convert("L")
    scale = min(1.0, 600 / max(1, gray.width))
    small = gray.resize((max(1, round(gray.width * scale)), max(1, round(gray.height * scale))),
                        Image.Resampling.BOX)
    ink = Image.fromarray((ink_mask(np.asarray(small)) * 255).astype(np.uint8))

    def sharpness(angle: float) -> float:
        profile = np.asarray(ink.rotate(angle, resample=Image.Resampling.BILINEAR), dtype=np.float32).sum(1)
        return float(np.square(np.diff(profile)).sum())

    coarse = max(np.arange(-most, most + 1e-9, step), key=lambda a: sharpness(float(a)))
    fine = max(np.arange(coarse - step, coarse + step + 1e-9, step / 5), key=lambda a: sharpness(float(a)))
    return round(float(fine), 3)


def deskew(image: Image.Image, angle: float | None = None, most: float = 3.0) -> Image.Image:
    """The page turned by ``angle`` (default: skew_angle's) so its rows are horizontal (scans lie up to a few
    degrees off); unchanged when straight."""
    angle = skew_angle(image, most) if angle is None else angle
    if abs(angle) < 0.1:
        return image
    return image.convert("RGB").rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor="white")


def row_image(image: Image.Image, box: Box, unit: ReadingUnit) -> Image.Image:
    """The crop scaled to the unit's height (greyscale kept as RGB, which image processors expect)."""
    crop = image.crop(box).convert("L")
    w, h = crop.size
    width = max(unit.multiple, min(unit.max_width, round(w * unit.height / max(1, h))))
    return crop.resize((width, unit.height), Image.Resampling.BILINEAR).convert("RGB")


def pad_batch(rows: Sequence[Image.Image], unit: ReadingUnit) -> list[Image.Image]:
    """Rows padded with white on the right to one width (the widest, rounded up to the tower's stride)."""
    width = max(r.width for r in rows)
    width = -(-width // unit.multiple) * unit.multiple
    out = []
    for r in rows:
        if r.width == width:
            out.append(r)
            continue
        canvas = Image.new("RGB", (width, unit.height), "white")
        canvas.paste(r, (0, 0))
        out.append(canvas)
    return out


def page_rows(image: Image.Image, unit: ReadingUnit) -> list[Image.Image]:
    """Row images of a page, top to bottom: deskewed, segmented, each row scaled to the unit's height."""
    image = deskew(image)
    return [row_image(image, box, unit) for box in segment(image)]


# --------------------------------------------------------------------------------------- training rows

def match_rows(boxes: list[Box], extents: list[Sequence[float]], page_height: int) -> list[Box | None]:
    """For each target row (extents: top, bottom as fractions of the page height, from synthetic records), the
    segmenter's box if exactly one box overlaps it and that box overlaps no other row; else None."""
    spans = [(t * page_height, b * page_height) for t, b in extents]

    def overlaps(box: Box, span) -> bool:
        return min(box[3], span[1]) - max(box[1], span[0]) > 0.3 * (span[1] - span[0])

    hits = [[j for j, span in enumerate(spans) if overlaps(box, span)] for box in boxes]
    out: list[Box | None] = []
    for j, span in enumerate(spans):
        mine = [i for i, h in enumerate(hits) if j in h]
        out.append(boxes[mine[0]] if len(mine) == 1 and hits[mine[0]] == [j] else None)
    return out


def training_rows(image: Image.Image, extents: list[Sequence[float]], texts: list[str]) -> list[tuple[Box, str]]:
    """(box, text) for every row the segmenter finds as the record says: the crops a row model trains on."""
    if len(extents) != len(texts):
        return []
    boxes = match_rows(segment(image), extents, image.height)
    return [(box, text) for box, text in zip(boxes, texts) if box is not None and text.strip()]
