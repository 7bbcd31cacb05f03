"""Layout families: where an invoice's blocks go on the page, and how it flows onto a second page.

A :class:`Doc` places rows of text cells top to bottom (side-by-side blocks are zipped onto shared baselines, so a
row of the picture is a row of the target), tables that continue on the next page with their header repeated,
and graphics (logo, QR code, barcode, stamp, signature). Every family draws from the same blocks with its own
placement and random options; ``LAYOUTS`` lists them.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from .fonts import FONT_FAMILIES, ascent_descent, text_width
from .locales import Locale
from .page import PAGE_SIZES, BLACK, Color, Page, Shape


class LayoutOverflow(Exception):
    """The invoice needs more pages than allowed at this type size; the generator retries smaller."""


@dataclass
class Style:
    family: str
    head_family: str
    size: float  # body size, points
    leading: float  # line height / size
    margin: float
    accent: Color
    color: bool
    upper_labels: bool
    colon: bool
    table: str  # ruled | grid | zebra | band | plain
    total_boxed: bool
    logo: bool
    qr: bool
    barcode: bool
    stamp: bool
    signature: bool
    notes: bool
    footer: bool
    max_pages: int = 2


def random_style(rng: random.Random, families: list[str] | None = None) -> Style:
    families = families or sorted(FONT_FAMILIES)
    family = rng.choice(families)
    head = family if rng.random() < 0.7 else rng.choice(families)
    color = rng.random() < 0.3
    accent = rng.choice(((20, 60, 140), (150, 20, 30), (10, 110, 80), (90, 40, 130), (200, 90, 10), (40, 40, 40)))
    mono = "Mono" in family
    return Style(
        family=family, head_family=head, size=rng.uniform(8.0, 10.0) * (0.92 if mono else 1.0),
        leading=rng.uniform(1.3, 1.55), margin=rng.uniform(40, 64), accent=accent if color else (60, 60, 60),
        color=color, upper_labels=rng.random() < 0.25, colon=rng.random() < 0.6,
        table=rng.choice(("ruled", "grid", "zebra", "band", "plain")), total_boxed=rng.random() < 0.4,
        logo=rng.random() < 0.5, qr=rng.random() < 0.25, barcode=rng.random() < 0.15, stamp=rng.random() < 0.15,
        signature=rng.random() < 0.3, notes=rng.random() < 0.5, footer=rng.random() < 0.6,
    )


@dataclass
class C:
    """One text cell of a row."""

    text: str
    x: float
    align: str = "left"
    bold: bool = False
    scale: float = 1.0  # size relative to the body size
    field: str | None = None
    color: Color | None = None
    head: bool = False  # heading font


@dataclass
class Doc:
    inv: dict[str, Any]
    loc: Locale
    st: Style
    rng: random.Random
    pages: list[Page] = field(default_factory=list)
    y: float = 0.0
    footer_h: float = 0.0
    cont: Callable[["Doc"], None] | None = None  # what a continuation page starts with

    def __post_init__(self) -> None:
        self.W, self.H = PAGE_SIZES[self.loc.page_size]
        self.left, self.right = self.st.margin, self.W - self.st.margin
        if self.st.footer:
            self.footer_h = 4 * self.lh(0.8) + 6
        self.new_page()

    # ------------------------------------------------------------- geometry

    @property
    def page(self) -> Page:
        return self.pages[-1]

    @property
    def bottom(self) -> float:
        # room for the footer, the page number and a "continued" line
        return self.H - self.st.margin - self.footer_h - 2 * self.lh()

    def lh(self, scale: float = 1.0) -> float:
        return self.st.size * scale * self.st.leading

    def width(self, text: str, bold: bool = False, scale: float = 1.0, head: bool = False) -> float:
        return text_width(text, self.st.head_family if head else self.st.family, bold, self.st.size * scale)

    def label(self, key: str, colon: bool | None = None) -> str:
        text = self.loc.w(key)
        if self.st.upper_labels:
            text = text.upper()
        if (self.st.colon if colon is None else colon) and not text.endswith("."):  # never "No.:"
            text = text + ":"
        return text

    def new_page(self) -> None:
        if len(self.pages) >= self.st.max_pages:
            raise LayoutOverflow
        self.pages.append(Page(self.W, self.H, color=self.st.color))
        self.y = self.st.margin
        if len(self.pages) > 1 and self.cont:
            self.cont(self)

    def fits(self, h: float) -> bool:
        return self.y + h <= self.bottom

    def need(self, h: float) -> None:
        if not self.fits(h):
            self.continued()
            self.new_page()

    def continued(self) -> None:
        y = self.bottom + self.lh() * 0.9
        self.page.text(self.right, y, self.loc.w("continued"), self.st.family, self.st.size * 0.85, align="right")

    def space(self, k: float = 1.0) -> None:
        self.y += self.lh() * k

    # ------------------------------------------------------------- rows

    def row(self, cells: list[C], height: float | None = None) -> tuple[float, float]:
        """Place cells on one baseline; returns the row's (top, bottom)."""
        cells = [c for c in cells if c.text]
        scale = max([c.scale for c in cells] or [1.0])
        h = height or self.lh(scale)
        top = self.y
        if cells:
            big = max(cells, key=lambda c: c.scale)
            a, d = ascent_descent(self.st.head_family if big.head else self.st.family, big.bold, self.st.size * scale)
            baseline = top + h / 2 + (a - d) / 2
            for c in cells:
                self.page.text(c.x, baseline, c.text, self.st.head_family if c.head else self.st.family,
                               self.st.size * c.scale, bold=c.bold, align=c.align, color=c.color or BLACK,
                               field=c.field)
        self.y = top + h
        return top, self.y

    def columns(self, cols: list[list[C]]) -> None:
        """Blocks side by side, zipped line by line onto shared rows."""
        for i in range(max(len(c) for c in cols)):
            self.row([c[i] for c in cols if i < len(c)])

    def kv_rows(self, items: list[tuple[str, str, str | None]], x: float, value_x: float, align: str = "left",
                other: list[C] | None = None) -> None:
        """Label/value rows; ``other`` cells (another block's lines) share the rows from the left."""
        other = other or []
        n = max(len(items), len(other))
        for i in range(n):
            cells = [other[i]] if i < len(other) else []
            if i < len(items):
                lab, val, f = items[i]
                cells += [C(lab, x, bold=True), C(val, value_x, align, field=f)]
            self.row(cells)

    def slots(self, widths: list[float], x0: float | None = None, x1: float | None = None,
              gap: float = 12.0) -> list[float] | None:
        """Left edges for side-by-side items of these widths: evenly spread when there is room, packed when
        tight, None when they do not fit on one row."""
        x0 = self.left if x0 is None else x0
        x1 = self.right if x1 is None else x1
        span = x1 - x0
        if sum(widths) + gap * (len(widths) - 1) > span:
            return None
        even = span / len(widths)
        if all(w + gap <= even for w in widths[:-1]) and widths[-1] <= even:
            return [x0 + i * even for i in range(len(widths))]
        xs, x = [], x0
        for w in widths:
            xs.append(x)
            x += w + gap
        return xs

    def inline(self, texts: list[tuple[str, str | None]], bold: bool = False) -> None:
        """Items on one row if they fit, else one per row."""
        xs = self.slots([self.width(t, bold) for t, _ in texts])
        if xs is None:
            for t, f in texts:
                self.row([C(t, self.left, bold=bold, field=f)])
        else:
            self.row([C(t, x, bold=bold, field=f) for (t, f), x in zip(texts, xs)])

    def label_value_grid(self, items: list[tuple[str, str, str | None]], pad: float = 0.0,
                         label_scale: float = 1.0) -> bool:
        """Labels on one row, values under them; False (nothing placed) when they do not fit across."""
        widths = [max(self.width(lab, True, label_scale), self.width(val)) for lab, val, _ in items]
        xs = self.slots(widths, self.left + pad, self.right - pad)
        if xs is None:
            return False
        self.row([C(lab, x, bold=True, scale=label_scale) for (lab, _, _), x in zip(items, xs)])
        self.row([C(val, x, field=f) for (_, val, f), x in zip(items, xs)])
        return True

    # ------------------------------------------------------------- blocks

    def meta_items(self, extra: bool = True) -> list[tuple[str, str, str | None]]:
        inv = self.inv
        items = [(self.label("number"), inv["invoice_number"], "invoice_number"),
                 (self.label("date"), inv["date"], "date"), (self.label("due"), inv["due_date"], "due_date")]
        if extra and self.rng.random() < 0.5:
            items.append((self.label("customer_no"), inv["customer_no"], None))
        if extra and self.rng.random() < 0.3:
            items.append((self.label("order_no"), inv["order_no"], None))
        return items

    def vendor_lines(self, x: float, align: str = "left", contacts: bool = True, name_scale: float = 1.4) -> list[C]:
        inv = self.inv
        lines = [C(inv["vendor"], x, align, True, name_scale, "vendor", self.accent_text(), head=True)]
        lines += [C(a, x, align, field="vendor_address") for a in inv["vendor_address"]]
        if contacts:
            if self.rng.random() < 0.6:
                lines.append(C(f"{self.label('phone', True)} {inv['phone']}", x, align))
            if self.rng.random() < 0.5:
                lines.append(C(inv["email"], x, align))
        return lines

    def customer_lines(self, x: float, heading: str | None = "bill_to", align: str = "left") -> list[C]:
        inv = self.inv
        lines = [C(self.label(heading, False), x, align, True)] if heading else []
        lines.append(C(inv["customer"], x, align, bold=heading is None, field="customer"))
        lines += [C(a, x, align, field="customer_address") for a in inv["customer_address"]]
        return lines

    def accent_text(self) -> Color | None:
        return self.st.accent if self.st.color else None

    def title(self, x: float, align: str = "left", scale: float | None = None) -> C:
        return C(self.loc.w("invoice"), x, align, True, scale or self.rng.uniform(1.8, 2.6), None,
                 self.accent_text(), head=True)

    def table(self, kind: str | None = None, hours: bool = False) -> None:
        """Line items, continuing on the next page with the header repeated."""
        st, loc = self.st, self.loc
        kind = kind or st.table
        x0, x1 = self.left, self.right
        span = x1 - x0
        cols: list[tuple[str, str, float, str]] = []
        if hours:
            cols.append(("day", loc.w("day"), 0.16, "left"))
        elif self.rng.random() < 0.35:
            cols.append(("item_no", loc.w("item_no"), 0.1, "left"))
        cols.append(("description", loc.w("description"), 0.0, "left"))
        cols += [("quantity", loc.w("qty"), 0.1, "right"), ("unit_price", loc.w("unit_price"), 0.18, "right"),
                 ("amount", loc.w("amount"), 0.18, "right")]
        pad = 5.0
        ups = st.upper_labels
        # a column is as wide as its ratio says, or as its header or widest cell needs; the description takes
        # what is left
        widths = []
        for key, head, frac, _ in cols:
            if key == "description":
                widths.append(0.0)
                continue
            need = max([self.width(head.upper() if ups else head, True)] +
                       [self.width(it[key]) for it in self.inv["line_items"]]) + 2 * pad + 4
            widths.append(max(frac * span, need))
        widths = [w or max(0.0, span - sum(widths)) for w in widths]
        need_desc = max(self.width(it["description"]) for it in self.inv["line_items"]) + 2 * pad
        if widths[[c[0] for c in cols].index("description")] < need_desc:
            raise LayoutOverflow  # retried with smaller type
        edges = [x0]
        for w in widths:
            edges.append(edges[-1] + w)
        lefts = edges[:-1]
        rights = edges[1:]
        lh = self.lh()

        def header() -> None:
            top = self.y
            fill = None
            if kind == "band":
                fill = st.accent if st.color else (215, 215, 215)
                fill = tuple(int(255 - (255 - v) * 0.25) for v in fill) if st.color else fill
            if fill:
                self.page.rect(x0, top, x1, top + lh, stroke=None, fill=fill)  # type: ignore[arg-type]
            cells = []
            for (_, head, _, align), l, r in zip(cols, lefts, rights):
                text = head.upper() if ups else head
                cells.append(C(text, (r - pad) if align == "right" else (l + pad), align, True))
            self.row(cells, lh)
            if kind in ("ruled", "plain", "zebra"):
                self.page.line(x0, top + lh, x1, top + lh, 0.8)
            if kind == "ruled":
                self.page.line(x0, top, x1, top, 0.8)
            if kind == "grid":
                self.page.line(x0, top + lh, x1, top + lh, 0.6)

        def grid_close(top: float) -> None:
            if kind == "grid":
                self.page.rect(x0, top, x1, self.y, stroke=BLACK, width=0.6)
                for e in edges[1:-1]:
                    self.page.line(e, top, e, self.y, 0.5)

        self.need(3 * lh)
        seg_top = self.y
        header()
        for i, it in enumerate(self.inv["line_items"]):
            if not self.fits(lh):
                grid_close(seg_top)
                self.continued()
                self.new_page()
                seg_top = self.y
                header()
            top = self.y
            if kind == "zebra" and i % 2 == 1:
                self.page.rect(x0, top, x1, top + lh, stroke=None, fill=(236, 236, 236))
            cells = []
            for (key, _, _, align), l, r in zip(cols, lefts, rights):
                cells.append(C(it[key], (r - pad) if align == "right" else (l + pad), align, field="line_items"))
            self.row(cells, lh)
            if kind == "ruled":
                self.page.line(x0, self.y, x1, self.y, 0.3, (150, 150, 150))
        grid_close(seg_top)
        if kind in ("plain", "zebra", "band"):
            self.page.line(x0, self.y, x1, self.y, 0.8)
        self.space(0.5)

    def totals(self, label_x: float | None = None, boxed: bool | None = None) -> None:
        inv = self.inv
        boxed = self.st.total_boxed if boxed is None else boxed
        label_x = label_x if label_x is not None else self.right - 0.22 * (self.right - self.left)
        lines = [(self.label("subtotal"), inv["subtotal"], "subtotal"),
                 (f"{self.label('tax', False)} {inv['tax_rate']}{self.loc.percent}" + (":" if self.st.colon else ""),
                  inv["tax"], "tax"),
                 (self.label("total"), inv["total"], "total")]
        self.need(len(lines) * self.lh(1.15) + 8)
        for lab, val, f in lines[:2]:
            self.row([C(lab, label_x, "right"), C(val, self.right - 5, "right", field=f)])
        lab, val, f = lines[2]
        self.y += 3
        top = self.y
        self.row([C(lab, label_x, "right", True, 1.15), C(val, self.right - 5, "right", True, 1.15, f)])
        lw = self.width(lab, True, 1.15)
        if boxed:
            self.page.rect(label_x - lw - 8, top - 1, self.right, self.y + 1, width=1.0,
                           fill=(240, 240, 240) if self.rng.random() < 0.5 else None)
        else:
            self.page.line(label_x - lw, top - 1, self.right, top - 1, 0.6)
            self.page.line(label_x - lw, self.y + 1, self.right, self.y + 1, 0.6)
            self.page.line(label_x - lw, self.y + 3, self.right, self.y + 3, 0.6)
        self.y += 6

    def payment(self, qr: bool | None = None) -> None:
        inv = self.inv
        qr = self.st.qr if qr is None else qr
        lines = [C(self.label("terms", False), self.left, bold=True),
                 C(self.loc.w("payment").format(days=inv["days"]), self.left),
                 C(f"{self.label('bank', True)} {inv['bank_name']}", self.left),
                 C(f"{self.label('iban', True)} {inv['iban']}", self.left),
                 C(f"{self.label('bic', True)} {inv['bic']}", self.left)]
        if self.rng.random() < 0.5:
            lines.append(C(f"{self.label('reference', True)} {inv['invoice_number']}", self.left,
                           field="invoice_number"))
        size = 64.0
        h = max(len(lines) * self.lh(), size + 4 if qr else 0)
        self.need(h + self.lh(0.5))
        self.space(0.5)
        top = self.y
        for c in lines:
            self.row([c])
        if qr:
            payload = "\n".join(("BCD", "002", "1", "SCT", inv["bic"], inv["vendor"][:70], inv["iban"].replace(" ", ""),
                                 f"{self.loc.currency}{inv['normalized']['total']}", "", "", inv["invoice_number"]))
            self.page.shapes.append(Shape("bitmap", (self.right - size, top, self.right, top + size), None,
                                          bits=qr_bits(payload)))
            self.y = max(self.y, top + size + 4)

    def notes(self) -> None:
        self.need(2.5 * self.lh())
        self.space(0.5)
        self.row([C(self.label("notes", False), self.left, bold=True)])
        self.row([C(self.inv["note"], self.left)])

    def thanks(self) -> None:
        self.need(1.5 * self.lh())
        self.space(0.5)
        self.row([C(self.loc.w("thanks"), self.left, bold=self.rng.random() < 0.5)])

    def signature(self, regards: bool = True) -> None:
        h = 34.0
        self.need(h + 2 * self.lh())
        self.space(0.5)
        if regards:
            self.row([C(self.loc.w("regards"), self.left)])
        top = self.y
        self.page.shapes.append(Shape("poly", signature_stroke(self.rng, self.left + 4, top + 2, 110, h - 6),
                                      (20, 30, 110) if self.st.color else (30, 30, 30), width=1.1))
        self.y = top + h
        self.page.line(self.left, self.y, self.left + 130, self.y, 0.5)
        self.row([C(self.inv["vendor"], self.left, scale=0.85)])

    def stamp(self) -> None:
        self.need(2.4 * self.lh(1.3))
        self.space(0.6)
        text = f"{self.loc.w('paid')} {self.inv['date']}"
        col = (170, 30, 40) if self.st.color else (90, 90, 90)
        x = self.left + self.rng.uniform(0, 0.4) * (self.right - self.left)
        top = self.y
        self.row([C(text, x + 10, bold=True, scale=1.3, color=col, head=True)], self.lh(1.3) + 8)
        w = self.width(text, True, 1.3, head=True)
        self.page.rect(x, top, x + w + 20, self.y, stroke=col, width=1.6)
        self.page.rect(x + 3, top + 3, x + w + 17, self.y - 3, stroke=col, width=0.6)
        self.space(0.3)

    def barcode(self, x: float, top: float, w: float = 130, h: float = 26) -> None:
        self.page.shapes.append(Shape("bitmap", (x, top, x + w, top + h), None,
                                      bits=code128_bits(self.inv["invoice_number"])))

    def logo(self, x: float, top: float, size: float) -> None:
        """Abstract marks (no letters: text in a logo would be text missing from the target)."""
        rng, col = self.rng, self.st.accent
        light = tuple(int(255 - (255 - v) * 0.45) for v in col)
        kind = rng.randrange(4)
        p = self.page
        if kind == 0:
            p.shapes.append(Shape("ellipse", (x, top, x + size, top + size), None, col))
            p.shapes.append(Shape("ellipse", (x + size * .25, top + size * .25, x + size * .75, top + size * .75),
                                  None, (255, 255, 255)))
        elif kind == 1:
            p.rect(x, top, x + size, top + size, stroke=None, fill=col)
            p.rect(x + size * .3, top + size * .3, x + size, top + size, stroke=None, fill=light)  # type: ignore
        elif kind == 2:
            for i in range(3):
                p.rect(x + i * size / 3, top + size * (1 - (i + 1) / 3), x + (i + 0.8) * size / 3, top + size,
                       stroke=None, fill=col if i % 2 == 0 else light)  # type: ignore[arg-type]
        else:
            p.shapes.append(Shape("ellipse", (x, top, x + size * .7, top + size * .7), None, light))
            p.shapes.append(Shape("ellipse", (x + size * .3, top + size * .3, x + size, top + size), None, col))

    def footer_lines(self) -> list[list[C]]:
        """Company, contact and bank columns in small type; columns that do not fit side by side are dropped."""
        inv, s = self.inv, 0.8
        cols = [[(inv["vendor"], True)] + [(line, False) for line in inv["vendor_address"][:2]],
                [(f"{self.label('phone', True)} {inv['phone']}", False), (inv["email"], False),
                 (f"{self.label('vat_id', True)} {inv['vat_id']}", False)],
                [(inv["bank_name"], False), (f"{self.label('iban', True)} {inv['iban']}", False),
                 (f"{self.label('bic', True)} {inv['bic']}", False)]]
        for keep in ([0, 1, 2], [0, 2], [0]):
            chosen = [cols[k] for k in keep]
            xs = self.slots([max(self.width(t, b, s) for t, b in col) for col in chosen])
            if xs is not None:
                return [[C(t, x, bold=b, scale=s) for t, b in col] for col, x in zip(chosen, xs)]
        return [[C(t, self.left, bold=b, scale=s) for t, b in cols[0][:1]]]

    def finish(self) -> list[Page]:
        """Footers and page numbers, once the page count is known."""
        n = len(self.pages)
        for i, page in enumerate(self.pages, 1):
            saved_page, saved_y = self.pages, self.y
            self.pages = [page]
            self.y = self.H - self.st.margin - self.footer_h - self.lh(0.8)
            if self.st.footer:
                self.page.line(self.left, self.y, self.right, self.y, 0.4, (120, 120, 120))
                self.y += 4
                self.columns(self.footer_lines())
            if n > 1:
                self.y = self.H - self.st.margin - self.lh(0.8)
                self.row([C(self.loc.w("page").format(i=i, n=n), self.right, "right", scale=0.8)])
            self.pages, self.y = saved_page, saved_y
        return self.pages


def continuation_header(doc: Doc) -> None:
    """Top of page 2+: who and which invoice, then the table header again."""
    doc.row([C(doc.inv["vendor"], doc.left, bold=True, field="vendor"),
             C(f"{doc.label('number', True)} {doc.inv['invoice_number']}", doc.right, "right",
               field="invoice_number")])
    doc.space(0.8)


# ---------------------------------------------------------------------------------------- graphics


def qr_bits(payload: str) -> tuple[bytes, ...]:
    import segno

    q = segno.make(payload, error="m", micro=False, mask=0)  # a fixed mask: choosing one costs 25 ms
    return tuple(bytes(row) for row in q.matrix)


def code128_bits(value: str) -> tuple[bytes, ...]:
    from reportlab.graphics.barcode.code128 import Code128

    bc = Code128(value)
    bc.validate()
    bc.encode()
    bc.decompose()
    mods = bytearray(b"\x00" * 10)  # quiet zone
    for ch in bc.decomposed:
        w = "abcd".index(ch.lower()) + 1
        mods += bytes([1 if ch.isupper() else 0]) * w
    mods += b"\x00" * 10
    return (bytes(mods),)


def signature_stroke(rng: random.Random, x: float, y: float, w: float, h: float) -> tuple[float, ...]:
    """A scribble: a few loops along a slanted baseline."""
    pts: list[float] = []
    f1, f2, ph = rng.uniform(2, 5), rng.uniform(6, 11), rng.uniform(0, 6.28)
    for i in range(80):
        t = i / 79
        px = x + w * t + 6 * math.sin(2 * math.pi * f2 * t + ph)
        py = y + h * (0.5 + 0.35 * math.sin(2 * math.pi * f1 * t + ph) * (1 - 0.5 * t) - 0.1 * t)
        pts += [px, min(y + h, max(y, py))]
    return tuple(pts)


# ---------------------------------------------------------------------------------------- families


def _extras(doc: Doc, signature_ok: bool = True) -> None:
    st = doc.st
    if st.notes:
        doc.notes()
    if st.stamp:
        doc.stamp()
    if st.signature and signature_ok:
        doc.signature()


def classic(doc: Doc) -> None:
    """Vendor (and logo) top left, title and invoice details top right, bill-to block, table, totals right."""
    st = doc.st
    if st.logo:
        doc.logo(doc.left, doc.y, 40)
        doc.y += 48
    mid = doc.left + 0.55 * (doc.right - doc.left)
    vendor = doc.vendor_lines(doc.left)
    doc.row([vendor[0], doc.title(doc.right, "right")])
    rest = vendor[1:]
    meta = doc.meta_items()
    labels_x = mid
    doc.kv_rows([(lab, val, f) for lab, val, f in meta], labels_x, doc.right, "right", rest)
    doc.space(1)
    doc.columns([doc.customer_lines(doc.left)])
    doc.space(1)
    doc.table()
    doc.totals()
    doc.payment()
    _extras(doc)


def banner(doc: Doc) -> None:
    """Centred title, From and Bill To side by side, details in one row, table, totals, thanks."""
    mid = (doc.left + doc.right) / 2
    doc.row([doc.title(mid, "center")])
    doc.space(0.6)
    doc.columns([[C(doc.label("from_", False), doc.left, bold=True)] + doc.vendor_lines(doc.left, name_scale=1.0)[:4],
                 doc.customer_lines(mid)])
    doc.space(1)
    meta = doc.meta_items(extra=False)
    doc.inline([(f"{lab} {val}", f) for lab, val, f in meta])
    doc.space(1)
    doc.table()
    doc.totals()
    doc.thanks()
    if doc.st.qr or doc.rng.random() < 0.5:
        doc.payment()
    _extras(doc)


def header_band(doc: Doc) -> None:
    """A shaded band across the top with vendor and title, two address columns, details as a small table."""
    st = doc.st
    band = st.accent if st.color else (200, 200, 200)
    band = tuple(int(255 - (255 - v) * 0.3) for v in band)
    h = doc.lh(2.4) + 10
    doc.page.rect(0, 0, doc.W, doc.y + h, stroke=None, fill=band)  # type: ignore[arg-type]
    doc.y += 5
    doc.row([C(doc.inv["vendor"], doc.left, bold=True, scale=1.5, field="vendor", head=True),
             doc.title(doc.right, "right", 2.0)], doc.lh(2.4))
    doc.y += 5
    doc.space(1)
    mid = (doc.left + doc.right) / 2
    doc.columns([[C(a, doc.left, field="vendor_address") for a in doc.inv["vendor_address"]]])
    doc.space(1)
    ship = [C(doc.label("ship_to", False), mid, bold=True)] + [C(a, mid) for a in doc.inv["ship_address"]]
    doc.columns([doc.customer_lines(doc.left), ship if doc.rng.random() < 0.6 else []])
    doc.space(1)
    meta = doc.meta_items()
    top = doc.y
    if not doc.label_value_grid(meta, pad=4) and not doc.label_value_grid(meta[:3], pad=4):
        doc.kv_rows(meta, doc.left + 4, doc.left + 0.4 * (doc.right - doc.left))
    doc.page.rect(doc.left, top, doc.right, doc.y, width=0.6)
    doc.space(1)
    doc.table()
    doc.totals(boxed=True)
    doc.payment()
    _extras(doc)


def letter(doc: Doc) -> None:
    """A business letter (DIN 5008-like): sender line above the address window, information block at the right,
    subject line, salutation, table, totals, closing and signature."""
    inv, st = doc.inv, doc.st
    if st.logo:
        doc.logo(doc.right - 44, doc.y, 44)
    doc.row([C(inv["vendor"], doc.left, bold=True, scale=1.5, field="vendor", head=True)])
    doc.space(2.2)
    sender = " · ".join([inv["vendor"], *inv["vendor_address"]])
    if doc.width(sender, scale=0.7) > 0.55 * (doc.right - doc.left):
        sender = " · ".join([inv["vendor"], inv["vendor_address"][-1]])
    doc.row([C(sender, doc.left, scale=0.7)])
    doc.page.line(doc.left, doc.y, doc.left + doc.width(sender, scale=0.7), doc.y, 0.4)
    doc.space(0.3)
    info_x = doc.left + 0.6 * (doc.right - doc.left)
    meta = doc.meta_items()
    addr = doc.customer_lines(doc.left, heading=None)
    doc.kv_rows([(lab, val, f) for lab, val, f in meta], info_x, doc.right, "right", addr)
    doc.space(2)
    doc.row([C(f"{doc.loc.w('invoice').capitalize()} {inv['invoice_number']}", doc.left, bold=True, scale=1.2,
               field="invoice_number")])
    doc.space(0.6)
    doc.row([C(doc.loc.w("dear"), doc.left)])
    doc.row([C(doc.loc.w("intro"), doc.left)])
    doc.space(0.6)
    doc.table("grid" if doc.rng.random() < 0.5 else None)
    doc.totals()
    doc.row([C(doc.loc.w("payment").format(days=inv["days"]), doc.left)])
    if st.qr:
        doc.payment(qr=True)
    if st.notes:
        doc.notes()
    doc.signature()


def right_vendor(doc: Doc) -> None:
    """Vendor block top right, title and details top left, customer below, unruled table."""
    st = doc.st
    vendor = doc.vendor_lines(doc.right, "right", name_scale=1.25)
    left_lines = [doc.title(doc.left)]
    doc.row([left_lines[0], vendor[0]], doc.lh(2.4))
    meta = doc.meta_items()
    value_x = doc.left + max(doc.width(lab, True) for lab, _, _ in meta) + 10
    rows = max(len(meta), len(vendor) - 1)
    for i in range(rows):
        cells = []
        if i < len(meta):
            lab, val, f = meta[i]
            cells += [C(lab, doc.left, bold=True), C(val, value_x, field=f)]
        if i + 1 < len(vendor):
            cells.append(vendor[i + 1])
        doc.row(cells)
    doc.space(1)
    if st.barcode:
        doc.barcode(doc.right - 130, doc.y)
    doc.columns([doc.customer_lines(doc.left)])
    doc.space(1.2)
    doc.table("plain" if doc.rng.random() < 0.6 else None)
    doc.totals()
    _extras(doc)
    doc.payment()


def boxed(doc: Doc) -> None:
    """Framed blocks: customer and details each in a box, gridded table, totals in a box."""
    inv = doc.inv
    if doc.st.logo:
        doc.logo(doc.left, doc.y, 36)
        doc.row([C(inv["vendor"], doc.left + 46, bold=True, scale=1.4, field="vendor", head=True),
                 doc.title(doc.right, "right", 1.8)], 40)
    else:
        doc.row([C(inv["vendor"], doc.left, bold=True, scale=1.4, field="vendor", head=True),
                 doc.title(doc.right, "right", 1.8)])
    doc.row([C(", ".join(inv["vendor_address"]), doc.left, scale=0.85, field="vendor_address")])
    doc.space(1)
    mid = doc.left + 0.52 * (doc.right - doc.left)
    cust = doc.customer_lines(doc.left + 6)
    meta = doc.meta_items()
    top = doc.y
    doc.y += 4
    n = max(len(cust), len(meta))
    for i in range(n):
        cells = [cust[i]] if i < len(cust) else []
        if i < len(meta):
            lab, val, f = meta[i]
            cells += [C(lab, mid + 6, bold=True), C(val, doc.right - 6, "right", field=f)]
        doc.row(cells)
    doc.y += 4
    doc.page.rect(doc.left, top, mid - 8, doc.y, width=0.8)
    doc.page.rect(mid, top, doc.right, doc.y, width=0.8)
    doc.space(1)
    doc.table("grid")
    doc.totals(boxed=True)
    doc.payment()
    _extras(doc)


def minimal(doc: Doc) -> None:
    """Everything flush left, one label-value pair per line, no boxes."""
    doc.row([C(doc.loc.w("invoice"), doc.left, bold=True, scale=1.6, head=True)])
    doc.space(0.5)
    for c in doc.vendor_lines(doc.left, name_scale=1.0):
        doc.row([c])
    doc.space(1)
    for lab, val, f in doc.meta_items():
        doc.row([C(f"{lab} {val}", doc.left, field=f)])
    doc.space(1)
    for c in doc.customer_lines(doc.left):
        doc.row([c])
    doc.space(1)
    doc.table("plain")
    doc.totals(boxed=False)
    doc.payment(qr=False)
    _extras(doc)


def modern(doc: Doc) -> None:
    """Amount due highlighted near the top; light rules; contact details in the footer."""
    inv, st = doc.inv, doc.st
    if st.logo:
        doc.logo(doc.left, doc.y, 34)
        doc.y += 42
    doc.row([C(inv["vendor"], doc.left, bold=True, scale=1.3, field="vendor", head=True),
             doc.title(doc.right, "right", 2.2)], doc.lh(2.4))
    doc.space(0.5)
    box_x = doc.left + 0.58 * (doc.right - doc.left)
    cust = doc.customer_lines(doc.left)
    top = doc.y
    doc.row([cust[0], C(doc.label("amount_due", False), box_x + 8, bold=True)])
    doc.row([cust[1], C(inv["total"], box_x + 8, bold=True, scale=1.5, field="total",
                        color=doc.accent_text())], doc.lh(1.6))
    fill = tuple(int(255 - (255 - v) * 0.15) for v in st.accent) if st.color else (235, 235, 235)
    doc.page.shapes.insert(0, Shape("rect", (box_x, top, doc.right, doc.y + 2), None, fill))  # type: ignore
    for c in cust[2:]:
        doc.row([c])
    doc.space(1)
    meta = doc.meta_items()
    if not doc.label_value_grid(meta, label_scale=0.85) and not doc.label_value_grid(meta[:3], label_scale=0.85):
        doc.kv_rows(meta, doc.left, doc.left + 0.4 * (doc.right - doc.left))
    doc.space(1.2)
    doc.table("plain" if doc.rng.random() < 0.5 else "zebra")
    doc.totals(boxed=False)
    _extras(doc)
    doc.payment()


def remittance(doc: Doc) -> None:
    """A regular invoice with a tear-off remittance slip after a dashed line."""
    inv = doc.inv
    classic_top(doc)
    doc.table()
    doc.totals()
    if doc.st.notes:
        doc.notes()
    slip = 6 * doc.lh() + 20
    doc.need(slip)
    doc.space(1)
    y = doc.y
    x = doc.left
    while x < doc.right:  # dashed cut line
        doc.page.line(x, y, min(x + 6, doc.right), y, 0.6)
        x += 10
    doc.y += 6
    doc.row([C(doc.loc.w("remit"), doc.left, scale=0.85)])
    mid = (doc.left + doc.right) / 2
    doc.columns([[C(inv["vendor"], doc.left, bold=True, field="vendor")] +
                 [C(a, doc.left, field="vendor_address") for a in inv["vendor_address"]],
                 [C(f"{doc.label('number', True)} {inv['invoice_number']}", mid, field="invoice_number"),
                  C(f"{doc.label('customer_no', True)} {inv['customer_no']}", mid),
                  C(f"{doc.label('due', True)} {inv['due_date']}", mid, field="due_date"),
                  C(f"{doc.label('amount_due', True)} {inv['total']}", mid, bold=True, field="total")]])


def classic_top(doc: Doc) -> None:
    vendor = doc.vendor_lines(doc.left)
    doc.row([vendor[0], doc.title(doc.right, "right")])
    meta = doc.meta_items()
    doc.kv_rows(meta, doc.left + 0.55 * (doc.right - doc.left), doc.right, "right", vendor[1:])
    doc.space(1)
    doc.columns([doc.customer_lines(doc.left)])
    doc.space(1)


def timesheet(doc: Doc) -> None:
    """Services billed by the hour: a dated table of hours and rates."""
    classic_top(doc)
    doc.table(hours=True)
    doc.totals()
    doc.payment()
    _extras(doc)


def two_party(doc: Doc) -> None:
    """Vendor and customer side by side at the top, title with number on one row, details in one line, QR block."""
    inv = doc.inv
    mid = doc.left + 0.5 * (doc.right - doc.left)
    doc.columns([doc.vendor_lines(doc.left, name_scale=1.2), doc.customer_lines(mid)])
    doc.space(1.2)
    doc.row([C(doc.loc.w("invoice"), doc.left, bold=True, scale=1.8, head=True, color=doc.accent_text()),
             C(inv["invoice_number"], doc.right, "right", True, 1.8, "invoice_number", head=True)])
    doc.space(0.4)
    meta = doc.meta_items(extra=False)[1:]
    doc.inline([(f"{lab} {val}", f) for lab, val, f in meta])
    if doc.st.barcode:
        doc.barcode(doc.right - 130, doc.y - doc.lh() + 2, 130, doc.lh() - 3)
    doc.space(1)
    doc.table()
    doc.totals()
    doc.payment(qr=doc.st.qr or doc.rng.random() < 0.4)
    _extras(doc)


LAYOUTS: dict[str, Callable[[Doc], None]] = {
    "classic": classic, "banner": banner, "header_band": header_band, "letter": letter,
    "right_vendor": right_vendor, "boxed": boxed, "minimal": minimal, "modern": modern, "remittance": remittance,
    "timesheet": timesheet, "two_party": two_party,
}


def lay_out(name: str, inv: dict[str, Any], loc: Locale, st: Style, rng: random.Random) -> list[Page]:
    doc = Doc(inv, loc, st, rng, cont=continuation_header)
    LAYOUTS[name](doc)
    return doc.finish()
