"""The reading unit: a page image cut into text rows, and rows made into a row model's input images.

A model that reads rows (invoice-vlm-tiny) says so in its ``config.json`` (``reading: {"unit": "row", ...}``);
every entry point then goes page -> rows -> batched generation -> page text (``invoice_vlm.infer``), and rows
joined by a newline are the transcription convention (rows top to bottom, each row left to right).

The segmenter works on pixels only (a PDF's text layer is never read): a horizontal projection profile of the ink,
after removing what is not text — table rules and box borders (long straight runs of ink), and components far
taller than the text (QR codes, barcodes, logos, signatures). What is left separates into bands of rows where the
profile is empty; a band's left and right ink edges give the row's box. A row whose blocks sit at different
heights is read as its parts side by side (``segment_rows``, ``row_image``). Training crops rows the same way (the
synthetic records' row extents only say which band is which row), so the model sees at training what the
segmenter gives it at inference.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

from .common import ReadingUnit

Box = tuple[int, int, int, int]  # left, top, right, bottom (exclusive), pixels


# Bumped whenever segment() cuts rows differently: cached training rows (pretraining's row banks) are keyed by it.
SEGMENTER_VERSION = 10


# Pixel operations: OpenCV where it is installed (a dependency; 5-10x faster than scipy.ndimage on a page), and
# scipy.ndimage where it is not (a GPU machine whose image lacks it: OpenCV's 64 MB wheel does not fit what travels
# there). Both give the same masks and boxes: tests/test_rows.py -k backends cuts pages both ways.
BACKEND = "opencv"
try:
    import cv2
except ImportError:  # pragma: no cover - exercised by the backends test
    cv2 = None
    BACKEND = "scipy"

_CC_X, _CC_Y, _CC_W, _CC_H, _CC_AREA = range(5)  # columns of _components' stats, as OpenCV lays them out


def _opencv() -> bool:
    return BACKEND == "opencv" and cv2 is not None


def _histogram(gray: np.ndarray) -> np.ndarray:
    if _opencv():
        return cv2.calcHist([np.ascontiguousarray(gray)], [0], None, [256], [0, 256]).ravel().astype(np.float64)
    return np.bincount(gray.ravel(), minlength=256).astype(np.float64)


def _rect(mask: np.ndarray, shape: tuple[int, int], op: str) -> np.ndarray:
    """Erosion (``op="min"``) or dilation (``"max"``) of a boolean mask by a ``shape`` rectangle centred as
    scipy.ndimage centres a window (index - size // 2 onwards); outside the image is False."""
    if _opencv():
        fn = cv2.erode if op == "min" else cv2.dilate
        return fn(mask.view(np.uint8), np.ones(shape, np.uint8), anchor=(shape[1] // 2, shape[0] // 2),
                  borderType=cv2.BORDER_CONSTANT, borderValue=0).view(bool)
    from scipy.ndimage import maximum_filter, minimum_filter

    return (minimum_filter if op == "min" else maximum_filter)(mask, size=shape, mode="constant", cval=0)


def _box_count(mask: np.ndarray, size: int) -> np.ndarray:
    """How many True pixels each ``size`` x ``size`` window (centred as in _rect) holds."""
    if _opencv():
        return cv2.boxFilter(mask.view(np.uint8), cv2.CV_32F, (size, size), anchor=(size // 2, size // 2),
                             normalize=False, borderType=cv2.BORDER_CONSTANT)  # whole counts: exact below 2**24
    from scipy.ndimage import uniform_filter

    return np.rint(uniform_filter(mask.astype(np.float64), size=size, mode="constant") * size * size)


def _components(mask: np.ndarray, connectivity: int = 8) -> tuple[int, np.ndarray, np.ndarray]:
    """(count with the background, labels, stats): OpenCV's connectedComponentsWithStats (x, y, width, height,
    area per label; label 0 the background)."""
    if _opencv():
        mask = mask.view(np.uint8)
        try:
            # 16-bit labels: OpenCV gathers the stats about three times faster than with 32-bit ones (24 -> 9 ms on a
            # 200 dpi page, the segmenter's largest single cost); a page with 65,535 shapes or more (a noisy scan)
            # makes it raise, and gets 32-bit labels
            count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=connectivity,
                                                                       ltype=cv2.CV_16U)
        except cv2.error:
            count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=connectivity,
                                                                       ltype=cv2.CV_32S)
        return count, labels, stats
    from scipy.ndimage import find_objects, label

    labels, n = label(mask, structure=np.ones((3, 3), bool) if connectivity == 8 else None)
    stats = np.zeros((n + 1, 5), np.int64)
    for i, (ys, xs) in enumerate(find_objects(labels), 1):
        stats[i, :4] = xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start
    stats[:, _CC_AREA] = np.bincount(labels.ravel(), minlength=n + 1)
    return n + 1, labels, stats


def _otsu(gray: np.ndarray, hist: np.ndarray | None = None) -> float:
    hist = _histogram(gray) if hist is None else hist
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
    """Pixels that belong to a straight run of at least ``length`` ink pixels along ``axis``: an erosion by a line
    of ``length`` pixels (every pixel of the window ink; outside the page is no ink), then a dilation by the same
    window."""
    if mask.shape[axis] < length:
        return np.zeros_like(mask)
    shape = (1, length) if axis == 1 else (length, 1)
    return _rect(_rect(mask, shape, "min"), shape, "max") & mask


def _closing(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Gaps under a ``shape`` window filled: a dilation, then an erosion by the same window."""
    return _rect(_rect(mask, shape, "max"), shape, "min")


def _spans(on: np.ndarray, gap: float) -> list[tuple[int, int]]:
    """(start, stop) of each cluster of True entries of a 1-D mask, clusters parted where consecutive True entries
    lie more than ``gap`` apart (a row's ink into blocks at its gutters)."""
    at = np.flatnonzero(on)
    if len(at) == 0:
        return []
    cuts = np.flatnonzero(np.diff(at) > gap)
    starts = np.concatenate([at[:1], at[cuts + 1]])
    stops = np.concatenate([at[cuts], at[-1:]]) + 1
    return list(zip(starts.tolist(), stops.tolist()))


def _grow(mask: np.ndarray, size: int) -> np.ndarray:
    """Each pixel within a ``size`` x ``size`` square (centred as scipy.ndimage centres it) of a True pixel."""
    return _rect(mask, (size, size), "max")


def _density_above(mask: np.ndarray, size: int, fraction: float) -> np.ndarray:
    """Pixels whose ``size`` x ``size`` square (centred as scipy.ndimage centres it) is more than ``fraction``
    ink (outside the page is no ink)."""
    return _box_count(mask, size) > fraction * size * size


def ink_mask(gray: np.ndarray) -> np.ndarray:
    """The ink of a page (see :func:`_ink`)."""
    hist = _histogram(gray)
    return _ink(gray, noisy_paper(gray, hist), hist)[1]


def noisy_paper(gray: np.ndarray, hist: np.ndarray | None = None) -> bool:
    """Whether the paper is noise (a scan) rather than one grey level (a render): more than 2% of neighbouring
    paper pixels differ by 3 levels or more (synthetic test pages: at most 0.9%; `scan` preset pages: at least
    4.3%). Scans get their own treatment in a few places below; rendered pages are cut as the model was trained."""
    paper = int(np.argmax(_histogram(gray) if hist is None else hist))
    near = (gray >= paper - 25) & (gray <= paper + 25)
    on_paper = near[:, :-1] & near[:, 1:]
    papers = np.count_nonzero(on_paper)
    if not papers:
        return False
    if _opencv():
        differ = cv2.absdiff(np.ascontiguousarray(gray[:, :-1]), np.ascontiguousarray(gray[:, 1:])) >= 3
    else:
        differ = np.abs(np.diff(gray.astype(np.int16), axis=1)) >= 3
    return bool(np.count_nonzero(differ & on_paper) / papers > 0.02)


def _ink(gray: np.ndarray, noisy: bool, hist: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(dark ink, ink). Dark pixels: below Otsu's threshold, kept between 90 and 200 so a blank page or a light
    background band (zebra tables, coloured header bands) is not read as ink; on rendered paper then grown into
    light pixels (below 225) within 2 px of that ink. Thin or grey type at 100 dpi is mostly anti-aliased grey:
    without the growth its glyphs fall apart into specks, which the dust filter drops and which cut rows short
    (docs/embedded-model.md). The growth stays next to dark ink, so a light band is still no ink. On a scan's noisy
    paper it would fatten every speck of dust into a glyph, so there the ink is the dark pixels alone."""
    hist = _histogram(gray) if hist is None else hist
    core = gray < min(200.0, max(90.0, _otsu(gray, hist)))
    if noisy:
        return core, core
    paper = int(np.argmax(hist))
    near = _grow(core, 5)
    grown = core | ((gray < min(225, paper - 30)) & near)
    return core, grown | _light_type(gray, paper, near)


def _light_type(gray: np.ndarray, paper: int, near: np.ndarray) -> np.ndarray:
    """Light and coloured type on a rendered page (an orange heading is grey 166: above any global threshold that
    keeps light bands out): pixels 60 levels darker than the paper, away from dark ink, whose connected shapes are
    glyph-like: no taller than three 10 pt capitals across a page's width, and not filled boxes (a band, a field, a
    logo's plate is more than 60% of its own bounding box; a glyph, even a bold one, rarely is)."""
    light = (gray < paper - 60) & ~near
    if np.count_nonzero(light) < 50:
        return np.zeros_like(light)
    count, labels, stats = _components(light)
    glyph = max(8.0, gray.shape[1] / 85)  # a 10 pt capital on a page 8.3 inches wide
    h, w = stats[:, _CC_H], stats[:, _CC_W]
    fill = stats[:, _CC_AREA] / np.maximum(1, h * w)
    keep = (h >= 3) & (h <= 3 * glyph) & (w <= 6 * glyph) & ((fill <= 0.6) | (w <= 2))  # (a stem is solid)
    keep[0] = False
    return keep[labels]


def _reversed_type(text: np.ndarray, dark: np.ndarray, width: int) -> np.ndarray:
    """Light type on a dark plate (a footer's slogan in white on blue, a table's header band): the plate is ink,
    its letters holes in it, and what is left of it once its long runs go as rules is slivers between the letters.
    On each plate (a dark shape at least 1.5 capitals tall and 6 wide, more than half its box), the slivers go and
    the holes that are glyph-shaped (no taller than two capitals, not touching the plate's box) are the text; the
    crop is turned dark on light when it is read (``row_image``)."""
    glyph = max(8.0, width / 85)
    # found on the page at a quarter of its size (every fourth pixel each way): a plate is large and solid, and the
    # page's components at full size cost more than the rest of the segmenter; then each at full size in its box
    s = 4
    rows, cols = dark.shape[0] // s * s, dark.shape[1] // s * s
    cells = np.ascontiguousarray(dark[s // 2:rows:s, s // 2:cols:s])  # a pixel a cell: a plate is solid
    count, _, stats = _components(cells)
    h, w, area = stats[1:, _CC_H] * s, stats[1:, _CC_W] * s, stats[1:, _CC_AREA] * s * s
    plates = np.flatnonzero((h >= 1.5 * glyph) & (w >= 6 * glyph) & (area > 0.5 * h * w)) + 1
    if len(plates) == 0:
        return text
    text = text.copy()
    for i in plates:
        x, y = max(0, (stats[i, 0] - 1) * s), max(0, (stats[i, 1] - 1) * s)
        pw = min(dark.shape[1], (stats[i, 0] + stats[i, _CC_W] + 1) * s) - x
        ph = min(dark.shape[0], (stats[i, 1] + stats[i, _CC_H] + 1) * s) - y
        n, labels, own_stats = _components(dark[y:y + ph, x:x + pw])
        if n < 2:
            continue
        own = labels == 1 + int(np.argmax(own_stats[1:, _CC_AREA]))  # the plate: the box's largest dark shape
        holes = ~own
        n, hl, hs = _components(holes)
        hole_h, hole_w = hs[:, _CC_H], hs[:, _CC_W]
        inner = ((hs[:, 0] > 0) & (hs[:, 1] > 0) & (hs[:, 0] + hole_w < pw) & (hs[:, 1] + hole_h < ph)
                 & (hole_h >= 3) & (hole_h <= 2 * glyph) & (hole_w <= 6 * glyph))
        inner[0] = False
        region = text[y:y + ph, x:x + pw]
        region[own] = False
        region |= inner[hl]
    return text


def text_mask(gray: np.ndarray, noisy: bool | None = None, hist: np.ndarray | None = None) -> np.ndarray:
    """Ink without rules, borders and components much taller than text."""
    hist = _histogram(gray) if hist is None else hist
    noisy = noisy_paper(gray, hist) if noisy is None else noisy
    dark, ink = _ink(gray, noisy, hist)
    h, w = ink.shape
    across, down = max(24, w // 25), max(20, h // 40)
    rows, columns = _long_runs(ink, across, axis=1), _long_runs(ink, down, axis=0)
    lines = rows | columns
    text = ink & ~lines
    if not noisy:
        # light pixels are ink for lying next to dark ink (_ink), which a rule is too: beside a table's rules, a
        # shaded row's grey made slivers as tall as the shading, and the row's crop took the shading's height.
        # Rules across the page are runs of dark pixels here (in a shaded band at 100 dpi, the grey grown round a
        # heading's letters makes runs of ink as long as a rule); rules down it, runs of ink three times the
        # shortest (a large digit's stem can be a run of the shortest). Each found only in the pixel rows (columns)
        # that hold a run of ink that long: a run along one never depends on another, and few hold one.
        rules = np.zeros_like(ink)
        held = np.flatnonzero(rows.any(axis=1))
        if len(held):
            rules[held] = _long_runs(np.ascontiguousarray(dark[held]), across, axis=1)
        held = np.flatnonzero(columns.any(axis=0))
        if len(held):
            rules[:, held] |= _long_runs(np.ascontiguousarray(columns[:, held]), 3 * down, axis=0)
        if rules.any():
            text &= dark | ~_grow(rules, 5)
        text = _reversed_type(text, dark, w)
    # A QR code falls apart into modules the size of letters, some joined, some not. It is found as a square
    # of page-scale size (1/17 of the width, larger than a heading's letter, smaller than any printed QR code)
    # that is more than a third ink: text, headings included, is far sparser at that scale.
    size = max(30, w // 17)
    # (measured on the dark ink: grown anti-aliasing would make bold headings that dense)
    dense = _density_above(dark & ~lines, size, 0.35)
    if dense.any() and noisy:
        # A scan's blur makes a block of bold type that dense too, in a band no taller than a few rows; a QR code's
        # dense area is as tall as it is wide. Without this, scans lost whole paragraphs next to bold headings.
        count, blobs, stats = _components(dense, connectivity=4)
        flat = (stats[:, _CC_H] < size // 2) | (stats[:, _CC_W] < size // 2)
        flat[0] = False
        dense &= ~flat[blobs]
    if dense.any():
        text &= ~_grow(dense, int(1.6 * size))  # out to the edges

    count, labels, stats = _components(text)
    n = count - 1  # label 0 is the background
    if n == 0:
        return text
    heights, widths = stats[1:, _CC_H], stats[1:, _CC_W]
    glyphs = heights[(heights >= 3) & (widths <= 4 * heights)]
    if len(glyphs) == 0:
        return text
    typical = float(np.median(glyphs))
    # the text pixels and their components, so that what follows costs the ink, not the page (``flat`` is a view:
    # clearing a pixel there clears it in ``text``)
    text = np.ascontiguousarray(text)
    flat = text.reshape(-1)
    on = np.flatnonzero(flat)
    owner = labels.reshape(-1)[on]
    areas = stats[:, _CC_AREA].copy()
    areas[0] = 0
    too_big = heights > 4.5 * max(typical, 4.0)  # barcodes, logos, stamps' boxes
    # an icon's or a logo's filled plate beside a row (Coolblue's envelope: 1.5 rows tall, 4 wide, three quarters
    # ink) made the row's crop that tall and the type in it small; a glyph, even a bold one, is not that solid that wide
    # (solid in the dark ink: on a shaded band the growth into light pixels fuses a word into one solid shape)
    for i in np.flatnonzero(~too_big & (heights >= 1.2 * typical) & (widths >= 2.5 * typical)
                            & (stats[1:, _CC_AREA] >= 0.65 * heights * widths)):
        bx, by, bw, bh = stats[i + 1, :4]
        too_big[i] = np.count_nonzero(dark[by:by + bh, bx:bx + bw]) >= 0.65 * bw * bh
    too_big = np.flatnonzero(too_big) + 1
    if len(too_big):
        gone = np.zeros(n + 1, bool)
        gone[too_big] = True
        flat[on[gone[owner]]] = False
        on, owner = on[~gone[owner]], owner[~gone[owner]]
        areas[too_big] = 0
    # Dust and noise on scans: specks far from any letter. A mark smaller than half a glyph's height squared is kept
    # only within a glyph's height of a letter (a full stop, an i's dot, a decimal point always are).
    small = (areas > 0) & (areas < (0.5 * max(typical, 4.0)) ** 2)
    if small.any():
        # Small marks set side by side as a line of type are letters: a thin light paragraph's (AWS's grey
        # footnotes, 50 pixels a letter, none near a larger one), a scan's small italic header. Marks stacked one
        # above the other (one rotated letter a line: margin text set vertically) stay marks and go; so does a
        # scan's dust, which does not line up (a broken rule's pieces do: they go with the flat bands, segment).
        marks = np.zeros_like(text)
        marks.reshape(-1)[on[small[owner]]] = True
        k = max(3, round(typical))
        # (every operation runs along the pixel rows: only the rows that hold marks need it)
        held = np.flatnonzero(marks.any(axis=1))
        lined = np.zeros_like(text)
        lined[held] = _long_runs(_closing(np.ascontiguousarray(marks[held]), (1, k)), round(4 * typical), axis=1)
        small &= ~(np.bincount(owner[lined.reshape(-1)[on]], minlength=n + 1) > 0)
    if not small.any():
        return text
    letters = np.zeros_like(text)
    letters.reshape(-1)[on[~small[owner]]] = True
    reach = int(2 * max(typical, 4.0)) + 1
    near = _grow(letters, reach).reshape(-1)
    touching = np.bincount(owner[near[on]], minlength=n + 1) > 0
    lone = small & ~touching
    if lone.any():
        flat[on[lone[owner]]] = False
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
    _, _, stats = _components(text)
    h, w = stats[1:, _CC_H], stats[1:, _CC_W]
    glyphs = h[(h >= 4) & (w <= 4 * h)]
    glyph = float(np.median(glyphs)) if len(glyphs) else 8.0
    k = max(3, round(1.5 * glyph))
    smeared = _closing(text, (1, k))  # gaps under k pixels filled
    run = max(4, round(3 * glyph))
    lines = _long_runs(smeared, run, axis=1).any(axis=1)
    # a pixel row or three inside a line can miss the run (a blurred x-height thins out): they stay in the line
    on = np.flatnonzero(lines)
    for a, b in zip(on[:-1], on[1:]):
        if 1 < b - a <= 4:
            lines[a:b] = True
    return lines


# A page narrower or shorter than this (px) holds no text row: a glyph needs about as much.
MIN_PAGE_SIDE = 8


def segment(image: Image.Image) -> list[Box]:
    """Text rows of a page, top to bottom, as boxes around their ink with a margin."""
    return [union(parts) for parts in segment_rows(image)]


def union(parts: Sequence[Box]) -> Box:
    """The box around a row's parts."""
    return (min(p[0] for p in parts), min(p[1] for p in parts), max(p[2] for p in parts), max(p[3] for p in parts))


def segment_rows(image: Image.Image, noisy: bool | None = None) -> list[list[Box]]:
    """Text rows of a page, top to bottom, each as the boxes of its parts (one for most rows; see ``_parts``).
    ``noisy``: whether the paper is a scan's (default: ``noisy_paper`` of this image)."""
    gray = np.asarray(image.convert("L"))
    if min(gray.shape) < MIN_PAGE_SIDE:  # no row fits (and the quarter-size plate search would be empty)
        return []
    hist = _histogram(gray)
    noisy = noisy_paper(gray, hist) if noisy is None else noisy
    text = text_mask(gray, noisy, hist)
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
    merged = _join_fragments(_without_borders(text, bands, typical), typical)
    boxes = []
    width = text.shape[1]
    for band in merged:
        rows = [row for top, bottom in _split_band(profile, band, typical)
                for row in (_columns(text, top, bottom, typical) or [[(0, top, width, bottom)]])]
        rows = [row for parts in rows for row in (_stacked(text, parts, typical) or [parts])]
        for parts in rows:
            kept = []
            for left, top, right, bottom in parts:
                height = bottom - top
                ink = int(text[top:bottom, left:right].sum())
                if height < 0.5 * typical and ink < typical * typical * 0.5:  # specks of dust, not a row
                    continue
                if noisy and height < 0.35 * typical:
                    # on a scan, what is left of a rule the blur and the noise broke into pieces too short to go as
                    # rules: no row of type is that flat
                    continue
                left, right = _ink_span(text[top:bottom, left:right], height, left)
                if noisy and height < 0.5 * typical and ink < 0.1 * height * (right - left):
                    # two such pieces of a rule a few pixels apart, joined as an accent joins its letter: as flat
                    # as small type, but a tenth ink where a line of letters is a fifth and more
                    continue
                kept.append((left, top, right, bottom))
            if len(kept) == 1:
                kept = _parts(text, kept[0], typical)
            if kept:
                boxes.append([_padded(*part, gray.shape) for part in kept])
    return boxes


def _apart(blocks: Sequence[Sequence[int]], typical: float) -> bool:
    """Whether boxes set side by side sit at different heights: their middles more than 0.3 of a row apart."""
    middles = [(b[1] + b[3]) / 2 for b in blocks]
    return max(middles) - min(middles) > 0.3 * typical


def _baseline(block: np.ndarray) -> int:
    """A block's baseline: the last pixel row at least half as inked as its densest (below it only descenders)."""
    profile = block.sum(axis=1)
    return int(np.flatnonzero(profile >= 0.5 * profile.max())[-1])


def _baselines_apart(text: np.ndarray, blocks: Sequence[Box], typical: float) -> bool:
    """Whether blocks set side by side stand on different baselines (more than a quarter of a row apart): a small
    label set at the top of a table cell beside the cell's large value (ZUGFeRD's "Rechnungsnummer" over 471102)
    shares the value's middle within 0.3 of a row but not its baseline; blocks of one line of type do."""
    lines = [b[1] + _baseline(text[b[1]:b[3], b[0]:b[2]]) for b in blocks]
    return max(lines) - min(lines) > 0.25 * typical


def _parts(text: np.ndarray, box: Box, typical: float) -> list[Box]:
    """A row whose blocks, apart by a gutter (two rows of empty columns), sit at different heights (a total beside
    a payment line set half a row lower, footnotes beside an address block whose lines fall between theirs): each
    block is a part with its own top and bottom, read as one crop of the parts side by side (``row_image``), so
    no part is squeezed into a crop cut for all of them; so does a row whose blocks stand on different baselines
    (a cell's small label at its top beside the cell's value). A row whose blocks share their line stays one box;
    specks and marks under 0.55 of a row tall go with the nearest block (a small label is taller: 0.58 of a row on
    the ZUGFeRD samples)."""
    left, top, right, bottom = box
    band = text[top:bottom, left:right]
    spans = _spans(band.any(axis=0), 2 * typical)
    if len(spans) < 2:
        return [box]
    blocks = []
    for a, b in spans:
        lines = np.flatnonzero(band[:, a:b].any(axis=1))
        blocks.append((left + a, top + int(lines[0]), left + b, top + int(lines[-1]) + 1))
    tall = [bl for bl in blocks if bl[3] - bl[1] >= 0.55 * typical]
    if len(tall) < 2 or not (_apart(tall, typical) or _baselines_apart(text, tall, typical)):
        return [box]
    parts = list(tall)
    for bl in blocks:
        if bl not in tall:
            k = min(range(len(parts)), key=lambda j: min(abs(bl[0] - parts[j][2]), abs(parts[j][0] - bl[2])))
            parts[k] = union([parts[k], bl])
    return sorted(parts)


_REACH = 0.35  # how near (rows) a fragment sits to the band it belongs to


def _fragment(band: Sequence[int], typical: float) -> bool:
    """A band under 0.4 of a row: an accent's, a dot's, a dashed border's, not a row of type."""
    return band[1] - band[0] < 0.4 * typical


def _without_borders(text: np.ndarray, bands: list[list[int]], typical: float) -> list[list[int]]:
    """Bands without the dashed borders drawn round a row (Flipkart's dashed box round its invoice number): a flat
    band (under 0.4 of a row) whose densest pixel row is inked over more than half of its width, at least four rows
    wide, within the reach of a fragment (0.35 of a row) of a row's band. Joined to that row as an accent would be,
    it made the crop half as tall again and the reader wrote dashes and garbage. A line of dashes standing alone
    stays (a text row of hyphens)."""
    def border(band: list[int]) -> bool:
        if not _fragment(band, typical):
            return False
        ink = text[band[0]:band[1]]
        cols = np.flatnonzero(ink.any(axis=0))
        width = cols[-1] - cols[0] + 1
        densest = ink[int(np.argmax(ink.sum(axis=1)))]
        if width < 4 * typical or np.count_nonzero(densest) <= 0.5 * width:
            return False
        # dashes or dots: many short runs of one length (the tops of a line of letters, cut off by a rule struck
        # through them, are runs of every length)
        runs = np.diff(_spans(densest, 1), axis=1).ravel()
        return len(runs) >= 8 and runs.max() <= 0.5 * typical and runs.std() <= 0.35 * runs.mean()

    def row(k: int) -> bool:
        return 0 <= k < len(bands) and not _fragment(bands[k], typical)

    reach = _REACH * typical
    return [band for k, band in enumerate(bands)
            if not (border(band) and ((row(k - 1) and band[0] - bands[k - 1][1] <= reach)
                                      or (row(k + 1) and bands[k + 1][0] - band[1] <= reach)))]


def _join_fragments(bands: list[list[int]], typical: float) -> list[list[int]]:
    """Fragments of a row (an i's dot, an accent, a comma's tail) sit within half a row of a taller band: join
    them."""
    def small(band: Sequence[int]) -> bool:
        return _fragment(band, typical)

    merged: list[list[int]] = []
    for k, band in enumerate(bands):
        gap = band[0] - merged[-1][1] if merged else np.inf
        if (merged and (small(band) or small(merged[-1])) and gap <= _REACH * typical
                # a fragment at least as near a following fragment, the two as tall as a row of small type, goes
                # with it, not up into a row: the tops of a line of small type, parted from the rest of its letters
                # where a rule struck through them was taken out, are not the line above's
                and not (small(band) and not small(merged[-1]) and k + 1 < len(bands) and small(bands[k + 1])
                         and bands[k + 1][0] - band[1] <= gap and not small([band[0], bands[k + 1][1]]))):
            merged[-1][1] = band[1]
        else:
            merged.append(list(band))
    return merged


def _stacked(text: np.ndarray, parts: list[Box], typical: float) -> list[list[Box]] | None:
    """A row still taller than 1.5 rows with no gutter to part it, in which a label of two lines stands a word's
    gap from one-line labels set between them (a table header's "Art-Nr-Lief." over "Art-Nr" beside "Pos" and
    "Beschreibung"; one crop of it was read as garbage): cut at its word gaps (half a row) instead, and its lines
    grouped as ``_columns`` groups them. None where no word holds two lines (a line of large type), or where a
    piece is no line of type: taller than 1.5 rows (a logo, whose pieces would be read as garbage rows of their
    own) or under 0.55 of one (a shaded banner's edge left in a word)."""
    if len(parts) != 1 or parts[0][3] - parts[0][1] <= 1.5 * typical:
        return None
    left, top, right, bottom = parts[0]
    rows = _columns(text, top, bottom, typical, gutter=0.5 * typical, within=(left, right))
    if rows is None or any(not 0.55 * typical <= p[3] - p[1] <= 1.5 * typical for row in rows for p in row):
        return None
    return rows


def _columns(text: np.ndarray, top: int, bottom: int, typical: float, gutter: float | None = None,
             within: tuple[int, int] | None = None) -> list[list[Box]] | None:
    """A band still taller than 1.5 rows after _split_band may be side-by-side blocks whose lines interleave (an
    account number in large type beside a summary's two lines, an address beside a totals box): no pixel row is
    empty across the page, and no thin one either, so the page's profile cannot part them. Such a band is cut at
    its gutters (empty columns at least two rows wide) and each block into lines by its own profile. Lines of the
    blocks whose middles lie within half a row are one row again (a table's cells, as the reader learned rows).
    Rows top to bottom, each its parts (left, top, right, bottom): one box when its blocks' lines share their
    middles within 0.3 of a row, else each block's line, read side by side (``_parts``); None when the band is not
    tall, has no gutter, or no block holds two lines (a line of large type, or one with a gap: it stays whole)."""
    if bottom - top <= 1.5 * typical:
        return None
    x0, x1 = within or (0, text.shape[1])
    band = text[top:bottom, x0:x1]
    spans = [(x0 + a, x0 + b) for a, b in _spans(band.any(axis=0), 2 * typical if gutter is None else gutter)]
    band = text[top:bottom]
    if len(spans) < 2:
        return None
    parts: list[Box] = []
    lines = 0
    for left, right in spans:
        sub = band[:, left:right].sum(axis=1)
        found = [b for piece in _join_fragments(_bands(sub), typical) for b in _split_band(sub, piece, typical)]
        lines = max(lines, len(found))
        parts += [(left, top + a, right, top + b) for a, b in found]
    if lines < 2:
        return None
    parts.sort(key=lambda p: (p[1] + p[3]) / 2)
    rows: list[list[Box]] = []
    for p in parts:
        if rows and abs((p[1] + p[3]) / 2 - (rows[-1][0][1] + rows[-1][0][3]) / 2) <= 0.5 * typical:
            rows[-1].append(p)
        else:
            rows.append([p])
    return [sorted(r) if _apart(r, typical) else [union(r)] for r in rows]


def _split_band(profile: np.ndarray, band: Sequence[int], typical: float) -> list[list[int]]:
    """A band taller than 1.5 rows is two rows set so tightly that no empty pixel row parts them (or a row of
    larger type, or a label set between two lines): cut it where its ink profile is thinnest, if that is thin
    enough to be the gap between two lines' descenders and ascenders (a fifth of either part's densest pixel row:
    between a large capital's bars, beside a smaller line, the stems alone are thin, but not against the capitals'),
    each part at least 0.7 of a row tall (a large line's descenders are not a row); then the parts the same way.
    A line of large type has no such waist: its x-height is dense all the way down."""
    top, bottom = band
    if bottom - top <= 1.5 * typical:
        return [list(band)]
    edge = max(1, int(0.7 * typical))
    inner = profile[top + edge:bottom - edge]
    if len(inner) == 0:
        return [list(band)]
    cut = top + edge + int(np.argmin(inner))
    if profile[cut] > 0.2 * min(float(profile[top:cut].max()), float(profile[cut + 1:bottom].max())):
        return [list(band)]
    # each part a line of its own: half a row of pixel rows well inked (not a box border's remains, not accents)
    strong = profile[top:bottom] > 0.15 * float(profile[top:bottom].max())
    if min(strong[:cut - top].sum(), strong[cut + 1 - top:].sum()) < 0.5 * typical:
        return [list(band)]
    return _split_band(profile, [top, cut], typical) + _split_band(profile, [cut + 1, bottom], typical)


def _ink_span(band: np.ndarray, height: int, offset: int = 0) -> tuple[int, int]:
    """Left and right edge of a row's ink, leaving out specks at either end: a cluster of ink (columns closer than
    two row heights) at an end is dropped if it holds less ink than a fifth of a glyph and stands less than half
    the row high (a lone "1" or "-" at the end of a row is kept)."""
    clusters = _spans(band.any(axis=0), 2 * height)

    def speck(c: tuple[int, int]) -> bool:
        part = band[:, c[0]:c[1]]
        rows = np.flatnonzero(part.any(axis=1))
        return part.sum() < 0.2 * height * height and rows[-1] - rows[0] + 1 < 0.5 * height

    while len(clusters) > 1 and speck(clusters[0]):
        clusters.pop(0)
    while len(clusters) > 1 and speck(clusters[-1]):
        clusters.pop()
    return offset + clusters[0][0], offset + clusters[-1][1]


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
    every 0.25 degrees, then every 0.05 around the best. A projection at an angle is the ink pixels' rotated
    heights binned (each split linearly between its two pixel rows, as a bilinear rotation of the image would):
    no image is turned until the answer is known."""
    gray = image.convert("L")
    scale = min(1.0, 600 / max(1, gray.width))
    small = gray.resize((max(1, round(gray.width * scale)), max(1, round(gray.height * scale))),
                        Image.Resampling.BOX)
    ys, xs = np.nonzero(ink_mask(np.asarray(small)))
    if len(ys) == 0:
        return 0.0
    xs = xs - small.width / 2
    ys = ys - small.height / 2

    def sharpness(angle: float) -> float:
        a = np.deg2rad(angle)  # a counter-clockwise turn (y down) moves a pixel to y' = y cos a - x sin a
        height = ys * np.cos(a) - xs * np.sin(a)
        height -= height.min()
        low = np.floor(height).astype(np.int64)
        frac = height - low
        profile = np.bincount(low, weights=1 - frac, minlength=int(low.max()) + 2)
        profile[1:] += np.bincount(low, weights=frac, minlength=len(profile) - 1)[:len(profile) - 1]
        return float(np.square(np.diff(profile)).sum())

    coarse = max(np.arange(-most, most + 1e-9, step), key=lambda a: sharpness(float(a)))
    fine = max(np.arange(coarse - step, coarse + step + 1e-9, step / 5), key=lambda a: sharpness(float(a)))
    return round(float(fine), 3)


def page_quad(gray: np.ndarray) -> np.ndarray | None:
    """The paper's four corners (top left, top right, bottom right, bottom left; pixels) when the page lies on a
    darker ground, as in a photo; None for a scan or a render (the paper is the whole image). Found on the image at
    about 500 pixels: Otsu's threshold, the largest bright shape (gaps of text closed), its outline simplified to
    four corners; failing that, the same on the image lit evenly (``_lit_evenly``: where the light falls off across
    a sheet or a shadow darkens a side, the far paper is as dark as the near ground). Guards, so that a rendered page
    is never warped: the shape is convex, at least half the image, its corners within 20 degrees of square, three of
    them off the image's own (Coolblue's page, bright down to a blue footer band as wide as the page, keeps its top
    corners), and each side a sharp edge (``_sharp_side``: not a shadow's). Needs OpenCV."""
    if not _opencv():
        return None
    h, w = gray.shape
    s = max(1, round(max(h, w) / 500))
    small = np.ascontiguousarray(gray[::s, ::s])  # every s-th pixel: the paper's outline needs no more
    quad = _quad(small, gray, s)
    return quad if quad is not None else _quad(_lit_evenly(small), gray, s)


def _lit_evenly(small: np.ndarray) -> np.ndarray:
    """A photo at about 500 pixels divided by its paper's light, measured at a quarter of that size under a 13 x 13
    maximum, which reaches across the ground around a sheet (at most 6% of the image wide in the ``photo``
    preset, 24 of these pixels) to the paper, so the ground stays darker than the paper beside it."""
    return _evened(small, _paper_light(small, scale=4, reach=13, blur=2))


def _quad(small: np.ndarray, gray: np.ndarray, s: int) -> np.ndarray | None:
    """``page_quad``'s search on ``small`` (``gray`` at every ``s``-th pixel), with its guards."""
    h, w = gray.shape
    _, paper = cv2.threshold(small, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    paper = cv2.morphologyEx(paper, cv2.MORPH_CLOSE, np.ones((8, 8), np.uint8))
    contours, _ = cv2.findContours(paper, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    outline = max(contours, key=cv2.contourArea)
    if cv2.contourArea(outline) < 0.5 * small.size:
        return None
    quad = cv2.approxPolyDP(outline, 0.02 * cv2.arcLength(outline, True), True).reshape(-1, 2).astype(np.float64)
    if len(quad) != 4 or not cv2.isContourConvex(quad.astype(np.float32).reshape(-1, 1, 2)):
        return None
    quad *= s
    total, diff = quad.sum(axis=1), quad[:, 0] - quad[:, 1]
    quad = quad[[np.argmin(total), np.argmax(diff), np.argmax(total), np.argmin(diff)]]
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    if (np.linalg.norm(quad - corners, axis=1) > 0.003 * max(h, w)).sum() < 3:
        return None
    # a sheet seen at a slant, not a shadow's edge taken for the paper's: every corner within 20 degrees of square
    sides = np.roll(quad, -1, axis=0) - quad
    cosines = [abs(float(np.dot(a, b))) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9)
               for a, b in zip(sides, np.roll(sides, -1, axis=0))]
    if max(cosines) > np.sin(np.radians(20)):
        return None
    if not all(_sharp_side(gray, quad[i], quad[(i + 1) % 4], quad.mean(axis=0)) for i in range(4)):
        return None
    return quad


def _sharp_side(gray: np.ndarray, p: np.ndarray, q: np.ndarray, centre: np.ndarray) -> bool:
    """Whether the side p-q of a found quad is the paper's edge: along it, the ground just outside (half a percent
    to two percent of the page off the side: the outline is simplified, so the edge may lie a little further out)
    is darker than the paper just inside, by a fifth at least. A shadow's edge, which Otsu's threshold follows
    where a shadow falls across the sheet, is soft: there the two are about one grey. A side along the image's own
    border has nothing outside to judge and passes."""
    h, w = gray.shape
    step = q - p
    normal = np.array([-step[1], step[0]]) / (np.linalg.norm(step) + 1e-9)
    if np.dot(centre - p, normal) < 0:
        normal = -normal
    off = 0.005 * max(h, w)

    def grey(x: np.ndarray) -> float | None:  # the median of a 5 x 5 patch, None off the image
        ix, iy = np.round(x).astype(int)
        if not (2 <= ix < w - 2 and 2 <= iy < h - 2):
            return None
        return float(np.median(gray[iy - 2:iy + 3, ix - 2:ix + 3]))

    ratios = []
    for t in np.linspace(0.1, 0.9, 17):
        x = p + t * step
        inside = grey(x + normal * off)
        outside = [v for v in (grey(x - normal * k * off) for k in (1, 2, 4)) if v is not None]
        if inside is not None and outside:
            ratios.append(min(outside) / max(inside, 1.0))
    return len(ratios) < 5 or float(np.median(ratios)) < 0.8


def rectify(image: Image.Image) -> tuple[Image.Image, np.ndarray]:
    """A photographed page (``page_quad``) warped flat: its four corners to a rectangle of the sides' lengths.
    Rows that a perspective set at different slopes across the page are level again, which one deskew angle cannot
    do. A photo with no sheet to find but a shadow across its paper is lit evenly alone. Returns the page and the
    3 x 3 map from the given image's pixels to it (the identity when not warped)."""
    gray = np.asarray(image.convert("L"))
    quad = page_quad(gray)
    if quad is None:
        if _opencv() and noisy_paper(gray):
            # no sheet found (the paper runs off the photo), but a shadow across it, which no threshold survives: lit
            # evenly alone. A shadow is told from dark bands and logos by its size: at a sixteenth of the page
            # under a 15 x 15 maximum (a quarter of its width) only the paper's light is left, dark where a shadow
            # falls; a scan's is one grey.
            h, w = gray.shape
            coarse = cv2.dilate(cv2.resize(gray, (max(1, w // 16), max(1, h // 16)), interpolation=cv2.INTER_AREA),
                                np.ones((15, 15), np.uint8))
            if np.percentile(coarse, 5) < 0.8 * np.percentile(coarse, 95):
                return Image.fromarray(_evened(gray, _paper_light(gray))), np.eye(3)
        return image, np.eye(3)
    tl, tr, br, bl = quad
    width = int(round(max(np.linalg.norm(tr - tl), np.linalg.norm(br - bl))))
    height = int(round(max(np.linalg.norm(bl - tl), np.linalg.norm(br - tr))))
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    matrix = cv2.getPerspectiveTransform(quad.astype(np.float32), target)
    flat = cv2.warpPerspective(gray, matrix, (width, height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
    # and lit evenly: a photo's light falls off across the page and a shadow darkens a side, so the paper is two
    # greys and Otsu's threshold fell between them
    flat = _evened(flat, _paper_light(flat))
    # the corners are found to a few pixels, so a sliver of the ground may lie along a side, read as a rule or a row;
    # a sheet's own margin is wider than a percent of it, so that strip is blanked
    edge = max(1, round(0.01 * max(width, height)))
    flat[:edge], flat[-edge:], flat[:, :edge], flat[:, -edge:] = 255, 255, 255, 255
    return Image.fromarray(flat), matrix.astype(np.float64)


def _paper_light(gray: np.ndarray, scale: int = 8, reach: int = 9, blur: float = 3) -> np.ndarray:
    """The paper's own light: at 1/``scale`` of the size, the type gone under a ``reach`` x ``reach`` maximum,
    smoothed (Gaussian sigma ``blur``) and scaled back (float32, the image's size)."""
    height, width = gray.shape
    small = cv2.resize(gray, (max(1, width // scale), max(1, height // scale)), interpolation=cv2.INTER_AREA)
    light = cv2.GaussianBlur(cv2.dilate(small, np.ones((reach, reach), np.uint8)), (0, 0), blur)
    return cv2.resize(light, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.float32)


def _evened(gray: np.ndarray, light: np.ndarray) -> np.ndarray:
    """The page divided by its paper's light: the paper one white."""
    return np.clip(gray.astype(np.float32) * (255.0 / np.maximum(light, 1.0)), 0, 255).astype(np.uint8)


def deskew(image: Image.Image, angle: float | None = None, most: float = 3.0) -> Image.Image:
    """The page turned by ``angle`` (default: skew_angle's) so its rows are horizontal (scans lie up to a few
    degrees off); unchanged when straight."""
    angle = skew_angle(image, most) if angle is None else angle
    if abs(angle) < 0.1:
        return image
    return _rotate(image.convert("RGB"), angle)


def pillow_rotation(size: tuple[int, int], angle: float, expand: bool) -> tuple[np.ndarray, tuple[int, int]]:
    """Pillow's ``Image.rotate(angle, expand=expand)`` geometry, built as Pillow builds it: the 2x3 affine map from
    the turned image's coordinates back to the page's, and the turned image's size."""
    import math

    w, h = size
    a = -math.radians(angle)
    m = [round(math.cos(a), 15), round(math.sin(a), 15), 0.0, round(-math.sin(a), 15), round(math.cos(a), 15), 0.0]

    def apply(x: float, y: float) -> tuple[float, float]:
        return m[0] * x + m[1] * y + m[2], m[3] * x + m[4] * y + m[5]

    m[2], m[5] = apply(-w / 2.0, -h / 2.0)
    m[2] += w / 2.0
    m[5] += h / 2.0
    if expand:
        xs, ys = zip(*(apply(x, y) for x, y in ((0, 0), (w, 0), (w, h), (0, h))))
        nw, nh = math.ceil(max(xs)) - math.floor(min(xs)), math.ceil(max(ys)) - math.floor(min(ys))
        m[2], m[5] = apply(-(nw - w) / 2.0, -(nh - h) / 2.0)
        w, h = nw, nh
    return np.array([m[0:3], m[3:6]]), (w, h)


def _rotate(image: Image.Image, angle: float) -> Image.Image:
    """``image.rotate(angle, BICUBIC, expand=True, fillcolor="white")``, the same geometry as Pillow's (the
    segmentation benchmark maps its truth through Pillow's), computed by OpenCV: a fifth of the time on a page."""
    if not _opencv():
        return image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor="white")
    m, size = pillow_rotation(image.size, angle, expand=True)
    # Pillow maps output pixel centres (x + 0.5) to input coordinates; OpenCV maps pixel indices
    inverse = m.copy()
    inverse[:, 2] += 0.5 * (m[:, 0] + m[:, 1]) - 0.5
    out = cv2.warpAffine(np.asarray(image), inverse, size, flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(255, 255, 255))
    return Image.fromarray(out)


def row_image(image: Image.Image, box: Box | Sequence[Box], unit: ReadingUnit, squeeze: bool = True) -> Image.Image:
    """The crop scaled to the unit's height (greyscale kept as RGB, which image processors expect). A row in parts
    (``segment_rows``; a flat sequence of four numbers a part, as training records store it): each part scaled to
    the height, side by side, then as one crop. A row wider than the unit's ``max_width`` is squeezed to it, as
    training takes it, unless ``squeeze`` is off: the engine reads such a row in pieces (``row_pieces``)."""
    flat = [v for b in box for v in (b if isinstance(b, (tuple, list)) else [b])]
    if len(flat) > 4:
        pieces = [row_image(image, tuple(flat[i:i + 4]), unit, squeeze).convert("L")
                  for i in range(0, len(flat), 4)]
        joined = Image.new("L", (sum(p.width for p in pieces), unit.height), 255)
        x = 0
        for p in pieces:
            joined.paste(p, (x, 0))
            x += p.width
        if squeeze and joined.width > unit.max_width:
            joined = joined.resize((unit.max_width, unit.height), Image.Resampling.BILINEAR)
        return joined.convert("RGB")
    crop = image.crop(tuple(flat)).convert("L")
    if np.median(np.asarray(crop)) < 128:
        # light type on a dark band (a footer's white slogan on blue): turned dark on light, as every row the reader
        # learned from is
        crop = ImageOps.invert(crop)
    crop = _without_rules(crop)
    w, h = crop.size
    width = max(unit.multiple, round(w * unit.height / max(1, h)))
    width = min(unit.max_width, width) if squeeze else width
    return crop.resize((width, unit.height), Image.Resampling.BILINEAR).convert("RGB")


def squeezed(row: np.ndarray, unit: ReadingUnit) -> np.ndarray:
    """A row (uint8 grey, the unit's height) no wider than the unit's ``max_width``: squeezed to it, as training
    squeezes it (``row_image``), where it is wider."""
    if row.shape[1] <= unit.max_width:
        return row
    return np.asarray(Image.fromarray(row).resize((unit.max_width, row.shape[0]), Image.Resampling.BILINEAR))


# a row crop's ink, for finding word gaps in it: darker than this (crops are dark type on white, ``_without_rules``)
_PIECE_INK = 160


def row_pieces(row: np.ndarray, unit: ReadingUnit) -> list[np.ndarray]:
    """A row (uint8 grey, the unit's height) as the reader takes it: itself up to the unit's ``max_width``; a wider
    one (terms or an address in small type across the page: 173 of the real invoices' 4,546 rows), cut at word gaps
    into pieces no wider, each padded as a crop is, which the engine reads in turn and joins by a space. Squeezed
    to ``max_width`` when it has no gap to cut at. Squeezed, a 160-character footer was read "At Fipkar e 1Ty o
    diver perfecly"; read at its width, the decoder runs on past the widths it learned (docs/embedded-model.md §7)."""
    h, w = row.shape
    if w <= unit.max_width:
        return [row]
    blank = ~(row < _PIECE_INK).any(axis=0)
    # word gaps: runs of blank columns at least a fifth of the row high (letters stand a pixel or three apart)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], blank.astype(np.int8), [0]])))
    runs = [(a, b) for a, b in zip(edges[::2].tolist(), edges[1::2].tolist()) if b - a >= max(3, h // 5)]
    pad = max(2, round(0.5 * h / 1.3))  # a crop's margin (``_padded``: half the ink's height; ink ~ h / 1.3)
    pieces, start = [], 0
    while w - start > unit.max_width - pad:
        # the widest gap whose middle leaves the piece, padded, within max_width, in the piece's second half
        fits = [(b - a, (a + b) // 2) for a, b in runs if start + unit.max_width // 2 < (a + b) // 2
                <= start + unit.max_width - 2 * pad]
        if not fits:
            return [squeezed(row, unit)]
        cut = max(fits)[1]
        pieces.append(row[:, start:cut])
        start = cut
    pieces.append(row[:, start:])
    return [_with_margin(p, pad)[:, :unit.max_width] for p in pieces]


def _with_margin(piece: np.ndarray, pad: int) -> np.ndarray:
    """A piece of a row with its ink ``pad`` columns of white from either end, as a crop has."""
    ink = np.flatnonzero((piece < _PIECE_INK).any(axis=0))
    if len(ink) == 0:
        return piece
    core = piece[:, ink[0]:ink[-1] + 1]
    return np.pad(core, ((0, 0), (pad, pad)), constant_values=255)


def _without_rules(crop: Image.Image) -> Image.Image:
    """The crop as the reader learned rows, dark type on white: a shaded band's grey (the crop's median) to white,
    and straight lines that are no type to paper: an underline (the ZUGFeRD samples' underlined labels:
    "Verkäufer:" was read "Yerkäufer:", the f of "Leistungsempfänger" a "£" where the line meets it), a cell's
    border beside the text."""
    gray = np.asarray(crop)
    h, w = gray.shape
    paper = float(np.median(gray))
    if paper < 250:
        # a shaded band's grey is paper too: to white, and with it the band's edge where the crop reaches past it
        gray = np.minimum(255.0, gray * (255.0 / max(paper, 1.0))).astype(np.uint8)
        paper = 255.0
    if h < 4:
        return Image.fromarray(gray)
    ink = gray < paper - 80
    # across: twice the crop's height; down: through the crop's margins, which no glyph of the row reaches (a cell's
    # border beside the text, read as "|" or "l")
    rules = _long_runs(ink, 2 * h, axis=1) if w >= 2 * h else np.zeros_like(ink)
    if rules.any():
        # only a line under type is an underline: a row of dashes or rule characters ("-------", "_____") is text,
        # which the references hold, and erasing every long run cost the synthetic test pages 1.29% -> 1.53% CER
        count, labels, stats = _components(rules)
        under = np.zeros(count, bool)
        for i in range(1, count):
            x, y, rw = stats[i, 0], stats[i, 1], stats[i, _CC_W]
            under[i] = y > 0 and np.count_nonzero(ink[:y, x:x + rw].any(axis=0)) >= 0.3 * rw
        rules = under[labels]
    rules |= _long_runs(ink, h - max(1, round(0.05 * h)), axis=0)
    if rules.any():
        gray = gray.copy()
        gray[_grow(rules, 3) & (gray < paper)] = round(paper)  # (with the line's anti-aliased edges)
    return Image.fromarray(gray)


def page_for_rows(image: Image.Image, angle: float | None = None) -> tuple[Image.Image, bool, float]:
    """A page as the row reader cuts it: (the page, grey: a photo warped flat, deskewed; whether its paper is noisy;
    the angle it was turned by). A scan's or a photo's page (``noisy_paper``) loses its dust first (``despeckled``)
    and, when small (``_ENLARGE_BELOW``), is turned and cut at twice its size (docs/embedded-model.md §9). ``angle``:
    turn by this instead of ``skew_angle``'s (training crops a row example's page again with the angle found when
    its rows were cut: ``train.tasks.row_examples`` and the collator)."""
    image = rectify(image.convert("L"))[0]  # (grey from the start: the engine sends its workers grey pages)
    gray = np.asarray(image)
    noisy = noisy_paper(gray)
    if noisy:
        image = Image.fromarray(despeckled(gray))
    angle = skew_angle(image) if angle is None else angle
    if noisy and max(image.size) < _ENLARGE_BELOW:
        # its rows ~12 px high at 100 dpi: cut at that size and each scaled to 32 px (bilinear), a blurred scan's
        # strokes melted and its rows were cut short or in two; enlarged once (bicubic) before, they stay apart
        # (60 `scan` pages: CER 23.5% -> 18.5%, 21.9% when cut at the page's size and cropped at twice it; 40
        # `photo` pages 32.4% -> 28.2% with the despeckling)
        image = image.resize((2 * image.width, 2 * image.height), Image.Resampling.BICUBIC)
    return deskew(image, angle), noisy, angle


def page_rows(image: Image.Image, unit: ReadingUnit) -> list[np.ndarray]:
    """A page as the row reader takes it (``page_for_rows``), cut into rows, each cropped and scaled to the unit
    (uint8 grey), top to bottom. The engine's whole preparation of a page, in its process or in worker processes."""
    image, noisy, _ = page_for_rows(image)
    # a clean page's wide rows stay wide, for the engine to read in pieces (``row_pieces``); a scan's or a photo's
    # are squeezed as training squeezes them: their specks leave few blank columns to cut at, and the first 60 `scan`
    # test pages read worse in pieces (CER 31.6% -> 32.3%)
    return [np.asarray(row_image(image, parts, unit, squeeze=noisy).convert("L"))
            for parts in segment_rows(image, noisy=noisy)]


# a scan's or a photo's page whose long side has fewer pixels than this (A4 or Letter below about 150 dpi) is read at
# twice its size (``page_for_rows``)
_ENLARGE_BELOW = 1750
# dust on a scan (``despeckled``): a dark shape at most _SPECK px across, with nothing larger within _SPECK_REACH px;
# both for a page 1,169 px long (A4 at 100 dpi), and in proportion to the page's long side
_SPECK, _SPECK_REACH = 4, 5


def despeckled(gray: np.ndarray) -> np.ndarray:
    """A scan's page (uint8 grey) without its dust: each dark shape (below the page's ink threshold) of at most
    ``_SPECK`` px both ways that has no larger shape (of anything darker than the paper by 40) within
    ``_SPECK_REACH`` px (nor a small one within twice that of one that has), painted over with paper with a pixel of
    its edge. A full stop, a colon, an i's dot lie within a letter's gap of their letters and stay. On 60 `scan`
    pages the reader's CER went 26.3% -> 23.5% (the specks read as stops and commas in rows and cut rows past their
    text; without them at all: 22.1%)."""
    scale = max(gray.shape) / 1169
    size, reach = max(2, round(_SPECK * scale)), max(2, round(_SPECK_REACH * scale))
    hist = _histogram(gray)
    paper = int(np.argmax(hist))
    count, labels, stats = _components(_ink(gray, True, hist)[0])  # (a scan's ink: its dark pixels alone)
    small = (stats[:, _CC_W] <= size) & (stats[:, _CC_H] <= size)
    small[0] = False
    if not small.any():
        return gray
    _, near_labels, near_stats = _components(gray < paper - 40)
    larger = (near_stats[:, _CC_W] > size) | (near_stats[:, _CC_H] > size)
    larger[0] = False
    near = _grow(larger[near_labels], 2 * reach + 1)
    kept = np.zeros(count, bool)
    for _ in range(3):
        found = np.unique(labels[small[labels] & near])
        if kept[found].all():
            break
        kept[found] = True
        # and a small shape within twice the reach of a kept one: the colon after the stop in "Nr.:"
        near = near | _grow(kept[labels], 4 * reach + 1)
    dust = _grow((small & ~kept)[labels], 3)  # (with a pixel around it: the JPEG smeared it)
    out = gray.copy()
    out[dust & (gray < paper)] = paper
    return out


def prepare_worker() -> None:
    """A worker process preparing pages beside the model: one thread each, the cores are the pool's."""
    import cv2

    cv2.setNumThreads(1)


# --------------------------------------------------------------------------------------- training rows

def match_rows(boxes: list[Box], extents: list[Sequence[float]], page_height: int,
               rows: Sequence | None = None) -> list:
    """For each target row (extents: top, bottom as fractions of the page height, from synthetic records), the
    segmenter's box if exactly one box overlaps it and that box overlaps no other row; else None. ``rows``: what to
    give for each box instead (``segment_rows``' parts, matched by their union)."""
    rows = boxes if rows is None else rows
    spans = [(t * page_height, b * page_height) for t, b in extents]

    def overlaps(box: Box, span) -> bool:
        return min(box[3], span[1]) - max(box[1], span[0]) > 0.3 * (span[1] - span[0])

    hits = [[j for j, span in enumerate(spans) if overlaps(box, span)] for box in boxes]
    out = []
    for j, span in enumerate(spans):
        mine = [i for i, h in enumerate(hits) if j in h]
        out.append(rows[mine[0]] if len(mine) == 1 and hits[mine[0]] == [j] else None)
    return out
