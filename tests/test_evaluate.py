from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import sacrebleu

from invoice_vlm import evaluate as ev

BLEU_KEYS = {"bleu", "precisions", "brevity_penalty", "length_ratio", "translation_length", "reference_length"}
TER_KEYS = {"score", "num_edits", "ref_length"}


def test_shapes_match_hf_evaluate():
    preds, refs = ["the cat sat on the mat"], ["the cat sat on a mat"]
    b, t = ev.bleu(preds, refs), ev.ter(preds, refs)
    assert set(b) == BLEU_KEYS and set(t) == TER_KEYS
    assert len(b["precisions"]) == 4 and all(0 <= p <= 1 for p in b["precisions"])
    assert isinstance(b["translation_length"], int) and isinstance(t["num_edits"], int)


def test_identical_text_gives_bleu_1_and_ter_0():
    refs = ["INVOICE\nInvoice No.: 42\nTotal 1.234,56 €", "Rechnung Nr. 7 Gesamtbetrag 99,00 €"]
    b, t = ev.bleu(refs, refs), ev.ter(refs, refs)
    assert b["bleu"] == pytest.approx(1.0)
    assert b["precisions"] == pytest.approx([1.0] * 4)
    assert b["brevity_penalty"] == 1.0 and b["length_ratio"] == 1.0
    assert t == {"score": 0.0, "num_edits": 0, "ref_length": pytest.approx(13.0)}  # 7 + 6 words
    assert ev.cer(refs, refs) == 0 and ev.wer(refs, refs) == 0 and ev.exact_match(refs, refs) == 1


def test_hand_counted_ter_and_bleu():
    # one substitution (on -> under) and one deletion (mat) against a 6-word reference: 2 edits / 6 words
    t = ev.ter(["the cat sat under the"], ["the cat sat on the mat"])
    assert t == {"score": pytest.approx(100 * 2 / 6), "num_edits": 2, "ref_length": 6.0}
    # BLEU by hand: hyp "the cat sat on the" vs ref "the cat sat on the mat"
    # precisions 5/5, 4/4, 3/3, 2/2; bp = exp(1 - 6/5)
    b = ev.bleu(["the cat sat on the"], ["the cat sat on the mat"])
    assert b["precisions"] == pytest.approx([1, 1, 1, 1])
    assert b["brevity_penalty"] == pytest.approx(math.exp(1 - 6 / 5))
    assert b["bleu"] == pytest.approx(math.exp(1 - 6 / 5))
    assert (b["translation_length"], b["reference_length"]) == (5, 6)


def test_ter_is_case_insensitive_like_evaluate_and_cer_is_not():
    assert ev.ter(["TOTAL"], ["total"])["num_edits"] == 0
    assert ev.cer(["TOTAL"], ["total"]) == 1.0


def test_values_agree_with_sacrebleu_directly():
    preds = ["Invoice 12 total 30,00 €", "Rechnung 7\nSumme 9,99 €", "nothing here"]
    refs = ["Invoice 12 total 31,00 €", "Rechnung 7\nSumme 9,99 €", "Facture 3 Total 5,00 €"]
    direct = sacrebleu.corpus_bleu(preds, [refs], smooth_method="none")
    assert ev.bleu(preds, refs)["bleu"] == pytest.approx(direct.score / 100)
    assert ev.chrf(preds, refs) == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score)
    assert ev.ter(preds, refs)["score"] == pytest.approx(sacrebleu.corpus_ter(preds, [refs]).score)


def test_cer_hand_counted():
    # "Total 12" -> "Tota1 12x": one substitution, one insertion over 8 reference characters
    assert ev.cer(["Tota1 12x"], ["Total 12"]) == pytest.approx(2 / 8)
    assert ev.wer(["Tota1 12"], ["Total 12"]) == pytest.approx(1 / 2)


def test_mismatched_lengths_fail():
    with pytest.raises(ValueError):
        ev.bleu(["a"], ["a", "b"])


# ------------------------------------------------------------------------------------------ the harness


def make_manifest(root: Path, n: int = 2) -> tuple[Path, list[str]]:
    """n synthetic invoices as PDFs (text layer = target) in the real-invoices manifest format, plus the bad
    records the harness must skip: a broken PDF, an encrypted one, a page past the end, an empty reference, a
    line that is not JSON."""
    from reportlab.pdfgen import canvas

    from invoice_vlm.synth import generate, write_pdf
    from invoice_vlm.synth.content import public_fields

    (root / "pdf").mkdir(parents=True)
    (root / "text").mkdir()
    lines, ids = [], []
    for i in range(n):
        inv = generate.generate_invoice(3, i, generate.SynthConfig(n=n, max_items=3))
        sid = f"doc{i}"
        write_pdf(inv.pages, str(root / "pdf" / f"{sid}.pdf"))
        (root / "text" / f"{sid}.txt").write_text(inv.pages[0].transcription(), encoding="utf-8")
        f = public_fields(inv.content)
        lines.append({"id": sid, "pdf": f"pdf/{sid}.pdf", "page": 0, "text": f"text/{sid}.txt",
                      "fields": {"invoice_number": f["invoice_number"], "date": f["normalized"]["date"],
                                 "total": f["normalized"]["total"], "currency": f["normalized"]["currency"]}})
        ids.append(sid)
    (root / "pdf" / "broken.pdf").write_bytes(b"%PDF-1.4\nnot really a pdf")
    c = canvas.Canvas(str(root / "pdf" / "locked.pdf"), encrypt="secret")
    c.drawString(72, 720, "Invoice 1")
    c.save()
    (root / "text" / "empty.txt").write_text("\n", encoding="utf-8")
    lines += [
        {"id": "broken", "pdf": "pdf/broken.pdf", "page": 0, "text": "text/doc0.txt", "fields": {}},
        {"id": "locked", "pdf": "pdf/locked.pdf", "page": 0, "text": "text/doc0.txt", "fields": {}},
        {"id": "past-end", "pdf": "pdf/doc0.pdf", "page": 5, "text": "text/doc0.txt", "fields": {}},
        {"id": "no-text", "pdf": "pdf/doc0.pdf", "page": 0, "text": "text/empty.txt", "fields": {}},
    ]
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n", encoding="utf-8")
    return manifest, ids


def test_manifest_eval_skips_bad_documents_and_scores_the_rest(tmp_path):
    manifest, ids = make_manifest(tmp_path / "real")
    refs = {i: (tmp_path / "real" / "text" / f"{i}.txt").read_text(encoding="utf-8") for i in ids}
    preds = tmp_path / "preds.jsonl"
    rows = [{"id": "doc0", "prediction": refs["doc0"]}, {"id": "doc1", "prediction": refs["doc1"][:-5]},
            {"id": "ghost", "prediction": "x"}]
    preds.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    result = ev.main(ev.EvalConfig(data=str(manifest), predictions=str(preds), out=str(tmp_path / "out"),
                                   report=False))
    skipped = "\n".join(result["skipped"])
    assert result["num_samples"] == 2
    assert "broken.pdf: PDF does not open" in skipped
    assert "locked.pdf: PDF does not open" in skipped  # encrypted
    assert "doc0.pdf: no page 6 (the PDF has 1)" in skipped
    assert "empty.txt has no text" in skipped
    assert "manifest.jsonl:7: not valid JSON" in skipped
    assert "unknown id 'ghost'" in skipped
    assert len(result["skipped"]) == 6
    out = tmp_path / "out"
    assert json.loads((out / "bleu.json").read_text()) == ev.bleu([refs["doc0"], refs["doc1"][:-5]],
                                                                   [refs["doc0"], refs["doc1"]])
    assert set(json.loads((out / "ter.json").read_text())) == {"score", "num_edits", "ref_length"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped"] == result["skipped"] and 0 < metrics["cer"] < 0.01
    fields = json.loads((out / "fields.json").read_text())
    assert {"invoice_number", "date", "total"} <= set(fields["per_field"])
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == ["doc0", "doc1"] and lines[0]["cer"] == 0.0


def test_predictions_file_with_missing_ids_scores_what_it_has(tmp_path):
    manifest, ids = make_manifest(tmp_path / "real")
    ref = (tmp_path / "real" / "text" / "doc1.txt").read_text(encoding="utf-8")
    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps({"id": "doc1", "prediction": ref}) + "\n" + '{"id": 3}\n', encoding="utf-8")
    result = ev.main(ev.EvalConfig(data=str(manifest), predictions=str(preds), out=str(tmp_path / "o"),
                                   report=False))
    assert result["num_samples"] == 1 and result["bleu"]["bleu"] == pytest.approx(1.0) and result["cer"] == 0
    assert any("no prediction for id 'doc0'; left out" in s for s in result["skipped"])
    assert any("preds.jsonl:2: expected string 'id' and 'prediction'" in s for s in result["skipped"])


def test_reading_order_of_engine_boxes():
    from invoice_vlm.evaluate.engines import Box, reading_order

    boxes = [Box("Total", 10, 100, 50, 112), Box("12,00 €", 300, 101, 360, 113), Box("Invoice", 10, 10, 80, 24),
             Box("No. 7", 300, 12, 340, 22), Box("Vendor GmbH", 10, 30, 120, 42)]
    assert reading_order(boxes) == "Invoice No. 7\nVendor GmbH\nTotal 12,00 €"


def test_scores_split_across_processes_are_identical():
    from invoice_vlm.bench.eval import make_pairs

    samples, ocr, _ = make_pairs(30)
    refs = [s.text for s in samples]
    serial, parallel = ev.score_all(ocr, refs, workers=1), ev.score_all(ocr, refs, workers=2)
    assert serial == parallel and serial["bleu"] == ev.bleu(ocr, refs) and serial["ter"] == ev.ter(ocr, refs)
    assert serial["chrf"] == ev.chrf(ocr, refs) and 0 < serial["ter"]["score"] < 100


def test_tesseract_engine_in_the_harness_and_compare(tmp_path):
    """An OCR engine through the same eval command: a manifest of two synthetic PDFs rendered at 200 dpi, read by
    Tesseract, scored; then two runs side by side."""
    import shutil

    from typer.testing import CliRunner

    from invoice_vlm.cli import app

    if shutil.which("tesseract") is None:
        pytest.skip("tesseract not installed (make install sets it up)")
    manifest, ids = make_manifest(tmp_path / "real")
    runner = CliRunner()
    r = runner.invoke(app, ["eval", "--engine", "tesseract", "--data", str(manifest), "--out", str(tmp_path / "t"),
                            "--limit", "1"])
    assert r.exit_code == 1, r.output  # scored and written, and the exit code says that records were left out
    assert "skipped:" in r.stderr and "broken.pdf: PDF does not open" in r.stderr
    m = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert m["engine"] == "tesseract" and m["engine_version"].startswith("tesseract 5") and m["num_samples"] == 1
    assert m["cer"] < 0.1 and m["bleu"]["bleu"] > 0.6  # a clean 200 dpi render: Tesseract reads it
    assert (tmp_path / "t" / "report.html").stat().st_size > 10_000  # with the page thumbnail
    fields = json.loads((tmp_path / "t" / "fields.json").read_text())
    assert fields["per_field"]["total"]["exact_match"] == 1.0  # found by the rule-based extractor
    # a second run: the predictions of the first, one page broken
    preds = [json.loads(x) for x in (tmp_path / "t" / "predictions.jsonl").read_text().splitlines()]
    (tmp_path / "p.jsonl").write_text(json.dumps({"id": preds[0]["id"], "prediction": preds[0]["prediction"][:40]}))
    r = runner.invoke(app, ["eval", "--predictions", str(tmp_path / "p.jsonl"), "--data", str(manifest), "--out",
                            str(tmp_path / "p"), "--no-report"])
    assert r.exit_code == 1 and (tmp_path / "p" / "metrics.json").is_file(), r.output
    r = runner.invoke(app, ["compare", str(tmp_path / "t"), str(tmp_path / "p"), "--markdown", str(tmp_path / "c.md")])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "c.md").read_text()
    assert md.startswith("| metric | t (tesseract) | p (file) |")
    bleu_row = next(line for line in md.splitlines() if line.startswith("| BLEU |"))
    assert bleu_row.split("|")[2].strip().startswith("**")  # the full reading wins
    r = runner.invoke(app, ["compare", str(tmp_path / "t"), str(tmp_path)])
    assert r.exit_code == 1 and "no metrics.json here" in r.stderr


def test_rapidocr_missing_is_one_clear_line(monkeypatch):
    import sys

    from invoice_vlm.common import InvoiceVLMError
    from invoice_vlm.evaluate.engines import make_engine

    monkeypatch.setitem(sys.modules, "rapidocr", None)  # import fails as if not installed
    with pytest.raises(InvoiceVLMError, match=r"engine rapidocr: not installed \(pip install rapidocr onnxruntime"):
        make_engine("rapidocr")


def test_default_output_folder_names_what_and_where(tmp_path):
    (tmp_path / "synth").mkdir()
    assert ev.default_out(ev.EvalConfig(data=str(tmp_path / "synth"))) == Path("runs/eval/invoice-vlm-tiny-test")
    assert ev.default_out(ev.EvalConfig(data="x/manifest.jsonl", engine="tesseract")) == Path(
        "runs/eval/tesseract-manifest")
    assert ev.default_out(ev.EvalConfig(data="x/manifest.jsonl", predictions="p/mine.jsonl")) == Path(
        "runs/eval/mine-manifest")
