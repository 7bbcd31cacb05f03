"""Hostile input through every entry point: the corpus of tests/hostile.py (files, dataset folders and manifests,
configs, model folders) through `predict`, `eval`, `train`, `pretrain`, `export`, `synth` and the server.

Each case: one line on stderr (or a JSON error with a 4xx status) that names the file and the problem, no
traceback, exit code 1, nothing half-written, the other inputs of the same command still processed, and the
server still healthy afterwards. Readable oddities (CMYK, 16-bit, palette, alpha, 1-bit, multi-page TIFF, a PDF
with JavaScript or a broken xref table) are read, every page of them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from hostile import (CONFIG_CASES, DATASET_CASES, FILE_CASES, MANIFEST_CASES, MODEL_CASES, PAGES, encode,
                     model_case, page_image, pdf, write_dataset, write_file_cases, write_manifest)
from invoice_vlm.cli import app

runner = CliRunner()
ERRORS = [k for k, (_, _, exp) in FILE_CASES.items() if exp != "reads"]
READS = [k for k, (_, _, exp) in FILE_CASES.items() if exp == "reads"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def error_lines(result) -> list[str]:
    assert "Traceback" not in result.output + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return [line for line in result.stderr.splitlines() if line.startswith(("error:", "skipped:"))]


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------------ files

def test_predict_answers_every_hostile_file_in_one_line_and_reads_the_rest(tmp_path, tiny_model):
    files = write_file_cases(tmp_path / "in")
    good = tmp_path / "in" / "zz-good.png"
    page_image().save(good)
    r = invoke("predict", "--model", tiny_model, "--max-new-tokens", 2, "--format", "jsonl", "--dpi", 50,
               *files.values(), good)
    assert r.exit_code == 1, r.output
    errors = error_lines(r)
    assert len(errors) == len(ERRORS), "\n".join(errors)  # one line per bad file, no more
    for key in ERRORS:
        fname, _, phrase = FILE_CASES[key]
        [line] = [e for e in errors if f"{fname}:" in e or f"{fname} page" in e]
        assert phrase in line, line
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    read = {}
    for row in rows:
        read.setdefault(Path(row["file"]).name, []).append(row["page"])
    read = {k: sorted(v) for k, v in read.items()}  # jsonl streams pages as batches finish
    assert read == {**{FILE_CASES[k][0]: list(range(1, PAGES.get(k, 1) + 1)) for k in READS}, "zz-good.png": [1]}


@pytest.mark.parametrize("key", list(FILE_CASES))
def test_server_answers_every_hostile_upload_and_stays_healthy(engine_app, key):
    fname, make, phrase = FILE_CASES[key]
    ctype = "application/pdf" if fname.endswith(".pdf") else "image/png"
    r = engine_app.post("/v1/ocr", files={"file": (fname, make(), ctype)})
    if phrase == "reads":
        assert r.status_code == 200, r.text
        assert [p["page"] for p in r.json()["pages"]] == list(range(1, PAGES.get(key, 1) + 1))
    else:
        assert 400 <= r.status_code < 500, r.text
        msg = r.json()["error"]["message"]
        assert msg.startswith(fname) and phrase in msg and "\n" not in msg, msg
    assert engine_app.get("/health").json()["status"] == "ok"


def test_eval_skips_each_hostile_page_by_name_and_scores_the_rest(tmp_path, tiny_model):
    root = write_dataset(tmp_path / "ds", n=2)
    files = write_file_cases(tmp_path / "ds" / "test", ERRORS)
    with open(root / "test" / "metadata.jsonl", "a", encoding="utf-8") as f:
        for key, path in files.items():
            f.write(json.dumps({"file_name": path.name, "id": key, "text": "x"}) + "\n")
    r = invoke("eval", "--model", tiny_model, "--data", root, "--max-new-tokens", 2, "--out", tmp_path / "ev")
    assert r.exit_code == 1, r.output  # something was left out: said, and the exit code says it too
    skipped = error_lines(r)
    assert len(skipped) == len(ERRORS), "\n".join(skipped)
    for key in ERRORS:
        fname, _, phrase = FILE_CASES[key]
        assert any(fname in s and ("does not open" in s or phrase in s) for s in skipped), (key, skipped)
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["num_samples"] == 2 and len(metrics["skipped"]) == len(ERRORS)
    assert len((tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("key", ERRORS)
def test_train_refuses_a_hostile_image_before_training(tmp_path, tiny_model, key):
    root = write_dataset(tmp_path / "ds", n=2, split="train")
    fname = write_file_cases(root / "train", [key])[key].name
    with open(root / "train" / "metadata.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"file_name": fname, "id": "bad", "text": "x"}) + "\n")
    r = invoke("train", "--data", root, "--model", tiny_model, "--output-root", tmp_path / "runs", "--name", "r",
               "--max-steps", 1)
    line = one_line_error(r)
    assert fname in line and ("image" in line or "empty" in line or "PDF" in line), line
    assert not (tmp_path / "runs" / "r" / "model").exists()


# --------------------------------------------------------------------------------- datasets and manifests

@pytest.mark.parametrize("key", list(DATASET_CASES))
def test_dataset_records_that_are_hostile_are_refused_by_train_and_skipped_by_eval(tmp_path, tiny_model, key):
    damage, phrase = DATASET_CASES[key]
    root = write_dataset(tmp_path / "ds", n=2, split="train")
    damage(root, "train")
    r = invoke("train", "--data", root, "--model", tiny_model, "--output-root", tmp_path / "runs", "--name", "r",
               "--max-steps", 1)
    line = one_line_error(r)
    assert phrase in line and "metadata.jsonl:3" in line, line
    assert not (tmp_path / "runs" / "r" / "model").exists()

    read = []
    import invoice_vlm.data as data_mod

    real_check = data_mod.check_image
    data_mod.check_image = lambda path, where=None: (read.append(Path(path).resolve()), real_check(path, where))[1]
    try:
        r = invoke("eval", "--model", tiny_model, "--data", root, "--split", "train", "--max-new-tokens", 2,
                   "--out", tmp_path / "ev", "--no-report")
    finally:
        data_mod.check_image = real_check
    assert r.exit_code == 1
    [skipped] = error_lines(r)
    assert phrase in skipped
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["num_samples"] == 2
    assert all(p.is_relative_to(root.resolve()) for p in read), read  # nothing outside the folder was opened


@pytest.mark.parametrize("key", list(MANIFEST_CASES))
def test_manifest_paths_leaving_its_folder_are_refused(tmp_path, tiny_model, key):
    make, phrase = MANIFEST_CASES[key]
    root = tmp_path / "m"
    (tmp_path / "other.pdf").write_bytes(pdf(1))
    manifest = write_manifest(root, make(root))
    r = invoke("eval", "--model", tiny_model, "--data", manifest, "--max-new-tokens", 2, "--out", tmp_path / "ev",
               "--no-report", "--dpi", 40)
    assert r.exit_code == 1
    [skipped] = error_lines(r)
    assert phrase in skipped and "manifest.jsonl:2" in skipped, skipped
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["num_samples"] == 1


def test_a_dataset_json_from_another_tool(tmp_path, tiny_model):
    root = write_dataset(tmp_path / "ds", n=2)
    (root / "dataset.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))  # COCO
    r = invoke("eval", "--model", tiny_model, "--data", root, "--max-new-tokens", 2, "--out", tmp_path / "ev",
               "--no-report")
    assert r.exit_code == 0, r.output  # read as a dataset folder; the file is not ours and is left alone
    # synth never writes into (or deletes) a folder that holds someone else's dataset
    coco = (root / "dataset.json").read_text()
    r = invoke("synth", "--out", root, "--n", 2, "--dpi", 40, "--overwrite")
    assert "dataset.json: not written by invoice-vlm synth" in one_line_error(r)
    assert (root / "dataset.json").read_text() == coco and (root / "test" / "0000.png").is_file()
    (root / "dataset.json").write_text("[1, 2")
    r = invoke("eval", "--model", tiny_model, "--data", root, "--out", tmp_path / "ev2")
    assert "dataset.json: not valid JSON" in one_line_error(r)
    assert not (tmp_path / "ev2").exists()


# ------------------------------------------------------------------------------------------------ configs

@pytest.mark.parametrize("command", ["train", "pretrain"])
@pytest.mark.parametrize("key", list(CONFIG_CASES))
def test_hostile_configs_are_refused_and_nothing_in_them_runs(tmp_path, text_dataset, key, command):
    text, phrase = CONFIG_CASES[key]
    marker = tmp_path / "MARKER"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text.replace("{marker}", str(marker)))
    args = ["--data", text_dataset] if command == "train" else []
    r = invoke(command, "--config", cfg, *args, "--name", "r")
    line = one_line_error(r)
    assert "c.yaml" in line and phrase in line, line
    assert not marker.exists() and not (Path("runs") / "r").exists()


def test_a_config_that_is_not_utf8_or_too_big(tmp_path, text_dataset):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes("seed: 1  # Grüße\n".encode("latin-1"))
    assert "not UTF-8" in one_line_error(invoke("train", "--config", cfg, "--data", text_dataset))
    cfg.write_text("seed: 1\n" + "# padding\n" * 200_000)
    assert "config too large" in one_line_error(invoke("train", "--config", cfg, "--data", text_dataset))


# ------------------------------------------------------------------------------------------------- models

@pytest.mark.parametrize("key", list(MODEL_CASES))
@pytest.mark.parametrize("command", ["predict", "eval", "export", "train"])
def test_hostile_model_folders_are_refused(tmp_path, tiny_model, text_dataset, key, command, monkeypatch):
    import pickle

    import torch

    def no_pickle(*a, **k):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    model = model_case(tiny_model, tmp_path / key, key)
    image = sorted((text_dataset / "test").glob("*.png"))[0]
    args = {"predict": ["predict", "--model", model, image],
            "eval": ["eval", "--model", model, "--data", text_dataset, "--out", tmp_path / "ev"],
            "export": ["export", "--model", model, "--out", tmp_path / "exp"],
            "train": ["train", "--model", model, "--data", text_dataset, "--output-root", tmp_path / "runs",
                      "--name", "r", "--max-steps", 1]}[command]
    line = one_line_error(invoke(*args))
    assert MODEL_CASES[key] in line and str(model) in line, line
    assert not (model / "PWNED").exists() and not Path("PWNED").exists()
    assert not (tmp_path / "exp").exists() and not (tmp_path / "ev" / "metrics.json").exists()


# ------------------------------------------------------------------------------------------------- server

@pytest.fixture(scope="module")
def engine(tiny_model):
    from invoice_vlm.infer import Predictor
    from invoice_vlm.models import load

    model, processor = load(tiny_model)
    return Predictor(model, processor, max_new_tokens=2, batch_size=8)


@pytest.fixture(scope="module")
def engine_app(engine):
    from invoice_vlm.serve import ServeConfig, create_app

    with TestClient(create_app(engine, ServeConfig(max_wait_ms=2, dpi=50), "tiny")) as c:
        yield c


def test_server_requests_that_are_hostile_get_a_json_4xx(engine):
    from invoice_vlm.serve import ServeConfig, create_app

    good = encode(page_image(), "PNG")
    with TestClient(create_app(engine, ServeConfig(max_wait_ms=2, max_upload_mb=0.5), "tiny")) as c:
        cases = {
            "wrong-content-type": c.post("/v1/ocr", files={"file": ("a.png", good, "text/plain")}),
            "no-content-type": c.post("/v1/ocr", content=good),
            "not-multipart": c.post("/v1/ocr", content=good, headers={"content-type": "image/png"}),
            "multipart-without-file": c.post("/v1/ocr", files={"other": ("a.png", good, "image/png")}),
            "declared-too-large": c.post("/v1/ocr", content=b"x" * 10, headers={"content-length": str(10**9)}),
            # no Content-Length (chunked): refused while it arrives, not after it was read whole
            "chunked-too-large": c.post("/v1/ocr", content=(b"\0" * 65536 for _ in range(64)),
                                        headers={"content-type": "multipart/form-data; boundary=x"}),
            "wrong-key-on-open-server": c.post("/v1/ocr", files={"file": ("a.png", good, "image/png")},
                                               headers={"X-API-Key": "whatever"}),
        }
        status = {k: r.status_code for k, r in cases.items()}
        assert status == {"wrong-content-type": 415, "no-content-type": 422, "not-multipart": 422,
                          "multipart-without-file": 422, "declared-too-large": 413, "chunked-too-large": 413,
                          "wrong-key-on-open-server": 200}, status
        for k, r in cases.items():
            if r.status_code != 200:
                assert set(r.json()["error"]) == {"code", "message"}, k
        # a file name with path tricks is a name in the answer, never a path
        for trick in ("../../etc/passwd.png", "/etc/shadow.png", "..\\..\\win.ini.png", "a\r\nX-Injected: 1.png"):
            r = c.post("/v1/ocr", files={"file": (trick, good, "image/png")})
            assert r.status_code == 200 and "/" not in r.json()["file"] and "\\" not in r.json()["file"]
            assert "\n" not in r.json()["file"] and "X-Injected" not in r.headers
        assert c.get("/health").status_code == 200
        metrics = c.get("/metrics").text
        assert 'status="413"' in metrics  # the guard's answers are counted


def test_api_key_is_compared_in_constant_time_and_never_logged(engine, monkeypatch, caplog, capsys):
    import logging
    import secrets

    from invoice_vlm import serve

    key = "k3y-" + secrets.token_hex(8)
    calls = []
    real = secrets.compare_digest
    monkeypatch.setattr(serve.secrets, "compare_digest", lambda a, b: (calls.append(1), real(a, b))[1])
    caplog.set_level(logging.DEBUG)
    good = encode(page_image(), "PNG")
    with TestClient(serve.create_app(engine, serve.ServeConfig(api_key=key, max_wait_ms=2), "tiny")) as c:
        f = {"file": ("a.png", good, "image/png")}
        assert c.post("/v1/ocr", files=f).status_code == 401
        assert c.post("/v1/ocr", files=f, headers={"X-API-Key": key[:-1]}).status_code == 401
        assert c.post("/v1/ocr", files=f, headers={"Authorization": f"Bearer {key}x"}).status_code == 401
        r = c.post("/v1/ocr", files=f, headers={"X-API-Key": key})
        assert r.status_code == 200
        assert key not in c.get("/metrics").text
    assert len(calls) == 3  # every key given went through compare_digest
    out = capsys.readouterr()
    assert key not in caplog.text + out.out + out.err


def _rest_of_reply(sock, head: bytes, deadline: float) -> bytes:
    """Read an HTTP reply that began with `head` until its Content-Length body has arrived or the server
    closes: under load the body can come in a later segment than the status line."""
    import time

    reply = head
    while time.monotonic() < deadline:
        headers, sep, body = reply.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", headers)
        if sep and length and len(body) >= int(length.group(1)):
            break
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            break
        if not chunk:
            break
        reply += chunk
    return reply


def test_a_stalled_upload_is_bounded_by_the_read_timeout(engine):
    import socket
    import threading
    import time

    import uvicorn

    from invoice_vlm.serve import ServeConfig, create_app
    from test_serve import free_port

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(engine, ServeConfig(read_timeout_s=0.5), "tiny"),
                                        host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.02)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /v1/ocr HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                      b"Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"")
            t0 = time.monotonic()
            answer = s.recv(4096)  # the client says no more: the server must answer by itself
            waited = time.monotonic() - t0
            answer = _rest_of_reply(s, answer, deadline=time.monotonic() + 10).decode()
        assert answer.startswith("HTTP/1.1 408") and '"timeout"' in answer, answer
        assert 0.4 < waited < 5
        import httpx

        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
    finally:
        srv.should_exit = True
        thread.join(10)


# ---------------------------------------------------------------------------------------- security defaults

def test_the_server_binds_to_localhost_unless_told(monkeypatch):
    import inspect

    from invoice_vlm import cli, serve

    assert serve.ServeConfig().host == "127.0.0.1"
    assert inspect.signature(cli.serve).parameters["host"].default.default == "127.0.0.1"
    seen = {}
    monkeypatch.setattr(serve, "main", lambda cfg: seen.setdefault("cfg", cfg))
    assert invoke("serve").exit_code == 0 and seen["cfg"].host == "127.0.0.1"


def test_upload_size_and_page_count_are_enforced_before_decoding(engine, monkeypatch):
    import pypdfium2 as pdfium

    import invoice_vlm.data as data_mod
    from invoice_vlm.serve import ServeConfig, create_app

    decoded, rendered = [], []
    real_pages, real_render = data_mod.document_pages, pdfium.PdfPage.render
    monkeypatch.setattr(data_mod, "document_pages", lambda *a, **k: (decoded.append(1), real_pages(*a, **k))[1])
    monkeypatch.setattr(pdfium.PdfPage, "render", lambda *a, **k: (rendered.append(1), real_render(*a, **k))[1])
    with TestClient(create_app(engine, ServeConfig(max_wait_ms=2, max_upload_mb=0.1, max_pages=2), "tiny")) as c:
        big = encode(page_image(), "PNG") + b"\0" * 200_000
        assert c.post("/v1/ocr", files={"file": ("a.png", big, "image/png")}).status_code == 413
        assert decoded == []
        assert c.post("/v1/ocr", files={"file": ("a.pdf", pdf(3), "application/pdf")}).status_code == 413
        assert rendered == []  # counted from the page table; no page was rendered
        assert c.post("/v1/ocr", files={"file": ("a.pdf", pdf(2), "application/pdf")}).status_code == 200
        assert len(rendered) == 2


def test_temporary_files_are_removed_on_every_path(engine, tmp_path, monkeypatch, tiny_model, text_dataset):
    import tempfile

    from invoice_vlm.serve import ServeConfig, create_app

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))
    big = encode(page_image(size=(1400, 1000)), "PNG", compress_level=0)  # > 1 MB: spooled to disk by starlette
    assert len(big) > 1024 * 1024
    with TestClient(create_app(engine, ServeConfig(max_wait_ms=2, max_upload_mb=1.0), "tiny")) as c:
        assert c.post("/v1/ocr", files={"file": ("a.png", big, "image/png")}).status_code == 413
        assert c.post("/v1/ocr", files={"file": ("a.png", big[:1_200_000], "image/png")}).status_code == 413
    with TestClient(create_app(engine, ServeConfig(max_wait_ms=2, max_upload_mb=5.0), "tiny")) as c:
        assert c.post("/v1/ocr", files={"file": ("a.png", big, "image/png")}).status_code == 200
        assert c.post("/v1/ocr", files={"file": ("a.png", big[:-5000], "image/png")}).status_code == 422
    assert invoke("eval", "--model", tiny_model, "--data", text_dataset, "--max-new-tokens", 2,
                  "--out", tmp_path / "ev", "--no-report").exit_code == 0
    r = invoke("eval", "--model", tmp_path / "nope", "--data", text_dataset, "--out", tmp_path / "ev2")
    assert r.exit_code == 1
    assert invoke("predict", "--model", tiny_model, "--max-new-tokens", 2, "--out", tmp_path / "job",
                  sorted((text_dataset / "test").glob("*.png"))[0]).exit_code == 0
    assert list(tmp.iterdir()) == []


def test_no_pickle_is_loaded_on_the_main_paths(tmp_path, tiny_model, text_dataset, monkeypatch):
    import pickle

    import torch

    def no_pickle(*a, **k):
        raise AssertionError("a pickle was loaded")

    real_load, torch_loads = torch.load, []

    def restricted_only(*a, **k):  # the Trainer's optimizer/scheduler/RNG state: PyTorch's restricted unpickler
        assert k.get("weights_only") is True, (a, k)
        torch_loads.append(a[0])
        return real_load(*a, **k)

    monkeypatch.setattr(torch, "load", restricted_only)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    image = sorted((text_dataset / "test").glob("*.png"))[0]
    assert invoke("predict", "--model", tiny_model, "--max-new-tokens", 2, image).exit_code == 0
    r = invoke("train", "--model", tiny_model, "--data", text_dataset, "--output-root", tmp_path / "runs",
               "--name", "r", "--max-steps", 2, "--set", "sft.save_strategy=steps", "--set", "sft.save_steps=1")
    assert r.exit_code == 0, r.output
    r = invoke("train", "--model", tiny_model, "--data", text_dataset, "--output-root", tmp_path / "runs",
               "--name", "r", "--max-steps", 3, "--resume")
    assert r.exit_code == 0, r.output
    assert torch_loads  # the resume did read the Trainer's state, and only with weights_only=True
    assert invoke("eval", "--model", tmp_path / "runs" / "r" / "model", "--data", text_dataset,
                  "--max-new-tokens", 2, "--out", tmp_path / "ev", "--no-report").exit_code == 0
    assert invoke("export", "--model", tmp_path / "runs" / "r", "--out", tmp_path / "exp",
                  "--eval", tmp_path / "ev").exit_code == 0


# ------------------------------------------------------------------------------- what fuzzing found (fixed)

FUZZ_DOCUMENTS = {  # scripts/fuzz.py --target images: each was a traceback (and an HTTP 500 as an upload)
    "pdf-broken-page-tree": b"%PDF-\n5 0 obj<</Pages 7 0 R/>\n7 0 obj<</Count 2/Kids/>>trailer<</Root 5 0 R>>",
    "tiff-missing-dimensions": bytes.fromhex(
        "49492a0008000000090000010400010000000c0000000101030001000000100000000301030001000000030001000000"
        "11010400010000007a0000001601040001000000080000001701040001000000c00000001c0103010000000001000000"
        "01000000000000000000ff00ff00ff00ff00ff00ff00ff00ff00"),
}


@pytest.mark.parametrize("key", list(FUZZ_DOCUMENTS))
def test_documents_found_by_fuzzing_are_one_line_errors(engine_app, key):
    from invoice_vlm.common import InvoiceVLMError
    from invoice_vlm.data import document_pages

    with pytest.raises(InvoiceVLMError, match=r"^x\.bin"):
        document_pages(FUZZ_DOCUMENTS[key], "x.bin")
    r = engine_app.post("/v1/ocr", files={"file": ("x.bin", FUZZ_DOCUMENTS[key], "application/octet-stream")})
    assert r.status_code in (415, 422), r.text


@pytest.mark.parametrize("line, phrase", [
    ("[" * 5000, "not valid JSON"),  # RecursionError
    ('{"file_name": "a.png", "text": "x", "id": ' + "1" * 5000 + "}", "not valid JSON"),  # int over 4,300 digits
    ('{"file_name": "a.png", "text": "x", "fields": "normalized"}', "'fields' must be a JSON object"),
    ('{"file_name": "a.png", "text": "x", "qa": [0]}', "each 'qa' entry"),
    ('{"file_name": "a.png", "text": "x", "meta": [1]}', "'meta' must be a JSON object"),
])
def test_records_found_by_fuzzing_are_one_line_errors(tmp_path, line, phrase):
    from invoice_vlm.common import InvoiceVLMError
    from invoice_vlm.data import read_split

    (tmp_path / "test").mkdir()
    page_image().save(tmp_path / "test" / "a.png")
    (tmp_path / "test" / "metadata.jsonl").write_text(line + "\n", encoding="utf-8")
    with pytest.raises(InvoiceVLMError, match=re.escape(phrase)) as e:
        read_split(tmp_path, "test")
    assert "metadata.jsonl:1" in str(e.value) and "\n" not in str(e.value)
