"""What an invoice says: parties, dates, line items and amounts, printed per locale, with normalised values.

``fields`` schema (one object per invoice; every page record of the invoice carries it)::

    invoice_number, date, due_date, vendor, vendor_address, customer, customer_address,   # strings as printed
    currency,                                       # as printed: a symbol (€) or code (EUR)
    subtotal, tax, total,                           # as printed, e.g. "1.234,50 €"
    line_items: [{description, quantity, unit_price, amount}],                              # as printed
    normalized: {date, due_date (ISO 8601), currency (ISO 4217), subtotal, tax, total (decimal strings),
                 line_items: [{description, quantity, unit_price, amount}] (decimal strings)}

Addresses are printed on several lines and recorded as one line, joined by ", ".
"""

from __future__ import annotations

import datetime as dt
import random
import unicodedata
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from .locales import CENT, Locale, format_amount, format_date

_FAKERS: dict[str, Any] = {}


def _faker(code: str):
    if code not in _FAKERS:
        from faker import Faker

        _FAKERS[code] = Faker(code)
    return _FAKERS[code]


def _clean(s: str) -> str:
    return " ".join(str(s).split())


def _item_count(rng: random.Random, max_items: int) -> int:
    # Most invoices are short; a tail reaches max_items and overflows onto a second page.
    r = rng.random()
    n = rng.randint(1, 6) if r < 0.65 else rng.randint(7, 14) if r < 0.88 else rng.randint(15, 30)
    return max(1, min(n, max_items))


def make_invoice(rng: random.Random, loc: Locale, max_items: int = 30, hours: bool = False) -> dict[str, Any]:
    """Printed strings, their normalised values and the extra details layouts may print (contacts, bank)."""
    fake = _faker(loc.code)
    fake.seed_instance(rng.getrandbits(32))
    issued = dt.date(2016, 1, 1) + dt.timedelta(days=rng.randrange(0, 3650))
    days = rng.choice((7, 14, 14, 30, 30, 30, 45, 60))
    due = issued + dt.timedelta(days=days)
    date_pattern = rng.choice(loc.date_formats)
    prefix = rng.choice(("INV-", "", "R", "F-", "FA", "RE-", "#", "No. ", "A"))
    number = (f"{prefix}{issued.year}-{rng.randrange(1, 99999):05d}" if rng.random() < 0.5
              else f"{prefix}{rng.randrange(1000, 9999999)}")
    amount_style = rng.choice(("symbol", "symbol", "code"))
    cell_style = rng.choice(("plain", "plain", amount_style))
    rate_label = rng.choice(loc.tax_rates)
    rate = Decimal(rate_label.replace(",", ".")) / 100
    items, subtotal = [], Decimal(0)
    for k in range(_item_count(rng, max_items)):
        if hours:
            qty = Decimal(rng.randrange(1, 33)) / 4  # quarter hours
            unit = Decimal(rng.choice((45, 60, 75, 80, 95, 110, 120, 140, 150)))
            qty_text = format_amount(qty, loc, "plain").rstrip("0").rstrip(loc.decimal)
        else:
            qty = Decimal(rng.choice((1, 1, 1, 2, 3, 4, 5, 6, 10, 12, 20, 25)))
            unit = Decimal(rng.randrange(50, 250000 if rng.random() < 0.3 else 30000)) / 100
            qty_text = str(qty)
        amount = (unit * qty).quantize(CENT, rounding=ROUND_HALF_UP)
        subtotal += amount
        day = issued - dt.timedelta(days=rng.randrange(0, 28))
        items.append({
            "description": rng.choice(loc.products), "quantity": qty_text,
            "unit_price": format_amount(unit, loc, cell_style), "amount": format_amount(amount, loc, cell_style),
            "item_no": f"{rng.randrange(100, 99999):05d}" if rng.random() < 0.7 else f"{k + 1}",
            "day": format_date(day, loc, loc.date_formats[0]),
            "_qty": qty, "_unit": unit, "_amount": amount,
        })
    tax = (subtotal * rate).quantize(CENT, rounding=ROUND_HALF_UP)
    total = subtotal + tax
    vendor = _clean(fake.company())
    customer = _clean(fake.name() if rng.random() < 0.35 else fake.company())
    symbol_printed = loc.symbol if amount_style == "symbol" else loc.currency
    ascii_name = unicodedata.normalize("NFKD", vendor.lower()).encode("ascii", "ignore").decode()
    domain = "".join(ch for ch in ascii_name if ch.isalnum())[:14] or "example"
    return {
        "invoice_number": number,
        "date": format_date(issued, loc, date_pattern),
        "due_date": format_date(due, loc, date_pattern),
        "days": days,
        "vendor": vendor,
        "vendor_address": [_clean(a) for a in fake.address().split("\n") if _clean(a)],
        "customer": customer,
        "customer_address": [_clean(a) for a in fake.address().split("\n") if _clean(a)],
        "ship_address": [_clean(a) for a in fake.address().split("\n") if _clean(a)],
        "currency": symbol_printed,
        "tax_rate": rate_label,
        "subtotal": format_amount(subtotal, loc, amount_style),
        "tax": format_amount(tax, loc, amount_style),
        "total": format_amount(total, loc, amount_style),
        "line_items": items,
        "phone": _clean(fake.phone_number()),
        "email": f"{rng.choice(('billing', 'info', 'accounts', 'office'))}@{domain}.{rng.choice(('com', 'net', 'eu'))}",
        "web": f"www.{domain}.{rng.choice(('com', 'net', 'eu'))}",
        "vat_id": f"{loc.code[-2:]}{rng.randrange(10**8, 10**9)}",
        "iban": _clean(fake.iban()),
        "bic": _clean(fake.swift(length=rng.choice((8, 11)))),
        "bank_name": rng.choice(("Commerzbank", "Barclays", "BNP Paribas", "Santander", "Intesa Sanpaolo", "ING",
                                 "Rabobank", "Deutsche Bank", "HSBC", "Crédit Agricole", "Sparkasse", "UniCredit")),
        "customer_no": f"{rng.randrange(10000, 999999)}",
        "order_no": f"PO-{rng.randrange(1000, 99999)}",
        "note": rng.choice(loc.notes),
        "normalized": {
            "date": issued.isoformat(), "due_date": due.isoformat(), "currency": loc.currency,
            "subtotal": str(subtotal.quantize(CENT)), "tax": str(tax), "total": str(total.quantize(CENT)),
            "line_items": [{"description": it["description"], "quantity": str(it["_qty"].normalize()),
                            "unit_price": str(it["_unit"].quantize(CENT)), "amount": str(it["_amount"])}
                           for it in items],
        },
    }


FIELD_KEYS = ("invoice_number", "date", "due_date", "vendor", "vendor_address", "customer", "customer_address",
              "currency", "subtotal", "tax", "total")


def public_fields(inv: dict[str, Any]) -> dict[str, Any]:
    """The ``fields`` record (see the module docstring)."""
    out: dict[str, Any] = {k: inv[k] for k in FIELD_KEYS}
    out["vendor_address"] = ", ".join(inv["vendor_address"])
    out["customer_address"] = ", ".join(inv["customer_address"])
    out["line_items"] = [{k: it[k] for k in ("description", "quantity", "unit_price", "amount")}
                         for it in inv["line_items"]]
    out["normalized"] = inv["normalized"]
    return out


_QUESTIONS = {
    "invoice_number": ("What is the invoice number?", "Which invoice number is shown?"),
    "date": ("What is the invoice date?", "When was the invoice issued?"),
    "due_date": ("What is the due date?", "When is payment due?"),
    "vendor": ("Who issued the invoice?", "What is the vendor's name?"),
    "customer": ("Who is the invoice addressed to?", "What is the customer's name?"),
    "total": ("What is the total amount?", "How much is due in total?"),
    "subtotal": ("What is the subtotal?", "What is the amount before tax?"),
    "tax": ("How much tax is charged?", "What is the tax amount?"),
    "currency": ("Which currency is used?",),
}


def make_qa(rng: random.Random, inv: dict[str, Any], shown: set[str], all_items: bool,
            k: int = 4) -> list[dict[str, str]]:
    """Question/answer pairs about what this page shows (``shown``: the field keys printed on it); answers are
    exactly as printed. Item questions only when the page holds every line item."""
    pool = [(rng.choice(qs), inv[key]) for key, qs in _QUESTIONS.items() if key in shown]
    rng.shuffle(pool)
    pairs = [{"question": q, "answer": a} for q, a in pool[:k]]
    items = inv["line_items"]
    if all_items and items:
        pairs.append({"question": "How many line items does the invoice have?", "answer": str(len(items))})
        counts: dict[str, int] = {}
        for it in items:
            counts[it["description"]] = counts.get(it["description"], 0) + 1
        unique = [it for it in items if counts[it["description"]] == 1]  # else the question has two answers
        if unique:
            it = rng.choice(unique)
            pairs.append({"question": f"What is the amount for {it['description']}?", "answer": it["amount"]})
    return pairs
