"""`invoice-vlm bench files` (invoice_vlm.bench.files): the whole predict command against tesseract per file, on a
manifest's pages rendered to images."""

from __future__ import annotations

import json
import os

import pytest

from tests.test_bench_segment import TEXT, make_pdf


@pytest.mark.slow
def test_bench_files_times_the_whole_command_and_tesseract_on_the_same_images(tmp_path, monkeypatch):
    import types

    import invoice_vlm.bench.files as bench
    from invoice_vlm.bench.files import bench_files
    from invoice_vlm.models import create_row_model
    from conftest import SMALL_ROWS

    for k in range(2):
        make_pdf(tmp_path / "pdf" / f"p{k}.pdf")
        (tmp_path / "text").mkdir(exist_ok=True)
        (tmp_path / "text" / f"p{k}.txt").write_text(TEXT)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"p{k}", "pdf": f"pdf/p{k}.pdf", "page": 0,
                                            "text": f"text/p{k}.txt"}) + "\n" for k in range(2)))
    model = create_row_model(tmp_path / "model", SMALL_ROWS)
    # a clock that reads what the test says, so the ratios are known: each run is timed by a start and an end
    clock = iter([100.0, 101.2549, 200.0, 214.74, 300.0, 303.2049])
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    rows = bench_files(str(manifest), limit=0, dpi=100, workers=[0, -1], model=str(model), decode=["auto"])
    assert [r["variant"] for r in rows][1:] == ["invoice-vlm predict --decode auto --workers 0",
                                               f"invoice-vlm predict --decode auto --workers -1 (one a core: "
                                               f"{os.cpu_count()})"]
    assert rows[0]["variant"].startswith("tesseract FILE - (")
    assert [r["seconds"] for r in rows] == [1.25, 14.74, 3.2]
    assert [r["pages_per_s"] for r in rows] == [1.594, 0.136, 0.624]
    assert all(r["pages"] == 2 for r in rows)
    assert rows[0]["cer"] < 0.2  # tesseract reads the clean page
    assert rows[1]["cer"] == rows[2]["cer"] > 0.5  # a random model reads nothing, the same with or without workers
    # the ratios come from the unrounded times (1.2549 / 14.74 = 0.0851), not the rounded ones (1.25 / 14.74 = 0.0848)
    assert [r["vs_tesseract"] for r in rows] == [1.0, 0.09, 0.39]
