"""schemathesis against the server's own OpenAPI document, a bounded number of examples (scripts/fuzz.py
--target server runs more): no 5xx, and the server answers /health afterwards. A canary shows the same run
catches a 500."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from invoice_vlm import serve

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("fuzz_script", ROOT / "scripts" / "fuzz.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_server_errors_on_generated_requests(fuzz):
    summary = fuzz.fuzz_server(fuzz.server_app(), examples=20)
    assert summary["requests"] >= 60, summary  # 20 positive and 20 negative on each upload endpoint
    assert summary["server_errors"] == 0, summary["failures"]
    assert summary["healthy_after"]
    # the generated uploads got past the request validation to the type check and the decoder
    assert {"415", "422"} <= set(summary["per_operation"]["POST /v1/ocr"]), summary["per_operation"]


def test_the_same_run_catches_a_500(fuzz, monkeypatch):
    def sniff_without_guard(data: bytes) -> bool:  # _looks_like_image as it would be without its try/except
        import io

        from PIL import Image

        return bool(Image.open(io.BytesIO(data)).format)

    monkeypatch.setattr(serve, "_looks_like_image", sniff_without_guard)
    summary = fuzz.fuzz_server(fuzz.server_app(), examples=5)
    assert summary["server_errors"] > 0 and summary["failures"][0]["status"] == 500
    assert summary["healthy_after"]
