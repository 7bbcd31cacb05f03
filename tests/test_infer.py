"""The inference engine and ``invoice-vlm predict``: batched text equals one-generate-per-page text, order, int8,
PDFs and pages, and every kind of bad input as one line naming the file."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from invoice_vlm.cli import app
from invoice_vlm.common import InvoiceVLMError
from invoice_vlm.data import document_pages, parse_pages, read_split, to_rgb
from invoice_vlm.infer import Predictor, ink, naive_predict, quantize_int8
from invoice_vlm.models import load, row_batch
from invoice_vlm.rows import segment

runner = CliRunner()


def page(text: str, size=(160, 200), lines: int = 1) -> Image.Image:
    im = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(im)
    for k in range(lines):
        d.text((8, 10 + 14 * k), text, fill="black")
    return im


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def pdf_bytes(texts: list[str], encrypt: str | None = None) -> bytes:
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=(200, 240), encrypt=encrypt)
    for t in texts:
        c.drawString(20, 200, t)
        c.showPage()
    c.save()
    return buf.getvalue()


@pytest.fixture(scope="module")
def engine(tiny_model):
    model, processor = load(tiny_model)
    return model, processor


def test_batched_engine_gives_the_same_greedy_text_as_one_generate_per_page(engine):
    model, processor = engine
    images = [page("AB 12", lines=k) for k in range(1, 6)] + [page("x", size=(90, 300))]
    naive = [naive_predict(model, processor, im, max_new_tokens=10) for im in images]
    pred = Predictor(model, processor, max_new_tokens=10, batch_size=4, window=2)
    assert pred.predict(images) == naive
    assert pred.stats["batches"] == 2 and pred.stats["pages"] == 6


def test_min_new_tokens_holds_back_the_end_token(engine):
    model, processor = engine
    pred = Predictor(model, processor, max_new_tokens=7, min_new_tokens=7, batch_size=2)
    texts = pred.predict([page("AB 12"), page("x", lines=3)])
    assert pred.stats["new_tokens"] == 14
    assert texts == [naive_predict(model, processor, im, max_new_tokens=7, min_new_tokens=7)
                     for im in (page("AB 12"), page("x", lines=3))]


def test_stream_sorts_by_text_amount_and_predict_keeps_input_order(engine):
    model, processor = engine
    images = [page("AB 12", lines=k) for k in (1, 9, 3, 12)]
    assert ink(images[3]) > ink(images[1]) > ink(images[2]) > ink(images[0])
    pred = Predictor(model, processor, max_new_tokens=4, batch_size=2, window=2)
    keys = [k for k, _ in pred.predict_stream(enumerate(images))]
    assert keys == [3, 1, 2, 0]  # most text first: the long pages share a batch
    texts = dict(Predictor(model, processor, max_new_tokens=4, batch_size=1).predict_stream(enumerate(images)))
    assert pred.predict(images) == [texts[k] for k in range(4)]


def test_int8_quantises_the_linear_layers_and_still_generates(engine, tiny_model):
    import torch

    model, processor = load(tiny_model)
    q = quantize_int8(model)
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    assert any(isinstance(m, DynamicLinear) for m in q.modules())
    assert not any(type(m) is torch.nn.Linear for m in q.modules())
    out = Predictor(q, processor, max_new_tokens=6).predict([page("AB 12")])
    assert len(out) == 1 and isinstance(out[0], str)
    with pytest.raises(InvoiceVLMError, match="CPU only"):
        Predictor.from_pretrained(str(tiny_model), device="cuda", quantize="int8")



def test_a_model_reads_in_bf16_where_the_cpu_computes_in_it(monkeypatch, tiny_model):
    """bf16 on a GPU and on a CPU with bf16 arithmetic (AVX512-BF16 or AMX), fp32 on other CPUs (emulated bf16 is
    slower) and under int8; ``dtype`` given wins. Eval records the dtype it read in."""
    import torch

    from invoice_vlm.infer import default_dtype

    assert default_dtype("cuda") == default_dtype("cuda:1") == "bf16"
    for avx512, amx, want in ((False, False, "fp32"), (True, False, "bf16"), (False, True, "bf16")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert default_dtype("cpu") == want
    assert Predictor.from_pretrained(str(tiny_model), device="cpu").model.dtype == torch.bfloat16
    assert Predictor.from_pretrained(str(tiny_model), device="cpu", dtype="fp32").model.dtype == torch.float32
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert Predictor.from_pretrained(str(tiny_model), device="cpu").model.dtype == torch.float32

def test_images_of_every_mode_become_rgb_on_white():
    ink_grey = 40
    base = Image.new("L", (40, 20), 255)
    ImageDraw.Draw(base).rectangle((5, 5, 20, 15), fill=ink_grey)
    # 16-bit: scaled, not clipped to white
    im16 = Image.fromarray((np.asarray(base, dtype=np.uint16) * 257).astype(np.uint16))
    assert im16.mode.startswith("I;16") or im16.mode == "I"
    assert to_rgb(im16).getpixel((10, 10)) == (ink_grey,) * 3 and to_rgb(im16).getpixel((30, 2)) == (255,) * 3
    # transparent paper: white, not black
    rgba = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).rectangle((5, 5, 20, 15), fill=(0, 0, 0, 255))
    assert to_rgb(rgba).getpixel((30, 2)) == (255, 255, 255) and to_rgb(rgba).getpixel((10, 10)) == (0, 0, 0)
    # palette with a transparent index, CMYK
    pal = rgba.convert("P")
    pal.info["transparency"] = pal.getpixel((30, 2))
    assert to_rgb(pal).getpixel((30, 2)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (10, 10), (0, 0, 0, 0))
    assert to_rgb(cmyk).getpixel((5, 5)) == (255, 255, 255)
    for im in (im16, rgba, pal, cmyk):
        buf = io.BytesIO()
        im.save(buf, "TIFF" if im.mode == "CMYK" else "PNG")
        [(k, got)] = document_pages(buf.getvalue(), "x")
        assert k == 1 and got.mode == "RGB"


@pytest.mark.parametrize("case,match", [
    ("empty", "empty file"),
    ("truncated", "image does not open"),
    ("garbage", "image does not open"),
    ("bomb", "image too large"),
    ("encrypted", "PDF does not open"),
    ("broken-pdf", "PDF does not open"),
    ("page-past-end", "no page 3"),
    ("too-many-pages", "at most 1 per document"),
])
def test_bad_documents_are_one_line_naming_the_file(case, match):
    good = png(page("AB 12"))
    data = {
        "empty": b"", "truncated": good[:len(good) // 2], "garbage": b"hello, this is not an invoice\n" * 10,
        "bomb": png(Image.new("1", (10000, 6000), 1)), "encrypted": pdf_bytes(["a"], encrypt="secret"),
        "broken-pdf": b"%PDF-1.7\n" + b"\x00garbage" * 50, "page-past-end": pdf_bytes(["a", "b"]),
        "too-many-pages": pdf_bytes(["a", "b"]),
    }[case]
    kwargs = {"page-past-end": {"pages": [3]}, "too-many-pages": {"max_pages": 1}}.get(case, {})
    with pytest.raises(InvoiceVLMError, match=match) as e:
        document_pages(data, f"{case}.bin", **kwargs)
    assert str(e.value).startswith(f"{case}.bin") and "\n" not in str(e.value)


def test_pdf_pages_and_page_spec():
    pages = document_pages(pdf_bytes(["one", "two", "three"]), "x.pdf", pages=[2, 3], dpi=72)
    assert [k for k, _ in pages] == [2, 3] and pages[0][1].size == (200, 240)
    assert parse_pages("1-3,5,2") == [1, 2, 3, 5] and parse_pages(None) is None
    for bad in ("0", "3-1", "a", "1-"):
        with pytest.raises(InvoiceVLMError, match="--pages"):
            parse_pages(bad)


def test_predict_reads_folders_and_pdfs_streams_jsonl_and_reports_bad_files(tmp_path, tiny_model, engine):
    model, processor = engine
    docs = tmp_path / "docs"
    docs.mkdir()
    page("AB 12").save(docs / "a.png")
    page("x", lines=4).save(docs / "b.jpg")
    (docs / "c.pdf").write_bytes(pdf_bytes(["one", "two"]))
    (docs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 40)
    (docs / "notes.txt").write_text("ignored: not an image suffix")
    missing = tmp_path / "missing.png"
    r = runner.invoke(app, ["predict", "--model", str(tiny_model), "--max-new-tokens", "5", "--format", "jsonl",
                            "--batch-size", "2", str(docs), str(missing)])
    assert r.exit_code == 1, r.output
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and any("missing.png: file not found" in e for e in errors)
    assert any("broken.png: image does not open" in e for e in errors)
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert sorted((r_["file"].rsplit("/", 1)[-1], r_["page"]) for r_ in rows) == [
        ("a.png", 1), ("b.jpg", 1), ("c.pdf", 1), ("c.pdf", 2)]
    pred = Predictor(model, processor, max_new_tokens=5)
    a = next(r_ for r_ in rows if r_["file"].endswith("a.png"))
    assert a["text"] == pred.predict([page("AB 12")])[0] and a["task"] == "ocr"

    r = runner.invoke(app, ["predict", "--model", str(tiny_model), "--max-new-tokens", "3", "--format", "json",
                            "--task", "extract", "--pages", "2", str(docs / "c.pdf")])
    assert r.exit_code == 0, r.output
    [row] = json.loads(r.stdout)
    assert row["page"] == 2 and row["task"] == "extract" and "fields" in row and "json_valid" in row

    r = runner.invoke(app, ["predict", "--model", str(tiny_model), "--format", "yaml", str(docs / "a.png")])
    assert r.exit_code == 1 and "--format must be" in r.stderr


def test_bench_predict_compares_with_naive_and_checks_the_text(monkeypatch, tiny_model):
    from invoice_vlm.bench import predict as ib

    monkeypatch.setattr(ib, "bench_pages", lambda n, **kw: [(page("AB 12", lines=k % 4 + 1), "AB 12")
                                                            for k in range(n)])
    rows = ib.bench(model=str(tiny_model), n=6, batch_size=3, max_new_tokens=6, min_new_tokens=6, tesseract=True)
    variants = [r["variant"] for r in rows]
    assert variants[:2] == ["naive (generate per page)", "engine"] and variants[2].startswith("tesseract (")
    assert rows[1]["identical"] == "6/6" and rows[1]["pages_per_s"] > 0 and rows[1]["p95_s"] >= rows[1]["p50_s"]
    assert all(0 <= r["cer"] for r in rows) and rows[0]["cer"] == rows[1]["cer"]  # the same text, the same CER
    # the naive way on the first pages only (--naive-pages: on a GPU it would take most of an hour): the ratios are
    # of pages/s, the same-text count over those pages
    rows = ib.bench(model=str(tiny_model), n=6, batch_size=3, max_new_tokens=6, min_new_tokens=6, naive_pages=2)
    naive, engine = rows
    assert naive["pages"] == 2 and engine["pages"] == 6 and engine["identical"] == "2/2"
    assert engine["vs_naive"] == pytest.approx(engine["pages_per_s"] / naive["pages_per_s"], rel=0.01, abs=0.01)


def test_bench_predict_on_a_device_with_its_row_batch_and_a_missing_gpu_as_one_line(monkeypatch, row_model_ctc,
                                                                                     tmp_path):
    """``bench predict --device --row-batch-size`` (the GPU check runs them on a GPU): the engines read with that
    row batch on that device; a device that is not there is one line, not a traceback."""
    from invoice_vlm.bench import predict as ib
    from invoice_vlm.infer import Predictor

    monkeypatch.setattr(ib, "bench_pages", lambda n, **kw: [(page("AB 12", lines=k % 3 + 1), "AB 12")
                                                            for k in range(n)])
    sizes = []
    original = Predictor.read_rows
    monkeypatch.setattr(Predictor, "read_rows", lambda self, rows: sizes.append(self.row_batch_size)
                        or original(self, rows))
    rows = ib.bench(model=str(row_model_ctc), n=3, batch_size=2, max_new_tokens=4, device="cpu", row_batch_size=5,
                    prep_workers=2)
    assert [r["variant"] for r in rows][-1] == "engine, 2 worker processes reading"  # (in the workers: not seen)
    # the engines' in this process, after the naive row-at-a-time baseline's 3 pages (the workers' are their own)
    assert len(sizes) > 3 and set(sizes[:3]) == {1} and set(sizes[3:]) == {5}
    if not torch.cuda.is_available():
        r = runner.invoke(app, ["bench", "predict", "--model", str(row_model_ctc), "--n", "1", "--device", "cuda"])
        assert r.exit_code == 1 and "device cuda: no CUDA GPU is usable here" in r.stderr
        assert "Traceback" not in r.stderr


def rows_read_at_batches(pred, pages, sizes) -> tuple[list, dict[int, list[str]]]:
    """The rows of two test pages as the engine cuts them, and their texts read at each row batch size."""
    from invoice_vlm.rows import page_rows

    rows = [r for s in read_split(pages, "test")[:2] for r in page_rows(Image.open(s.image).convert("RGB"), pred.unit)]
    texts = {}
    for size in sizes:
        pred.row_batch_size = size
        texts[size] = pred.read_rows(rows)
    return rows, texts


def test_ctc_head_reads_rows_in_one_pass_whatever_their_batch(row_model, row_model_ctc, row_pages):
    """A row reader with ctc_head.safetensors reads with the head (no generate call), the same texts at row batches
    of 1, 7 and 1024; ``decode=generate`` uses the decoder; ``decode=ctc`` needs a head."""
    from invoice_vlm.infer import Predictor

    pred = Predictor.from_pretrained(str(row_model_ctc), device="cpu", max_new_tokens=4, decode="ctc")
    assert pred.ctc_head is not None and pred.ctc_head.frames == 2 and pred.decode == "ctc"
    pred.model.generate = None  # the CTC read-out must not generate
    rows, texts = rows_read_at_batches(pred, row_pages, (1, 7, 1024))
    assert len(rows) > 20 and sum(len(t) for t in texts[1]) > 2 * len(rows)
    assert texts[7] == texts[1] and texts[1024] == texts[1]
    # the best path by hand: argmax per frame over the row's own columns, repeats collapsed, blanks dropped
    batch = row_batch(rows[:1], None, pred.processor.tokenizer, pred.unit, pred.model.config.image_token_index)
    batch["pixel_values"] = batch["pixel_values"].to(pred.model.dtype)  # bf16 on a CPU with bf16 arithmetic
    from invoice_vlm.models import row_model_inputs

    with torch.no_grad():
        tokens, _ = row_model_inputs(pred.model, batch)
        best = pred.ctc_head.logits(tokens)[0].argmax(-1).tolist()
    blank = pred.ctc_head.blank
    ids = [t for i, t in enumerate(best) if t != blank and (i == 0 or t != best[i - 1])]
    assert pred.processor.tokenizer.decode(ids).strip() == texts[1][0]
    generated = Predictor.from_pretrained(str(row_model_ctc), device="cpu", max_new_tokens=4, decode="generate")
    assert generated.ctc_head is None and len(generated.read_rows(rows[:3])) == 3
    with pytest.raises(Exception, match="decode ctc needs a row reader with a CTC head"):
        Predictor.from_pretrained(str(row_model), decode="ctc")


def read_twice(pred, images) -> tuple[list[str], list[str]]:
    """``predict``'s texts and ``predict_stream``'s (in input order), then the predictor's workers stopped."""
    try:
        texts = pred.predict(images)
        streamed = dict(pred.predict_stream((f"p{k}", im) for k, im in enumerate(images)))
    finally:
        pred.close()
    return texts, [streamed[f"p{k}"] for k in range(len(images))]


def test_on_a_cpu_worker_processes_read_whole_batches_of_pages_with_their_own_model(row_model_ctc, row_pages):
    """``workers`` on a CPU (``infer.readers``): each worker loads the model itself, started before the caller's
    model loads, and reads whole batches of grey pages; the texts and their order are those of one process, and
    the workers' counters are the caller's."""
    from invoice_vlm.infer import Predictor

    images = [Image.open(s.image).convert("RGB") for s in read_split(row_pages, "test")]
    # (the head alone, told to read in the workers: a random decoder writes every row to its budget, minutes of
    # this test for nothing it checks)
    alone = Predictor.from_pretrained(str(row_model_ctc), device="cpu", batch_size=4, decode="ctc")
    pooled = Predictor.from_pretrained(str(row_model_ctc), device="cpu", batch_size=2, workers=2, decode="ctc",
                                       read_in_workers=True)
    assert pooled._readers is not None and len(pooled._readers) == 2 and pooled._pool is None
    given = []
    original = pooled._readers.submit
    pooled._readers.submit = lambda ims, prompt, worker, settings: (given.append(([im.mode for im in ims], worker))
                                                                    or original(ims, prompt, worker, settings))
    # a page's preparation alone (submit_page, as the server asks it) goes to a reading worker too
    from invoice_vlm.rows import page_rows

    prepared = pooled.submit_page(images[0]).result()
    expected = page_rows(images[0].convert("L"), pooled.unit)
    assert len(prepared) == len(expected) > 0 and all(np.array_equal(a, b) for a, b in zip(prepared, expected))
    texts, streamed = read_twice(pooled, images)
    assert pooled._readers is None and sum(map(len, texts)) > 0
    assert texts == alone.predict(images) == streamed
    assert [m for modes, _ in given for m in modes] == ["L"] * 2 * len(images)  # grey: a third of the bytes
    assert all(1 <= len(modes) <= 2 for modes, _ in given)  # batches of at most batch_size pages (``piece``)
    assert pooled.stats["pages"] == 2 * len(images) and pooled.stats["prepare_seconds"] > 0  # the workers' counts


def test_workers_that_read_take_the_settings_a_caller_changes_after_the_start(row_model_ctc, row_pages):
    """eval sets ``max_new_tokens`` once the model has loaded: the workers read with the caller's settings as they
    are at each batch. Here ``row_batch_size``, which shows in the counters the workers send back: one forward pass
    a row, as in one process."""
    from invoice_vlm.infer import Predictor

    images = [Image.open(s.image).convert("RGB") for s in read_split(row_pages, "test")][:2]
    alone = Predictor.from_pretrained(str(row_model_ctc), device="cpu", decode="ctc", row_batch_size=1)
    pooled = Predictor.from_pretrained(str(row_model_ctc), device="cpu", decode="ctc", workers=2,
                                       read_in_workers=True)
    try:
        pooled.row_batch_size = 1
        texts = pooled.predict(images)
    finally:
        pooled.close()
    assert texts == alone.predict(images)
    assert pooled.stats["batches"] == alone.stats["batches"] > 2 * len(images)


def test_the_workers_read_on_a_cpu_unless_the_head_reads_alone_or_told_not_or_for_few_pages(row_model_ctc):
    from invoice_vlm.infer import Predictor

    # (decode, read_in_workers, pages the caller will read, workers that read): told of 16 pages, two batches, the
    # workers only prepare; of 32, four batches, two of the three workers read (two batches a worker at least)
    for decode, told, pages, readers in [("auto", None, None, 3), ("ctc", None, None, 0), ("auto", False, None, 0),
                                         ("auto", None, 16, 0), ("auto", None, 32, 2)]:
        p = Predictor.from_pretrained(str(row_model_ctc), device="cpu", workers=3, decode=decode, batch_size=8,
                                      read_in_workers=told, pages=pages)
        try:
            assert p.reads_in_workers == bool(readers) and (p._pool is None) == bool(readers), (decode, told, pages)
            assert len(p._readers or []) == readers
        finally:
            p.close()


def test_a_free_worker_takes_its_share_of_the_end_of_a_stream():
    """Guided self-scheduling: its even share of the pages left and of those the others are still reading, at most
    a batch, at least a page; half that share (factoring) once batches have read at uneven seconds a page."""
    from invoice_vlm.infer.readers import UNEVEN, piece

    assert piece(32, [0, 0], 16) == 16 and piece(16, [16, 0], 16) == 16  # 32 pages, 2 workers: 16 each
    assert piece(16, [8, 0], 8) == 8 and piece(4, [8, 0], 8) == 4  # a batch at most; all 4 beside the other's 8
    assert piece(4, [0, 0, 0, 0], 16) == 1 and piece(1, [0, 9], 16) == 1
    # uneven pages: the last 8 beside the other's 8 go in pieces of 4, 2, 1
    assert piece(8, [0, 8], 8, spread=UNEVEN * 0.99) == 8 and piece(8, [0, 8], 8, spread=UNEVEN) == 4
    assert piece(4, [4, 0], 8, spread=2.0) == 2 and piece(1, [0, 2], 8, spread=2.0) == 1


def test_the_end_of_a_stream_goes_in_smaller_pieces_once_batches_read_unevenly():
    """The pool learns each batch's seconds a page from the worker's own counters, and shares the end of a stream
    by their spread (``piece``): pages given out as the workers come free, in input order, none lost."""
    from concurrent.futures import Future

    from invoice_vlm.infer import readers as rd

    pool = rd.ReaderPool.__new__(rd.ReaderPool)  # (no processes: submit is replaced below)
    import threading

    pool.pools, pool._loads, pool._rates, pool._changed = [None, None], [0, 0], [], threading.Condition()
    given = []
    seconds = iter([1.0, 3.0] + [1.0] * 20)  # the second batch reads at 3 s a page, the others at 1

    def submit(images, prompt, worker, settings=None):
        f = Future()
        with pool._changed:
            pool._loads[worker] += len(images)
        given.append(len(images))
        texts = [f"page {im}" for im in images]
        per_page = next(seconds)
        with pool._changed:
            pool._loads[worker] -= len(images)
            pool._rates.append(per_page)
            pool._changed.notify_all()
        f.set_result((texts, {"pages": len(images), "prepare_seconds": 0.0, "generate_seconds": per_page}))
        return f

    pool.wait_ready = lambda: None
    pool.submit = submit
    stats: dict = {}
    out = list(pool.stream(((k, _Grey(k)) for k in range(20)), "ocr", 4, stats))
    assert [k for k, _ in out] == list(range(20)) and out[3][1] == "page 3" and stats["pages"] == 20
    # 12 pages in full batches of 4 while more were coming (4 + 8 ahead), then the last 8: after a batch at 3 s a page
    # beside batches at 1, in pieces of half a share (2, 2, 1, 1, 1, 1) rather than whole ones (4, 2, 1, 1)
    assert given[:3] == [4, 4, 4] and sum(given) == 20 and given[3:] == [2, 2, 1, 1, 1, 1]


class _Grey(int):
    """A stand-in page: ``convert`` gives itself (the pool sends pages grey)."""

    def convert(self, mode):
        return self


def test_a_reader_whose_model_will_not_load_says_why():
    from invoice_vlm.infer.readers import ReaderPool

    readers = ReaderPool(1, "/nonexistent/model-folder", {}, cores=1)
    try:
        with pytest.raises(Exception, match="nonexistent/model-folder"):
            readers.wait_ready()
    finally:
        readers.close()


def test_pages_prepared_by_worker_processes_read_the_same(row_model_ctc, row_pages):
    """``workers`` on a GPU, or the server (``read_in_workers=False``): deskew, segment and crop run in a pool of
    processes beside the model, started before the model loads, and a stream reads one batch while the workers
    prepare the next; the texts and their order are those of the one-process engine."""
    from invoice_vlm.infer import Predictor

    images = [Image.open(s.image).convert("RGB") for s in read_split(row_pages, "test")]
    alone = Predictor.from_pretrained(str(row_model_ctc), device="cpu", batch_size=4)
    pooled = Predictor.from_pretrained(str(row_model_ctc), device="cpu", batch_size=2, workers=2,
                                       read_in_workers=False)
    assert pooled._pool is not None and pooled._readers is None  # started with the model, before any page
    submitted = []
    original = pooled._pool.submit
    pooled._pool.submit = lambda fn, im, *a: submitted.append(im.mode) or original(fn, im, *a)
    texts, streamed = read_twice(pooled, images)
    assert pooled._pool is None and sum(map(len, texts)) > 0
    assert texts == alone.predict(images) == streamed
    assert submitted == ["L"] * 2 * len(images)  # the workers get grey pages: a third of the bytes


@pytest.mark.parametrize("read_in_workers", [True, False], ids=["workers-read", "workers-prepare"])
def test_a_page_that_fails_while_workers_prepare_stops_the_stream_with_its_error(row_model_ctc, row_pages,
                                                                                 read_in_workers):
    """The pages are taken from the caller's iterator in a thread beside the model: an error there (a file that
    will not open) reaches the caller as raised, after the pages before it were read, and nothing hangs."""
    from invoice_vlm.infer import Predictor

    images = [Image.open(s.image).convert("RGB") for s in read_split(row_pages, "test")][:3]

    def pages():
        yield from enumerate(images)
        raise InvoiceVLMError("broken.pdf: not a PDF")

    pooled = Predictor.from_pretrained(str(row_model_ctc), device="cpu", batch_size=1, workers=2, decode="ctc",
                                       read_in_workers=read_in_workers)
    got = []
    try:
        with pytest.raises(InvoiceVLMError, match="broken.pdf: not a PDF"):
            for k, text in pooled.predict_stream(pages()):
                got.append(k)
    finally:
        pooled.close()
    assert got == [0, 1, 2]


def test_workers_below_zero_are_one_a_core_and_page_preparation_needs_no_torch():
    """``--workers -1`` (predict's and eval's default): one process a core this process may use. The workers
    import ``invoice_vlm.rows`` only, which must not pull torch in (a second each, on every start)."""
    import os
    import subprocess
    import sys

    from invoice_vlm.infer import prepare_workers

    assert prepare_workers(-1) == len(os.sched_getaffinity(0)) and prepare_workers(0) == 0
    assert prepare_workers(3) == 3
    code = "import sys, invoice_vlm.rows; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_predictor_reads_a_page_row_by_row(row_model, row_pages):
    from invoice_vlm.infer import Predictor

    model, processor = load(row_model)
    pred = Predictor(model, processor, max_new_tokens=4, row_batch_size=16)
    page = Image.open(read_split(row_pages, "test")[0].image)
    rows = len(segment(page))
    calls = []
    original = pred.read_rows
    pred.read_rows = lambda r: calls.append(len(r)) or original(r)
    texts = pred.predict([page, Image.new("RGB", (300, 300), "white")])
    assert calls == [rows] and len(texts) == 2 and texts[1] == ""
    assert len(texts[0].split("\n")) <= rows
    assert pred.stats["pages"] == 2 and 0 < pred.stats["prepare_seconds"]  # bench predict's preparation time
    assert json.loads(pred.predict([page], "extract")[0]) is not None
    with pytest.raises(Exception, match="reads text rows"):
        pred.predict([page], "answer en What is the total?")


def test_a_row_reader_hands_freed_memory_back_at_most_once_an_interval(row_model_ctc, row_pages, monkeypatch):
    """glibc's heaps keep what the row batches free (a server's memory grew 50% over 160 requests): read_rows calls
    malloc_trim, but no more often than TRIM_EVERY_S, and the texts do not change."""
    import invoice_vlm.infer as infer
    from invoice_vlm.rows import page_rows

    engine = Predictor.from_pretrained(str(row_model_ctc), device="cpu")
    rows = [r for s in read_split(row_pages, "test")[:2] for r in page_rows(Image.open(s.image), engine.unit)]
    before = engine.read_rows(rows)
    calls = []
    monkeypatch.setattr(infer, "release_freed_memory", lambda: calls.append(1))
    monkeypatch.setattr(infer, "TRIM_EVERY_S", 0.0)
    assert engine.read_rows(rows) == engine.read_rows(rows) == before and len(calls) == 2
    monkeypatch.setattr(infer, "TRIM_EVERY_S", 3600.0)
    engine.read_rows(rows)
    assert len(calls) == 2
    monkeypatch.undo()
    infer.release_freed_memory()  # the real call, on this machine's C library
    assert infer._malloc_trim is not None


def test_rescore_picks_among_the_heads_readings_and_the_decoders_own_by_both_scores_whatever_the_batch(
        row_pages, monkeypatch):
    """``decode`` auto = rescore, joint CTC/attention decoding: each row's text is the best, by RESCORE_CTC_WEIGHT x
    its CTC log-probability + the rest x the decoder's + a bonus a character and a word of the system's word lists
    (a set of the words here, against the engine's hashes), of its CTC head's best readings
    (prefix beam search) and, where the decoder would write none of them, the decoder's own greedy reading (when it
    ends within the row's budget and JOIN_SLACK tokens of the head's longest reading). The decoder scores only
    rows with more than one reading in the margin, and the texts are the same at row batches 1, 7 and 1024 (the
    shipped reader: a random decoder never ends a reading)."""
    import invoice_vlm.models as models
    from invoice_vlm import infer
    from invoice_vlm.infer.lexicon import WORD
    from invoice_vlm.models import (EMBEDDED_DIR, decoder_log_probs, decoder_readings, row_image_tokens,
                                    row_token_budget)

    pred = infer.Predictor.from_pretrained(str(EMBEDDED_DIR), device="cpu")
    assert pred.decode == "rescore" and pred.lexicon is not None  # make install installs the word lists
    words = {w.lower() for f in pred.lexicon.files for w in open(f, encoding="utf-8").read().split()}
    scored, written = [], []
    monkeypatch.setattr(models, "decoder_log_probs",
                        lambda *a, **k: scored.append(len(a[3])) or decoder_log_probs(*a, **k))
    monkeypatch.setattr(models, "decoder_readings",
                        lambda *a, **k: written.append(len(a[3])) or decoder_readings(*a, **k))
    rows, texts = rows_read_at_batches(pred, row_pages, (1, 7, 1024))
    assert texts[7] == texts[1] and texts[1024] == texts[1] and sum(scored) > 0 and sum(written) > 0
    tok = pred.processor.tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id
    batch = row_batch(rows, None, tok, pred.unit, pred.model.config.image_token_index)
    batch["pixel_values"] = batch["pixel_values"].to(pred.model.dtype)  # bf16 on a CPU with bf16 arithmetic
    joined = won = 0
    with torch.no_grad():
        tokens = row_image_tokens(pred.model, batch)
        nbest = pred.ctc_head.nbest(tokens, batch["image_columns"], infer.RESCORE_BEAM, infer.RESCORE_MARGIN)
        assert any(len(found) > 1 for found in nbest)  # the head is unsure of some rows: the decoder has to choose
        for k, found in enumerate(nbest):
            if len(found) == 1:
                assert tok.decode(found[0][0]).strip() == texts[1][k]
                continue
            one = {n: v[k:k + 1] for n, v in batch.items()}
            got = decoder_log_probs(pred.model, one, tokens[k:k + 1], [ids for ids, _ in found], [0] * len(found),
                                    eos, pad)
            readings = [(ids, c, a) for (ids, c), a in zip(found, got.log_probs.tolist())]
            if not got.greedy.any():
                # its budget: the row's own, and no more than JOIN_SLACK past the head's longest reading
                budget = min(row_token_budget(rows[k].shape[1], pred.unit, pred.max_new_tokens),
                             max(len(ids) for ids, _ in found) + infer.JOIN_SLACK + 1)
                own = decoder_readings(pred.model, one, tokens[k:k + 1], [budget], eos, pad)[0]
                if own is not None:
                    c = pred.ctc_head.log_probs(tokens[k:k + 1], batch["image_columns"][k:k + 1], [own[0]])[0]
                    if c > -math.inf:
                        readings.append((own[0], c, own[1]))
                        joined += 1
            total = [infer.RESCORE_CTC_WEIGHT * c + (1 - infer.RESCORE_CTC_WEIGHT) * a
                     + infer.RESCORE_LENGTH_BONUS * len(ids)
                     + infer.RESCORE_LEXICON_BONUS * sum(w.lower() in words for w in WORD.findall(tok.decode(ids)))
                     for ids, c, a in readings]
            chosen = max(range(len(readings)), key=total.__getitem__)
            won += chosen == len(found)
            assert tok.decode(readings[chosen][0]).strip() == texts[1][k]
    assert joined and won  # the decoder's own reading joined, and was some row's text


@pytest.mark.slow
@pytest.mark.parametrize("decode", ["rescore", "ctc", "generate"])
def test_a_rows_text_does_not_depend_on_its_batch(row_pages, decode):
    """The shipped reader on two pages' rows, read alone, in batches of 7 and all in one batch of 1024: the same
    texts (session 13: short rows padded to a wide neighbour ran on past their text, 3% vs 14% page CER), with its
    CTC head's readings chosen by the decoder, with the head alone and with the decoder alone."""
    from invoice_vlm.infer import Predictor
    from invoice_vlm.models import EMBEDDED_DIR

    pred = Predictor.from_pretrained(str(EMBEDDED_DIR), device="cpu", decode=decode)
    rows, texts = rows_read_at_batches(pred, row_pages, (1, 7, 1024))
    assert len(rows) > 20 and sum(len(t) for t in texts[1]) > 10 * len(rows)
    assert texts[7] == texts[1] and texts[1024] == texts[1]


def test_a_row_wider_than_the_reader_takes_is_read_in_pieces_joined_by_a_space(tmp_path):
    """A footer in small type across the page is wider than the reader's rows (1,536 px at 32 px high): read in
    pieces cut at word gaps (``rows.row_pieces``), their texts joined by a space, in its place among the rows; read
    squeezed, as before, the same row came out worse. The decoder alone reads it squeezed, as it learned rows."""
    import jiwer

    from invoice_vlm.models import EMBEDDED_DIR
    from invoice_vlm import rows
    from invoice_vlm.rows import row_image, row_pieces
    from invoice_vlm.synth import get_font

    text = ("Returns Policy: At our shop we try to deliver perfectly each and every time. But in the off-chance "
            "that you need to return the item, please do so with the original box and price tag.")
    im = Image.new("RGB", (1700, 60), "white")
    ImageDraw.Draw(im).text((20, 20), text, font=get_font("DejaVuSans", False, 14), fill="black")
    pred = Predictor.from_pretrained(str(EMBEDDED_DIR), device="cpu", lexicon="none")
    box = segment(im)[0]
    wide = np.asarray(row_image(im, box, pred.unit, squeeze=False).convert("L"))
    squeezed = np.asarray(row_image(im, box, pred.unit).convert("L"))
    pieces = row_pieces(wide, pred.unit)
    assert wide.shape[1] > pred.unit.max_width and len(pieces) == 2
    total = page("Total 12.50", size=(200, 40))
    short = np.asarray(row_image(total, segment(total)[0], pred.unit).convert("L"))
    got = pred.read_rows([short, wide, short])
    alone = pred.read_rows(pieces)
    assert got == [got[0], " ".join(alone), got[0]] and got[0] == pred.read_rows([short])[0]
    assert jiwer.cer(text, got[1]) < 0.5 * jiwer.cer(text, pred.read_rows([squeezed])[0])
    # the decoder alone learned squeezed rows and reads them so
    alone = Predictor(pred.model, pred.processor, decode="generate", lexicon="none")
    assert alone.read_rows([wide]) == alone.read_rows([rows.squeezed(wide, pred.unit)])


def test_the_lexicon_counts_known_words_and_names_a_bad_list(tmp_path, monkeypatch):
    """``infer.lexicon``: a word list's words (runs of two letters or more, case aside) are known, others not; the
    list is cached so the next process loads it without reading the text; ``none`` is no lexicon; a missing path
    is one line naming it; ``auto`` without the system's lists warns and reads without one."""
    from invoice_vlm.infer import lexicon as lx

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    words = tmp_path / "german"
    words.write_text("Käufer\nId\nNr\nRechnung\n", encoding="utf-8")
    lex = lx.load_lexicon(str(words))
    assert lex.describe() == {"files": [str(words)], "words": 4}
    assert lex.known("USt.-Id.-Nr.: Käufer/Leistungsempfänger") == 3  # Id, Nr, Käufer: not USt, not the other
    assert lex.known("USt.-1d.-Nr.: Käufez") == 1 and lex.known("42 / 7") == 0
    assert lex.known("KÄUFER rechnung") == 2
    assert list((tmp_path / "cache" / "invoice-vlm").glob("lexicon-*.npy"))
    monkeypatch.setattr(Path, "read_text", lambda *a, **k: pytest.fail("read again despite the cache"))
    assert lx.load_lexicon(str(words)).known("Käufer") == 1
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert lx.load_lexicon("none") is None
    with pytest.raises(InvoiceVLMError, match="nowhere.*no such file"):
        lx.load_lexicon(str(tmp_path / "nowhere"))
    monkeypatch.setattr(lx, "LEXICON_DIR", tmp_path / "empty")
    with pytest.warns(UserWarning, match="no word lists"):
        assert lx.load_lexicon("auto") is None
