"""Corpus-scale jobs: ``predict`` (and ``eval``) over many files as a sharded, resumable dataset, in one process or
on Ray; ``synth`` shards on Ray.

Run as::

    invoice-vlm predict scans/ --out runs/predict/scans --shard-size 100
    invoice-vlm predict scans/ --out runs/predict/scans --ray --actors 2 --cpus-per-actor 0.5   # a local Ray
    invoice-vlm predict /shared/scans --out /shared/out --ray-address auto --actors 8 --device cuda  # a cluster
    invoice-vlm eval --predictions runs/predict/scans --data data/synth --split test

Output folder::

    DIR/job.json            # model, settings, versions, the shard list with each shard's files; "complete": true
    DIR/shard-00000.jsonl   # one record a page, in input order: {"file", "page", "text"} (+ "fields",
    DIR/shard-00001.jsonl   # "json_valid" for --task extract); a file that cannot be read: {"file", "page": null,
                            # "error"}

The input files (folders expanded, every path resolved, sorted) are cut into shards of ``shard_size`` files. A shard
is written under a temporary name and renamed when complete, so nothing half-written looks done, and running the
same command again skips the finished shards. A folder holding another job (other files, model, task or settings
that change the text) is refused.

The engine (:class:`invoice_vlm.infer.Predictor`) knows nothing of files or Ray. On Ray, Ray Data tasks read the
files and render PDF pages (as PNG; an image travels as its own bytes; for a row reader the tasks also prepare each
page, deskew and segment, and send its rows), a fixed pool of actors, each holding one ``Predictor``, reads the
pages in batches, and this process, the driver, writes each shard as soon as every page
of its files is back. Inputs must be readable at the same paths on every node (shared storage); only the driver
writes.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .common import (DECODE_HELP, DECODE_MODES, LEXICON_HELP, MAX_DOCUMENT_PAGES, WORKERS_HELP, InvoiceVLMError,
                     environment_info, write_json)

# Logical CPUs held by each rendering task on Ray (it keeps one core busy while it runs): the actors must leave at
# least this much, or no page is ever rendered and the job waits forever.
RENDER_CPUS = 1.0
PNG_LEVEL = 1  # rendered PDF pages travel through Ray's object store as PNG: lossless, ~30x smaller than pixels


@dataclass
class PredictJobConfig:
    inputs: list[str] = field(default_factory=list, metadata={"help": "images, PDFs, or folders of them"})
    out: str = field(default="", metadata={"help": "output folder (sharded JSONL + job.json)"})
    model: str = field(default="invoice-vlm-tiny", metadata={"help": "model folder or hub id"})
    task: str = field(default="ocr", metadata={"help": "ocr | extract"})
    prompt: str = field(default="", metadata={"help": "model prompt (default: the task's)"})
    pages: str = field(default="", metadata={"help": "PDF pages to read, e.g. 1-3,5 (default: every page)"})
    dpi: int = field(default=200, metadata={"help": "PDF render resolution"})
    max_pages: int = field(default=MAX_DOCUMENT_PAGES, metadata={"help": "most pages per document (0: no limit)"})
    max_new_tokens: int = field(default=512, metadata={"help": "most tokens generated per page"})
    min_new_tokens: int = field(default=0, metadata={"help": "benchmarks only: at least this many tokens a page"})
    batch_size: int = field(default=8, metadata={"help": "pages per forward pass"})
    decode: str = field(default="auto", metadata={"help": DECODE_HELP})
    lexicon: str = field(default="auto", metadata={"help": LEXICON_HELP})
    workers: int = field(default=-1, metadata={"help": WORKERS_HELP})
    quantize: str = field(default="", metadata={"help": "int8: dynamic int8 quantisation (CPU)"})
    dtype: str = field(default="", metadata={"help": "fp32 | bf16 | fp16 (default: bf16 on a GPU and on a CPU with "
                                                     "bf16 arithmetic, else fp32)"})
    device: str = field(default="", metadata={"help": "cpu | cuda (default: cuda when available)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    shard_size: int = field(default=100, metadata={"help": "input files per shard"})
    ray: str = field(default="", metadata={"help": "'' one process; 'local' a Ray started here; 'auto' or an "
                                                   "address: a running Ray cluster"})
    actors: int = field(default=1, metadata={"help": "Ray: actors, each holding one model"})
    cpus_per_actor: float = field(default=1.0, metadata={"help": "Ray: CPUs reserved (and torch threads) per actor"})

    def __post_init__(self) -> None:
        from .fields import TASKS

        if self.task not in TASKS:
            raise ValueError(f"--task must be ocr or extract, got {self.task!r}")
        for name in ("shard_size", "batch_size", "actors", "dpi"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.cpus_per_actor <= 0:
            raise ValueError(f"--cpus-per-actor must be positive, got {self.cpus_per_actor}")
        if self.decode not in DECODE_MODES:
            raise ValueError(f"--decode must be one of {', '.join(DECODE_MODES)}, got {self.decode!r}")
        if not self.out:
            raise ValueError("--out is required: the folder the shards are written to")

    @property
    def page_list(self) -> list[int] | None:
        from .data import parse_pages

        return parse_pages(self.pages or None)

    @property
    def prompt_text(self) -> str:
        from .fields import task_prompt

        return task_prompt(self.task, self.prompt)

    def identity(self, files: list[str]) -> dict[str, Any]:
        """What decides the records; a folder made with anything else is another job."""
        return {"model": model_id(self.model), "task": self.task, "prompt": self.prompt_text,
                "pages": self.page_list, "dpi": self.dpi, "max_new_tokens": self.max_new_tokens,
                "min_new_tokens": self.min_new_tokens, "quantize": self.quantize or None, "decode": self.decode,
                "lexicon": self.lexicon,
                "shard_size": self.shard_size, "files": len(files),
                "files_sha256": hashlib.sha256("\n".join(files).encode()).hexdigest()}


@dataclass(frozen=True)
class Shard:
    number: int
    files: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"shard-{self.number:05d}.jsonl"


def model_id(model: str) -> str:
    """A model folder as its absolute path (the same job from another working directory); a hub id as is."""
    p = Path(model).expanduser()
    return str(p.resolve()) if p.exists() else model


# --------------------------------------------------------------------------------------------- inputs


def list_inputs(inputs: list[str]) -> tuple[list[str], list[str]]:
    """Resolved, sorted, unique files (folders expanded as ``predict`` does), and one line per folder that holds
    nothing to read. A missing file stays in the list: it becomes its error record, like any file that fails."""
    from .infer import files as fio

    files, errors = set(), []
    for p in map(Path, inputs):
        if p.is_dir():
            found, errs = fio.expand([p])
            files.update(str(f.resolve()) for f in found)
            errors += errs
        else:
            files.add(str(p.expanduser().resolve()))
    return sorted(files), errors


def plan_shards(files: list[str], shard_size: int) -> list[Shard]:
    return [Shard(k, tuple(files[i:i + shard_size])) for k, i in enumerate(range(0, len(files), shard_size))]


def read_pages(path: str, pages: list[int] | None, dpi: int, max_pages: int = MAX_DOCUMENT_PAGES) -> list:
    """(page number, RGB image) for the pages of one file; any problem is one InvoiceVLMError naming it."""
    from .infer import files as fio

    p = Path(path)
    if not p.is_file():
        raise InvoiceVLMError(f"{p}: file not found")
    return list(fio.page_images(fio.plan(p, pages, max_pages), dpi))


def page_record(file: str, page: int, text: str, task: str) -> dict[str, Any]:
    from .fields import task_result

    return {"file": file, "page": page, **task_result(task, text)}


def error_record(file: str, message: str) -> dict[str, Any]:
    return {"file": file, "page": None, "error": message}


def shard_records(shard: Shard, texts: dict[int, dict[int, str]], errors: dict[int, str],
                  task: str) -> list[dict[str, Any]]:
    """A shard's records in input order: file by file, each file's pages in order."""
    rows = []
    for i, f in enumerate(shard.files):
        if i in errors:
            rows.append(error_record(f, errors[i]))
        else:
            rows += [page_record(f, k, texts[i][k], task) for k in sorted(texts[i])]
    return rows


def write_shard(out: Path, shard: Shard, rows: list[dict[str, Any]]) -> None:
    """Write under a temporary name, then rename: a shard file is there only when complete."""
    tmp = out / f".{shard.name}.partial"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, out / shard.name)


# --------------------------------------------------------------------------------------------- the job folder


def _prepare(out: Path, identity: dict[str, Any]) -> None:
    """Refuse a folder that holds anything but this same job; clear half-written shards of an interrupted run."""
    from .infer.files import JOB, read_job

    if out.exists() and not out.is_dir():
        raise InvoiceVLMError(f"{out}: exists and is not a folder")
    if (out / JOB).is_file():
        theirs = read_job(out).get("identity") or {}
        # a job that never finished a shard (a mistyped model, say) holds nothing to lose: start over
        if theirs != identity and any(out.glob("shard-*.jsonl")):
            what = [k for k in identity if k not in ("files", "files_sha256") and theirs.get(k) != identity[k]]
            diff = [f"{k}={theirs.get(k)!r}" for k in what]
            if theirs.get("files_sha256") != identity["files_sha256"]:
                diff.append(f"other input files ({theirs.get('files')} files, now {identity['files']})")
            raise InvoiceVLMError(f"{out}: holds another predict job ({', '.join(diff) or 'other settings'}); "
                                  "choose another --out")
    elif out.exists() and any(p.name != JOB + ".tmp" for p in out.iterdir()):  # .tmp: a kill mid-first write
        raise InvoiceVLMError(f"{out}: folder is not empty and holds no predict job ({JOB} missing); choose a new "
                              "or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".shard-*.partial"):
        stale.unlink()


def _count(path: Path) -> tuple[int, int]:
    """(page records, error records) of a finished shard. A quoted ``"page": null`` cannot occur inside a JSON
    string (its quotes would be escaped), so the substring marks an error record without parsing the line."""
    pages = errors = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if '"page": null' in line:
                errors += 1
            elif line.strip():
                pages += 1
    return pages, errors


# --------------------------------------------------------------------------------------------- running


def run_predict(cfg: PredictJobConfig, on_error: Callable[[str], None] = lambda m: None,
                progress: bool = True) -> dict[str, Any]:
    """Run (or finish) a predict job; returns a summary: pages, errors (error records in the whole job), shards,
    shards skipped as already done, seconds. ``on_error`` gets one line per file that fails in this run."""
    from .infer.files import GENERATOR, JOB

    t0 = time.perf_counter()
    files, input_errors = list_inputs(cfg.inputs)
    for e in input_errors:
        on_error(e)
    if not files:
        raise InvoiceVLMError("predict: no input files" + (f" ({input_errors[0]})" if input_errors else ""))
    out = Path(cfg.out)
    identity = cfg.identity(files)
    shards = plan_shards(files, cfg.shard_size)
    todo = [s for s in shards if not (out / s.name).is_file()]
    settings = {k: getattr(cfg, k) for k in ("batch_size", "dtype", "device", "compile", "ray", "actors",
                                             "cpus_per_actor", "inputs")}
    job: dict[str, Any] = {"generator": GENERATOR, "identity": identity, "settings": settings,
                           "input_errors": input_errors, "complete": False, "environment": environment_info(),
                           "shards": [{"name": s.name, "files": list(s.files)} for s in shards]}
    with ExitStack() as stack:
        if todo:  # the model (or Ray) checked before anything is written
            check_model(cfg.model)
            if cfg.ray:
                ray = stack.enter_context(ray_session(cfg.ray))
                job["environment"]["ray"] = ray.__version__
                _check_resources(ray, cfg)
        _prepare(out, identity)
        write_json(out / JOB, job)
        if todo:
            with _files_bar(len(files), len(files) - sum(len(s.files) for s in todo), progress) as advance:
                (_run_ray if cfg.ray else _run_local)(cfg, out, todo, on_error, advance)
    pages = errors = 0
    for s in shards:
        p, e = _count(out / s.name)
        pages, errors = pages + p, errors + e
    seconds = round(time.perf_counter() - t0, 2)
    job.update(complete=True, pages=pages, errors=errors)
    write_json(out / JOB, job)
    return {"out": str(out), "files": len(files), "pages": pages, "errors": errors + len(input_errors),
            "shards": len(shards), "skipped": len(shards) - len(todo), "seconds": seconds}


@contextmanager
def _files_bar(total: int, done: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    from .common import progress_bar

    with progress_bar("reading", "files", stderr=True, transient=True, disable=not enabled) as bar:
        task = bar.add_task("files", total=total, completed=done)
        yield lambda n: bar.advance(task, n)


def _run_local(cfg: PredictJobConfig, out: Path, todo: list[Shard], on_error: Callable[[str], None],
               advance: Callable[[int], None]) -> None:
    from .infer import Predictor

    predictor = Predictor.from_pretrained(cfg.model, device=cfg.device or None, dtype=cfg.dtype or None,
                                          quantize=cfg.quantize or None, compile=cfg.compile,
                                          max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.min_new_tokens,
                                          batch_size=cfg.batch_size, decode=cfg.decode, workers=cfg.workers,
                                          lexicon=cfg.lexicon)
    wanted = cfg.page_list
    try:
        for shard in todo:
            errors: dict[int, str] = {}
            texts: dict[int, dict[int, str]] = {}

            def items():
                for i, f in enumerate(shard.files):
                    try:
                        pages = read_pages(f, wanted, cfg.dpi, cfg.max_pages)
                    except InvoiceVLMError as e:
                        errors[i] = str(e)
                        on_error(str(e))
                        continue
                    texts[i] = {}
                    for k, image in pages:
                        yield (i, k), image

            for (i, k), text in predictor.predict_stream(items(), cfg.prompt_text):
                texts[i][k] = text
            write_shard(out, shard, shard_records(shard, texts, errors, cfg.task))
            advance(len(shard.files))
    finally:
        predictor.close()  # (the page workers)


# --------------------------------------------------------------------------------------------- Ray


def check_ray_importable():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InvoiceVLMError("--ray needs Ray Data: pip install 'invoice-vlm[ray]' (or 'ray[data]>=2.40')") from None
    return ray


@contextmanager
def ray_session(address: str):
    """Ray, initialised here unless it already is (a test, a notebook): ``local`` starts a Ray with this machine's
    CPUs; ``auto`` or ``host:port`` joins a running cluster. Shut down on exit if started here."""
    ray = check_ray_importable()
    started = False
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report over the network
        kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        try:
            if address == "local":
                ray.init(address="local", num_cpus=os.cpu_count() or 1, **kwargs)
            else:
                ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InvoiceVLMError(f"--ray-address {address}: cannot start or join Ray ({first})") from None
        started = True
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # our own bar counts files; Ray's would interleave with it on stderr
    ctx.print_on_execution_start = False
    # Ray Data logs a failure's whole stack before raising it; we print it (one line for a user error) instead
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _on_gpu(cfg: PredictJobConfig) -> bool:
    return (cfg.device or "").startswith("cuda")


def _check_resources(ray, cfg: PredictJobConfig) -> None:
    gpu = _on_gpu(cfg)
    have = ray.cluster_resources()
    cpus, gpus = have.get("CPU", 0), have.get("GPU", 0)
    need = cfg.actors * cfg.cpus_per_actor + RENDER_CPUS
    if need > cpus:
        raise InvoiceVLMError(f"--ray: {cfg.actors} actors x {cfg.cpus_per_actor:g} CPUs plus {RENDER_CPUS:g} for "
                              f"rendering need {need:g} CPUs; the cluster has {cpus:g}. Lower --actors or "
                              f"--cpus-per-actor (e.g. {max(0.25, (cpus - RENDER_CPUS) / cfg.actors):g})")
    if gpu and cfg.actors > gpus:
        raise InvoiceVLMError(f"--ray --device cuda: {cfg.actors} actors need one GPU each; the cluster has {gpus:g}")


def render_file(row: dict[str, Any], pages: list[int] | None, dpi: int,
                max_pages: int = MAX_DOCUMENT_PAGES, unit: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """A Ray Data ``flat_map`` step: one file -> a row per page, or one error row. An image travels as its own
    bytes (the actor decodes it, once, as one process would); a PDF's pages are rendered here and travel as PNG.
    For a row reader (``unit``, its ReadingUnit as a dict) each page is prepared here instead (deskew, segment,
    crop: ``rows.page_rows``, the work a process's page workers do) and travels as its rows (``pack_rows``), so
    preparation spreads over the cluster's cores and the actors only read. ``count`` (pages of the file) lets the
    driver tell when a file, and so a shard, is complete."""
    from .common import ReadingUnit
    from .infer import files as fio
    from .rows import page_rows

    path = Path(row["file"])
    base = {"shard": row["shard"], "index": row["index"], "file": row["file"]}
    reading = ReadingUnit(**unit) if unit else None
    empty = {"widths": b""} if reading else {}
    try:
        if not path.is_file():
            raise InvoiceVLMError(f"{path}: file not found")
        doc = fio.plan(path, pages, max_pages)
        if reading is None and not doc.pdf and doc.count == 1:  # one image travels as its own bytes
            return [{**base, "page": 1, "count": 1, "data": path.read_bytes(), "error": ""}]
        images = list(fio.page_images(doc, dpi))
    except InvoiceVLMError as e:
        return [{**base, "page": 0, "count": 1, "data": b"", "error": str(e), **empty}]
    rows = []
    for k, image in images:
        if reading:
            data = pack_rows(page_rows(image, reading))
        else:
            buf = io.BytesIO()
            image.save(buf, "PNG", compress_level=PNG_LEVEL)
            data = {"data": buf.getvalue()}
        rows.append({**base, "page": k, "count": len(images), "error": "", **data})
    return rows


def pack_rows(rows: list) -> dict[str, bytes]:
    """A page's prepared rows (uint8, one height) as two byte strings for Ray's object store: the rows side by side,
    zlib level 1 (``data``), and their widths (``widths``, int32). A 200-dpi invoice's rows: 530 KB raw, 145 KB
    compressed (less than the page as PNG) in 3 ms."""
    import zlib

    import numpy as np

    widths = np.array([r.shape[1] for r in rows], np.int32)
    strip = np.concatenate(rows, axis=1).tobytes() if rows else b""
    return {"data": zlib.compress(strip, 1), "widths": widths.tobytes()}


def unpack_rows(data: bytes, widths: bytes, height: int) -> list:
    """``pack_rows``'s rows back."""
    import zlib

    import numpy as np

    w = np.frombuffer(widths, np.int32)
    strip = np.frombuffer(zlib.decompress(data), np.uint8).reshape(height, int(w.sum()))
    return list(np.split(strip, np.cumsum(w)[:-1].tolist(), axis=1)) if len(w) else []


class PageReader:
    """A Ray actor holding one Predictor: a batch of page rows in, the same rows with ``text`` (and without the
    image) out. Error rows pass through; an image that does not decode becomes one."""

    def __init__(self, model: str, prompt: str, threads: int, **predictor_kwargs):
        import torch

        from .infer import Predictor

        if threads:
            torch.set_num_threads(threads)
        self.prompt = prompt
        self.predictor = Predictor.from_pretrained(model, **predictor_kwargs)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        from .data import image_from_bytes

        errors = np.array([str(e) for e in batch["error"]], dtype=object)
        texts = np.full(len(errors), "", dtype=object)
        keep = {k: batch[k] for k in ("shard", "index", "page", "count")}
        if "widths" in batch:  # a row reader's pages, prepared by the rendering tasks (render_file)
            ok = [i for i, e in enumerate(errors) if not e]
            height = self.predictor.unit.height
            prepared = [unpack_rows(bytes(batch["data"][i]), bytes(batch["widths"][i]), height) for i in ok]
            for i, text in zip(ok, self.predictor.read_prepared(prepared, [self.prompt] * len(ok))):
                texts[i] = text
            return keep | {"error": errors, "text": texts}
        ok, images = [], []
        for i, e in enumerate(errors):
            if e:
                continue
            try:
                images.append(image_from_bytes(bytes(batch["data"][i]), str(batch["file"][i])))
                ok.append(i)
            except InvoiceVLMError as err:
                errors[i] = str(err)
        for i, text in zip(ok, self.predictor.predict(images, self.prompt)):
            texts[i] = text
        return keep | {"error": errors, "text": texts}


def _run_ray(cfg: PredictJobConfig, out: Path, todo: list[Shard], on_error: Callable[[str], None],
             advance: Callable[[int], None]) -> None:
    import ray
    import ray.data

    from .models import reading_unit_of

    gpu = _on_gpu(cfg)
    items = [{"shard": s.number, "index": i, "file": f} for s in todo for i, f in enumerate(s.files)]
    # blocks of a few files: rendering spreads over the cluster, and early shards finish early
    blocks = min(len(items), max(1, -(-len(items) // max(1, cfg.shard_size // 4))))
    threads = 0 if gpu else max(1, int(cfg.cpus_per_actor))
    unit = reading_unit_of(model_id(cfg.model))  # a row reader: its pages are prepared where they are rendered
    ds = (ray.data.from_items(items, override_num_blocks=blocks)
          .flat_map(render_file, fn_kwargs={"pages": cfg.page_list, "dpi": cfg.dpi, "max_pages": cfg.max_pages,
                                            "unit": unit.to_dict() if unit else None},
                    num_cpus=RENDER_CPUS)
          .map_batches(PageReader, batch_size=cfg.batch_size * 4, batch_format="numpy",
                       compute=ray.data.ActorPoolStrategy(size=cfg.actors), num_cpus=cfg.cpus_per_actor,
                       num_gpus=1 if gpu else 0,
                       fn_constructor_kwargs=dict(
                           model=model_id(cfg.model), prompt=cfg.prompt_text, threads=threads,
                           device=cfg.device or None,
                           dtype=cfg.dtype or None, quantize=cfg.quantize or None, compile=cfg.compile,
                           max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.min_new_tokens,
                           batch_size=cfg.batch_size, decode=cfg.decode, lexicon=cfg.lexicon)))
    by_number = {s.number: s for s in todo}
    texts: dict[int, dict[int, dict[int, str]]] = {s.number: {} for s in todo}
    errors: dict[int, dict[int, str]] = {s.number: {} for s in todo}
    counts: dict[int, dict[int, int]] = {s.number: {} for s in todo}
    done_files = {s.number: 0 for s in todo}
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for n, i, k, c, e, t in zip(batch["shard"], batch["index"], batch["page"], batch["count"],
                                        batch["error"], batch["text"]):
                n, i = int(n), int(i)
                if e:
                    errors[n][i] = str(e)
                    on_error(str(e))
                    finished = True
                else:
                    texts[n].setdefault(i, {})[int(k)] = str(t)
                    counts[n][i] = int(c)
                    finished = len(texts[n][i]) == counts[n][i]
                if finished:
                    done_files[n] += 1
                    if done_files[n] == len(by_number[n].files):  # every page of the shard is back
                        write_shard(out, by_number[n], shard_records(by_number[n], texts.pop(n), errors.pop(n),
                                                                     cfg.task))
                        advance(done_files[n])
    except Exception as e:  # a user error raised in an actor (a model that does not load) stays one line
        cause = _user_error(e)
        if cause is None:
            raise
        raise InvoiceVLMError(str(cause)) from None
    if texts:  # cannot happen unless Ray lost rows: never mark such a job complete
        raise InvoiceVLMError(f"{out}: Ray returned too few pages for {', '.join(by_number[n].name for n in texts)}; "
                              "run the same command again to redo them")


def _user_error(e: BaseException) -> InvoiceVLMError | None:
    """The InvoiceVLMError behind a Ray failure, if any. A task's error comes back as its cause; an actor that died
    in its constructor comes back only as text (Ray keeps the remote traceback, not the exception)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, InvoiceVLMError):
            return e
        marker = f"{InvoiceVLMError.__module__}.{InvoiceVLMError.__name__}: "
        if marker in str(e):
            return InvoiceVLMError(str(e).rsplit(marker, 1)[1].splitlines()[0])
        e = getattr(e, "cause", None) or e.__cause__
    return None


def check_model(model: str) -> None:
    """The driver's cheap check before actors start: a folder must hold a model; anything else must look like a
    hub id (the actors load it: on a cluster, every node needs the folder or hub access)."""
    from .models import EMBEDDED, embedded_model

    name = str(embedded_model()) if model == EMBEDDED else model
    p = Path(name)
    if p.exists() and not (p / "config.json").is_file():
        raise InvoiceVLMError(f"{p}: no model here (config.json missing)")
    if not p.exists() and (name.startswith((".", "/", "~")) or name.count("/") != 1):
        raise InvoiceVLMError(f"{name}: model folder not found (and not a hub id of the form owner/name)")


# --------------------------------------------------------------------------------------------- eval, synth


def eval_on_ray(cfg, samples: list, info: dict[str, Any], workdir: Path, skipped: list[str]) -> tuple[list, list]:
    """``eval --ray``: the samples' images read by a predict job on Ray (in ``workdir``), then matched back by
    image path. Returns (samples with a prediction, predictions)."""
    from transformers import AutoProcessor

    from .evaluate import max_new_tokens_for, read_predictions, reference_for
    from .models import EMBEDDED, embedded_model

    check_model(cfg.model)
    max_new = cfg.max_new_tokens
    if not max_new:
        name = str(embedded_model()) if cfg.model == EMBEDDED else cfg.model
        max_new = max_new_tokens_for(AutoProcessor.from_pretrained(name), [reference_for(s, cfg.task) for s in samples])
    info.update(model=cfg.model, max_new_tokens=max_new, ray=cfg.ray, actors=cfg.actors)
    job = PredictJobConfig(inputs=sorted({str(s.image) for s in samples}), out=str(workdir / "job"), model=cfg.model,
                           task=cfg.task, prompt=cfg.prompt, max_new_tokens=max_new, batch_size=cfg.batch_size,
                           decode=cfg.decode, lexicon=cfg.lexicon, ray=cfg.ray, actors=cfg.actors,
                           cpus_per_actor=cfg.cpus_per_actor,
                           shard_size=max(100, len(samples)))
    run_predict(job, on_error=skipped.append)
    return read_predictions(workdir / "job", samples, skipped, task=cfg.task)


def synth_on_ray(cfg, address: str, progress: bool = True) -> Path:
    """``synth --ray``: the same dataset as ``synth`` (byte for byte), its shards written by Ray tasks. A task
    writes its shard into a temporary folder on its node and returns the files; the driver writes them, so the
    cluster needs no shared disk."""
    from .synth import generate

    check_ray_importable()

    def run(cfg, todo, done):
        with ray_session(address) as ray:
            task = ray.remote(num_cpus=1)(_synth_shard_files)
            limit = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))  # bounded: memory stays flat
            queue, running = list(todo), {}
            while queue or running:
                while queue and len(running) < limit:
                    s = queue.pop(0)
                    running[task.remote(cfg, s)] = s
                ready, _ = ray.wait(list(running), num_returns=1)
                for ref in ready:
                    s = running.pop(ref)
                    _write_synth_shard(Path(cfg.out) / s.path, ray.get(ref))
                    done(s)

    return generate.main(cfg, progress=progress, run_shards=run)


def _synth_shard_files(cfg, shard) -> list[tuple[str, bytes]]:
    import dataclasses
    import tempfile

    from .synth import generate

    with tempfile.TemporaryDirectory(prefix="invoice-vlm-synth-") as tmp:
        generate.write_shard(dataclasses.replace(cfg, out=tmp), shard)
        folder = Path(tmp) / shard.path
        return [(p.name, p.read_bytes()) for p in sorted(folder.iterdir())]


def _write_synth_shard(final: Path, files: list[tuple[str, bytes]]) -> None:
    import shutil

    tmp = final.with_name(f".{final.name}.partial")  # the name generate.write_shard uses: a rerun clears it
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name, data in files:
        (tmp / name).write_bytes(data)
    os.replace(tmp, final)


def ray_target(flag: bool, address: str | None) -> str:
    """The CLI's ``--ray`` / ``--ray-address ADDR`` as one setting: '' (no Ray), 'local' or the address."""
    return address or ("local" if flag else "")
