"""``invoice-vlm bench predict``: the engine against the naive way and against Tesseract, same pages, same run.

Naive is what the blog-post notebooks do: one ``model.generate`` per page. The engine batches pages (left
padding, KV cache, pages sorted by how much text they show). Both decode greedily, so the texts must be identical:
the benchmark fails if a single page differs. For a model that reads rows (invoice-vlm-tiny), naive is one
``generate`` per row and the engine batches the rows of its pages and reads them, when it has a CTC head, in
the way it reads by default (its CTC head's readings chosen by the decoder), and again with the head alone and with
the decoder alone; the same-text count is reported, not required.
``--workers N`` adds the engine with N worker processes, as ``predict --workers N`` runs it (each reads whole
batches of pages with its own copy of the model, on the GPU where there is one). Tesseract
(``--tesseract``) reads the same pages with the same cores (one process per core). Every case's CER against the
pages' transcriptions is beside its speed. Latency of a page is the time until its text is out: for the naive way
its own ``generate``, for the engine its batch (every page of a batch finishes together)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from ..common import InvoiceVLMError

# how a row reader with a CTC head reads, as the report names it (infer.Predictor's ``decode``)
READS = {"rescore": "CTC head + decoder rescoring", "ctc": "CTC head alone", "generate": "decoder alone"}


def bench_pages(n: int, dpi: int = 100, seed: int = 7, with_text: bool = False) -> list:
    """n synthetic invoice pages (clean renders at the embedded model's training resolution); with ``with_text``,
    (page, transcription) pairs."""
    from PIL import Image

    from ..data import read_split
    from ..synth import generate

    with tempfile.TemporaryDirectory() as tmp:
        cfg = generate.SynthConfig(out=str(Path(tmp) / "d"), n=n, seed=seed, split="test=1.0", dpi=dpi, max_items=6)
        generate.main(cfg, progress=False)
        pages = []
        for s in read_split(cfg.out, "test")[:n]:
            with Image.open(s.image) as im:
                pages.append((im.convert("RGB"), s.text) if with_text else im.convert("RGB"))
        return pages


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def bench(model: str = "invoice-vlm-tiny", n: int = 32, batch_size: int = 16, max_new_tokens: int = 512,
          quantize: bool = False, min_new_tokens: int = 0, tesseract: bool = False,
          workers: int | None = None, ray: bool = False, actors: int = 2,
          prep_workers: int = 0, device: str = "cpu", row_batch_size: int = 64,
          naive_pages: int = 0) -> list[dict[str, Any]]:
    """``min_new_tokens``: every page generates at least that many tokens (the end token is held back), in both
    ways: the cost of page-length transcriptions, whatever the model would stop at. ``tesseract``: add Tesseract
    on the same pages with ``workers`` processes (default: every core). ``ray``: add ``predict --out`` over the
    pages as files, one process vs ``--ray`` with ``actors`` actors on the same cores (:func:`bench_ray`).
    ``device``: cpu | cuda, in the engine's default dtype there (bf16 on a GPU); ``row_batch_size``: a row reader's
    rows a forward pass (a GPU takes many more than a CPU); ``naive_pages``: the naive way reads only the first so
    many pages (0: all), its pages/s the ratios' base and the same-text count over them (on a GPU one ``generate`` a
    row takes a third of a second or more, launch after launch: 96 pages' rows would take most of an hour)."""
    import os

    from ..evaluate import cer
    from ..infer import Predictor, naive_predict, prepare_workers

    pairs = bench_pages(n, with_text=True)
    images, refs = [p for p, _ in pairs], [t for _, t in pairs]
    engine = Predictor.from_pretrained(model, device=device, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                       min_new_tokens=min_new_tokens, row_batch_size=row_batch_size)
    rows = []

    k_naive = min(n, naive_pages) if naive_pages > 0 else n
    t0 = time.perf_counter()
    naive, lat = [], []
    if engine.unit is None:  # naive: one generate per page, in the order given
        name = "naive (generate per page)"
        for im in images[:k_naive]:
            s = time.perf_counter()
            naive.append(naive_predict(engine.model, engine.processor, im, max_new_tokens=max_new_tokens,
                                       min_new_tokens=min_new_tokens))
            lat.append(time.perf_counter() - s)
    else:  # a row reader's naive way: its rows one generate at a time
        name = "naive (generate per row)"
        one = Predictor(engine.model, engine.processor, max_new_tokens=max_new_tokens, batch_size=1,
                        row_batch_size=1)
        for im in images[:k_naive]:
            s = time.perf_counter()
            naive.append(one.predict([im])[0])
            lat.append(time.perf_counter() - s)
    naive_s = time.perf_counter() - t0
    naive_rate = k_naive / naive_s  # pages/s: the ratios' base
    rows.append({**_row(name, 1, k_naive, naive_s, lat, naive_rate),
                 "cer": round(cer(naive, refs[:k_naive]), 4)})

    variants = [("engine" + (f" ({READS[engine.decode]})" if engine.ctc_head is not None else ""), engine)]
    if engine.ctc_head is not None:  # the same engine reading with its head alone, and with its decoder alone
        for decode in ("ctc", "generate"):
            variants.append((f"engine ({READS[decode]})",
                             Predictor(engine.model, engine.processor, batch_size=batch_size,
                                       max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                       ctc_head=engine.ctc_head, decode=decode, row_batch_size=row_batch_size)))
    prep_workers = prepare_workers(prep_workers)
    if prep_workers > 1 and engine.unit is not None:
        # worker processes as predict --workers starts them: each reads whole batches of pages with its own model
        # (infer.readers, on the device); started at their turn (their start would take cores from the cases before)
        # and timed once they have loaded, as the engine above is
        variants.append((f"engine, {prep_workers} worker processes reading",
                         lambda: Predictor.from_pretrained(model, device=device, batch_size=batch_size,
                                                           max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                                           row_batch_size=row_batch_size, workers=prep_workers)))
    if quantize:
        from ..infer import quantize_int8

        variants.append(("engine + int8", Predictor(quantize_int8(engine.model), engine.processor,
                                                    batch_size=batch_size, max_new_tokens=max_new_tokens,
                                                    min_new_tokens=min_new_tokens, ctc_head=engine.ctc_head)))
    for name, pred in variants:
        if callable(pred):
            pred = pred()
            pred.wait_ready()
        pred.stats.update(prepare_seconds=0.0, generate_seconds=0.0)
        t0 = time.perf_counter()
        texts: dict[int, str] = {}
        lat = []
        last = t0
        for k, text in pred.predict_stream(enumerate(images)):
            now = time.perf_counter()
            texts[k] = text
            lat.append(now - last if now - last > 1e-3 else lat[-1])  # pages of one batch share its time
            last = now
        secs = time.perf_counter() - t0
        pred.close()
        got = [texts[k] for k in range(n)]
        same = sum(a == b for a, b in zip(got, naive))
        row = _row(name, batch_size, n, secs, lat, naive_rate)
        row["identical"] = f"{same}/{k_naive}"
        row["cer"] = round(cer(got, refs), 4)
        if pred.reads_in_workers:  # a worker's own time a page, preparing and reading (they work side by side)
            row["prepare_ms"] = round(1000 * pred.stats["prepare_seconds"] / n)
            row["read_ms"] = round(1000 * pred.stats["generate_seconds"] / n)
        elif pred.unit is not None:  # a page's time split: preparation (deskew, segment, crop) and the rest (reading)
            row["prepare_ms"] = round(1000 * pred.stats["prepare_seconds"] / n)
            row["read_ms"] = round(1000 * (secs - pred.stats["prepare_seconds"]) / n)
        rows.append(row)
        if pred is engine and same != k_naive and engine.unit is None:
            bad = next(k for k in range(k_naive) if got[k] != naive[k])
            raise InvoiceVLMError(f"bench predict: the engine's greedy text differs from generate's on page {bad}: "
                                  f"{got[bad][:60]!r} vs {naive[bad][:60]!r}")
    rows[0]["identical"] = "-"
    if tesseract:
        from ..evaluate.engines import TesseractEngine

        procs = workers or os.cpu_count() or 1
        tess = TesseractEngine(workers=procs)
        t0 = time.perf_counter()
        got = list(tess.predict_iter(images))
        secs = time.perf_counter() - t0
        rows.append({**_row(f"tesseract ({procs} processes)", procs, n, secs, [secs * procs / n] * n, naive_rate),
                     "identical": "-", "cer": round(cer(got, refs), 4)})
    if ray:
        rows += bench_ray(model, images, refs, batch_size, max_new_tokens, min_new_tokens, actors, naive_rate)
    return rows


def bench_ray(model: str, images: list, refs: list[str], batch_size: int, max_new_tokens: int, min_new_tokens: int,
              actors: int, naive_rate: float) -> list[dict[str, Any]]:
    """The job runner (``predict --out``) over the pages saved as PNG files: one process, then a local Ray with
    ``actors`` actors sharing the same cores (each reserves (CPUs - rendering) / actors and runs one torch thread
    per whole CPU, at least one). Both times include loading the model (in each actor) and reading and writing the
    files; Ray itself is started before the clock (a cluster is already up). ``vs_single``: the speed ratio."""
    import os

    from .. import jobs
    from ..evaluate import cer
    from ..infer.files import iter_records

    n = len(images)
    with tempfile.TemporaryDirectory(prefix="invoice-vlm-bench-ray-") as tmp:
        pages = Path(tmp) / "pages"
        pages.mkdir()
        for k, im in enumerate(images):
            im.save(pages / f"{k:05d}.png")
        # pages prepared beside the model both ways: by the one process's page workers (one a core, its default),
        # on Ray by the rendering tasks (a row reader's actors only read)
        common = dict(inputs=[str(pages)], model=model, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                      batch_size=batch_size, device="cpu", shard_size=max(1, -(-n // (4 * actors))))
        texts, secs = {}, {}
        with jobs.ray_session("local") as ray:
            cpus = ray.cluster_resources().get("CPU", os.cpu_count() or 1)
            cases = [("single", jobs.PredictJobConfig(out=f"{tmp}/single", **common)),
                     ("ray", jobs.PredictJobConfig(out=f"{tmp}/ray", ray="local", actors=actors,
                                                   cpus_per_actor=max(0.25, (cpus - jobs.RENDER_CPUS) / actors),
                                                   **common))]
            for name, cfg in cases:
                t0 = time.perf_counter()
                jobs.run_predict(cfg, progress=False)
                secs[name] = time.perf_counter() - t0
                texts[name] = [r["text"] for r in iter_records(Path(cfg.out))]
    single, on_ray = texts["single"], texts["ray"]
    same = sum(a == b for a, b in zip(single, on_ray))
    rows = []  # a job's pages are out when their shard is: no per-page latency
    for name, label in (("single", "predict --out (1 process)"), ("ray", f"predict --out --ray ({actors} actors)")):
        row = _row(label, batch_size, n, secs[name], [0.0], naive_rate)
        row.update(p50_s="-", p95_s="-", identical=f"{same}/{n}" if name == "ray" else "-",
                   # (three significant digits: a ratio under 0.005, Ray's start on a loaded machine, is no 0.0)
                   cer=round(cer(texts[name], refs), 4), vs_single=float(f"{secs['single'] / secs[name]:.3g}"))
        rows.append(row)
    return rows


def _row(name: str, batch: int, n: int, secs: float, lat: list[float], naive_rate: float) -> dict[str, Any]:
    """A case's figures; ``vs_naive``: its pages/s over the naive way's (``naive_rate``)."""
    return {"variant": name, "batch": batch, "pages": n, "seconds": round(secs, 2),
            "pages_per_s": round(n / secs, 3), "vs_naive": round(n / secs / naive_rate, 2),
            "p50_s": round(statistics.median(lat), 3), "p95_s": round(_pct(lat, 0.95), 3)}
