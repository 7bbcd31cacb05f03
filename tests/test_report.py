"""The HTML evaluation report: self-contained, worst first, escaped, and rendered by a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from invoice_vlm.evaluate import cer, score_all
from invoice_vlm.evaluate import report as report_mod
from invoice_vlm.evaluate.report import diff_html, write_report

REFS = {
    "inv-ok": "Invoice 1001\nTotal: 12.50 €",
    "inv-umlaut": "Rechnung Nr. 7\nMüller GmbH, Straße 5\nSumme 99,00 €",
    "inv-html": "Note: <script>alert(1)</script> & <b>bold</b>\nTotal 3.00",
    "inv-empty": "Facture 42\nTotal TTC: 18,40 €\nCafé",
    "inv-noimg": "Receipt 9\nAmount 1.00",
}
PREDS = {
    "inv-ok": "Invoice 1001\nTotal: 12.50 €",
    "inv-umlaut": "Rechnung Nr. 1\nMuller GmbH Strasse 5\nSumme 99,00 €",
    "inv-html": "Note: <script>alert(1)</script> & bold\nTotal 8.00",
    "inv-empty": "",
    "inv-noimg": "Receipt 9\nAmount 7.00",
}


def page_image(text: str, size=(300, 400), mode: str = "RGB") -> Image.Image:
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([10, 10, size[0] - 10, 60], fill=(40, 90, 160))
    draw.multiline_text((20, 80), text, fill="black")
    return img.convert(mode)


def build_rows(tmp: Path) -> list[dict]:
    rows = []
    for k, (doc_id, ref) in enumerate(REFS.items()):
        pred = PREDS[doc_id]
        if doc_id == "inv-noimg":
            image = tmp / "does-not-exist.png"
        elif k % 2:  # some as files (one a transparent PNG), some as in-memory images
            image = tmp / f"{doc_id}.png"
            page_image(ref, mode="RGBA" if k == 1 else "RGB").save(image)
        else:
            image = page_image(ref)
        rows.append({"id": doc_id, "reference": ref, "prediction": pred, "cer": cer([pred], [ref]), "image": image})
    return rows


FIELDS = {
    "per_field": {
        "invoice_number": {"precision": 0.9, "recall": 0.8, "f1": 0.847, "exact_match": 0.8, "support": 5,
                           "predicted": 4},
        "total": {"precision": 0.5, "recall": 0.4, "f1": 0.444, "exact_match": 0.4, "support": 5, "predicted": 4},
        "vendor <name>": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "exact_match": 1.0, "support": 3,
                          "predicted": 3},
    },
    "overall": {"precision": 0.8, "recall": 0.73, "f1": 0.76, "exact_match": 0.71, "support": 13, "predicted": 11},
}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, list[dict]]:
    tmp = tmp_path_factory.mktemp("report")
    rows = build_rows(tmp)
    summary = score_all([r["prediction"] for r in rows], [r["reference"] for r in rows])
    summary.update(model="runs/tiny/model", engine="hf", data="data/synth", split="test",
                   skipped=["inv-broken: image unreadable", "inv-x: <no text>"])
    out = write_report(tmp / "out" / "report.html", summary, rows, FIELDS, title="tiny <eval>")
    return out, rows


def test_writes_one_file_atomically(built):
    path, _ = built
    assert path.name == "report.html" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temp file left behind


def test_self_contained(built):
    html = built[0].read_text(encoding="utf-8")
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", html, flags=re.IGNORECASE)
    assert refs, "expected image sources and links"
    assert all(r.startswith(("data:image/jpeg;base64,", "#")) for r in refs), refs
    assert "http://" not in html and "https://" not in html
    assert "@import" not in html and "url(" not in html


def test_rows_worst_first(built):
    path, rows = built
    html = path.read_text(encoding="utf-8")
    cers = [float(c) for c in re.findall(r'<tr class="doc" id="doc-\d+" data-cer="([^"]+)"', html)]
    assert cers == sorted((r["cer"] for r in rows), reverse=True)
    assert cers[0] == 1.0 and cers[-1] == 0.0  # the empty prediction first, the perfect page last
    ids = re.findall(r'<td class="id">([^<]*)</td>', html)
    assert ids[0] == "inv-empty" and ids[-1] == "inv-ok"


def test_escaped_and_unicode(built):
    html = built[0].read_text(encoding="utf-8")
    assert "<script>alert" not in html
    assert html.count("<script") == 1  # only the report's own image check
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>bold" not in html and "tiny &lt;eval&gt;" in html and "vendor &lt;name&gt;" in html
    assert "M<del>ü</del>ller GmbH<del>,</del> Stra<del>ß</del>e 5\nSumme 99,00 €" in html
    assert "M<ins>u</ins>ller GmbH Stra<ins>ss</ins>e 5" in html
    assert "<del>Facture 42\nTotal TTC: 18,40 €\nCafé</del>" in html  # empty prediction: all deleted
    assert "&lt;no text&gt;" in html  # skipped list shown, escaped


def test_content(built):
    html = built[0].read_text(encoding="utf-8")
    assert 'data-images="4"' in html  # five documents, one without an image
    assert html.count('<span class="missing">no image</span>') == 1
    assert html.count('<span class="missing">(empty)</span>') == 1
    for label in ("BLEU", "TER", "chrF", "CER", "WER", "exact match", "pages", "runs/tiny/model", "hf"):
        assert f">{label}<" in html or label in html
    assert "CER per document (%)" in html and "≥100" in html and "F1" in html


def test_field_table_and_extra_field_scores(tmp_path):
    fields = {"documents": 5, "all_fields_correct": 0.4, "overall": FIELDS["overall"], "per_field": FIELDS["per_field"]}
    html = write_report(tmp_path / "r.html", {"cer": 0.1}, [], fields).read_text(encoding="utf-8")
    table = re.search(r'<table id="field-table">.*?</table>', html, flags=re.DOTALL)[0]
    assert table.count("<tr") == 1 + 3 + 1 and "invoice_number" in table
    assert "all fields correct: 0.400" in html
    assert '<table id="field-table">' not in write_report(tmp_path / "s.html", {"cer": 0.1}, []).read_text()


def test_diff_marks_only_what_changed():
    ref, pred = diff_html("Total 12.50 €\nVAT 2.00", "Total 12.80 €\nVAT 2.00 extra")
    assert ref == "Total 12.<del>5</del>0 €\nVAT 2.00"
    assert pred == "Total 12.<ins>8</ins>0 €\nVAT 2.00<ins> extra</ins>"
    ref, pred = diff_html("a\nb", "a b")
    assert "<del>↵\n</del>" in ref and "<ins>␣</ins>" in pred
    assert diff_html("x < y", "") == ("<del>x &lt; y</del>", "")


def test_caps_thumbnails(tmp_path, monkeypatch):
    monkeypatch.setattr(report_mod, "MAX_THUMBS", 3)
    monkeypatch.setattr(report_mod, "MAX_LARGE", 1)
    img = page_image("x", size=(1200, 1600))
    rows = [{"id": f"d{i}", "reference": "abc", "prediction": "abd", "cer": i / 10, "image": img} for i in range(6)]
    html = write_report(tmp_path, {"cer": 0.3, "num_samples": 6}, rows).read_text(encoding="utf-8")
    assert html.count('<img class="thumb"') == 3 and html.count('<img class="large"') == 1
    assert html.count("no thumbnail (beyond the 3 worst)") == 3
    assert html.count('<tr class="doc"') == 6
    width = re.search(r'<img class="thumb" src="[^"]+" width="(\d+)" height="(\d+)"', html)
    assert (int(width[1]), int(width[2])) == (160, 213)


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def chromium(*args: str) -> subprocess.CompletedProcess:
    binary = find_chromium()
    if binary is None:
        pytest.skip("no headless Chromium on PATH (`make install` installs the Debian package `chromium`)")
    cmd = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def test_renders_in_chromium(built, tmp_path):
    path, rows = built
    dom = chromium("--dump-dom", path.resolve().as_uri()).stdout
    body = re.search(r"<body[^>]*>", dom)[0]
    assert 'data-images="4"' in body
    assert 'data-loaded="4"' in body, body  # every embedded thumbnail decoded
    assert 'data-loaded-large="4"' in body, body
    summary = re.search(r'<table id="summary">.*?</table>', dom, flags=re.DOTALL)[0]
    assert summary.count("<tr>") >= 7  # BLEU, TER, chrF, CER, WER, exact match, pages, then the run
    docs = re.search(r'<table id="doc-table">.*?</table>', dom, flags=re.DOTALL)[0]
    assert docs.count('<tr class="doc"') == len(rows)
    fields = re.search(r'<table id="field-table">.*?</table>', dom, flags=re.DOTALL)[0]
    assert fields.count("<tr") == 1 + 3 + 1  # header, three fields, overall

    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,900", path.resolve().as_uri())
    with Image.open(shot) as img:
        lo, hi = img.convert("L").getextrema()
        colours = img.convert("RGB").getcolors(maxcolors=1 << 16)
    assert hi - lo > 100  # text on paper, not a blank page
    assert colours is None or len(colours) > 50
