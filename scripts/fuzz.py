"""Fuzzing, bounded in time; not part of the test run (tests/test_fuzz_server.py runs a short server pass in CI).

    python scripts/fuzz.py --target images --seconds 600      # one atheris target, 10 minutes
    python scripts/fuzz.py --target server --examples 200     # schemathesis: examples per operation and mode
    python scripts/fuzz.py --target all --seconds 300         # every target, each in its own process (make fuzz)
    python scripts/fuzz.py --target fields --reproduce runs/fuzz/crashes/fields/<sha1>.bin   # the traceback

Targets (atheris, coverage-guided; ``pip install -e .[fuzz]``):

- ``images``: bytes -> ``document_pages(data, "fuzz", dpi=50, max_pages=3)`` (Pillow and pdfium). A list of RGB
  pages or an ``InvoiceVLMError``; anything else is a crash. Pillow's plugins are instrumented too, and its
  decompression-bomb limit stays on.
- ``metadata``: bytes -> a ``metadata.jsonl`` read by ``read_split(check_images=False)`` and a ``manifest.jsonl``
  read by ``read_manifest`` (json_line and the record validators). A record that passes must be usable: text a
  string, fields and meta dicts, qa a list of dicts.
- ``fields``: bytes -> a string (UTF-8, invalid bytes as lone surrogates) through every normaliser,
  ``parse_prediction``, ``score_fields`` and ``fields_from_text``: no exception at all.

``server`` (schemathesis): the FastAPI app from ``create_app`` around a fake engine (or ``--model``), every
operation of its own OpenAPI document, positive and negative examples; a 5xx (or an exception escaping the app)
is a failure, and ``/health`` must answer afterwards.

Seeds are made here (tiny PNG/JPEG/TIFF/... and PDFs, metadata and manifest lines, field strings). A Python
exception is recorded in-process (input and traceback, one per distinct exception and place) and fuzzing goes on;
a native crash, a per-input timeout or the RSS limit stops libFuzzer, which saves the input, and the target is
restarted for the time left. Each target writes ``runs/fuzz/<target>.json`` (executions, seconds, crashes...) and
its log; crash inputs go to ``runs/fuzz/crashes/<target>/``. Exit code 1 if anything crashed or answered 5xx.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ATHERIS_TARGETS = ("images", "metadata", "fields")
TARGETS = (*ATHERIS_TARGETS, "server")
# per-input limit (libFuzzer -timeout): past it the input is a hang; fields are short strings, so a slow one is
# a regular expression backtracking
TIMEOUT_S = {"images": 30, "metadata": 10, "fields": 10}
# longest input: a few KB reach every parser; 8 KB lets JSON hold nesting or digits past
# Python's own limits (1000 levels, 4300 digits)
MAX_LEN = {"images": 65536, "metadata": 8192, "fields": 8192}
# what Pillow and invoice_vlm import lazily: instrumented only if imported inside instrument_imports
INSTRUMENT = {"images": ["invoice_vlm", "PIL"], "metadata": ["invoice_vlm"], "fields": ["invoice_vlm"]}


# ------------------------------------------------------------------------------------------------- seeds


def _image_seeds() -> dict[str, bytes]:
    from PIL import Image, ImageDraw

    def save(im, fmt, **kw) -> bytes:
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        return buf.getvalue()

    rgb = Image.new("RGB", (12, 8), "white")
    ImageDraw.Draw(rgb).line((0, 0, 11, 7), fill="black")
    pal = rgb.convert("P")
    pal.info["transparency"] = 0
    out = {
        "rgb.png": save(rgb, "PNG"), "palette-transparent.png": save(pal, "PNG"),
        "la.png": save(rgb.convert("LA"), "PNG"), "i16.png": save(rgb.convert("I;16"), "PNG"),
        "rgb.jpg": save(rgb, "JPEG", quality=50), "cmyk.jpg": save(rgb.convert("CMYK"), "JPEG"),
        "rgb.tif": save(rgb, "TIFF"), "i16.tif": save(rgb.convert("I;16"), "TIFF"),
        "rgb.bmp": save(rgb, "BMP"), "p.gif": save(pal, "GIF"),
    }
    for name, fmt, kw in (("lzw.tif", "TIFF", {"compression": "tiff_lzw"}), ("rgb.webp", "WEBP", {})):
        try:  # codecs a Pillow build may lack
            out[name] = save(rgb, fmt, **kw)
        except (OSError, KeyError):
            pass
    out.update(_pdf_seeds())
    return out


def _pdf_seeds() -> dict[str, bytes]:
    from PIL import Image
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    png = io.BytesIO()
    Image.new("RGB", (6, 4), "red").save(png, "PNG")

    def pdf(pages: list[str], image: bool = False) -> bytes:
        buf = io.BytesIO()
        # uncompressed and invariant: byte mutations then hit the object syntax, and the seeds are the same each run
        c = canvas.Canvas(buf, pagesize=(72, 60), pageCompression=0, invariant=1)
        for text in pages:
            c.drawString(4, 30, text)
            if image:
                c.drawImage(ImageReader(io.BytesIO(png.getvalue())), 40, 4, 24, 16)
            c.showPage()
        c.save()
        return buf.getvalue()

    return {"one.pdf": pdf(["Total 12,00"]), "two.pdf": pdf(["A 1", "B 2"]), "image.pdf": pdf(["x"], image=True)}


METADATA_LINE = {"file_name": "00000000.png", "id": "inv-0", "text": "ACME GmbH\nTotal 1.234,56 €",
                 "fields": {"invoice_number": "A-42", "total": "1.234,56 €", "normalized": {"total": "1234.56"}},
                 "qa": [{"question": "Total?", "answer": "1.234,56 €"}],
                 "meta": {"layout": "modern", "locale": "de_DE", "rows": [[0, 10]]}}
MANIFEST_PDF = {"id": "doc-1", "pdf": "doc.pdf", "page": 0, "text": "ref.txt", "fields": {"total": "12.00"}}
MANIFEST_IMAGE = {"id": "img-1", "image": "page.png", "text": "ref.txt"}


def _metadata_seeds() -> dict[str, bytes]:
    def lines(*rows) -> bytes:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()

    second = {**METADATA_LINE, "file_name": "00001/00000001.png", "id": "inv-1", "fields": {}, "qa": [], "meta": {}}
    return {"metadata.jsonl": lines(METADATA_LINE), "two.jsonl": lines(METADATA_LINE, second),
            "manifest-pdf.jsonl": lines(MANIFEST_PDF), "manifest-image.jsonl": lines(MANIFEST_IMAGE),
            "mixed.jsonl": lines(METADATA_LINE, MANIFEST_PDF) + b"\n" + lines(MANIFEST_IMAGE)}


FIELD_STRINGS = [
    "14. März 2025", "2025-03-14", "03/14/2025", "14-03-25", "1er mars 2025", "14 de marzo de 2025",
    "Friday, 14th March 2025", "1.234,56 €", "USD 1,234.56", "CHF 1'234.50", "(12.00)", "12,-", "\u2212 12,00",
    "1\u202f234,56\u00a0€", "€", "euro", "US$", "No. 42", "N° A-42", "#42",
    '{"invoice_number": "A-42", "date": "14.03.2025", "total": "1.234,56 €", "currency": "EUR"}',
    '```json\n{"vendor": "ACME GmbH", "date": "03/14/2025", "total": "$1,234.56"}\n```',
    '{"vendor": "ACME", "normalized": {"total": "12.00"}, "total": 12',
    '{"line_items": [[[{"qty": 1e999}]]], "tax": -0, "date": null}',
    "ACME GmbH · Hauptstr. 1 · Berlin\nRechnung Nr. 42 vom 05.03.2018\nRechnungsempfänger\nMax Muster GmbH\n"
    "Zwischensumme 100,00 €\nMwSt. 19% 19,00 €\nGesamtbetrag 119,00 €",
    "Invoice # INV-7\nBill to: Jane Doe Ltd\nInvoice Date: March 14, 2025\nDue Date: 04/13/2025\n"
    "Subtotal $1,000.00\nTax $80.00\nAmount due $1,080.00",
]


def _field_seeds() -> dict[str, bytes]:
    return {f"{i:02d}.txt": s.encode() for i, s in enumerate(FIELD_STRINGS)}


SEEDS = {"images": _image_seeds, "metadata": _metadata_seeds, "fields": _field_seeds}
# libFuzzer dictionaries: tokens that byte mutations rarely put together
DICTS = {
    "metadata": ['"file_name"', '"id"', '"text"', '"fields"', '"qa"', '"meta"', '"pdf"', '"image"', '"page"',
                 '"normalized"', '"doc.pdf"', '"ref.txt"', '"page.png"', "null", "true", "[", "{", "1e999", "-0"],
    "images": ["%PDF-1.4", "obj", "endobj", "stream", "endstream", "/MediaBox", "/Type /Page", "/Filter",
               "/Width", "/Height", "/Encrypt", "xref", "trailer", "IHDR", "IDAT", "PLTE", "tRNS", "II*\\x00",
               "MM\\x00*", "\\xff\\xd8\\xff"],
}


# --------------------------------------------------------------------------------------------- the checks


def images_check():
    from PIL import Image

    from invoice_vlm.common import InvoiceVLMError
    from invoice_vlm.data import MAX_PAGE_PIXELS, document_pages

    assert Image.MAX_IMAGE_PIXELS, "Pillow's decompression-bomb limit must stay on"

    def check(data: bytes) -> None:
        try:
            pages = document_pages(data, "fuzz", dpi=50, max_pages=3)
        except InvoiceVLMError:
            return
        assert 1 <= len(pages) <= 3, f"{len(pages)} pages"
        for k, im in pages:
            assert im.mode == "RGB" and 1 <= im.size[0] * im.size[1] <= MAX_PAGE_PIXELS, (k, im.mode, im.size)

    return check


def _check_sample(s) -> None:
    # what training and evaluation then do with a record (fields.get, rng.choice(qa)["question"], meta.get)
    assert isinstance(s.id, str) and isinstance(s.text, str), f"id {type(s.id)}, text {type(s.text)}"
    assert isinstance(s.fields, dict), f"validator passed fields of type {type(s.fields).__name__}"
    assert isinstance(s.meta, dict), f"validator passed meta of type {type(s.meta).__name__}"
    assert isinstance(s.qa, list) and all(isinstance(q, dict) for q in s.qa), f"validator passed qa {s.qa!r:.60}"


def metadata_check():
    from PIL import Image

    from invoice_vlm.common import InvoiceVLMError
    from invoice_vlm.data import read_manifest, read_split

    root = Path(tempfile.mkdtemp(prefix="fuzz-metadata-"))
    (root / "train").mkdir()
    (root / "ref.txt").write_text("ACME GmbH\nTotal 12,00\n", encoding="utf-8")
    Image.new("RGB", (8, 8), "white").save(root / "page.png")
    (root / "doc.pdf").write_bytes(_pdf_seeds()["one.pdf"])
    pages = root / "pages"

    def check(data: bytes) -> None:
        (root / "train" / "metadata.jsonl").write_bytes(data)
        try:
            for s in read_split(root, "train", check_images=False):
                _check_sample(s)
        except InvoiceVLMError:
            pass
        (root / "manifest.jsonl").write_bytes(data)
        if pages.is_dir() and len(os.listdir(pages)) > 500:  # one rendered page per fuzzed id: keep it small
            shutil.rmtree(pages)
        try:
            for s in read_manifest(root / "manifest.jsonl", pages, dpi=20):
                _check_sample(s)
        except InvoiceVLMError:
            pass

    return check


def fields_check():
    import datetime as dt

    from invoice_vlm import fields as F

    amount = re.compile(r"-?\d+\.\d\d")

    def check(data: bytes) -> None:
        text = data.decode("utf-8", "surrogateescape")  # any bytes: invalid ones become lone surrogates
        for dayfirst in (None, True, False):
            d = F.normalize_date(text, dayfirst)
            assert d is None or dt.date.fromisoformat(d).isoformat() == d, d
        a = F.normalize_amount(text)
        assert a is None or amount.fullmatch(a), a
        c = F.normalize_currency(text)
        assert c is None or re.fullmatch("[A-Z]{3}", c), c
        assert isinstance(F.normalize_text(text), str) and isinstance(F.normalize_invoice_number(text), str)
        for key in F.KEY_FIELDS:
            F.normalize_field(key, text)
        obj, ok = F.parse_prediction(text)
        assert isinstance(obj, dict) and isinstance(ok, bool), (type(obj), ok)
        F.infer_dayfirst(obj)
        F.score_fields([obj], [obj])  # a parsed prediction, and the same JSON as a reference record
        for hint in (None, "en_US"):
            assert set(F.fields_from_text(text, hint)) <= set(F.KEY_FIELDS)

    return check


CHECKS = {"images": images_check, "metadata": metadata_check, "fields": fields_check}


# ------------------------------------------------------------------------------------------ atheris worker


def crash_key(exc: BaseException) -> str:
    """Exception type and the innermost frame in invoice_vlm (else the innermost): one crash per bug."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "invoice_vlm" in f.filename.replace("\\", "/")]
    f = (ours or frames)[-1]
    return f"{type(exc).__name__} at {Path(f.filename).name}:{f.lineno} ({f.name})"


def worker(target: str, crash_dir: Path, libfuzzer_args: list[str]) -> None:
    import warnings

    import atheris

    warnings.simplefilter("ignore")  # Pillow's warnings about odd files; the bomb warning is an error where it matters
    if target == "fields":
        # not "RegEx": atheris 3.0's pattern proxy rejects search(string, pos), which fields.py uses
        atheris.enabled_hooks.add("str")
    with atheris.instrument_imports(include=INSTRUMENT[target]):
        import invoice_vlm.common  # noqa: F401
        import invoice_vlm.data  # noqa: F401
        import invoice_vlm.fields  # noqa: F401

        if target == "images":
            from PIL import Image

            Image.init()  # every format plugin, now, so they are instrumented
    check = CHECKS[target]()
    seen = {p.read_text(encoding="utf-8").splitlines()[0] for p in crash_dir.glob("*.txt")}

    def one(data: bytes) -> None:
        try:
            check(data)
        except Exception as e:  # recorded, and fuzzing goes on
            key = crash_key(e)
            if key in seen:
                return
            seen.add(key)
            sha = hashlib.sha1(data).hexdigest()
            (crash_dir / f"{sha}.bin").write_bytes(data)
            (crash_dir / f"{sha}.txt").write_text(f"{key}\n\n{traceback.format_exc()}", encoding="utf-8")
            print(f"==fuzz== new crash: {key} -> {crash_dir / sha}.bin", file=sys.stderr, flush=True)

    atheris.Setup([sys.argv[0], *libfuzzer_args], one)
    atheris.Fuzz()


def reproduce(target: str, path: Path) -> int:
    data = path.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        tempfile.tempdir = tmp  # the metadata target's scratch folder
        try:
            CHECKS[target]()(data)  # raises with the full traceback
        finally:
            tempfile.tempdir = None
    print(f"{path}: no crash")
    return 0


# ------------------------------------------------------------------------------------------ atheris parent


def _executions(log: str) -> int:
    for pattern in (r"stat::number_of_executed_units: (\d+)", r"Done (\d+) runs in", r"^#(\d+)\s"):
        found = re.findall(pattern, log, re.M)
        if found:
            return int(found[-1])
    return 0


def _need(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise SystemExit(f"error: {module} is not installed: pip install -e '.[{extra}]' (or make fuzz)") from None


def run_atheris(target: str, seconds: int, out: Path, rss_limit_mb: int, seed: int, corpus: Path | None) -> dict:
    _need("atheris", "fuzz")

    crash_dir = out / "crashes" / target
    shutil.rmtree(crash_dir, ignore_errors=True)  # the summary and this folder describe the same run
    crash_dir.mkdir(parents=True)
    # scratch (the metadata target writes two files an input) in memory where there is a tmpfs: 1.5x the inputs/s
    tmp = Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    corpus_dir = corpus or tmp / "corpus"
    corpus_dir.mkdir(parents=True, exist_ok=True)
    seeds = SEEDS[target]()
    for name, data in seeds.items():
        (corpus_dir / f"seed-{name}").write_bytes(data)
    flags = [f"-rss_limit_mb={rss_limit_mb}", f"-timeout={TIMEOUT_S[target]}", f"-max_len={MAX_LEN[target]}",
             f"-artifact_prefix={crash_dir}/", "-print_final_stats=1"]
    if target in DICTS:
        # libFuzzer's format: one quoted token a line, \" for a quote, \xNN for a byte
        (tmp / "dict").write_text("".join('"' + t.replace('"', '\\"') + '"\n' for t in DICTS[target]),
                                  encoding="utf-8")
        flags.append(f"-dict={tmp / 'dict'}")
    log_path = out / f"{target}.log"
    t0 = time.monotonic()
    executions, restarts, stops, log = 0, 0, [], []
    spent = 0.0  # fuzzing time: libFuzzer's own count for a finished run, the wall time of one it stopped
    while (left := int(seconds - spent)) >= 5 or not log:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", target, "--crash-dir", str(crash_dir),
               "--", *flags, f"-max_total_time={max(left, 1)}", f"-seed={seed + restarts}", str(corpus_dir)]
        before = set(os.listdir(crash_dir))
        t_run = time.monotonic()
        try:
            # TMPDIR: the worker's scratch files go where this process removes them (libFuzzer's exit skips atexit).
            # The timeout only guards against a hung worker: instrumenting Pillow takes minutes on a busy CPU.
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                               timeout=left + 1800, env={**os.environ, "TMPDIR": str(tmp)})
            text, rc = p.stdout, p.returncode
        except subprocess.TimeoutExpired as e:
            out = e.stdout or ""
            text, rc = out.decode(errors="replace") if isinstance(out, bytes) else out, -9
        log.append(f"$ {' '.join(cmd)}\n{text}\n[exit {rc}]\n")
        executions += _executions(text)
        done = re.findall(r"Done \d+ runs in (\d+) second", text)
        spent += int(done[-1]) if done else time.monotonic() - t_run
        if rc == 0:
            break
        artifacts = [n for n in set(os.listdir(crash_dir)) - before if re.match(r"(crash|timeout|oom|leak)-", n)]
        if not artifacts:  # the worker itself failed: no point going round again
            stops.append(f"worker exited {rc} without an artifact (see {log_path})")
            break
        stops.append(f"libFuzzer stopped on {', '.join(sorted(artifacts))}")
        restarts += 1
        if restarts >= 20:
            break
    elapsed = time.monotonic() - t0
    log_path.write_text("".join(log), encoding="utf-8")
    crashes = []
    for txt in sorted(crash_dir.glob("*.txt")):
        lines = txt.read_text(encoding="utf-8").splitlines()
        crashes.append({"kind": "exception", "key": lines[0], "last_line": lines[-1] if lines else "",
                        "input": str(txt.with_suffix(".bin"))})
    for art in sorted(crash_dir.glob("*-*")):
        if re.match(r"(crash|timeout|oom|leak)-", art.name):
            crashes.append({"kind": art.name.split("-")[0], "key": art.name, "input": str(art)})
    cov = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)", "".join(log))
    shutil.rmtree(tmp, ignore_errors=True)
    return {"target": target, "tool": "atheris", "atheris": _version("atheris"),
            "seconds": round(spent, 1), "wall_seconds": round(elapsed, 1), "max_total_time": seconds,
            "executions": executions, "executions_per_s": round(executions / spent, 1) if spent else 0.0,
            "crashes": len(crashes), "crash_list": crashes, "restarts": restarts, "stops": stops,
            # inputs slower than libFuzzer's -report_slow_units (10 s, instrumented): worth a look, not crashes
            "slow_units": sorted(str(p) for p in crash_dir.glob("slow-unit-*")),
            "coverage": dict(zip(("cov", "features", "corpus"), map(int, cov[-1]))) if cov else None,
            "rss_limit_mb": rss_limit_mb, "timeout_s": TIMEOUT_S[target], "max_len": MAX_LEN[target], "seed": seed,
            "seeds": len(seeds), "instrumented": INSTRUMENT[target], "log": str(log_path)}


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


# ------------------------------------------------------------------------------------------------- server


class FakeEngine:
    """Answers at once, without a model: the fuzzer is after the HTTP layer, decoding and parsing, not the model.
    ``extract`` answers JSON (a cut-off object on every other page), so parse_prediction runs too."""

    def __init__(self):
        self.n = 0

    def generate_batch(self, images, prompts):
        out = []
        for im, prompt in zip(images, prompts):
            self.n += 1
            if prompt == "ocr":
                out.append(f"page {im.size[0]}x{im.size[1]}\nTotal 12,00 €")
            else:
                text = json.dumps({"invoice_number": f"A-{self.n}", "total": "1.234,56 €", "date": "14.03.2025"})
                out.append(text if self.n % 2 else text[:-9])
        return out


def server_app(model: str | None = None, **cfg):
    from invoice_vlm.serve import ServeConfig, create_app

    if model:
        from invoice_vlm.infer import Predictor

        engine = Predictor.from_pretrained(model, max_new_tokens=8, batch_size=4)
    else:
        engine = FakeEngine()
    cfg = {"max_wait_ms": 1, "max_pages": 3, "max_upload_mb": 1, "dpi": 50, "timeout_s": 30, **cfg}
    return create_app(engine, ServeConfig(**cfg), model or "fake")


def fuzz_server(app, examples: int = 50, seed: int | None = None) -> dict:
    """schemathesis on ``app``'s own OpenAPI document: ``examples`` positive and as many negative examples per
    operation, each checked with not_a_server_error; then ``/health``. An exception that escapes the app (Starlette
    answers 500 and re-raises it) counts as a 5xx."""
    from collections import Counter

    _need("schemathesis", "dev")
    import hypothesis
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.python import asgi

    import logging

    logging.getLogger("python_multipart").setLevel(logging.ERROR)  # a line for each malformed part header
    t0 = time.monotonic()
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    statuses: Counter = Counter()
    per_op: dict[str, Counter] = {}
    failures: list[dict] = []
    skipped: list[str] = []
    for result in schema.get_all_operations():
        op = result.ok()
        label = f"{op.method.upper()} {op.path}"
        per_op[label] = Counter()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                strategy = op.as_strategy(generation_mode=mode)
            except Exception as e:  # e.g. no negative examples for an operation without inputs
                skipped.append(f"{label} {mode.value}: {type(e).__name__}: {e}")
                continue

            @settings(max_examples=examples, deadline=None, database=None, derandomize=seed is None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
                      verbosity=hypothesis.Verbosity.quiet)
            @given(case=strategy)
            def one(case):
                try:
                    response = case.call()
                except Exception as e:  # escaped the app: a 500 to the client
                    status, detail = 500, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                else:
                    status, detail = response.status_code, response.text[:300]
                    try:
                        case.validate_response(response, checks=[not_a_server_error])
                    except Exception:
                        status = max(status, 500)
                statuses[status] += 1
                per_op[label][status] += 1
                if status >= 500 and len(failures) < 20:
                    try:
                        curl = case.as_curl_command()
                    except Exception:
                        curl = ""
                    failures.append({"operation": label, "mode": mode.value, "status": status,
                                     "detail": detail, "curl": curl[:2000]})

            try:
                (hypothesis.seed(seed)(one) if seed is not None else one)()
            except hypothesis.errors.Unsatisfiable:  # GET /health has no input to get wrong
                skipped.append(f"{label} {mode.value}: no such examples")
    with asgi.get_client(app) as client:
        health = client.get("/health")
    healthy = health.status_code == 200 and health.json().get("status") == "ok"
    shutdown = getattr(asgi, "shutdown_lifespans", None)
    if shutdown:  # stop the app's worker (the lifespan schemathesis started)
        shutdown()
    return {"target": "server", "tool": "schemathesis", "schemathesis": schemathesis.__version__,
            "examples_per_operation_and_mode": examples, "requests": sum(statuses.values()),
            "server_errors": sum(n for s, n in statuses.items() if s >= 500),
            "crashes": sum(n for s, n in statuses.items() if s >= 500),
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "per_operation": {k: {str(s): n for s, n in sorted(v.items())} for k, v in per_op.items()},
            "failures": failures, "skipped": skipped, "healthy_after": healthy,
            "seconds": round(time.monotonic() - t0, 1), "seed": seed}


# ---------------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:  # a child: --worker TARGET --crash-dir DIR -- libFuzzer flags... corpus
        sep = argv.index("--")
        worker(argv[1], Path(argv[3]), argv[sep + 1:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--target", choices=[*TARGETS, "all"], required=True)
    ap.add_argument("--seconds", type=int, default=60, help="per atheris target (libFuzzer -max_total_time)")
    ap.add_argument("--examples", type=int, default=100, help="server: examples per operation and mode")
    ap.add_argument("--model", help="server: a model folder for a real engine (default: a fake engine)")
    ap.add_argument("--rss-limit-mb", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--corpus", type=Path, help="keep the corpus here (one target; default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "fuzz")
    ap.add_argument("--reproduce", type=Path, help="run one input through the target's check, uninstrumented")
    args = ap.parse_args(argv)
    if args.corpus and args.target not in ATHERIS_TARGETS:
        ap.error("--corpus belongs to one atheris target")
    if args.reproduce:
        return reproduce(args.target, args.reproduce)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = False
    for target in TARGETS if args.target == "all" else (args.target,):
        if target == "server":
            # its own process too, like the atheris targets: the app and its threads go away with it
            if args.target == "all":
                cmd = [sys.executable, str(Path(__file__).resolve()), "--target", "server", "--examples",
                       str(args.examples), "--seed", str(args.seed), "--out", str(args.out)]
                cmd += ["--model", args.model] if args.model else []
                failed |= subprocess.run(cmd).returncode != 0
                continue
            summary = fuzz_server(server_app(args.model), args.examples, args.seed)
            line = (f"server: {summary['requests']} requests in {summary['seconds']} s, "
                    f"{summary['server_errors']} 5xx, healthy after: {summary['healthy_after']}")
        else:
            summary = run_atheris(target, args.seconds, args.out, args.rss_limit_mb, args.seed, args.corpus)
            line = (f"{target}: {summary['executions']} executions in {summary['seconds']} s "
                    f"({summary['executions_per_s']}/s), {summary['crashes']} crashes")
        summary["command"] = f"python scripts/fuzz.py {' '.join(argv)}"
        (args.out / f"{target}.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n",
                                                 encoding="utf-8")
        print(line, flush=True)
        for c in summary.get("crash_list", []) + summary.get("failures", []):
            print("   ", json.dumps(c, ensure_ascii=False)[:400], flush=True)
        failed |= summary["crashes"] > 0 or not summary.get("healthy_after", True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
