"""A page as text runs and shapes in points; one object draws the image, writes the PDF and gives the target.

Coordinates are PDF points (1/72 inch) from the top-left corner, ``y`` growing downwards; a run's ``y`` is its
baseline. Runs that share a baseline form one row of the transcription: rows top to bottom, each row's runs left
to right joined by one space, rows joined by a newline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw

from .fonts import ascent_descent, font_file, get_font, text_width

PAGE_SIZES = {"A4": (595.28, 841.89), "Letter": (612.0, 792.0)}
Color = tuple[int, int, int]
BLACK: Color = (0, 0, 0)


@dataclass
class Run:
    x: float
    y: float  # baseline
    text: str
    family: str
    bold: bool
    size: float  # points
    color: Color = BLACK
    field: str | None = None  # the key field this run prints, if any
    width: float = -1.0  # advance width in points (measured on creation)

    def __post_init__(self) -> None:
        if self.width < 0:
            self.width = text_width(self.text, self.family, self.bold, self.size)

    def box(self) -> tuple[float, float, float, float]:
        ascent, descent = ascent_descent(self.family, self.bold, self.size)
        return self.x, self.y - ascent, self.x + self.width, self.y + descent


@dataclass
class Shape:
    """``kind``: line (x0, y0, x1, y1), rect (x0, y0, x1, y1), ellipse (x0, y0, x1, y1), poly (x, y, x, y, ...)
    or bitmap (x0, y0, x1, y1 with ``bits``, rows of 0/1 modules, drawn black)."""

    kind: str
    coords: tuple[float, ...]
    stroke: Color | None = BLACK
    fill: Color | None = None
    width: float = 0.6
    bits: tuple[bytes, ...] | None = None


@dataclass
class Page:
    width: float
    height: float
    runs: list[Run] = field(default_factory=list)
    shapes: list[Shape] = field(default_factory=list)
    color: bool = False  # drawn in RGB when it has coloured elements, in grayscale otherwise (smaller, faster)

    def text(self, x: float, y: float, text: str, family: str, size: float, bold: bool = False,
             align: str = "left", color: Color = BLACK, field: str | None = None) -> Run | None:
        text = " ".join(str(text).split())
        if not text:
            return None
        run = Run(x, y, text, family, bold, size, color, field)
        if align != "left":
            run.x = x - run.width if align == "right" else x - run.width / 2
        self.runs.append(run)
        return run

    def line(self, x0, y0, x1, y1, width: float = 0.6, color: Color = BLACK) -> None:
        self.shapes.append(Shape("line", (x0, y0, x1, y1), color, None, width))

    def rect(self, x0, y0, x1, y1, stroke: Color | None = BLACK, fill: Color | None = None,
             width: float = 0.6) -> None:
        self.shapes.append(Shape("rect", (x0, y0, x1, y1), stroke, fill, width))

    def rows(self) -> list[list[Run]]:
        """The runs grouped into rows (one shared baseline each), top to bottom, each row left to right."""
        rows: dict[float, list[Run]] = {}
        for r in self.runs:
            rows.setdefault(round(r.y, 2), []).append(r)
        return [sorted(row, key=lambda r: r.x) for _, row in sorted(rows.items())]

    def transcription(self) -> str:
        return "\n".join(" ".join(r.text for r in row) for row in self.rows())

    def row_extents(self) -> list[tuple[float, float]]:
        """(top, bottom) of each transcription row's ink boxes, as fractions of the page height: what a training
        task needs to show a band of rows and name its exact target."""
        out = []
        for row in self.rows():
            boxes = [r.box() for r in row]
            out.append((round(min(b[1] for b in boxes) / self.height, 5), round(max(b[3] for b in boxes) / self.height, 5)))
        return out

    def fields_shown(self) -> set[str]:
        return {r.field for r in self.runs if r.field}

    # ------------------------------------------------------------------ drawing

    def render(self, dpi: float) -> Image.Image:
        s = dpi / 72
        mode = "RGB" if self.color else "L"
        size = (int(round(self.width * s)), int(round(self.height * s)))
        im = Image.new(mode, size, "white")
        draw = ImageDraw.Draw(im)
        c = (lambda col: col) if self.color else (lambda col: None if col is None else _gray(col))
        for sh in self.shapes:
            w = max(1, int(round(sh.width * s)))
            xy = [v * s for v in sh.coords]
            if sh.kind == "line":
                draw.line(xy, fill=c(sh.stroke), width=w)
            elif sh.kind == "rect":
                draw.rectangle(xy, fill=c(sh.fill), outline=c(sh.stroke), width=w if sh.stroke else 0)
            elif sh.kind == "ellipse":
                draw.ellipse(xy, fill=c(sh.fill), outline=c(sh.stroke), width=w if sh.stroke else 0)
            elif sh.kind == "poly":
                draw.line(xy, fill=c(sh.stroke), width=w, joint="curve")
            elif sh.kind == "bitmap":
                x0, y0, x1, y1 = (int(round(v)) for v in xy)
                bits = _bitmap(sh.bits).resize((x1 - x0, y1 - y0), Image.Resampling.NEAREST)
                im.paste(bits.convert(mode), (x0, y0))
        for r in self.runs:
            draw.text((r.x * s, r.y * s), r.text, font=get_font(r.family, r.bold, r.size * s),
                      fill=c(r.color), anchor="ls")
        return im


def _gray(col: Color) -> int:
    return int(round(0.299 * col[0] + 0.587 * col[1] + 0.114 * col[2]))


def _bitmap(bits: tuple[bytes, ...]) -> Image.Image:
    """Modules (1 = dark) as a small L image."""
    h, w = len(bits), len(bits[0])
    return Image.frombytes("L", (w, h), b"".join(bytes(0 if v else 255 for v in row) for row in bits))


def check_page(page: Page, margin: float = 0.0) -> list[str]:
    """Problems that would make the drawing disagree with the target: runs off the page, runs whose ink
    overlaps, and rows that a reader could not tell apart (different baselines, overlapping heights, side by
    side). Layout tests call this on many invoices of every family."""
    problems = []
    boxes = [(r, r.box()) for r in page.runs]
    for r, (x0, y0, x1, y1) in boxes:
        if x0 < margin or y0 < margin or x1 > page.width - margin or y1 > page.height - margin:
            problems.append(f"off the page: {r.text!r} at ({x0:.0f}, {y0:.0f})")
    for i, (a, (ax0, ay0, ax1, ay1)) in enumerate(boxes):
        for b, (bx0, by0, bx1, by1) in boxes[i + 1:]:
            v_overlap = min(ay1, by1) - max(ay0, by0)
            if v_overlap <= 0:
                continue
            gap = max(bx0 - ax1, ax0 - bx1)
            if gap < 0 and round(a.y, 2) != round(b.y, 2) and v_overlap > 0.3 * min(ay1 - ay0, by1 - by0):
                problems.append(f"overlap: {a.text!r} and {b.text!r}")
            elif round(a.y, 2) == round(b.y, 2) and gap < 0.2 * min(a.size, b.size):
                problems.append(f"runs touch on one row: {a.text!r} and {b.text!r}")
            elif round(a.y, 2) != round(b.y, 2) and gap >= 0 and v_overlap > 0.5 * min(ay1 - ay0, by1 - by0):
                problems.append(f"ambiguous rows: {a.text!r} ({a.y:.1f}) beside {b.text!r} ({b.y:.1f})")
    return problems


# ------------------------------------------------------------------ PDF


def write_pdf(pages: list[Page], path: str, meta: dict[str, Any] | None = None) -> None:
    """A vector PDF whose text layer holds exactly the runs (fonts embedded as TrueType subsets)."""
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path), pagesize=(pages[0].width, pages[0].height), invariant=1, pageCompression=1)
    if meta:
        c.setTitle(meta.get("title", ""))
        c.setAuthor(meta.get("author", ""))
        c.setCreator("invoice-vlm synth")
    for page in pages:
        c.setPageSize((page.width, page.height))
        H = page.height
        for sh in page.shapes:
            c.setLineWidth(sh.width)
            if sh.stroke:
                c.setStrokeColorRGB(*(v / 255 for v in sh.stroke))
            if sh.fill:
                c.setFillColorRGB(*(v / 255 for v in sh.fill))
            if sh.kind == "line":
                x0, y0, x1, y1 = sh.coords
                c.line(x0, H - y0, x1, H - y1)
            elif sh.kind in ("rect", "ellipse"):
                x0, y0, x1, y1 = sh.coords
                draw = c.rect if sh.kind == "rect" else c.ellipse
                if sh.kind == "rect":
                    draw(x0, H - y1, x1 - x0, y1 - y0, stroke=int(bool(sh.stroke)), fill=int(bool(sh.fill)))
                else:
                    draw(x0, H - y1, x1, H - y0, stroke=int(bool(sh.stroke)), fill=int(bool(sh.fill)))
            elif sh.kind == "poly":
                p = c.beginPath()
                pts = sh.coords
                p.moveTo(pts[0], H - pts[1])
                for i in range(2, len(pts), 2):
                    p.lineTo(pts[i], H - pts[i + 1])
                c.drawPath(p, stroke=1, fill=0)
            elif sh.kind == "bitmap":
                x0, y0, x1, y1 = sh.coords
                c.drawImage(ImageReader(_bitmap(sh.bits)), x0, H - y1, x1 - x0, y1 - y0)
        for r in page.runs:
            name = f"{r.family}-{'Bold' if r.bold else 'Regular'}"
            if name not in pdfmetrics.getRegisteredFontNames():
                pdfmetrics.registerFont(TTFont(name, font_file(r.family, r.bold)))
            c.setFont(name, r.size)
            c.setFillColorRGB(*(v / 255 for v in r.color))
            c.drawString(r.x, H - r.y, r.text)
        c.showPage()
    c.save()
