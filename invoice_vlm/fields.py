"""Key fields, in one place: the ``extract`` task's prompt and target, reading fields back from a model's answer or
from plain OCR text, normalisation, and per-field scoring. Pure functions, importing nothing of invoice_vlm: the
engine, the trainer, the evaluation harness and the server all use them.

The evaluation harness scores field extraction with them and writes ``fields.json``::

    refs = [sample.fields for sample in samples]             # synthetic records or the real-invoice manifest
    preds = [parse_prediction(text)[0] for text in outputs]  # the model's ``extract`` output
    preds = [fields_from_text(text) for text in outputs]     # or any plain transcription (Tesseract, ``ocr``)
    score_fields(preds, refs)

Values are compared after normalisation, so a printed form and its machine value meet: ``14. März 2025`` and
``2025-03-14`` are both ``2025-03-14``, ``1.234,56 €`` and ``1234.56`` are both ``1234.56``, ``€`` and ``euro``
are both ``EUR``; names and invoice numbers are compared casefolded with whitespace collapsed.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

# The extract task: a model is asked EXTRACT_PROMPT and answers canonical_fields(sample.fields).
EXTRACT_PROMPT = "extract"
OCR_PROMPT = "ocr"
TASKS = ("ocr", "extract")  # what predict, serve and jobs answer: a transcription, or key fields as JSON


def task_prompt(task: str, prompt: str = "") -> str:
    """The model prompt that asks for ``task`` (a page model's prefix; a row reader answers both), unless the
    user gave their own."""
    return prompt or (EXTRACT_PROMPT if task == "extract" else OCR_PROMPT)


def task_result(task: str, text: str) -> dict[str, Any]:
    """A page's answer as every interface reports it: the text, and for ``extract`` the fields parsed from it and
    whether it held one complete JSON object."""
    row: dict[str, Any] = {"text": text}
    if task == "extract":
        row["fields"], row["json_valid"] = parse_prediction(text)
    return row
FIELD_ORDER = ("invoice_number", "date", "due_date", "vendor", "vendor_address", "customer", "customer_address",
               "currency", "subtotal", "tax", "total", "line_items")
ITEM_ORDER = ("description", "quantity", "unit_price", "amount")


def canonical_fields(fields: dict[str, Any]) -> str:
    """The extraction target: key fields as printed, in schema order, compact JSON."""
    out: dict[str, Any] = {}
    for key in FIELD_ORDER:
        if key == "line_items":
            out[key] = [{k: item.get(k, "") for k in ITEM_ORDER} for item in fields.get(key) or []]
        elif key in fields:
            out[key] = fields[key]
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


KEY_FIELDS = ("invoice_number", "date", "due_date", "vendor", "customer", "currency", "subtotal", "tax", "total")
DATE_FIELDS = ("date", "due_date")
AMOUNT_FIELDS = ("subtotal", "tax", "total")

_CENT = Decimal("0.01")
_LETTER = r"[^\W\d_]"  # a letter in any script; \b would also treat digits as word characters
_SPACE_CHARS = " \u00a0\u202f\u2009\u2007"  # space, no-break, narrow no-break, thin, figure space
_MINUS_CHARS = "-\u2212\u2013"  # hyphen-minus, minus sign, en dash (OCR and typesetting use all three)

# ------------------------------------------------------------------------------------------------ dates

_MONTH_WORDS = {  # full names and the usual abbreviations of en, de, fr, es, it, nl (with and without accents)
    1: "january jan januar jänner januari janvier janv enero ene gennaio gen",
    2: "february feb februar februari février fevrier févr fevr fév fev febrero febbraio",
    3: "march mar märz marz maerz mär mrz mars marzo maart mrt",
    4: "april apr avril avr abril abr aprile",
    5: "may mai mayo maggio mag mei",
    6: "june jun juni juin junio giugno giu",
    7: "july jul juli juillet juil julio luglio lug",
    8: "august aug augustus août aout agosto ago",
    9: "september sep sept septembre septiembre setiembre set settembre",
    10: "october oct oktober okt octobre octubre ottobre ott",
    11: "november nov novembre noviembre",
    12: "december dec dezember dez décembre decembre déc diciembre dic dicembre",
}
_MONTHS = {word: month for month, words in _MONTH_WORDS.items() for word in words.split()}
_MONTH = "(?:" + "|".join(sorted(map(re.escape, _MONTHS), key=len, reverse=True)) + f")(?!{_LETTER})"

_ISO_DATE = re.compile(r"(?<!\d)(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?!\d)")
_NUMERIC_DATE = re.compile(r"(?<![\d.,])(\d{1,2})\s?([./-])\s?(\d{1,2})\s?\2\s?(\d{4}|\d{2})(?![\d])")
_DAY_MONTH_YEAR = re.compile(
    rf"(?<!\d)(\d{{1,2}})(?:st|nd|rd|th|er|º|°|o)?\.?[\s/-]*(?:de\s+|of\s+)?({_MONTH})\.?[\s,/-]*"
    r"(?:de\s+|del\s+)?(\d{4}|'?\d{2})(?!\d)", re.IGNORECASE)
_MONTH_DAY_YEAR = re.compile(
    rf"(?<!{_LETTER})({_MONTH})\.?\s*(\d{{1,2}})(?:st|nd|rd|th)?\.?\s?,?\s*(\d{{4}})(?!\d)", re.IGNORECASE)
_DATE_RES = (_ISO_DATE, _NUMERIC_DATE, _DAY_MONTH_YEAR, _MONTH_DAY_YEAR)
_PLAIN_ISO = re.compile(r"\d{4}-\d\d-\d\d")


def _year(text: str) -> int:
    # Two-digit years follow strptime's %y pivot: 00-68 are 20xx, 69-99 are 19xx.
    y = int(text.lstrip("'"))
    if len(text.lstrip("'")) == 2:
        y += 2000 if y <= 68 else 1900
    return y


def _make_date(year: int, month: int, day: int) -> dt.date | None:
    if not 1900 <= year <= 2199:  # outside this window the match is a phone, account or serial number
        return None
    try:
        return dt.date(year, month, day)
    except ValueError:
        return None


def _numeric_date(a: int, b: int, year: int, dayfirst: bool | None) -> dt.date | None:
    """``a/b/year``: the preferred reading, else the other one when the preferred is impossible (13/03 can only
    be day-first, 03/14 only month-first)."""
    readings = [(b, a), (a, b)] if dayfirst is not False else [(a, b), (b, a)]  # (month, day)
    for month, day in readings:
        if (d := _make_date(year, month, day)) is not None:
            return d
    return None


def _find_date(text: str, dayfirst: bool | None) -> tuple[int, int, dt.date] | None:
    """The earliest date in ``text`` as (start, end, date)."""
    best: tuple[int, int, dt.date] | None = None
    for rx in _DATE_RES:
        for m in rx.finditer(text):
            d = _match_date(rx, m, dayfirst)
            if d is not None:
                if best is None or m.start() < best[0]:
                    best = (m.start(), m.end(), d)
                break
    return best


def _match_date(rx: re.Pattern, m: re.Match, dayfirst: bool | None) -> dt.date | None:
    if rx is _ISO_DATE:
        return _make_date(int(m[1]), int(m[2]), int(m[3]))
    if rx is _NUMERIC_DATE:
        return _numeric_date(int(m[1]), int(m[3]), _year(m[4]), dayfirst)
    if rx is _DAY_MONTH_YEAR:
        return _make_date(_year(m[3]), _MONTHS[m[2].casefold()], int(m[1]))
    return _make_date(int(m[3]), _MONTHS[m[1].casefold()], int(m[2]))


def normalize_date(text: str, dayfirst: bool | None = None) -> str | None:
    """The first date in ``text`` as ISO ``YYYY-MM-DD``, or None.

    Reads ISO (``2025-03-14``, ``2025/03/14``), numeric day/month orders with ``.``, ``/`` or ``-`` and two- or
    four-digit years (``14.03.2025``, ``03/14/2025``, ``14-03-25``) and month names or abbreviations in English,
    German, French, Spanish, Italian and Dutch (``March 14, 2025``, ``14. März 2025``, ``1er mars 2025``,
    ``14 de marzo de 2025``, ``Friday, 14th March 2025``); surrounding words such as a label are skipped.

    A numeric date that reads both ways (``03/04/2025``) is day-first unless ``dayfirst`` is False, since most
    of the world (and six of the seven synthetic locales) writes the day first; when only one reading is a real
    date (``03/14/2025``, ``14/03/2025``) that one is taken whatever ``dayfirst`` says. Two-digit years 00-68 are
    20xx, 69-99 are 19xx.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    if _PLAIN_ISO.fullmatch(text):  # the common case (references), skips four searches
        d = _make_date(int(text[:4]), int(text[5:7]), int(text[8:10]))
        return d.isoformat() if d else None
    found = _find_date(unicodedata.normalize("NFKC", text), dayfirst)
    return found[2].isoformat() if found else None


def _numeric_order(text: str) -> bool | None:
    """What a numeric date in ``text`` says about the order: True day-first (13.03.), False month-first (03/13),
    None either way or no numeric date."""
    for m in _NUMERIC_DATE.finditer(text):
        a, b = int(m[1]), int(m[3])
        if a > 12 >= b:
            return True
        if b > 12 >= a:
            return False
    return None


# ---------------------------------------------------------------------------------------------- currency

_ISO_CODES = ("EUR", "USD", "GBP", "CHF", "JPY", "CNY", "INR", "CAD", "AUD", "NZD", "SEK", "NOK", "DKK", "ISK", "PLN",
              "CZK", "HUF", "RON", "BGN", "HRK", "RUB", "UAH", "TRY", "BRL", "MXN", "ARS", "CLP", "COP", "ZAR", "HKD",
              "SGD", "KRW", "ILS", "AED", "SAR", "QAR", "THB", "IDR", "MYR", "PHP", "VND", "NGN", "EGP", "MAD")
_CURRENCY_MARKS = {  # symbols and words; `$` alone is taken as USD, the commonest dollar on invoices
    "€": "EUR", "euro": "EUR", "euros": "EUR", "eur.": "EUR",
    "$": "USD", "us$": "USD", "usd$": "USD", "dollar": "USD", "dollars": "USD",
    "c$": "CAD", "ca$": "CAD", "cad$": "CAD", "a$": "AUD", "au$": "AUD", "nz$": "NZD", "hk$": "HKD", "s$": "SGD",
    "r$": "BRL", "mx$": "MXN",
    "£": "GBP", "pound": "GBP", "pounds": "GBP", "pfund": "GBP",
    "sfr.": "CHF", "sfr": "CHF", "franken": "CHF",
    "¥": "JPY", "yen": "JPY", "円": "JPY", "元": "CNY", "rmb": "CNY", "yuan": "CNY",
    "₹": "INR", "rs.": "INR", "rupees": "INR", "rupee": "INR",
    "₽": "RUB", "₩": "KRW", "₺": "TRY", "₪": "ILS", "฿": "THB", "₫": "VND", "₴": "UAH", "₦": "NGN", "₱": "PHP",
    "zł": "PLN", "kč": "CZK", "lei": "RON",
}
_SYMBOL_CHARS = "".join(sorted({k for k in _CURRENCY_MARKS if len(k) == 1}))


def _alternation(words: list[str]) -> str:
    return "|".join(sorted(map(re.escape, words), key=len, reverse=True))


def _mark_pattern(words: list[str]) -> str:
    # a word is bounded by non-letters; a symbol needs no boundary ("€12", "12€")
    parts = [re.escape(w) if len(w) == 1 and not w.isalpha() else
             rf"(?<!{_LETTER}){re.escape(w)}" + (rf"(?!{_LETTER})" if w[-1].isalpha() else "")
             for w in sorted(words, key=len, reverse=True)]
    return "|".join(parts)


_CODES = frozenset(_ISO_CODES)
# a word (with the "$" of "US$" or the "." of "Rs.") or a currency symbol; looked up in a dict, which is much
# faster over a whole page than an alternation of every mark
_CURRENCY_TOKEN = re.compile(rf"{_LETTER}+[$.]?|[{re.escape(_SYMBOL_CHARS)}]")
# a currency next to an amount: capital codes and every mark but the word-like ones that are ordinary words
_AMOUNT_CURRENCY = (rf"(?:(?<!{_LETTER})(?:{_alternation(_ISO_CODES)})(?!{_LETTER})|"
                    + _mark_pattern([k for k in _CURRENCY_MARKS if k not in ("lei", "pound")]) + ")")


def _currencies(text: str) -> list[tuple[int, str]]:
    """Every currency mention in ``text`` as (offset, ISO code), in order."""
    found = []
    for m in _CURRENCY_TOKEN.finditer(text):
        token = m.group()
        if token in _CODES:  # codes in capitals only: "try", "all", "cad" are words too
            found.append((m.start(), token))
        elif (code := _CURRENCY_MARKS.get(token.casefold()) or _CURRENCY_MARKS.get(token.casefold().rstrip("."))):
            found.append((m.start(), code))
        elif token[-1] == "$":  # "EUR$"-like leftovers: the dollar sign alone
            found.append((m.end() - 1, "USD"))
    return found


def normalize_currency(text: str) -> str | None:
    """The ISO 4217 code of the first currency in ``text``: a code (``EUR``; any case when it is the whole
    value), a symbol (``€ $ £ ¥ ₹``, ``US$ C$ A$``) or a word (``euro``, ``dollars``), also inside an amount such
    as ``1.234,56 €``. A bare ``$`` means USD and ``¥`` JPY. None when there is none."""
    if not isinstance(text, str):
        return None
    s = unicodedata.normalize("NFKC", text).strip()
    if s.upper() in _ISO_CODES:
        return s.upper()
    found = _currencies(s)
    return found[0][1] if found else None


# ----------------------------------------------------------------------------------------------- amounts

_NUMBER = (r"(?:(?P<int>[1-9]\d{0,2}(?:(?P<sep>[.,'’" + _SPACE_CHARS + r"])\d{3})(?:(?P=sep)\d{3})*|\d+)"
           r"(?:(?P<dec>[.,])(?P<frac>\d+|[-–]))?)")
_NUMBER_RE = re.compile(_NUMBER)
_PERCENT_AFTER = re.compile(r"\s?%")
_NOT_DIGITS = str.maketrans("", "", ".,'’" + _SPACE_CHARS)


def normalize_amount(text: str) -> str | None:
    """``text`` as a decimal string with two places (``-1234.50``), or None when it is not one amount.

    Currency symbols, codes and words on either side are dropped (``€ 1.234,56``, ``USD 1,234.56``,
    ``CHF 1'234.50``). Thousands separators are ``.``, ``,``, ``'`` or a space (also no-break and narrow no-break);
    the decimal separator is the last ``.`` or ``,`` when it is followed by other than exactly three digits.
    A single separator followed by exactly three digits (``1.234``, ``1,234``) is read as a thousands separator:
    amounts are far more often whole thousands than sub-cent fractions. Negative amounts: ``-12.00``,
    ``− 12,00`` (minus sign), ``(12.00)``, ``12.00-``; ``12,-`` is twelve even. Rounds half up to cents.
    """
    if isinstance(text, (int, float, Decimal)) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str):
        return None
    s = _CURRENCY_TOKEN.sub(_drop_currency, unicodedata.normalize("NFKC", text))
    s = s.strip(_SPACE_CHARS + "\t:")
    negative = False
    if s.startswith("(") and s.endswith(")"):
        negative, s = True, s[1:-1].strip(_SPACE_CHARS)
    if s[:1] in _MINUS_CHARS:
        negative, s = True, s[1:].lstrip(_SPACE_CHARS)
    elif s[:1] == "+":
        s = s[1:].lstrip(_SPACE_CHARS)
    if s[-1:] in _MINUS_CHARS and s[-2:-1] not in ".,":  # "12,-" is twelve even, "12.00-" is negative
        negative, s = True, s[:-1].rstrip(_SPACE_CHARS)
    m = _NUMBER_RE.fullmatch(s)
    if not m:
        return None
    return _amount_value(m, negative)


def _drop_currency(m: re.Match) -> str:
    token = m.group()
    folded = token.casefold()
    return " " if token.upper() in _CODES or folded in _CURRENCY_MARKS or folded.rstrip(".") in _CURRENCY_MARKS \
        else token


def _amount_value(m: re.Match, negative: bool) -> str | None:
    whole = m["int"].translate(_NOT_DIGITS)
    frac = m["frac"] if m["frac"] and m["frac"][0].isdigit() else "0"
    try:
        value = Decimal(f"{whole}.{frac}").quantize(_CENT, rounding=ROUND_HALF_UP)
    except InvalidOperation:
        return None
    value = -value if negative and value else value
    return str(value)


# -------------------------------------------------------------------------------------------------- text

_STRIP = string.punctuation + string.whitespace + "\u00a0\u202f«»“”„‟‘’‚‛‹›·•–—…¡¿"
_NUMBER_PREFIX = re.compile(rf"^(?:number|nummer|num[eé]ro|número|no|nr|n[°º]|num|#)(?!{_LETTER})\.?\s*[:#]?\s*"
                            r"(?=\S*\d)")


def normalize_text(text: str) -> str:
    """Casefolded, Unicode NFKC, whitespace collapsed to single spaces, punctuation and quotes stripped from
    both ends; accents and inner punctuation are kept (they tell names apart)."""
    s = unicodedata.normalize("NFKC", str(text)).casefold()
    return " ".join(s.split()).strip(_STRIP)


def normalize_invoice_number(text: str) -> str:
    """:func:`normalize_text` without a leading number word (``No. 42``, ``Nr. 42``, ``N° 42``, ``#42`` are all
    ``42``): whether it is printed as part of the number differs between documents, not between invoices."""
    return _NUMBER_PREFIX.sub("", normalize_text(text))


def normalize_field(key: str, value: Any, dayfirst: bool | None = None) -> str | None:
    """The canonical form of one key field's value: ISO date for ``date``/``due_date``, two-place decimal for
    ``subtotal``/``tax``/``total``, ISO 4217 for ``currency``, normalised text otherwise. None when the value is
    missing, empty or cannot be read as its kind. ``dayfirst`` as in :func:`normalize_date`."""
    if value is None or isinstance(value, (list, dict, bool)):
        return None
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        return None
    if key in DATE_FIELDS:
        return normalize_date(value, dayfirst)
    if key in AMOUNT_FIELDS:
        return normalize_amount(value)
    if key == "currency":
        return normalize_currency(value)
    out = normalize_invoice_number(value) if key == "invoice_number" else normalize_text(value)
    return out or None


def infer_dayfirst(fields: dict[str, Any]) -> bool | None:
    """The day/month order a document's printed fields imply: a numeric date that reads only one way decides;
    else a US dollar currency means month-first (as the US writes dates); else None (day-first)."""
    votes = {_numeric_order(v) for k in DATE_FIELDS if isinstance(v := fields.get(k), str)} - {None}
    if len(votes) == 1:
        return votes.pop()
    for key in ("currency", "total", "subtotal"):
        if isinstance(v := fields.get(key), str) and (code := normalize_currency(v)):
            return False if code == "USD" else None
    return None


def reference_fields(fields: dict[str, Any]) -> dict[str, str]:
    """The known key fields of a reference record, canonical. ``fields["normalized"][key]`` is preferred (the
    synthetic generator's machine values), else the value itself (the real-invoice manifest, already machine
    values). Missing, empty and unreadable values are left out: unknown, so not scored."""
    normalized = fields.get("normalized")
    normalized = normalized if isinstance(normalized, dict) else {}  # a hand-written record may hold anything
    dayfirst = infer_dayfirst(fields)
    out = {}
    for key in KEY_FIELDS:
        value = normalized.get(key) or fields.get(key)
        canon = normalize_field(key, value, dayfirst)
        if canon is not None:
            out[key] = canon
    return out


# ------------------------------------------------------------------------------------------- predictions

_FENCE = re.compile(r"```[a-zA-Z]*\s*(.*?)(?:```|\Z)", re.DOTALL)
_DECODER = json.JSONDecoder()
# besides JSONDecodeError (a ValueError): deep nesting (RecursionError) and integers past 4300 digits (ValueError)
_JSON_ERRORS = (ValueError, RecursionError)
_WS = " \t\r\n"


def parse_prediction(text: str) -> tuple[dict[str, Any], bool]:
    """The model's ``extract`` output as a dict, and whether it held one complete JSON object.

    Text around the object and Markdown code fences are tolerated (still ``ok``). When the object does not parse
    (cut off at the token limit, say), the key/value pairs that are complete before the break are recovered and
    ``ok`` is False; a number at the very end is dropped since its digits may be cut. Nothing readable gives
    ``({}, False)``."""
    if not isinstance(text, str):
        return {}, False
    m = _FENCE.search(text)
    body = m[1] if m else text
    start = body.find("{")
    if start < 0:
        return {}, False
    try:
        obj, _ = _DECODER.raw_decode(body, start)
    except _JSON_ERRORS:
        return _salvage(body, start), False
    return (obj, True) if isinstance(obj, dict) else ({}, False)


def _skip(s: str, i: int, chars: str) -> int:
    while i < len(s) and s[i] in chars:
        i += 1
    return i


def _salvage(s: str, start: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    i = start + 1
    while True:
        i = _skip(s, i, _WS + ",")
        if i >= len(s) or s[i] != '"':
            return out
        try:
            key, i = _DECODER.raw_decode(s, i)
        except _JSON_ERRORS:
            return out
        i = _skip(s, i, _WS)
        if i >= len(s) or s[i] != ":":
            return out
        i = _skip(s, i + 1, _WS)
        try:
            value, i = _DECODER.raw_decode(s, i)
        except _JSON_ERRORS:
            return out
        if not isinstance(value, (str, list, dict)) and _skip(s, i, _WS) >= len(s):
            return out
        out[key] = value


# -------------------------------------------------------------------------------------- text extractor

def _labels(*patterns: str) -> str:
    # an alternation takes the first alternative that matches; longer patterns first puts "date de facture"
    # before "date" (a rough but sufficient stand-in for longest-match)
    return "|".join(sorted(patterns, key=len, reverse=True))


_NO = r"(?:n[°ºo]\.?|n\.|nr\.?|no\.?|num(?:ber|ero|éro)?\.?|#)"
# Label words per field (regular expressions, case-insensitive). Overlaps are settled leftmost-longest, so
# "Invoice Date" is a date label, not "Invoice", and "Total HT" a subtotal, not "Total".
_LABEL_PATTERNS: dict[str, str] = {
    "invoice_number": _labels(
        rf"invoice\s*{_NO}", r"invoice\s+id", rf"inv\.?\s*{_NO}", rf"bill\s*{_NO}",
        rf"rechnungs?[-\s]?(?:nummer|{_NO})", rf"rechnung\s*{_NO}", r"belegnummer", r"beleg[-\s]?nr\.?",
        r"n[°ºo]\.?\s*(?:de\s+)?factur[ea]", rf"factur[ea]\s*{_NO}", r"num[ée]ro\s+de\s+factur[ea]",
        r"n[úu]mero\s+de\s+factura", r"fattura\s*n(?:r|°|º|o)?\.?", r"numero\s+(?:di\s+|della\s+)?fattura",
        r"n\.\s*fattura", rf"factuur\s*(?:nummer|{_NO})", r"factuurnr\.?"),
    "date": _labels(
        r"invoice\s*date", r"date\s+of\s+(?:issue|invoice)", r"issue\s+date", r"date\s+issued", r"billing\s+date",
        r"date", r"rechnungsdatum", r"beleg[-\s]?datum", r"ausstellungsdatum", r"datum", r"factuur\s*datum",
        r"date\s+(?:de\s+(?:la\s+)?)?facture", r"date\s+d['’]émission",
        r"fecha\s+(?:de\s+)?(?:la\s+)?(?:factura|emisi[óo]n|expedici[óo]n)", r"fecha",
        r"data\s+(?:della\s+)?(?:fattura|documento|emissione)", r"data"),
    "due_date": _labels(
        r"(?:payment\s+)?due\s+date", r"date\s+due", r"due\s+(?:on|by)", r"pay(?:able)?\s+by",
        r"fällig(?:keit(?:sdatum)?)?(?:\s+am)?", r"zahlbar\s+bis(?:\s+zum)?", r"zahlungsziel",
        r"(?:date\s+d['’])?[ée]ch[ée]ance", r"(?:fecha\s+de\s+)?vencimiento",
        r"(?:data\s+di\s+)?scadenza", r"vervaldatum", r"uiterste\s+betaaldatum"),
    "subtotal": _labels(
        r"sub[-\s]?total", r"net\s+(?:total|amount)", r"total\s+before\s+tax", r"total\s+net",
        r"total\s+(?:excl\.?|excluding)\s+(?:vat|tax)",
        r"zwischensumme", r"nettobetrag", r"netto(?:summe|betrag)?", r"summe\s+netto", r"gesamt\s*netto",
        r"sous[-\s]total", r"total\s+ht", r"montant\s+(?:total\s+)?ht", r"base\s+imponible",
        r"(?:totale\s+)?imponibile", r"subtotaal", r"totaal\s+excl\.?(?:\s+btw)?"),
    "tax": _labels(
        r"(?:sales\s+)?tax", r"vat", r"mwst\.?", r"ust\.?", r"umsatzsteuer", r"mehrwertsteuer", r"tva", r"iva",
        r"btw", r"gst", r"(?:ust|mwst)\.?\s+gesamt", r"(?:total|montant)\s+tva", r"total\s+iva", r"totale\s+iva",
        r"(?:vat|tax|tva|iva|btw|mwst\.?|ust\.?)\s+(?:total|amount)", r"total\s+(?:vat|tax)"),
    "total_strong": _labels(
        r"total\s+ttc", r"montant\s+ttc", r"net\s+[àa]\s+payer", r"total\s+due", r"amount\s+due", r"balance\s+due",
        r"grand\s+total", r"total\s+amount(?:\s+due)?", r"invoice\s+total",
        r"total\s+(?:incl\.?|including)\s+(?:vat|tax)",
        r"gesamtbetrag", r"rechnungsbetrag", r"zu\s+zahlender\s+betrag", r"zahlbetrag", r"endbetrag", r"gesamtsumme",
        r"bruttobetrag", r"summe\s+brutto", r"summe\s+inkl\.?\s+(?:ust|mwst)\.?", r"(?:total\s+)?due\s+payable",
        r"amount\s+payable", r"rechnungssumme(?:\s+brutto)?(?:\s*\(inkl\.?\s*(?:ust|mwst)\.?\))?",
        r"gesamt\s*brutto", r"importe\s+total", r"total\s+a\s+pagar",
        r"importe\s+a\s+pagar", r"totale\s+(?:documento|fattura|da\s+pagare)", r"importo\s+dovuto",
        r"te\s+betalen", r"totaal\s+(?:incl\.?(?:\s+btw)?|bedrag)", r"montant\s+d[uû]"),
    "total": _labels(r"total", r"totale", r"totaal", r"gesamt", r"summe"),
    "customer": _labels(
        r"bill(?:ed)?\s+to", r"invoice\s+to", r"sold\s+to", r"customer", r"buyer", r"rechnungsempfänger",
        r"rechnungsadresse", r"käufer(?:/leistungsempfänger)?", r"leistungsempfänger", r"factur[ée]\s+[àa]",
        r"client", r"factura(?:r|do)?\s+a", r"cliente", r"destinatario", r"spett\.?(?:le)?", r"klant",
        r"factuur\s+aan"),
    "vendor": _labels(r"from", r"seller", r"supplier", r"vendor", r"absender", r"verkäufer", r"lieferant",
                      r"émetteur", r"vendeur", r"fournisseur", r"emisor", r"proveedor", r"mittente", r"fornitore",
                      r"van", r"leverancier", r"rechnungsersteller", r"rechnungssteller"),
    "currency": _labels(r"currency", r"währung", r"devise", r"moneda", r"valuta"),
    # document titles, German compounds included (Handelsrechnung, Rechnungskorrektur): "<title> Nr. 42 vom ..."
    "title": _labels(r"(?:tax\s+|commercial\s+|proforma\s+|pro[-\s]forma\s+)?invoice", r"[^\W\d_]*rechnung",
                     r"rechnungskorrektur", r"facture", r"factura", r"fattura", r"factuur", r"credit\s+note",
                     r"gutschrift", r"avoir", r"nota\s+de\s+cr[ée]dito", r"nota\s+di\s+credito", r"creditnota"),
    # labels that only bound other values: an address block that is not the customer's, numbers and contacts
    "other_text": _labels(r"ship\s+to", r"deliver\s+to", r"lieferadresse", r"lieferanschrift", r"livr[ée]\s+[àa]",
                          r"enviar\s+a", r"luogo\s+di\s+consegna", r"afleveradres", r"remit\s+to"),
    "other": _labels(
        rf"customer\s*(?:{_NO}|id)", rf"order\s*{_NO}", r"po\s+number", rf"kunden[-\s]?(?:nummer|{_NO})",
        rf"auftrags?[-\s]?(?:nummer|{_NO})", rf"bestell[-\s]?(?:nummer|{_NO})", r"bestellung",
        r"n[°ºo]\.?\s*(?:de\s+)?(?:client|cliente|commande|pedido)", r"cod\.\s*cliente", rf"ordine\s*{_NO}",
        r"n\.", r"klantnummer", r"ordernummer", r"referen(?:ce|z|cia|tie)", r"référence", r"ref\.", r"réf\.",
        r"causale", r"kenmerk", r"verwendungszweck",
        r"(?:ust|mwst)\.?[-\s]*id\.?[-\s]*(?:nr|no)\.?", r"vat\s+(?:reg\.?\s+)?(?:no|number|id)\.?", r"tax\s+id",
        r"n[°º]\s+tva(?:\s+intracom\.?)?", r"p\.\s*iva", r"partita\s+iva", r"btw[-\s]?(?:nr|nummer)\.?", r"nif",
        r"cif", r"ein", r"steuer[-\s]?(?:nummer|nr\.?)", r"st\.?-?nr\.?", r"iban", r"bic", r"swift(?:/bic)?",
        r"sort\s+code", r"phone", r"tel\.?", r"telefon", r"téléphone", r"teléfono", r"telefoon", r"fax", r"e-?mail",
        r"web", r"page", r"seite", r"pagina", r"página", r"payment\s+terms", r"zahlungsbedingungen",
        r"leistungsdatum", r"lieferdatum", r"delivery\s+date", r"date\s+of\s+(?:delivery|supply|service)",
        r"order\s+date", r"bestelldatum"),
}
# a label starts at a word start and ends at a word end, or at its own punctuation ("Nr.123", "Invoice#42")
_LABEL_RES = {kind: re.compile(rf"(?<![\w.\-/])(?:{p})(?:(?<=\W)|(?!\w))", re.IGNORECASE)
              for kind, p in _LABEL_PATTERNS.items()}
# where the next label of any kind starts; each kind is then tried there for the longest (one search a hit
# instead of one per kind)
_ANY_LABEL = re.compile("|".join(rx.pattern for rx in _LABEL_RES.values()), re.IGNORECASE)
_TEXT_KINDS = ("customer", "vendor", "other_text")
_NAME_SKIP = re.compile(r"@|www\.|https?:", re.IGNORECASE)
_WORD = re.compile(f"{_LETTER}{{2}}")
_LETTERHEAD_SEP = re.compile(r"\s[-–—|·•]\s")
_FIELD_ROW = re.compile(r"^[^:]{1,30}:\s*(.*)$")  # "Nummer : 549910", "Name: ACME GmbH"
_AMOUNT_SEARCH = re.compile(
    rf"(?:[(]\s?)?(?:[{_MINUS_CHARS}]\s?)?(?:{_AMOUNT_CURRENCY}\s?)?(?:[{_MINUS_CHARS}]\s?)?"
    rf"(?<![\d.,]){_NUMBER}(?![\d])(?:\s?{_AMOUNT_CURRENCY})?(?:\s?\))?", re.IGNORECASE)
_SEG_STRIP = _SPACE_CHARS + "\t:;|"


@dataclass(frozen=True)
class _Hit:
    start: int
    end: int
    kind: str


def _hits(row: str) -> list[_Hit]:
    """Label occurrences in a row, leftmost-longest, not overlapping."""
    out: list[_Hit] = []
    pos = 0
    while m := _ANY_LABEL.search(row, pos):
        start = m.start()
        best = max(((mk.end(), kind) for kind, rx in _LABEL_RES.items() if (mk := rx.match(row, start))),
                   key=lambda e: e[0])
        out.append(_Hit(start, best[0], best[1]))
        pos = best[0]
    return out


def _label_only(row: str, hits: list[_Hit]) -> bool:
    rest, last = [], 0
    for h in hits:
        rest.append(row[last:h.start])
        last = h.end
    rest.append(row[last:])
    return bool(hits) and not "".join(rest).strip(_STRIP)


def _take_date(seg: str, dayfirst: bool | None) -> tuple[str | None, str]:
    found = _find_date(seg, dayfirst)
    if found is None or found[0] > 25 or re.search(r"\d", seg[:found[0]]):  # a date right after its label
        return None, seg
    return found[2].isoformat(), seg[found[1]:]


def _take_amount(seg: str) -> tuple[str | None, str]:
    """The first amount after a label: a percent rate ("IVA 21%:") and whole numbers without a currency or
    decimals ("Summe 3 Positionen", "due on August 3, 2014") are passed over."""
    dates = [m.span() for rx in _DATE_RES for m in rx.finditer(seg)]
    for m in _AMOUNT_SEARCH.finditer(seg):
        if m.start() > 40:
            break
        if _PERCENT_AFTER.match(seg, m.end()) or any(a <= m.start("int") < b for a, b in dates):
            continue
        printed = m.group().strip(_SPACE_CHARS)
        if not m["frac"] and not _currencies(printed):
            continue
        if normalize_amount(printed) is None:
            return None, seg
        return printed, seg[m.end():]
    return None, seg


def _take_number(seg: str) -> tuple[str | None, str]:
    tokens = seg.strip(_SEG_STRIP).split()
    if not tokens:
        return None, seg
    n = 2 if len(tokens) > 1 and re.fullmatch(rf"{_NO}|n\.", tokens[0], re.IGNORECASE) else 1
    value = " ".join(tokens[:n]).strip(",;")
    if not re.search(r"\d", value):
        return None, seg
    return value, " ".join(tokens[n:])


# after a title: the number right away ("FATTURA A-42") or after a few words and a number word
# ("Handelsrechnung (380) Nr. 471102", "Rechnung des Versicherers Nr. 42")
_TITLE_NUMBER = re.compile(rf"[\s:#)]*(?:(?P<number>(?!\()\S*\d\S*)|(?:(?:\(\d+\)|{_LETTER}+)\s+){{0,4}}?"
                           rf"(?:{_NO})\s*[:#]?\s*(?P<number2>\S*\d\S*))", re.IGNORECASE)
_DATE_WORD = re.compile(r"\s*(?:vom|von|du|del|dated|of|van|dd\.?|issued(?:\s+(?:on|at))?)\s+", re.IGNORECASE)


def _date_after(seg: str, dayfirst: bool | None, below: str) -> str | None:
    """The date in "Nr. 42 vom 05.03.2018", "n° 42 du 2 juillet 2015": right after the number and a date word,
    or at the start of the row ``below`` when the word ends the row."""
    m = _DATE_WORD.match(seg + " ")
    if not m:
        return None
    rest = seg[m.end():]
    return _take_date(rest if rest.strip() else below, dayfirst)[0]


def _take_currency(seg: str) -> tuple[str | None, str]:
    tokens = seg.strip(_SEG_STRIP).split()
    if tokens and (code := normalize_currency(tokens[0])):
        return code, " ".join(tokens[1:])
    return None, seg


def _take_token(seg: str) -> tuple[str | None, str]:
    tokens = seg.strip(_SEG_STRIP).split()
    return (tokens[0], " ".join(tokens[1:])) if tokens else (None, seg)


def _take(kind: str, seg: str, dayfirst: bool | None) -> tuple[str | None, str]:
    """A value of ``kind`` at the start of ``seg`` and what follows it."""
    if kind in DATE_FIELDS:
        return _take_date(seg, dayfirst)
    if kind in ("subtotal", "tax", "total", "total_strong"):
        return _take_amount(seg)
    if kind == "invoice_number":
        return _take_number(seg)
    if kind == "currency":
        return _take_currency(seg)
    return _take_token(seg)


def _first_segment(row: str, hits: list[_Hit]) -> str:
    """The text of a row before its first label, skipping document titles, and before a letterhead separator
    ("ACME GmbH · Hauptstr. 1 · Berlin", "ACME SARL - 12 rue ...")."""
    pieces, last = [], 0
    for h in hits:
        if h.kind == "vendor":  # a name word ("van", "from") unless it heads a row of its own
            continue
        pieces.append(row[last:h.start])
        if h.kind != "title":
            break
        last = h.end
    else:
        pieces.append(row[last:])
    for p in pieces:
        p = _LETTERHEAD_SEP.split(p, maxsplit=1)[0]
        if p.strip(_STRIP):
            return " ".join(p.split()).strip(" ,;:|")
    return ""


def _is_name(text: str) -> bool:
    """Looks like a party's name: a word of letters, no more digits than letters, not a contact or a date."""
    letters = sum(ch.isalpha() for ch in text)
    return bool(_WORD.search(text)) and letters >= sum(ch.isdigit() for ch in text) and \
        not _NAME_SKIP.search(text) and normalize_date(text) is None


def _dayfirst_for(text: str, locale_hint: str | None) -> bool | None:
    if locale_hint:
        return not locale_hint.replace("-", "_").upper().endswith("_US")
    votes = Counter(v for m in _NUMERIC_DATE.finditer(text) if (v := _numeric_order(m.group())) is not None)
    if votes:
        return votes.most_common(1)[0][0]
    marks = Counter(code for _, code in _currencies(text))
    return False if marks and marks.most_common(1)[0][0] == "USD" else None


# Party headings long enough that one misread letter still names them ("Verkäiufer:", "Käufez/Leistungsempfänger:"):
# a row that is such a heading alone, one letter off (two from 16 letters on), is read as the heading. Only whole
# rows, so that a word in running text is never taken for a heading.
_PARTY_HEADINGS = ("verkäufer", "lieferant", "absender", "supplier", "rechnungsersteller", "rechnungssteller",
                   "fournisseur", "proveedor", "fornitore", "leverancier", "customer", "rechnungsempfänger",
                   "rechnungsadresse", "käufer/leistungsempfänger", "leistungsempfänger", "destinatario")
_LONE_HEADING = re.compile(r"^([^\W\d_][^\s:]{6,40}):?$")


def _lone_label(row: str) -> str:
    """``row``, or the party heading it is with one letter misread (see _PARTY_HEADINGS)."""
    m = _LONE_HEADING.match(row)
    if not m or any((e := _LABEL_RES[kind].match(row)) and e.end() >= m.end(1) for kind in ("vendor", "customer")):
        return row  # not a lone word, or a heading as it is ("Käufer/teistungsempfänger:" reads "Käufer" only)
    from rapidfuzz.distance import Levenshtein

    word = m.group(1).lower()
    for heading in _PARTY_HEADINGS:
        if Levenshtein.distance(word, heading, score_cutoff=2) <= (2 if len(heading) >= 16 else 1):
            return heading + ":"
    return row


def fields_from_text(text: str, locale_hint: str | None = None) -> dict[str, str]:
    """Key fields read from a plain transcription (rows separated by newlines) by label words in English,
    German, French, Spanish, Italian and Dutch; a reasonable baseline for OCR engines, not a parser.

    - A labelled value follows its label on the same row (``Total: 1.234,56 €``, several labels a row allowed),
      or, when a row holds only labels, sits in the same order on the next row (a label/value grid).
    - ``total``: a specific label (Total TTC, Gesamtbetrag, Amount due) beats a bare "Total"/"Summe".
    - ``vendor``: the first row that is not only labels or a title, up to its first label (letterheads put the
      issuer first); the row under a lone "From"/"Absender" label when there is one. ``customer``: the row under
      a "Bill to"/"Rechnungsempfänger"/"Facturé à" label that starts its row (or the text after it). Where such a
      label shares its row with another address heading, the columns are merged in plain text: left out.
    - ``currency``: from the total as printed, else a "Currency" label, else the commonest currency mentioned.
    - Dates come back as ISO: the day/month order is decided for the whole page (``locale_hint`` ``en_US``
      means month-first, another locale day-first; without one, unambiguous numeric dates on the page, then a
      dollar currency, decide). Other values are as printed.
    """
    rows = [_lone_label(r) for r in (" ".join(line.split()) for line in text.splitlines()) if r]
    dayfirst = _dayfirst_for(text, locale_hint)
    found: dict[str, str] = {}
    vendor_done = False  # the first-row guess is made (or a "From" heading made it moot)
    vendor_headed = False  # a "From"/"Verkäufer" heading was seen: its block beats the first-row guess
    taken: set[int] = set()  # rows read as the value of a label above them: not a vendor candidate

    def put(kind: str, value: str | None) -> None:
        if not value:
            return
        if kind == "total_strong":
            if "total_strong" not in found:
                found["total"] = value
                found["total_strong"] = value
        elif kind not in found:
            found[kind] = value

    def name_below(i: int) -> str | None:
        # the first name-like row of the block under a heading; "Nummer: 42" rows (form renderings) are skipped
        # and "Name: ACME" gives ACME
        for k in range(i + 1, min(i + 4, len(rows))):
            taken.add(k)
            m = _FIELD_ROW.match(rows[k])
            if m and re.match(r"(?i)name\b", rows[k]):
                value = m[1]
            else:
                value = _first_segment(rows[k], _hits(rows[k]))
                if ":" in value:
                    continue
            return value if _is_name(value) else None
        return None

    for i, row in enumerate(rows):
        hits = _hits(row)
        nxt = rows[i + 1] if i + 1 < len(rows) else ""
        text_kinds = [h.kind for h in hits if h.kind in _TEXT_KINDS]
        if _label_only(row, hits):
            vendor_done = vendor_done or "vendor" in text_kinds
            if text_kinds and len(hits) == 1:
                kind = hits[0].kind
                if kind == "vendor" and not vendor_headed:
                    vendor_headed = True
                    found.pop("vendor", None)
                value = name_below(i)  # also marks a ship-to block as taken, so it is no vendor candidate
                if kind != "other_text":
                    put(kind, value)
            elif not text_kinds and i + 1 < len(rows):  # a label/value grid
                rest = rows[i + 1]
                for h in hits:
                    if h.kind == "title":
                        continue
                    value, rest = _take(h.kind, rest, dayfirst)
                    if value is None:
                        break
                    taken.add(i + 1)
                    if h.kind not in ("other", "other_text"):
                        put(h.kind, value)
            continue
        # "From", "Van", "Absender" head a block on their own; inside a row they are words of a name or sentence
        hits = [h for h in hits if h.kind != "vendor"]
        text_kinds = [k for k in text_kinds if k != "vendor"]
        if not vendor_done and i not in taken:
            value = _first_segment(row, hits)
            if _is_name(value):
                put("vendor", value)
                vendor_done = True
        for j, h in enumerate(hits):
            end = hits[j + 1].start if j + 1 < len(hits) else len(row)
            seg = row[h.end:end]
            if h.kind == "customer":
                if h.start != 0:  # mid-row it is more often a word in a sentence than a heading
                    continue
                value = seg.strip(_STRIP)
                if value:
                    put(h.kind, value if _is_name(value) else None)
                elif len(text_kinds) == 1:
                    put(h.kind, name_below(i))
            elif h.kind == "title":
                m = _TITLE_NUMBER.match(seg)
                if m and "invoice_number" not in found:
                    put("invoice_number", (m["number"] or m["number2"]).strip(",;"))
                    put("date", _date_after(seg[m.end():], dayfirst, nxt))
            elif h.kind == "invoice_number":
                value, rest = _take_number(seg)
                put("invoice_number", value)
                if value:
                    put("date", _date_after(rest, dayfirst, nxt))
            elif h.kind not in ("other", "other_text"):
                put(h.kind, _take(h.kind, seg, dayfirst)[0])
    found.pop("total_strong", None)
    currency = None
    if "total" in found:
        currency = normalize_currency(found["total"])
    if currency is None and "currency" in found:
        currency = normalize_currency(found["currency"])
    if currency is None:
        marks = Counter(code for _, code in _currencies(text))
        currency = marks.most_common(1)[0][0] if marks else None
    found.pop("currency", None)
    if currency:
        found["currency"] = currency
    return {k: found[k] for k in KEY_FIELDS if k in found}


# --------------------------------------------------------------------------------------------- scoring


@dataclass
class _Counts:
    support: int = 0  # documents whose reference knows the field
    predicted: int = 0  # of those, documents with a predicted value
    correct: int = 0  # of those, predictions equal to the reference after normalisation

    def add(self, other: _Counts) -> None:
        self.support += other.support
        self.predicted += other.predicted
        self.correct += other.correct

    def summary(self) -> dict[str, float | int]:
        p = self.correct / self.predicted if self.predicted else 0.0
        r = self.correct / self.support if self.support else 0.0
        return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
                "exact_match": r, "support": self.support, "predicted": self.predicted}


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip()) and value != [] and value != {}


def score_fields(predicted: list[dict[str, Any]], references: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-field and overall (micro over fields) precision, recall, F1 and exact match of predicted key fields.

    ``predicted``: one dict per document of raw values (as printed, e.g. from :func:`parse_prediction` or
    :func:`fields_from_text`); ``references``: the documents' ``fields`` records (see :func:`reference_fields`).
    Only fields the reference knows are scored: a correct prediction is a true positive, a wrong one (also one
    that cannot be read as its kind) a false positive and a false negative, a missing one a false negative; a
    prediction for an unknown field is ignored. So ``predicted`` counts scored predictions, precision is
    correct/predicted and recall = exact_match = correct/support. Undefined ratios are 0.0.

    ``all_fields_correct``: the fraction of documents, among those with at least one known key field, whose
    known key fields are all predicted correctly.
    """
    if len(predicted) != len(references):
        raise ValueError(f"{len(predicted)} predictions for {len(references)} references")
    per = {key: _Counts() for key in KEY_FIELDS}
    scored_docs = all_correct = 0
    for pred, ref in zip(predicted, references):
        ref_norm = reference_fields(ref or {})
        pred = pred or {}
        dayfirst = infer_dayfirst(pred)
        ok = True
        for key, want in ref_norm.items():
            c = per[key]
            c.support += 1
            value = pred.get(key)
            if _present(value):
                c.predicted += 1
                if normalize_field(key, value, dayfirst) == want:
                    c.correct += 1
                    continue
            ok = False
        if ref_norm:
            scored_docs += 1
            all_correct += ok
    overall = _Counts()
    for c in per.values():
        overall.add(c)
    return {
        "documents": len(references),
        "all_fields_correct": all_correct / scored_docs if scored_docs else 0.0,
        "overall": overall.summary(),
        "per_field": {key: c.summary() for key, c in per.items()},
    }
