"""`invoice-vlm bench files` (invoice_vlm.bench.files): the whole predict command against tesseract per file, on a
manifest's pages rendered to images."""

from __future__ import annotations

import json
import os

import pytest

from tests.test_bench_segment import TEXT, make_pdf


@pytest.mark.slow
def test_bench_files_times_the_whole_command_and_tesseract_on_the_same_images(tmp_path):
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
    rows = bench_files(str(manifest), limit=0, dpi=100, workers=[0, -1], model=str(model), decode=["auto"])
    assert [r["variant"] for r in rows][1:] == ["invoice-vlm predict --decode auto --workers 0",
                                               f"invoice-vlm predict --decode auto --workers -1 (one a core: "
                                               f"{os.cpu_count()})"]
    assert rows[0]["variant"].startswith("tesseract FILE - (")
    assert all(r["pages"] == 2 and r["seconds"] > 0 for r in rows)
    assert rows[0]["cer"] < 0.2  # tesseract reads the clean page
    assert rows[1]["cer"] == rows[2]["cer"] > 0.5  # a random model reads nothing, the same with or without workers
    assert rows[1]["vs_tesseract"] == round(rows[0]["seconds"] / rows[1]["seconds"], 2)
