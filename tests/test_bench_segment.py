"""The segmentation benchmark (invoice_vlm.bench.segment, `invoice-vlm bench segment`) and the row grouping it
shares with the OCR engines: scoring on hand-made boxes, truth from a tiny born-digital PDF, the presets' geometry."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from invoice_vlm.bench import segment as sb

# (text, x, baseline y, size) in points on a 420 x 300 pt page; the second row is two runs on one baseline
ROWS = [("ACME Supplies GmbH", 40, 262, 16), ("Invoice No. 2024-117", 40, 226, 11),
        ("Date: 03.08.2014", 250, 226, 11), ("Widget, blue 3 x 4.50", 40, 196, 11),
        ("Total due 13.50 EUR", 40, 166, 11), ("Thank you for your business.", 40, 136, 11)]
TEXT = "ACME Supplies GmbH\nInvoice No. 2024-117 Date: 03.08.2014\nWidget, blue 3 x 4.50\nTotal due 13.50 EUR\n" \
       "Thank you for your business."


def make_pdf(path: Path) -> Path:
    from reportlab.pdfgen import canvas

    path.parent.mkdir(parents=True, exist_ok=True)
    c = canvas.Canvas(str(path), pagesize=(420, 300))
    for text, x, y, size in ROWS:
        c.setFont("Helvetica", size)
        c.drawString(x, y, text)
    c.save()
    return path


def test_score_page_counts_each_case():
    truth = [(0, 0, 100, 10), (0, 20, 100, 30), (0, 40, 100, 50), (0, 60, 100, 70), (0, 80, 100, 90)]
    boxes = [(-3, -2, 103, 12),  # row 0 alone: found
             (0, 18, 100, 52),  # rows 1 and 2 in one box: both merged
             (0, 60, 50, 70), (50, 60, 100, 70),  # row 3 in two halves: split
             (200, 200, 220, 210),  # nothing there: extra
             (300, 0, 400, 10)]  # over a row left out of the truth: not extra
    got = sb.score_page(truth, boxes, left_out=[(300, 0, 400, 10)])
    assert got == {"rows": 5, "found": 1, "merged": 2, "split": 1, "missed": 1, "boxes": 6, "extra": 1}
    # a sliver through a row's middle holds none of it (less than half its height): the row is missed
    assert sb.score_page([(0, 0, 100, 20)], [(0, 8, 100, 12)]) == {
        "rows": 1, "found": 0, "merged": 0, "split": 0, "missed": 1, "boxes": 1, "extra": 1}
    assert sb.score_page(truth, [])["missed"] == 5


def test_row_boxes_group_words_in_reading_order():
    words = [(300, 101, 360, 113), (10, 100, 50, 112), (10, 10, 80, 24), (300, 12, 340, 22), (10, 30, 120, 42)]
    assert sb.row_boxes(words) == [(10, 10, 340, 24), (10, 30, 120, 42), (10, 100, 360, 113)]


def test_truth_of_a_born_digital_pdf(tmp_path):
    """Text-layer rows land on their ink: one row per baseline, tight boxes at the render's scale."""
    pdf = make_pdf(tmp_path / "pdfs" / "a.pdf")
    image, truth, left_out = sb._load(pdf, 0, 200)
    assert image.size == (1167, 834) and len(truth) == 5 and not left_out
    gray = np.asarray(image.convert("L"))
    for left, top, right, bottom in truth:
        box = gray[int(top):int(bottom), int(left):int(right)]
        assert box.min() < 80  # ink inside
        assert 10 < bottom - top < 50 and right - left > 200
    # the 16 pt heading is taller than the 11 pt rows; the second row spans both runs
    assert truth[0][3] - truth[0][1] > 1.3 * (truth[2][3] - truth[2][1])
    assert truth[1][0] < 40 * 200 / 72 + 3 and truth[1][2] > 250 * 200 / 72


@pytest.mark.parametrize("preset", ["scan", "photo"])
def test_augment_geometry_follows_the_presets(preset):
    """Where the presets move a mark is where the benchmark moves the truth (their random draws, in their order)."""
    from invoice_vlm.synth.augment import augment

    for seed in range(3):
        im = Image.new("RGB", (800, 1000), "white")
        # off the centre, which a rotation about the centre leaves in place
        ImageDraw.Draw(im).rectangle((150, 200, 189, 239), fill="black")
        out, _ = augment(im, preset, random.Random(seed))
        (left, top, right, bottom), = sb.map_boxes([(150, 200, 190, 240)], sb.augment_geometry(preset, im.size, seed))
        cx, cy = (left + right) / 2, (top + bottom) / 2
        window = np.asarray(out.convert("L"))[int(cy) - 60:int(cy) + 60, int(cx) - 60:int(cx) + 60]
        ys, xs = np.nonzero(window < 60)
        assert abs(xs.mean() + int(cx) - 60 + 0.5 - cx) < 1.5 and abs(ys.mean() + int(cy) - 60 + 0.5 - cy) < 1.5


def test_pil_rotation_maps_points_as_pillow_turns_pages():
    im = Image.new("L", (600, 400), 255)
    ImageDraw.Draw(im).rectangle((100, 50, 109, 59), fill=0)
    for angle, expand in ((2.0, False), (-1.5, True), (3.0, True)):
        turned = im.rotate(angle, resample=Image.Resampling.BILINEAR, expand=expand, fillcolor=255)
        ys, xs = np.nonzero(np.asarray(turned) < 128)
        x, y, w = sb._pil_rotation(im.size, angle, expand) @ np.array([105.0, 55.0, 1.0])
        assert abs(xs.mean() + 0.5 - x / w) < 1 and abs(ys.mean() + 0.5 - y / w) < 1


def test_bench_segment_command_on_a_pdf_folder(tmp_path, monkeypatch):
    """The command end to end on a folder of one PDF: the project's segmenter finds each row of a clean page, a
    candidate that boxes the whole page merges them all, and the scan preset's rotation is followed."""
    from typer.testing import CliRunner

    from invoice_vlm.cli import app

    make_pdf(tmp_path / "pdfs" / "a.pdf")
    monkeypatch.setitem(sb.CANDIDATES, "page", lambda im: sb.Cut([(0.0, 0.0, float(im.width), float(im.height))],
                                                                  0.0))
    runner = CliRunner()
    out = tmp_path / "seg.json"
    r = runner.invoke(app, ["bench", "segment", "--data", str(tmp_path / "pdfs"), "--candidate", "own",
                            "--candidate", "page", "--out", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    own, page = report["summary"]
    assert own["candidate"] == "own" and own["rows"] == 5 and own["found_pct"] == 100.0 and own["extra_pct"] == 0
    assert page["merged_pct"] == 100.0 and page["found_pct"] == 0
    assert report["config"]["dpi"] == 200 and report["versions"]["segmenter_version"] >= 1
    assert report["pages"]["own"][0]["id"] == "a.pdf" and report["pages"]["own"][0]["cpu_ms"] > 0
    r = runner.invoke(app, ["bench", "segment", "--data", str(tmp_path / "pdfs"), "--candidate", "own",
                            "--augment", "scan", "--seed", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    scanned = json.loads(out.read_text())
    assert abs(scanned["pages"]["own"][0]["angle"]) > 1  # seed 1 turns the page by -1.46 degrees; deskew undoes it
    # the truth follows the turn (mapped wrongly, no row is found); the heading comes out as a 5 px sliver (dust)
    assert scanned["summary"][0]["found_pct"] == 80.0
    r = runner.invoke(app, ["bench", "segment", "--data", str(tmp_path / "pdfs"), "--candidate", "nope"])
    assert r.exit_code == 1 and "known candidates are own, rapidocr" in r.stderr


def test_rapidocr_reads_in_the_transcription_convention(tmp_path):
    """PP-OCRv6 from the rapidocr wheel, offline: its lines grouped into rows as the references group them (two
    runs on one baseline become one row), and its detector's rows found by the benchmark."""
    pytest.importorskip("rapidocr")
    pytest.importorskip("onnxruntime")
    from invoice_vlm import evaluate as ev
    from invoice_vlm.evaluate.engines import make_engine

    pdf = make_pdf(tmp_path / "a.pdf")
    image, truth, _ = sb._load(pdf, 0, 150)
    engine = make_engine("rapidocr")
    assert engine.version().startswith("rapidocr 3.")
    text = engine.read(image)
    assert len(text.split("\n")) == 5 and ev.cer([text], [TEXT]) < 0.05, text
    cut = sb.rapidocr(image)
    assert sb.score_page(truth, cut.boxes)["found"] == 5
