"""Key fields: normalisation, the rule-based text extractor and per-field scoring (invoice_vlm.fields)."""

from __future__ import annotations

import datetime as dt
import json
import random
from decimal import Decimal

import pytest

from invoice_vlm import fields as F
from invoice_vlm.synth import LOCALES, SynthConfig, format_amount, format_date, generate_invoice, public_fields
from invoice_vlm.synth.content import make_invoice

ROUND_TRIP_KEYS = ("date", "due_date", "subtotal", "tax", "total", "currency")

# ----------------------------------------------------------------------------------- the extract target


def test_canonical_fields_order_and_format():
    """The extract task's target: the record's fields as printed, in schema order, compact JSON."""
    fields = {"total": "1,00 €", "invoice_number": "A-1", "normalized": {"total": "1.00"}, "line_items": [
        {"amount": "1,00 €", "description": "Café", "quantity": "1", "unit_price": "1,00 €"}]}
    assert F.canonical_fields(fields) == (
        '{"invoice_number":"A-1","total":"1,00 €","line_items":[{"description":"Café","quantity":"1",'
        '"unit_price":"1,00 €","amount":"1,00 €"}]}')


# ------------------------------------------------------------------------------------------------ dates

DATES = [
    ("2025-03-14", "2025-03-14"),
    ("2025-03-14T10:30:00", "2025-03-14"),
    ("2025/03/14", "2025-03-14"),
    ("2025.03.14", "2025-03-14"),
    ("14.03.2025", "2025-03-14"),
    ("14. 03. 2025", "2025-03-14"),
    ("14/03/2025", "2025-03-14"),
    ("14/3/2025", "2025-03-14"),
    ("03/14/2025", "2025-03-14"),  # only month-first is a date
    ("14-03-2025", "2025-03-14"),
    ("14.03.25", "2025-03-14"),
    ("31.12.99", "1999-12-31"),
    ("March 14, 2025", "2025-03-14"),
    ("March 14th, 2025", "2025-03-14"),
    ("Mar. 14, 2025", "2025-03-14"),
    ("August 3 , 2014", "2014-08-03"),
    ("Sept 3, 2025", "2025-09-03"),
    ("14 March 2025", "2025-03-14"),
    ("14th of March 2025", "2025-03-14"),
    ("1st March 2025", "2025-03-01"),
    ("2nd Feb 2025", "2025-02-02"),
    ("14-Mar-2025", "2025-03-14"),
    ("Friday, 14 March 2025", "2025-03-14"),
    ("14. März 2025", "2025-03-14"),
    ("14 Mär 2025", "2025-03-14"),
    ("Freitag, 1. Dezember 2023", "2023-12-01"),
    ("14 mars 2025", "2025-03-14"),
    ("1er mars 2025", "2025-03-01"),
    ("14 févr. 2025", "2025-02-14"),
    ("3 août 2021", "2021-08-03"),
    ("14 de marzo de 2025", "2025-03-14"),
    ("9 de enero de 2016", "2016-01-09"),
    ("14 marzo 2025", "2025-03-14"),
    ("1º gennaio 2020", "2020-01-01"),
    ("12 dicembre 2019", "2019-12-12"),
    ("14 maart 2025", "2025-03-14"),
    ("14 mrt 2025", "2025-03-14"),
    ("1 mei 2024", "2024-05-01"),
    ("Invoice date: 14.03.2025", "2025-03-14"),
    ("Date de facture : 25 janvier 2016", "2016-01-25"),
    ("Rechnungsdatum 05.03.2018, fällig 19.03.2018", "2018-03-05"),  # the first date
]


@pytest.mark.parametrize("text,expected", DATES)
def test_normalize_date_formats(text, expected):
    assert F.normalize_date(text) == expected


def test_ambiguous_numeric_dates_are_day_first_unless_told_or_impossible():
    assert F.normalize_date("03/04/2025") == "2025-04-03"
    assert F.normalize_date("03/04/2025", dayfirst=True) == "2025-04-03"
    assert F.normalize_date("03/04/2025", dayfirst=False) == "2025-03-04"
    # one reading impossible: that decides, whatever dayfirst says
    assert F.normalize_date("03/14/2025", dayfirst=True) == "2025-03-14"
    assert F.normalize_date("14/03/2025", dayfirst=False) == "2025-03-14"
    assert F.normalize_date("2025-03-04", dayfirst=False) == "2025-03-04"  # year-first is never swapped


@pytest.mark.parametrize("text", ["", "   ", "soon", "N/A", "32.13.2025", "2025-02-30", "14/14/2025",
                                  "INV-2025-0042", "Total: 1.234,56 €", "12345", "March 2025", None, 20250314])
def test_normalize_date_garbage_is_none(text):
    assert F.normalize_date(text) is None


# ---------------------------------------------------------------------------------------------- amounts

AMOUNTS = [
    ("1.234,56", "1234.56"),
    ("1,234.56", "1234.56"),
    ("1 234,56", "1234.56"),
    ("1\u00a0234,56", "1234.56"),  # no-break space
    ("1\u202f234,56", "1234.56"),  # narrow no-break space
    ("1'234.56", "1234.56"),
    ("1234", "1234.00"),
    ("1234.5", "1234.50"),
    ("€ 1.234,56", "1234.56"),
    ("1.234,56 €", "1234.56"),
    ("$1,234.56", "1234.56"),
    ("USD 1,234.56", "1234.56"),
    ("EUR1,234.56", "1234.56"),
    ("1,234.56 EUR", "1234.56"),
    ("£4,751.58", "4751.58"),
    ("20 996,40 EUR", "20996.40"),
    ("CHF 1'234.50", "1234.50"),
    ("1.234.567,89", "1234567.89"),
    ("1,234,567.89", "1234567.89"),
    ("-12.00", "-12.00"),
    ("(12.00)", "-12.00"),
    ("$ (12.00)", "-12.00"),
    ("12.00-", "-12.00"),
    ("\u2212 12,00", "-12.00"),  # minus sign
    ("-1.234,56 €", "-1234.56"),
    ("12,5", "12.50"),
    ("0,99", "0.99"),
    ("12,-", "12.00"),
    ("1.234", "1234.00"),  # one group of three digits: thousands
    ("12,345", "12345.00"),
    ("2.005", "2005.00"),
    ("0.125", "0.13"),  # a leading 0 is no thousands group; rounds half up
    ("529.87", "529.87"),
    ("12.3456", "12.35"),
    ("-0.00", "0.00"),
]


@pytest.mark.parametrize("text,expected", AMOUNTS)
def test_normalize_amount_formats(text, expected):
    assert F.normalize_amount(text) == expected


def test_normalize_amount_numbers():
    assert F.normalize_amount(1234.5) == "1234.50"
    assert F.normalize_amount(7) == "7.00"
    assert F.normalize_amount(Decimal("0.005")) == "0.01"


@pytest.mark.parametrize("text", ["", "abc", "12.5%", "1.5e3", "2025-03-14", "12 apples", "1,2,3", "€", "--12",
                                  None, True, ["12.00"]])
def test_normalize_amount_garbage_is_none(text):
    assert F.normalize_amount(text) is None


# --------------------------------------------------------------------------------------------- currency

CURRENCIES = [
    ("€", "EUR"), ("EUR", "EUR"), ("eur", "EUR"), ("euro", "EUR"), ("Euros", "EUR"), ("$", "USD"), ("US$", "USD"),
    ("USD", "USD"), ("dollars", "USD"), ("£", "GBP"), ("GBP", "GBP"), ("CHF", "CHF"), ("SFr.", "CHF"),
    ("¥", "JPY"), ("₹ 319.00", "INR"), ("Rs. 319", "INR"), ("C$ 12", "CAD"), ("1.234,56 €", "EUR"),
    ("$1,234.56", "USD"), ("CHF 1'234.50", "CHF"), ("1,234.56 EUR", "EUR"), ("Total: 22.963,71 €", "EUR"),
]


@pytest.mark.parametrize("text,expected", CURRENCIES)
def test_normalize_currency(text, expected):
    assert F.normalize_currency(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "try it", "1.234,56", None])
def test_normalize_currency_none(text):
    assert F.normalize_currency(text) is None


# ------------------------------------------------------------------------------------------ text, fields


def test_normalize_text_and_invoice_numbers():
    assert F.normalize_text('  "Müller   GmbH & Co. KG."\n') == "müller gmbh & co. kg"
    assert F.normalize_text("ACME\u00a0Ltd") == "acme ltd"
    assert F.normalize_text("Straße") == "strasse"  # casefold, not lower
    for printed in ("No. 2017-77654", "#2017-77654", "Nr. 2017-77654", "N° 2017-77654", " 2017-77654 "):
        assert F.normalize_field("invoice_number", printed) == "2017-77654"
    assert F.normalize_field("invoice_number", "NOV-12") == "nov-12"  # a prefix only before the number
    assert F.normalize_field("invoice_number", "INV-2025-0042") != F.normalize_field("invoice_number", "INV-2025-0043")


def test_normalize_field_dispatch_and_reference_forms():
    assert F.normalize_field("date", "14. März 2025") == F.normalize_field("date", "2025-03-14") == "2025-03-14"
    assert F.normalize_field("due_date", "03/04/2025", dayfirst=False) == "2025-03-04"
    assert F.normalize_field("total", "529,87 €") == F.normalize_field("total", "529.87") == "529.87"
    assert F.normalize_field("total", 529.87) == "529.87"
    assert F.normalize_field("currency", "€") == F.normalize_field("currency", "EUR") == "EUR"
    assert F.normalize_field("vendor", " Müller GmbH ") == "müller gmbh"
    for empty in (None, "", "   ", [], {}):
        assert F.normalize_field("vendor", empty) is None
    assert F.normalize_field("total", "about twelve") is None


def test_reference_fields_prefers_normalized_and_skips_unknown():
    synthetic = {"invoice_number": "No. 42", "date": "03/04/2025", "vendor": "ACME Inc.", "currency": "$",
                 "total": "$1,234.56", "customer": "", "line_items": [],
                 "normalized": {"date": "2025-03-04", "total": "1234.56", "currency": "USD"}}
    assert F.reference_fields(synthetic) == {"invoice_number": "42", "date": "2025-03-04", "vendor": "acme inc",
                                             "currency": "USD", "total": "1234.56"}
    manifest = {"invoice_number": "INV/2023/03/0008", "date": "2023-03-20", "total": "279.84", "currency": "USD"}
    assert F.reference_fields(manifest) == {"invoice_number": "inv/2023/03/0008", "date": "2023-03-20",
                                            "total": "279.84", "currency": "USD"}
    # scripts/fuzz.py --target fields: a "normalized" that is not a dict raised AttributeError
    assert F.reference_fields({"total": "12.00", "normalized": 2.0}) == {"total": "12.00"}


def test_infer_dayfirst():
    assert F.infer_dayfirst({"date": "03/04/2025", "due_date": "03/18/2025"}) is False
    assert F.infer_dayfirst({"date": "03/04/2025", "due_date": "18/04/2025"}) is True
    assert F.infer_dayfirst({"date": "03/04/2025", "currency": "$"}) is False
    assert F.infer_dayfirst({"date": "03/04/2025", "total": "1.234,56 €"}) is None
    assert F.infer_dayfirst({}) is None


# ------------------------------------------------------------------------------ every locale round-trips


@pytest.mark.parametrize("code", sorted(LOCALES))
def test_every_locale_date_pattern_and_amount_style_round_trips(code):
    loc = LOCALES[code]
    dayfirst = False if code == "en_US" else None  # what a page's context (its $) tells infer_dayfirst
    for pattern in loc.date_formats:
        for day in (dt.date(2025, 3, 4), dt.date(2016, 12, 31), dt.date(2021, 8, 1), dt.date(2030, 5, 10)):
            printed = format_date(day, loc, pattern)
            assert F.normalize_date(printed, dayfirst) == day.isoformat(), (code, pattern, printed)
    for value in (Decimal("0.5"), Decimal(7), Decimal("1234.56"), Decimal("-1234.5"), Decimal("9876543.21")):
        for style in ("symbol", "code", "plain"):
            printed = format_amount(value, loc, style)
            assert F.normalize_amount(printed) == f"{value:.2f}", (code, style, printed)
            if style != "plain":
                assert F.normalize_currency(printed) == loc.currency, printed


@pytest.fixture(scope="module")
def locale_invoices() -> list[tuple[str, dict]]:
    """20 invoices per locale, as the generator prints them (``fields`` records)."""
    out = []
    for code in sorted(LOCALES):
        for i in range(20):
            inv = make_invoice(random.Random(f"test-fields/{code}/{i}"), LOCALES[code], max_items=5)
            out.append((code, public_fields(inv)))
    return out


def test_printed_fields_normalise_to_the_generator_values(locale_invoices):
    assert len(locale_invoices) >= 100 and {c for c, _ in locale_invoices} == set(LOCALES)
    for code, fields in locale_invoices:
        dayfirst = F.infer_dayfirst(fields)
        for key in ROUND_TRIP_KEYS:
            want = fields["normalized"][key]
            assert F.normalize_field(key, fields[key], dayfirst) == want, (code, key, fields[key])
            assert F.normalize_field(key, want) == want  # machine values are fixed points


def test_scoring_printed_fields_against_their_records_is_perfect(locale_invoices):
    fields = [f for _, f in locale_invoices]
    result = F.score_fields([{k: f[k] for k in F.KEY_FIELDS} for f in fields], fields)
    assert result["overall"]["f1"] == 1.0 and result["all_fields_correct"] == 1.0
    assert result["overall"]["support"] == len(fields) * len(F.KEY_FIELDS)


# ------------------------------------------------------------------------------------------- predictions

FIELDS = {"invoice_number": "INV-2025-0042", "date": "14.03.2025", "due_date": "28.03.2025", "vendor": "Müller GmbH",
          "vendor_address": "Hauptstr. 1, Berlin", "customer": "ACME {Europe}", "currency": "€",
          "subtotal": "1.000,00 €", "tax": "190,00 €", "total": "1.190,00 €",
          "line_items": [{"description": "Beratung", "quantity": "1", "unit_price": "1.000,00", "amount": "1.000,00"}]}
COMPACT = json.dumps(FIELDS, ensure_ascii=False, separators=(",", ":"))


def test_parse_prediction_valid_and_fenced():
    assert F.parse_prediction(COMPACT) == (FIELDS, True)
    assert F.parse_prediction(f"```json\n{COMPACT}\n```") == (FIELDS, True)
    assert F.parse_prediction(f"Here are the fields: {COMPACT} -- done") == (FIELDS, True)


def test_parse_prediction_truncated_keeps_complete_pairs():
    cut = COMPACT[:COMPACT.index('"line_items"') + 30]  # inside the line items
    fields, ok = F.parse_prediction(cut)
    assert not ok
    assert fields == {k: v for k, v in FIELDS.items() if k != "line_items"}
    cut = COMPACT[:COMPACT.index('"total"') + 14]  # inside the total's string
    fields, ok = F.parse_prediction(cut)
    assert not ok and "total" not in fields and fields["tax"] == "190,00 €" and fields["customer"] == "ACME {Europe}"
    fields, ok = F.parse_prediction('{"invoice_number":"7","total":12')  # a number at the very end may be cut
    assert (fields, ok) == ({"invoice_number": "7"}, False)
    fields, ok = F.parse_prediction('{"invoice_number":"7","total":12,"tax"')
    assert (fields, ok) == ({"invoice_number": "7", "total": 12}, False)


@pytest.mark.parametrize("text", ["", "no json here", "[1, 2, 3]", "{", '{"invoice_number" "x"}', "{'a': 1}", None])
def test_parse_prediction_garbage(text):
    assert F.parse_prediction(text) == ({}, False)


def test_parse_prediction_past_pythons_json_limits():
    # nesting past the recursion limit raised RecursionError, an integer past 4300 digits ValueError
    deep, long = "[" * 5000, "1" * 5000
    assert F.parse_prediction('{"a": ' + deep) == ({}, False)
    assert F.parse_prediction('{"a": ' + deep + "]" * 5000 + "}") == ({}, False)
    assert F.parse_prediction('{"a": "x", "b": ' + long + ', "c": 1}') == ({"a": "x"}, False)
    assert F.parse_prediction('{"a": "x", "b": ' + deep) == ({"a": "x"}, False)


# ----------------------------------------------------------------------------------------------- scoring


def test_score_fields_hand_computed():
    references = [
        {"invoice_number": "A-1", "date": "2025-03-14", "total": "10.00", "currency": "EUR"},
        {"invoice_number": "B-2", "total": "20.00"},
        {},  # nothing known: scores nothing, predictions ignored
    ]
    predicted = [
        {"invoice_number": "a-1", "date": "14.03.2025", "total": "10,00 €", "currency": "€"},  # 4 right
        {"invoice_number": "B-3", "date": "2025-01-01", "total": "", "vendor": "X"},  # wrong, unknown x2, missing
        {"invoice_number": "C-3", "total": "5.00"},
    ]
    r = F.score_fields(predicted, references)
    assert r["documents"] == 3
    assert r["all_fields_correct"] == 0.5  # of the two documents with a known field
    f = r["per_field"]
    assert f["invoice_number"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "exact_match": 0.5, "support": 2,
                                   "predicted": 2}
    assert f["total"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "exact_match": 0.5,
                          "support": 2, "predicted": 1}
    assert f["date"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "exact_match": 1.0, "support": 1,
                         "predicted": 1}
    assert f["vendor"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "exact_match": 0.0, "support": 0,
                           "predicted": 0}
    o = r["overall"]  # micro: 4 correct of 5 scored predictions, 6 known fields
    assert (o["support"], o["predicted"]) == (6, 5)
    assert o["precision"] == pytest.approx(0.8) and o["recall"] == pytest.approx(4 / 6)
    assert o["f1"] == pytest.approx(2 * 0.8 * (4 / 6) / (0.8 + 4 / 6)) and o["exact_match"] == o["recall"]


def test_unreadable_prediction_is_a_wrong_prediction_and_month_first_follows_the_page():
    ref = {"date": "03/04/2025", "currency": "$", "total": "$1,234.56",
           "normalized": {"date": "2025-03-04", "currency": "USD", "total": "1234.56"}}
    right = F.score_fields([{"date": "03/04/2025", "currency": "$", "total": "$1,234.56"}], [ref])
    assert right["overall"]["f1"] == 1.0
    wrong = F.score_fields([{"date": "soon", "currency": "dollars", "total": "1234.56"}], [ref])
    assert wrong["per_field"]["date"]["predicted"] == 1 and wrong["per_field"]["date"]["precision"] == 0.0
    assert wrong["per_field"]["total"]["exact_match"] == 1.0 and wrong["all_fields_correct"] == 0.0
    with pytest.raises(ValueError):
        F.score_fields([{}], [ref, ref])


def test_score_fields_on_1000_documents(locale_invoices):
    fields = [f for _, f in locale_invoices]
    refs = [fields[i % len(fields)] for i in range(1000)]
    preds = [{k: fields[(i + 1) % len(fields)][k] for k in F.KEY_FIELDS} for i in range(1000)]  # a neighbour's
    r = F.score_fields(preds, refs)
    assert r["documents"] == 1000
    assert r["per_field"]["total"]["support"] == r["per_field"]["total"]["predicted"] == 1000
    assert r["per_field"]["invoice_number"]["precision"] < 0.01 and r["all_fields_correct"] == 0.0
    assert 0 < r["per_field"]["currency"]["precision"] < 1  # neighbours often share a currency, not always


# -------------------------------------------------------------------------------------- text extractor


def test_fields_from_text_labels_grids_and_next_rows():
    text = "\n".join([
        "ACME Werkzeuge GmbH RECHNUNG",
        "Hauptstraße 1 · 10115 Berlin",
        "Rechnungsempfänger",
        "Beispiel AG",
        "Musterweg 2",
        "Rechnungsnr. Rechnungsdatum Fällig am",
        "RE-2025-0042 14.03.2025 28.03.2025",
        "Pos. Beschreibung Menge Einzelpreis Betrag",
        "1 Beratung 2 500,00 1.000,00",
        "Nettobetrag: 1.000,00 €",
        "MwSt. 19 %: 190,00 €",
        "Gesamtbetrag: 1.190,00 €",
        "USt-IdNr. DE123456789",
    ])
    assert F.fields_from_text(text) == {
        "invoice_number": "RE-2025-0042", "date": "2025-03-14", "due_date": "2025-03-28",
        "vendor": "ACME Werkzeuge GmbH", "customer": "Beispiel AG", "currency": "EUR",
        "subtotal": "1.000,00 €", "tax": "190,00 €", "total": "1.190,00 €"}


def test_fields_from_text_reads_a_party_heading_with_one_letter_misread():
    """An OCR'd heading one letter off ("Verkäiufer:", "Käufez/Leistungsempfänger:": the embedded reader on ZUGFeRD's
    samples, where 29 of 123 real pages lost their vendor or customer so) still heads its block; only a row that is
    the heading alone, so a word one letter off a heading inside running text is left as it is."""
    rows = ["Stylesheet Lesbarmachung der XML-Daten von ZUGFeRD-Rechnungen", "Handelsrechnung Nr. 471102 vom 05.03.2018",
            "{seller}", "Lieferant GmbH", "Lieferantenstraße 20", "{buyer}", "Kunden AG Mitte", "Kundenstraße 15"]
    misread = F.fields_from_text("\n".join(rows).format(seller="Verkäiufer:", buyer="Käufez/Leistungsempfänger:"))
    exact = F.fields_from_text("\n".join(rows).format(seller="Verkäufer:", buyer="Käufer/Leistungsempfänger:"))
    assert misread["vendor"] == exact["vendor"] == "Lieferant GmbH"
    assert misread["customer"] == exact["customer"] == "Kunden AG Mitte"
    # two letters off a short heading, three off a long one: not headings
    far = F.fields_from_text("\n".join(rows).format(seller="Verkaiufr:", buyer="Kiufez/Leistungsempfängr:"))
    assert far.get("vendor") != "Lieferant GmbH" and far.get("customer") != "Kunden AG Mitte"
    assert F._lone_label("Die Lieferanten kommen") == "Die Lieferanten kommen"
    assert F._lone_label("Custome:") == "customer:" and F._lone_label("Kaffeebohnen") == "Kaffeebohnen"
    assert F._lone_label("Käufer/teistungsempfänger:") == "käufer/leistungsempfänger:"  # not "Käufer" and a value
    assert F._lone_label("Verkäufer:") == "Verkäufer:"


def test_fields_from_text_month_first_pages_and_titles():
    text = "\n".join([
        "Parks and Bowen INVOICE",
        "Invoice No. FA1778163 Invoice Date: 03/04/2016 Due Date: 04/03/2016",
        "Total: $18,081.80",
    ])
    got = F.fields_from_text(text)  # all dates ambiguous: the dollar makes the page month-first
    assert (got["date"], got["due_date"], got["currency"]) == ("2016-03-04", "2016-04-03", "USD")
    assert F.fields_from_text(text, locale_hint="en_GB")["date"] == "2016-04-03"
    got = F.fields_from_text("Stylesheet header\nHandelsrechnung (380) Nr. 471102 vom\n05.03.2018\nSumme 3")
    assert (got["invoice_number"], got["date"]) == ("471102", "2018-03-05") and "total" not in got
    assert F.fields_from_text("") == {}


@pytest.fixture(scope="module")
def synthetic_pages() -> list[tuple[str, dict]]:
    """Transcriptions and fields of one-page synthetic invoices, every locale and layout."""
    cfg = SynthConfig(n=200)
    invoices = [generate_invoice(11, i, cfg) for i in range(160)]
    return [(inv.pages[0].transcription(), public_fields(inv.content)) for inv in invoices if len(inv.pages) == 1]


def test_fields_from_text_reads_synthetic_pages(synthetic_pages):
    assert len(synthetic_pages) >= 120
    preds = [F.fields_from_text(text) for text, _ in synthetic_pages]
    r = F.score_fields(preds, [fields for _, fields in synthetic_pages])
    em = {k: v["exact_match"] for k, v in r["per_field"].items()}
    # measured on these 155 pages: 1.0 for every field but vendor (0.90) and customer (0.55: columns that plain
    # text merges, letters without a "Bill to" heading, are left out rather than guessed)
    for key in ("invoice_number", "date", "due_date", "currency", "subtotal", "tax", "total"):
        assert em[key] >= 0.95, (key, em[key])
    assert em["vendor"] >= 0.85 and em["customer"] >= 0.5
    assert r["overall"]["precision"] >= 0.98  # when it answers, it is almost always right
