"""The HTTP service: answers equal the engine's, micro-batching, limits and errors as JSON, metrics, the web page
in headless Chromium, and the load script."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from invoice_vlm.infer import Predictor
from invoice_vlm.models import load
from invoice_vlm.serve import ServeConfig, create_app

from test_infer import pdf_bytes, page, png

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def engine(tiny_model):
    model, processor = load(tiny_model)
    return Predictor(model, processor, max_new_tokens=6, batch_size=8)


def client(engine, raise_server_exceptions: bool = True, **cfg) -> TestClient:
    return TestClient(create_app(engine, ServeConfig(**{"max_wait_ms": 5, **cfg}), "tiny"),
                      raise_server_exceptions=raise_server_exceptions)


def test_ocr_and_extract_answer_what_the_engine_reads(engine):
    images = [page("AB 12"), page("x", lines=5)]
    with client(engine) as c:
        assert c.get("/health").json()["status"] == "ok"
        r = c.post("/v1/ocr", files={"file": ("a.png", png(images[0]), "image/png")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["file"] == "a.png" and body["task"] == "ocr"
        assert [p["text"] for p in body["pages"]] == engine.predict(images[:1])
        r = c.post("/v1/extract?preview=true", files={"file": ("d.pdf", pdf_bytes(["one", "two"]), "application/pdf")})
        assert r.status_code == 200, r.text
        pages = r.json()["pages"]
        assert [p["page"] for p in pages] == [1, 2] and all("fields" in p and "json_valid" in p for p in pages)
        assert pages[0]["preview"].startswith("data:image/jpeg;base64,")
        # octet-stream is sniffed
        r = c.post("/v1/ocr", files={"file": ("b", png(images[1]), "application/octet-stream")})
        assert [p["text"] for p in r.json()["pages"]] == engine.predict(images[1:])
        assert c.get("/openapi.json").json()["paths"].keys() >= {"/v1/ocr", "/v1/extract", "/health"}
        assert c.get("/docs").status_code == 200 and "invoice-vlm" in c.get("/").text


def bomb() -> bytes:
    return png(Image.new("1", (10000, 6000), 1))


@pytest.mark.parametrize("case,status,code", [
    ("text", 415, "unsupported_media_type"),
    ("unknown-bytes", 415, "unsupported_media_type"),
    ("empty", 422, "unreadable"),
    ("truncated", 422, "unreadable"),
    ("bomb", 413, "too_large"),
    ("encrypted", 422, "unreadable"),
    ("broken-pdf", 422, "unreadable"),
    ("too-many-pages", 413, "too_large"),
    ("too-big", 413, "too_large"),
    ("no-file", 422, "invalid_request"),
    ("no-route", 404, "http_error"),
])
def test_bad_requests_get_a_json_error_and_the_server_lives_on(engine, case, status, code):
    good = png(page("AB 12"))
    files = {
        "text": ("a.txt", b"hello", "text/plain"), "unknown-bytes": ("a.bin", b"hello " * 30, "application/octet-stream"),
        "empty": ("a.png", b"", "image/png"), "truncated": ("a.png", good[: len(good) // 2], "image/png"),
        "bomb": ("a.png", bomb(), "image/png"), "encrypted": ("a.pdf", pdf_bytes(["a"], "pw"), "application/pdf"),
        "broken-pdf": ("a.pdf", b"%PDF-1.4\n" + b"\x00" * 300, "application/pdf"),
        "too-many-pages": ("a.pdf", pdf_bytes(["a", "b", "c"]), "application/pdf"),
        "too-big": ("a.png", good + b"\x00" * 300_000, "image/png"),
    }.get(case)
    with client(engine, max_pages=2, max_upload_mb=0.25) as c:
        if case == "no-route":
            r = c.get("/v2/nothing")
        else:
            r = c.post("/v1/ocr", files={"file": files} if files else {"other": ("a", b"x")})
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["code"] == code and err["message"] and "\n" not in err["message"]
        if files:
            assert err["message"].startswith(files[0]) or code in ("too_large", "unsupported_media_type")
        assert c.get("/health").status_code == 200


def test_api_key_and_timeout(engine):
    with client(engine, api_key="s3cret") as c:
        f = {"file": ("a.png", png(page("AB 12")), "image/png")}
        assert c.post("/v1/ocr", files=f).json()["error"]["code"] == "unauthorized"
        assert c.post("/v1/ocr", files=f, headers={"X-API-Key": "nope"}).status_code == 401
        assert c.post("/v1/ocr", files=f, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.post("/v1/ocr", files=f, headers={"Authorization": "Bearer s3cret"}).status_code == 200

    class Slow:  # the real engine, slowed down: the request gives up, the server does not
        def __init__(self, inner):
            self.inner = inner

        def generate_batch(self, images, prompts):
            time.sleep(1.0)
            return self.inner.generate_batch(images, prompts)

    with client(Slow(engine), timeout_s=0.3) as c:
        r = c.post("/v1/ocr", files={"file": ("a.png", png(page("AB 12")), "image/png")})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert c.get("/health").status_code == 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(engine):
    """A real uvicorn server in a thread (concurrency, the browser)."""
    import uvicorn

    port = free_port()
    app = create_app(engine, ServeConfig(max_wait_ms=300, batch_size=8), "tiny")
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app
    srv.should_exit = True
    thread.join(10)


def test_concurrent_requests_share_forward_passes(server, engine):
    import asyncio

    url, app = server
    images = [page("AB 12", lines=k % 6 + 1) for k in range(8)]
    expected = engine.predict(images)
    def hist(suffix):  # the batch-size histogram: _count = forward passes, _sum = pages
        return sum(s.value for m in app.state.metrics.batch.collect() for s in m.samples if s.name.endswith(suffix))

    count_before, pages_before = hist("_count"), hist("_sum")

    async def go():
        async with httpx.AsyncClient(timeout=60) as c:
            rs = await asyncio.gather(*(c.post(f"{url}/v1/ocr", files={"file": (f"{k}.png", png(im), "image/png")})
                                        for k, im in enumerate(images)))
        return [r.json()["pages"][0]["text"] for r in rs]

    assert asyncio.run(go()) == expected
    assert hist("_sum") - pages_before == 8
    assert hist("_count") - count_before < 8  # fewer forward passes than requests
    metrics = httpx.get(f"{url}/metrics").text
    assert 'invoice_vlm_requests_total{endpoint="/v1/ocr",status="200"}' in metrics
    assert "process_resident_memory_bytes" in metrics


@pytest.mark.skipif(not shutil.which("chromedriver") or not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="needs Debian chromium and chromium-driver (make installs them)")
def test_web_page_uploads_an_invoice_and_shows_text_and_fields(server, engine, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = server
    invoice = tmp_path / "invoice.png"
    page("INVOICE 42", lines=3).save(invoice)
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        driver.get(url + "/")
        driver.find_element(By.ID, "file").send_keys(str(invoice))
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")
                                        in ("done", "error"))
        status = driver.find_element(By.ID, "status").text
        assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", status
        assert driver.find_element(By.ID, "text").get_attribute("textContent") == engine.predict(
            [Image.open(invoice).convert("RGB")])[0]
        assert driver.find_element(By.CSS_SELECTOR, "#pages img").get_attribute("src").startswith("data:image/jpeg")
        assert driver.find_elements(By.CSS_SELECTOR, "#fields tr")  # fields, or the "no fields read" row
        assert "invoice.png: 1 page(s)" in status
    finally:
        driver.quit()


def test_load_script_reports_throughput_latency_and_memory(tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "load.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "load_test.py"), "--model", str(tiny_model),
                        "--requests", "24", "--concurrency", "8", "--warmup", "8", "--max-new-tokens", "4",
                        "--max-growth", "0.5", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    import json

    summary = json.loads(out.read_text())
    assert summary["errors"] == 0 and summary["requests"] == 24 and summary["requests_per_s"] > 0
    assert summary["p95_s"] >= summary["p50_s"] > 0 and summary["rss_mb_at_end"] > 0


def test_the_row_reader_serves_what_its_engine_reads(row_model_ctc, row_pages):
    """The shipped architecture behind the server: a row reader with a CTC head, its pages prepared by worker
    processes; its pages' text and fields are the engine's, and the workers stop with the server."""
    from invoice_vlm.data import read_split

    engine = Predictor.from_pretrained(str(row_model_ctc), device="cpu", batch_size=4, workers=2,
                                       read_in_workers=False)  # (as serve's main starts it)
    assert engine.unit is not None and engine.ctc_head is not None and engine._pool is not None
    alone = Predictor(engine.model, engine.processor, batch_size=4, ctc_head=engine.ctc_head)
    images = [Image.open(s.image).convert("RGB") for s in read_split(row_pages, "test")[:3]]
    image = images[0]
    submitted = []
    original = engine.submit_page
    engine.submit_page = lambda im: submitted.append(im.size) or original(im)
    released = []  # when the queue runs dry, the server hands freed memory back (Predictor.release_memory)
    engine.release_memory = lambda every_s=None: released.append(every_s)
    # (a 500 is an answer here; 200 ms for a batch to fill: concurrent requests share one)
    with client(engine, raise_server_exceptions=False, max_wait_ms=200) as c:
        with ThreadPoolExecutor(3) as pool:  # concurrent requests: their pages prepared as they arrive
            answers = list(pool.map(lambda im: c.post("/v1/ocr", files={"file": ("p.png", png(im), "image/png")}),
                                    images))
        assert [r.status_code for r in answers] == [200] * 3, answers[0].text
        assert [r.json()["pages"][0]["text"] for r in answers] == alone.predict(images)
        assert sorted(submitted) == sorted(im.size for im in images)  # each page went to the workers
        assert 1.0 in released
        r = c.post("/v1/ocr", files={"file": ("p.png", png(image), "image/png")})
        assert r.status_code == 200, r.text
        [p] = r.json()["pages"]
        assert p["text"] == alone.predict([image])[0] != ""
        r = c.post("/v1/extract", files={"file": ("p.png", png(image), "image/png")})
        assert r.status_code == 200 and r.json()["pages"][0].keys() >= {"text", "fields", "json_valid"}

        def failing(im):  # a page whose preparation fails (a segmenter bug) fails its own request, not its batch
            if im.convert("L").tobytes() != image.convert("L").tobytes():
                return original(im)
            bad = Future()
            bad.set_exception(RuntimeError("segmenter broke"))
            return bad

        engine.submit_page = failing
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda im: c.post("/v1/ocr", files={"file": ("p.png", png(im), "image/png")}),
                                    images))
        assert [r.status_code for r in answers] == [500, 200, 200]
        assert "segmenter broke" in answers[0].json()["error"]["message"]
        assert [r.json()["pages"][0]["text"] for r in answers[1:]] == alone.predict(images[1:])
    assert engine._pool is None
