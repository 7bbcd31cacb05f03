"""Synthetic invoices with exact ground truth.

Run as::

    invoice-vlm synth --out data/synth --n 1000 --seed 0

One source of truth: a layout places text *runs* on a page; the same runs are drawn and turned into the target
transcription (rows top to bottom, each row's runs left to right joined by a space, rows joined by a newline).
Every invoice is a pure function of (seed, index), so a split is reproducible and can be generated in any
order or in parallel.

``fields`` holds the key fields as printed on the page plus ``normalized`` values (ISO dates, decimal amounts,
ISO currency code)::

    invoice_number, date, due_date, vendor, vendor_address, customer, customer_address, currency,
    subtotal, tax, total, line_items[{description, quantity, unit_price, amount}], normalized{...}
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from .common import InvoiceVLMError, staged_dir, write_json
from .data import SPLITS, Sample, write_split

# ------------------------------------------------------------------------------------------- locales

@dataclass(frozen=True)
class Locale:
    code: str
    currency: str  # ISO code
    symbol: str
    symbol_before: bool
    thousands: str
    decimal: str
    date_format: str
    words: dict[str, str]
    products: tuple[str, ...]


_EN_WORDS = dict(invoice="INVOICE", number="Invoice No.", date="Date", due="Due Date", bill_to="Bill To",
                 from_="From", description="Description", qty="Qty", unit_price="Unit Price", amount="Amount",
                 subtotal="Subtotal", tax="Tax", total="Total", thanks="Thank you for your business.",
                 payment="Payment due within {days} days.")
_EN_PRODUCTS = ("Consulting services", "Website hosting", "Office chairs", "Printer paper A4", "Software licence",
                "Maintenance contract", "Laptop stand", "Design work", "Cloud storage", "Travel expenses",
                "Training session", "USB-C cable", "Project management", "Coffee beans", "Desk lamp")

LOCALES: dict[str, Locale] = {
    "en_US": Locale("en_US", "USD", "$", True, ",", ".", "%m/%d/%Y", _EN_WORDS, _EN_PRODUCTS),
    "en_GB": Locale("en_GB", "GBP", "£", True, ",", ".", "%d/%m/%Y",
                    {**_EN_WORDS, "tax": "VAT", "total": "Total due"}, _EN_PRODUCTS),
    "de_DE": Locale("de_DE", "EUR", "€", False, ".", ",", "%d.%m.%Y", dict(
        invoice="RECHNUNG", number="Rechnungsnr.", date="Datum", due="Fällig am", bill_to="Rechnungsempfänger",
        from_="Von", description="Beschreibung", qty="Menge", unit_price="Einzelpreis", amount="Betrag",
        subtotal="Zwischensumme", tax="MwSt.", total="Gesamtbetrag", thanks="Vielen Dank für Ihren Auftrag.",
        payment="Zahlbar innerhalb von {days} Tagen."),
        ("Beratungsleistung", "Webhosting", "Bürostühle", "Druckerpapier A4", "Softwarelizenz", "Wartungsvertrag",
         "Schulung", "Reisekosten", "Montage vor Ort", "Grafikdesign", "Straßenreinigung", "Kühlschrank",
         "Projektleitung", "Kaffeebohnen", "Schreibtischlampe")),
    "fr_FR": Locale("fr_FR", "EUR", "€", False, " ", ",", "%d/%m/%Y", dict(
        invoice="FACTURE", number="N° de facture", date="Date", due="Échéance", bill_to="Facturé à",
        from_="De", description="Désignation", qty="Qté", unit_price="Prix unitaire", amount="Montant",
        subtotal="Sous-total HT", tax="TVA", total="Total TTC", thanks="Merci pour votre confiance.",
        payment="Paiement à {days} jours."),
        ("Prestation de conseil", "Hébergement web", "Chaises de bureau", "Papier A4", "Licence logiciel",
         "Contrat de maintenance", "Formation", "Frais de déplacement", "Création graphique", "Café en grains",
         "Lampe de bureau", "Gestion de projet", "Câble USB-C", "Réparation", "Livraison")),
    "es_ES": Locale("es_ES", "EUR", "€", False, ".", ",", "%d/%m/%Y", dict(
        invoice="FACTURA", number="Nº de factura", date="Fecha", due="Vencimiento", bill_to="Facturar a",
        from_="De", description="Descripción", qty="Cant.", unit_price="Precio unitario", amount="Importe",
        subtotal="Base imponible", tax="IVA", total="Total", thanks="Gracias por su confianza.",
        payment="Pago a {days} días."),
        ("Servicios de consultoría", "Alojamiento web", "Sillas de oficina", "Papel A4", "Licencia de software",
         "Contrato de mantenimiento", "Formación", "Gastos de viaje", "Diseño gráfico", "Café en grano",
         "Lámpara de escritorio", "Gestión de proyectos", "Cable USB-C", "Reparación", "Envío")),
    "it_IT": Locale("it_IT", "EUR", "€", True, ".", ",", "%d/%m/%Y", dict(
        invoice="FATTURA", number="Fattura n.", date="Data", due="Scadenza", bill_to="Destinatario",
        from_="Da", description="Descrizione", qty="Q.tà", unit_price="Prezzo unitario", amount="Importo",
        subtotal="Imponibile", tax="IVA", total="Totale", thanks="Grazie per la fiducia.",
        payment="Pagamento a {days} giorni."),
        ("Consulenza", "Hosting web", "Sedie da ufficio", "Carta A4", "Licenza software", "Manutenzione",
         "Formazione", "Spese di viaggio", "Progettazione grafica", "Caffè in grani", "Lampada da scrivania",
         "Gestione progetto", "Cavo USB-C", "Riparazione", "Spedizione")),
    "nl_NL": Locale("nl_NL", "EUR", "€", True, ".", ",", "%d-%m-%Y", dict(
        invoice="FACTUUR", number="Factuurnummer", date="Datum", due="Vervaldatum", bill_to="Factuur aan",
        from_="Van", description="Omschrijving", qty="Aantal", unit_price="Prijs per stuk", amount="Bedrag",
        subtotal="Subtotaal", tax="BTW", total="Totaal", thanks="Bedankt voor uw opdracht.",
        payment="Betaling binnen {days} dagen."),
        ("Advieswerk", "Webhosting", "Bureaustoelen", "Printpapier A4", "Softwarelicentie", "Onderhoudscontract",
         "Training", "Reiskosten", "Grafisch ontwerp", "Koffiebonen", "Bureaulamp", "Projectbeheer",
         "USB-C-kabel", "Reparatie", "Verzending")),
}

TAX_RATES = {"en_US": ("8", "0.08"), "en_GB": ("20", "0.20"), "de_DE": ("19", "0.19"), "fr_FR": ("20", "0.20"),
             "es_ES": ("21", "0.21"), "it_IT": ("22", "0.22"), "nl_NL": ("21", "0.21")}

CENT = Decimal("0.01")


def format_amount(value: Decimal, loc: Locale, symbol: bool = True) -> str:
    q = value.quantize(CENT, rounding=ROUND_HALF_UP)
    sign = "-" if q < 0 else ""
    whole, frac = f"{abs(q):.2f}".split(".")
    groups = []
    while len(whole) > 3:
        groups.insert(0, whole[-3:])
        whole = whole[:-3]
    groups.insert(0, whole)
    number = f"{sign}{loc.thousands.join(groups)}{loc.decimal}{frac}"
    if not symbol:
        return number
    if loc.symbol_before:
        return f"{loc.symbol}{number}" if loc.symbol in "$£" else f"{loc.symbol} {number}"
    return f"{number} {loc.symbol}"


# ------------------------------------------------------------------------------------------- fonts

_FONT_DIRS = ("/usr/share/fonts/truetype/dejavu",)
FONT_FAMILIES = {
    "DejaVuSans": ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf"),
    "DejaVuSerif": ("DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf"),
    "DejaVuSansMono": ("DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf"),
}


def _font_file(name: str) -> str:
    for d in _FONT_DIRS:
        p = Path(d) / name
        if p.is_file():
            return str(p)
    try:  # matplotlib ships DejaVu too: a pip-only fallback
        import matplotlib

        p = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name
        if p.is_file():
            return str(p)
    except ImportError:
        pass
    raise InvoiceVLMError(f"font {name} not found in {', '.join(_FONT_DIRS)}: install Debian's fonts-dejavu-core "
                          "(apt-get install fonts-dejavu-core)")


@lru_cache(maxsize=256)
def get_font(family: str, bold: bool, size: int) -> ImageFont.FreeTypeFont:
    regular, heavy = FONT_FAMILIES[family]
    return ImageFont.truetype(_font_file(heavy if bold else regular), size)


# ------------------------------------------------------------------------------------------- layout


@dataclass
class Run:
    x: int
    y: int
    text: str
    font: ImageFont.FreeTypeFont


@dataclass
class Page:
    """Text runs on a page. Runs that share ``y`` form one row; the drawing and the target both come from here."""

    width: int
    height: int
    runs: list[Run] = field(default_factory=list)
    lines: list[tuple[int, int, int, int]] = field(default_factory=list)

    def text_width(self, text: str, font: ImageFont.FreeTypeFont) -> int:
        return int(round(font.getlength(text)))

    def add(self, x: int, y: int, text: str, font: ImageFont.FreeTypeFont, align: str = "left") -> None:
        text = " ".join(text.split())
        if not text:
            return
        w = self.text_width(text, font)
        if align == "right":
            x -= w
        elif align == "center":
            x -= w // 2
        if x < 0 or x + w > self.width:
            raise ValueError(f"run {text!r} does not fit the page")
        self.runs.append(Run(int(x), int(y), text, font))

    def rule(self, x0: int, y: int, x1: int, width: int = 1) -> None:
        self.lines.append((x0, y, x1, width))

    def transcription(self) -> str:
        rows: dict[int, list[Run]] = {}
        for r in self.runs:
            rows.setdefault(r.y, []).append(r)
        return "\n".join(" ".join(r.text for r in sorted(row, key=lambda r: r.x)) for _, row in sorted(rows.items()))

    def render(self) -> Image.Image:
        im = Image.new("RGB", (self.width, self.height), "white")
        draw = ImageDraw.Draw(im)
        for x0, y, x1, w in self.lines:
            draw.line([(x0, y), (x1, y)], fill=(60, 60, 60), width=w)
        for r in self.runs:
            draw.text((r.x, r.y), r.text, font=r.font, fill=(0, 0, 0))
        return im


# ------------------------------------------------------------------------------------------- content


def _faker(locale: str):
    from faker import Faker

    return _FAKERS.setdefault(locale, Faker(locale))


_FAKERS: dict[str, Any] = {}


def make_invoice(rng: random.Random, loc: Locale, max_items: int) -> dict[str, Any]:
    """The invoice's content: printed strings and their normalised values."""
    fake = _faker(loc.code)
    fake.seed_instance(rng.getrandbits(32))
    issued = dt.date(2015, 1, 1) + dt.timedelta(days=rng.randrange(0, 4000))
    days = rng.choice((14, 30, 45, 60))
    due = issued + dt.timedelta(days=days)
    prefix = rng.choice(("INV-", "", "R", "F-", "FA", "No "))
    number = f"{prefix}{issued.year}-{rng.randrange(1, 99999):05d}" if rng.random() < 0.5 else \
        f"{prefix}{rng.randrange(1000, 9999999)}"
    items = []
    subtotal = Decimal(0)
    for _ in range(rng.randint(1, max_items)):
        qty = rng.choice((1, 1, 1, 2, 3, 4, 5, 10, 12, 20))
        unit = Decimal(rng.randrange(50, 250000)) / 100
        amount = (unit * qty).quantize(CENT)
        subtotal += amount
        items.append({"description": rng.choice(loc.products), "quantity": str(qty),
                      "unit_price": format_amount(unit, loc), "amount": format_amount(amount, loc),
                      "_unit": unit, "_amount": amount})
    rate_label, rate = TAX_RATES[loc.code]
    tax = (subtotal * Decimal(rate)).quantize(CENT, rounding=ROUND_HALF_UP)
    total = subtotal + tax
    vendor = fake.company()
    customer = fake.name() if rng.random() < 0.4 else fake.company()
    return {
        "invoice_number": number,
        "date": issued.strftime(loc.date_format),
        "due_date": due.strftime(loc.date_format),
        "days": days,
        "vendor": " ".join(vendor.split()),
        "vendor_address": [" ".join(a.split()) for a in fake.address().split("\n")],
        "customer": " ".join(customer.split()),
        "customer_address": [" ".join(a.split()) for a in fake.address().split("\n")],
        "currency": loc.currency,
        "tax_rate": rate_label,
        "subtotal": format_amount(subtotal, loc),
        "tax": format_amount(tax, loc),
        "total": format_amount(total, loc),
        "line_items": items,
        "normalized": {
            "date": issued.isoformat(), "due_date": due.isoformat(), "currency": loc.currency,
            "subtotal": str(subtotal), "tax": str(tax), "total": str(total),
            "line_items": [{"description": it["description"], "quantity": it["quantity"],
                            "unit_price": str(it["_unit"]), "amount": str(it["_amount"])} for it in items],
        },
    }


def public_fields(inv: dict[str, Any]) -> dict[str, Any]:
    """The ``fields`` record: printed values (addresses as one line each) plus ``normalized``."""
    out = {k: v for k, v in inv.items() if k not in ("days", "tax_rate", "line_items")}
    out["vendor_address"] = ", ".join(inv["vendor_address"])
    out["customer_address"] = ", ".join(inv["customer_address"])
    out["line_items"] = [{k: v for k, v in it.items() if not k.startswith("_")} for it in inv["line_items"]]
    return out


# ------------------------------------------------------------------------------------------- layouts

A4_INCHES = (8.27, 11.69)


def layout_classic(page: Page, inv: dict, loc: Locale, family: str, pt: float) -> None:
    """Vendor block top left, invoice meta top right, bill-to block, ruled item table, totals right."""
    W = loc.words
    px = lambda p: max(6, int(round(p)))  # noqa: E731
    body, bold, title = get_font(family, False, px(pt)), get_font(family, True, px(pt)), get_font(family, True, px(pt * 2))
    lh = int(px(pt) * 1.45)
    m = int(page.width * 0.08)
    right = page.width - m
    y = m
    page.add(m, y, inv["vendor"], title)
    y += int(px(pt * 2) * 1.5)
    for line in inv["vendor_address"]:
        page.add(m, y, line, body)
        y += lh
    y += lh
    page.add(m, y, W["invoice"], bold)
    y += lh
    for label, value in ((W["number"], inv["invoice_number"]), (W["date"], inv["date"]), (W["due"], inv["due_date"])):
        page.add(m, y, f"{label}: {value}", body)
        y += lh
    y += lh
    page.add(m, y, W["bill_to"], bold)
    y += lh
    for line in [inv["customer"], *inv["customer_address"]]:
        page.add(m, y, line, body)
        y += lh
    y += lh
    _table(page, inv, loc, m, right, y, body, bold, lh, pt)


def layout_banner(page: Page, inv: dict, loc: Locale, family: str, pt: float) -> None:
    """Title centred on top, vendor and customer side by side, meta in one row, table, totals, footer."""
    W = loc.words
    px = lambda p: max(6, int(round(p)))  # noqa: E731
    body, bold, title = get_font(family, False, px(pt)), get_font(family, True, px(pt)), get_font(family, True, px(pt * 2.2))
    lh = int(px(pt) * 1.45)
    m = int(page.width * 0.07)
    right = page.width - m
    mid = page.width // 2
    y = m
    page.add(page.width // 2, y, W["invoice"], title, align="center")
    y += int(px(pt * 2.2) * 1.6)
    page.add(m, y, W["from_"], bold)
    page.add(mid, y, W["bill_to"], bold)
    y += lh
    left = [inv["vendor"], *inv["vendor_address"]]
    rightcol = [inv["customer"], *inv["customer_address"]]
    for i in range(max(len(left), len(rightcol))):
        if i < len(left):
            page.add(m, y, left[i], body)
        if i < len(rightcol):
            page.add(mid, y, rightcol[i], body)
        y += lh
    y += lh
    page.add(m, y, f"{W['number']}: {inv['invoice_number']}", body)
    page.add(mid, y, f"{W['date']}: {inv['date']}", body)
    y += lh
    page.add(mid, y, f"{W['due']}: {inv['due_date']}", body)
    y += 2 * lh
    y = _table(page, inv, loc, m, right, y, body, bold, lh, pt)
    page.add(m, y + lh, W["thanks"], body)
    page.add(m, y + 2 * lh, W["payment"].format(days=inv["days"]), body)


def _table(page: Page, inv: dict, loc: Locale, m: int, right: int, y: int, body, bold, lh: int, pt: float) -> int:
    W = loc.words
    span = right - m
    c_qty, c_unit = m + int(span * 0.58), m + int(span * 0.78)
    page.rule(m, y - lh // 4, right)
    page.add(m, y, W["description"], bold)
    page.add(c_qty, y, W["qty"], bold, align="right")
    page.add(c_unit, y, W["unit_price"], bold, align="right")
    page.add(right, y, W["amount"], bold, align="right")
    y += lh
    page.rule(m, y - lh // 6, right)
    for it in inv["line_items"]:
        page.add(m, y, it["description"], body)
        page.add(c_qty, y, it["quantity"], body, align="right")
        page.add(c_unit, y, it["unit_price"], body, align="right")
        page.add(right, y, it["amount"], body, align="right")
        y += lh
    page.rule(m, y, right)
    y += lh // 2
    for label, value, font in ((W["subtotal"], inv["subtotal"], body),
                               (f"{W['tax']} {inv['tax_rate']}%", inv["tax"], body),
                               (W["total"], inv["total"], bold)):
        page.add(c_unit, y, label, font, align="right")
        page.add(right, y, value, font, align="right")
        y += lh
    return y


LAYOUTS = {"classic": layout_classic, "banner": layout_banner}


# ------------------------------------------------------------------------------------------- generation


@dataclass
class SynthConfig:
    out: str = field(default="data/synth", metadata={"help": "output dataset folder"})
    n: int = field(default=100, metadata={"help": "number of invoices"})
    seed: int = field(default=0, metadata={"help": "random seed; same seed, same dataset"})
    split: str = field(default="train=0.9,validation=0.05,test=0.05", metadata={"help": "split ratios"})
    dpi: int = field(default=150, metadata={"help": "render resolution (A4 page)"})
    locales: str = field(default="en_US,en_GB,de_DE,fr_FR,es_ES,it_IT,nl_NL", metadata={"help": "comma list"})
    layouts: str = field(default="classic,banner", metadata={"help": "comma list of layout families"})
    max_items: int = field(default=6, metadata={"help": "most line items per invoice"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing dataset folder"})

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ValueError(f"n must be positive, got {self.n}")
        if not 30 <= self.dpi <= 600:
            raise ValueError(f"dpi must be between 30 and 600, got {self.dpi}")
        if self.max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {self.max_items}")
        for code in self.locale_list:
            if code not in LOCALES:
                raise ValueError(f"unknown locale {code!r} (known: {', '.join(LOCALES)})")
        for name in self.layout_list:
            if name not in LAYOUTS:
                raise ValueError(f"unknown layout {name!r} (known: {', '.join(LAYOUTS)})")
        self.split_counts()  # validates the split spec

    @property
    def locale_list(self) -> list[str]:
        return [c.strip() for c in self.locales.split(",") if c.strip()]

    @property
    def layout_list(self) -> list[str]:
        return [c.strip() for c in self.layouts.split(",") if c.strip()]

    def split_counts(self) -> dict[str, int]:
        return parse_split(self.split, self.n)


def parse_split(spec: str, n: int) -> dict[str, int]:
    """``train=0.9,validation=0.05,test=0.05`` -> counts that add up to ``n`` (largest split absorbs rounding)."""
    ratios: dict[str, float] = {}
    for part in spec.split(","):
        if "=" not in part:
            raise ValueError(f"split spec {spec!r}: expected name=ratio pairs, e.g. train=0.9,test=0.1")
        name, value = (s.strip() for s in part.split("=", 1))
        if name not in SPLITS:
            raise ValueError(f"split spec {spec!r}: unknown split {name!r} (known: {', '.join(SPLITS)})")
        try:
            ratios[name] = float(value)
        except ValueError:
            raise ValueError(f"split spec {spec!r}: {value!r} is not a number") from None
        if ratios[name] < 0:
            raise ValueError(f"split spec {spec!r}: negative ratio for {name}")
    total = sum(ratios.values())
    if total <= 0:
        raise ValueError(f"split spec {spec!r}: ratios add up to 0")
    counts = {k: int(n * v / total) for k, v in ratios.items()}
    largest = max(ratios, key=ratios.get)
    counts[largest] += n - sum(counts.values())
    return counts


def generate_page(seed: int, index: int, cfg: SynthConfig) -> tuple[Image.Image, str, dict, dict]:
    """Invoice ``index`` of the dataset seeded ``seed``: (image, transcription, fields, meta)."""
    rng = random.Random(f"invoice-vlm/{seed}/{index}")
    loc = LOCALES[rng.choice(cfg.locale_list)]
    layout = rng.choice(cfg.layout_list)
    family = rng.choice(sorted(FONT_FAMILIES))
    w, h = (int(round(s * cfg.dpi)) for s in A4_INCHES)
    for attempt in range(5):  # shrink the font until everything fits the page
        inv = make_invoice(rng, loc, max(1, cfg.max_items - 2 * attempt))
        pt = rng.uniform(9.5, 12.0) * (0.85 ** attempt)
        page = Page(w, h)
        try:
            LAYOUTS[layout](page, inv, loc, family, pt * cfg.dpi / 72)
        except ValueError:
            continue
        if max(r.y for r in page.runs) < h - int(h * 0.05):
            break
    else:
        raise RuntimeError(f"invoice {index}: could not fit a layout on the page")
    meta = {"layout": layout, "locale": loc.code, "font": family, "dpi": cfg.dpi, "augment": "none"}
    return page.render(), page.transcription(), public_fields(inv), meta


def text_corpus(n: int = 400, seed: int = 12345) -> list[str]:
    """Transcriptions in every locale, for training the tokenizer (no images rendered)."""
    out = []
    cfg = SynthConfig(n=1, dpi=30, max_items=8)
    for i in range(n):
        rng = random.Random(f"corpus/{seed}/{i}")
        loc = LOCALES[cfg.locale_list[i % len(cfg.locale_list)]]
        inv = make_invoice(rng, loc, 8)
        page = Page(10**6, 10**6)
        LAYOUTS[cfg.layout_list[i % len(cfg.layout_list)]](page, inv, loc, "DejaVuSans", 10)
        out.append(page.transcription())
    return out


def main(cfg: SynthConfig) -> Path:
    """Write the dataset folder; it appears only once complete."""
    from rich.progress import Progress

    from .common import environment_info

    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise InvoiceVLMError(f"{out}: folder exists and is not empty (use --overwrite to replace it)")
    counts = cfg.split_counts()
    with staged_dir(out) as stage, Progress() as progress:
        task = progress.add_task("synth", total=cfg.n)
        index = 0
        for split in SPLITS:
            samples = []
            folder = stage / split
            if not counts.get(split):
                continue
            folder.mkdir(parents=True)
            for _ in range(counts[split]):
                image, text, fields, meta = generate_page(cfg.seed, index, cfg)
                path = folder / f"{index:08d}.png"
                image.save(path, optimize=False)
                samples.append(Sample(id=f"inv-{index:08d}", image=path, text=text, fields=fields, meta=meta))
                index += 1
                progress.advance(task)
            write_split(folder, samples)
        write_json(stage / "dataset.json", {"generator": "invoice_vlm.synth", "config": vars(cfg),
                                            "splits": counts, "environment": environment_info()})
    return out
