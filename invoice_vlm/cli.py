"""The ``invoice-vlm`` command: a thin map from subcommands to each stage's ``main``."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape

from .common import DECODE_HELP, InvoiceVLMError, build_config
from .evaluate import EvalConfig
from .jobs import PredictJobConfig
from .serve import ServeConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune, evaluate and run vision-language models for invoice OCR.")
err = Console(stderr=True)
out = Console()

SetOpt = typer.Option(None, "--set", help="override a config key: key=value (repeatable; sft.* for TRL settings)")


def config_options(cls: type, skip: tuple[str, ...] = (), envvars: dict[str, str] | None = None):
    """Decorator: the command's options are ``cls``'s fields (name, type, default and help from the dataclass),
    after the parameters the command declares itself (which win, and are how a field gets another form: a flag,
    an argument); ``skip`` leaves fields out. The command receives them as keyword arguments. One place says what
    an option is: the config dataclass the stage runs on."""
    import dataclasses
    import inspect
    import typing

    hints = typing.get_type_hints(cls)

    def wrap(fn):
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        taken = {p.name for p in own} | set(skip)
        derived = []
        for f in dataclasses.fields(cls):
            if f.name in taken:
                continue
            kind = hints[f.name]
            args = [a for a in typing.get_args(kind) if a is not type(None)]
            if type(None) in typing.get_args(kind) and len(args) == 1:  # X | None -> Optional[X]
                kind = Optional[args[0]]
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            derived.append(inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
                default=typer.Option(default, help=f.metadata.get("help", ""),
                                     envvar=(envvars or {}).get(f.name))))
        fn.__signature__ = sig.replace(parameters=own + derived)
        return fn

    return wrap


def _fail(message: str, code: int = 1) -> None:
    _error_line(message)
    raise typer.Exit(code)


def _error_line(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _guard(fn: Callable[[], object]) -> object:
    """Run a stage: user errors become one line on stderr and a non-zero exit, never a traceback."""
    try:
        return fn()
    except InvoiceVLMError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    return None


@app.command()
def synth(
    out_dir: Path = typer.Option(..., "--out", help="output dataset folder"),
    n: int = typer.Option(1000, "--n", help="number of invoices"),
    seed: int = typer.Option(0, help="random seed; the same seed and settings give the same dataset"),
    split: str = typer.Option("train=0.9,validation=0.05,test=0.05", help="split ratios"),
    workers: int = typer.Option(1, help="worker processes"),
    dpi: int = typer.Option(150, help="render resolution"),
    augment: str = typer.Option("none", help="none | scan | photo"),
    pdf: bool = typer.Option(False, "--pdf", help="also write each invoice as a PDF with a text layer"),
    locales: Optional[str] = typer.Option(None, help="comma list of locales (default: all)"),
    layouts: Optional[str] = typer.Option(None, help="comma list of layout families (default: all)"),
    fonts: Optional[str] = typer.Option(None, help="comma list of font families (default: all)"),
    max_items: Optional[int] = typer.Option(None, help="most line items per invoice (1-30)"),
    shard_size: Optional[int] = typer.Option(None, help="invoices per shard folder"),
    overwrite: bool = typer.Option(False, help="replace an existing synthetic dataset in --out"),
    ray: bool = typer.Option(False, "--ray", help="write the shards as Ray tasks (a local Ray unless "
                                                  "--ray-address); the same files as without"),
    ray_address: Optional[str] = typer.Option(None, help="join this Ray cluster ('auto' or host:port); implies --ray"),
) -> None:
    """Generate synthetic invoices: page images, targets, fields, QA pairs (imagefolder, sharded, resumable).

    Re-running the same command resumes an interrupted run."""
    from . import synth as stage

    def go():
        cfg = build_config(stage.SynthConfig, overrides=dict(
            out=str(out_dir), n=n, seed=seed, split=split, workers=workers, dpi=dpi, augment=augment, pdf=pdf,
            locales=locales, layouts=layouts, fonts=fonts, max_items=max_items, shard_size=shard_size,
            overwrite=overwrite))
        from .jobs import ray_target, synth_on_ray

        target = ray_target(ray, ray_address)
        path = synth_on_ray(cfg, target) if target else stage.main(cfg)
        info = json.loads((path / "dataset.json").read_text())
        out.print(f"wrote {cfg.n} invoices ({info['pages']} pages) to {path} in {info['seconds']:.1f} s")

    _guard(go)


bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: baseline and candidate in one run, as ratios.")
app.add_typer(bench_app, name="bench")


def _print_bench(title: str, rows: list[dict], columns: dict[str, str]) -> None:
    """A benchmark's rows as a table (``columns``: row key -> heading), then as JSON for scripts."""
    from rich.table import Table

    table = Table(title=title)
    for heading in columns.values():
        table.add_column(heading, justify="right")
    for r in rows:
        table.add_row(*(str(r.get(c, "")) for c in columns))
    out.print(table)
    out.print_json(json.dumps(rows))


@bench_app.command("synth")
def bench_synth(
    n: int = typer.Option(400, help="invoices per case"),
    workers: int = typer.Option(2, help="worker processes for the parallel cases"),
    dpi: int = typer.Option(150, help="render resolution"),
) -> None:
    """Synthetic invoices per second: 1 worker vs --workers, without augmentation and with scan/photo."""
    from .bench.synth import bench

    def go():
        rows = bench(n=n, workers=workers, dpi=dpi)
        _print_bench(f"invoice-vlm bench synth (n={n}, dpi={dpi}, {os.cpu_count()} CPUs)", rows, {
            "workers": "workers", "augment": "augment", "invoices_per_s": "invoices/s", "pages_per_s": "pages/s",
            "vs_1_worker": "vs 1 worker", "seconds": "seconds", "mb": "MB"})

    _guard(go)


@bench_app.command("train")
def bench_train(
    steps: int = typer.Option(12, help="measured steps per variant (after the warm-up)"),
    warmup: int = typer.Option(2, help="steps not measured"),
    batch_size: int = typer.Option(8, help="pages per step"),
) -> None:
    """Training samples/s and memory: invoice-vlm vs a plain PyTorch loop and TRL's default loss."""
    from .bench.train import bench

    def go():
        rows = bench(steps=steps, warmup=warmup, batch_size=batch_size)
        _print_bench(f"invoice-vlm bench train (tiny PaliGemma, batch {batch_size}, {steps} steps, "
                     f"{os.cpu_count()} CPUs)", rows, {
                         "variant": "variant", "samples_per_s": "samples/s", "vs_plain": "vs plain",
                         "step_s": "step s", "peak_rss_mb": "peak RSS MB", "data_wait_pct": "data wait %"})

    _guard(go)


@bench_app.command("collate")
def bench_collate(
    n: int = typer.Option(64, help="synthetic pages to collate"),
    batch_size: int = typer.Option(32, help="pages per batch"),
    rounds: int = typer.Option(3, help="passes over the same batches (the median is reported)"),
) -> None:
    """CPU cost of a training batch: the processor's float pixels vs raw uint8 pixels normalised on the device."""
    from .bench.train import bench_collate as run

    def go():
        rows = run(n=n, batch_size=batch_size, rounds=rounds)
        _print_bench(f"invoice-vlm bench collate ({n} pages, batches of {batch_size}, one thread, "
                     f"{os.cpu_count()} CPUs)", rows, {
                         "variant": "variant", "ms_per_page": "ms/page", "speedup": "vs processor",
                         "pixel_mb_per_batch": "pixel MB/batch"})

    _guard(go)


@bench_app.command("eval")
def bench_eval(n: int = typer.Option(1000, help="predictions to score"),
               noise: float = typer.Option(0.02, help="share of characters edited in the predictions")) -> None:
    """Seconds to score N predictions (metrics, fields, per-page CER) and to write the report; budget 5 s."""
    from .bench.eval import bench

    def go():
        rows = bench(n=n, noise=noise)
        _print_bench(f"invoice-vlm bench eval ({n} predictions, {os.cpu_count()} CPUs; budget 5 s)", rows, {
            "stage": "stage", "documents": "documents", "noise": "noise", "seconds": "seconds",
            "vs_budget": "vs 5 s budget", "speedup": "vs baseline"})

    _guard(go)


@bench_app.command("predict")
def bench_predict(
    model: str = typer.Option("invoice-vlm-tiny", help="model folder or hub id"),
    n: int = typer.Option(32, help="synthetic invoice pages"),
    batch_size: int = typer.Option(16, help="the engine's batch size"),
    max_new_tokens: int = typer.Option(512, help="most tokens generated per page"),
    int8: bool = typer.Option(False, "--int8", help="also measure the engine with dynamic int8 quantisation"),
    min_new_tokens: int = typer.Option(0, help="generate at least this many tokens a page (both ways): the cost "
                                               "of page-length transcriptions whatever the model stops at"),
    tesseract: bool = typer.Option(False, "--tesseract", help="also Tesseract on the same pages and cores"),
    ray: bool = typer.Option(False, "--ray", help="also predict --out over the pages as files: one process vs a "
                                                  "local Ray on the same cores"),
    actors: int = typer.Option(2, help="with --ray: actors sharing the cores"),
    prep_workers: int = typer.Option(-1, "--workers", "--prep-workers",
                                     help="a row reader: also the engine with this many worker processes, as "
                                          "predict --workers runs it (on a CPU they read, each with its own model; "
                                          "-1: one a core, predict's default; 0 or 1: not)"),
    device: str = typer.Option("cpu", help="cpu | cuda: where the model reads (bf16 on a GPU)"),
    row_batch_size: int = typer.Option(64, help="a row reader: rows a forward pass"),
    naive_pages: int = typer.Option(0, help="the naive way reads only the first N pages, the ratios' base (0: all; "
                                            "on a GPU one generate() a row would take most of an hour of 96 pages)"),
) -> None:
    """Pages/s, latency and CER: one generate() per page (per row for a row reader) vs the engine, and Tesseract,
    same pages; for a page model fails unless the greedy texts are identical."""
    from .bench.predict import bench

    def go():
        rows = bench(model=model, n=n, batch_size=batch_size, max_new_tokens=max_new_tokens, quantize=int8,
                     min_new_tokens=min_new_tokens, tesseract=tesseract, ray=ray, actors=actors,
                     prep_workers=prep_workers, device=device, row_batch_size=row_batch_size,
                     naive_pages=naive_pages)
        least = f"at least {min_new_tokens} new tokens a page, " if min_new_tokens else ""
        columns = {"variant": "variant", "batch": "batch", "pages_per_s": "pages/s", "vs_naive": "vs naive",
                   "p50_s": "p50 s", "p95_s": "p95 s", "seconds": "seconds", "identical": "same text", "cer": "CER"}
        if any("prepare_ms" in r for r in rows):
            columns.update(prepare_ms="prepare ms/page", read_ms="read ms/page")
        if ray:
            columns["vs_single"] = "vs 1 process"
            for r in rows:
                r.setdefault("vs_single", "-")
        where = f"{os.cpu_count()} CPUs" + (f", {device}" if device != "cpu" else "")
        _print_bench(f"invoice-vlm bench predict ({model}, {n} pages, {least}{where})", rows, columns)

    _guard(go)


@bench_app.command("files")
def bench_files(
    data: str = typer.Option("../shared/data/real-invoices/manifest.jsonl", help="manifest.jsonl of PDF pages"),
    limit: int = typer.Option(40, help="first N pages (0: all)"),
    dpi: int = typer.Option(200, help="render resolution of the page images"),
    workers: Optional[list[int]] = typer.Option(None, help="predict --workers values to run (repeatable; default: 0 "
                                                           "and -1, one a core, predict's default)"),
    decode: Optional[list[str]] = typer.Option(None, help="predict --decode values to run (repeatable; default: auto "
                                                          "and ctc)"),
    model: str = typer.Option("invoice-vlm-tiny", help="model folder or hub id"),
) -> None:
    """The whole `invoice-vlm predict` command on page images vs `tesseract FILE -` per file, same images, same
    cores: pages/s as a user sees them, CER beside each."""
    from .bench.files import bench_files as run

    def go():
        rows = run(data, limit, dpi, workers, model, decode)
        _print_bench(f"invoice-vlm bench files ({rows[0]['pages']} pages of {data} at {dpi} dpi, {os.cpu_count()} "
                     "CPUs)", rows, {"variant": "variant", "pages": "pages", "seconds": "seconds",
                                     "pages_per_s": "pages/s", "vs_tesseract": "vs tesseract", "cer": "CER"})

    _guard(go)


@bench_app.command("segment")
def bench_segment(
    data: str = typer.Option("../shared/data/real-invoices/manifest.jsonl",
                             help="manifest.jsonl (each record's PDF page) or a folder of born-digital PDFs (page 1)"),
    dpi: int = typer.Option(200, help="render resolution (150-300 in docs/segmentation.md)"),
    augment: str = typer.Option("none", help="none | scan | photo: the synthetic degradation applied to each render"),
    limit: int = typer.Option(40, help="first N pages (0: all)"),
    candidate: Optional[list[str]] = typer.Option(None, help="segmenter to measure, repeatable: own, rapidocr, "
                                                              "rapidocr-deskew (default: own and rapidocr)"),
    results: str = typer.Option("", "--out", help="results JSON (default runs/bench/segment-<augment>-<dpi>dpi.json)"),
    seed: int = typer.Option(0, help="augmentation seed of the first page"),
) -> None:
    """Pages into rows against born-digital PDFs' text-layer rows: rows found as one box, merged, split, missed,
    extra boxes, ms/page (docs/segmentation.md)."""
    from .bench.segment import SegBenchConfig, run

    def go():
        try:
            cfg = SegBenchConfig(data=data, dpi=dpi, augment=augment, limit=limit, out=results, seed=seed,
                                 **({"candidates": list(candidate)} if candidate else {}))
        except ValueError as e:
            raise InvoiceVLMError(str(e)) from None
        report = run(cfg)
        rows = report["summary"]
        _print_bench(f"invoice-vlm bench segment ({rows[0]['pages']} pages of {data}, {dpi} dpi, augment "
                     f"{augment}; one thread each)", rows, {
                         "candidate": "candidate", "rows": "rows", "found_pct": "found %",
                         "merged_pct": "merged %", "split_pct": "split %", "missed_pct": "missed %",
                         "boxes": "boxes", "extra_pct": "extra boxes %", "cpu_ms": "CPU ms/page",
                         "wall_ms": "wall ms/page", **({"order_cer_pct": "order CER %"} if "order_cer_pct" in rows[0]
                                                       else {})})
        for line in report["skipped"]:
            err.print(f"[yellow]skipped:[/] {escape(line)}", highlight=False, soft_wrap=True)
        out.print(f"wrote {cfg.out}")

    _guard(go)


@bench_app.command("reader")
def bench_reader(
    data: str = typer.Option("../shared/data/real-invoices/manifest.jsonl", help="manifest.jsonl of PDF pages"),
    model: str = typer.Option("invoice-vlm-tiny", help="row model folder"),
    dpi: int = typer.Option(200, help="render resolution"),
    limit: int = typer.Option(40, help="first N pages (0: all)"),
    decode: str = typer.Option("auto", help=DECODE_HELP),
    out_dir: str = typer.Option("", "--out", help="folder for reader.json"),
) -> None:
    """The row reader given perfect rows (cut where the PDF's text layer puts them, padded as the segmenter pads):
    row CER, and page CER from those rows next to page CER through the segmenter."""
    from .bench.segment import read_text_layer_rows

    def go():
        r = read_text_layer_rows(data, model, dpi, limit, out_dir, decode=decode)
        _print_bench(f"invoice-vlm bench reader ({r['pages']} pages of {data}, {dpi} dpi, {model}, "
                     f"decode {r['decode']})", [r], {
            "rows": "trusted rows", "rows_cer": "row CER", "rows_exact": "rows exact",
            "page_cer_text_layer_rows": "page CER, text-layer rows", "page_cer_segmenter_rows": "page CER, segmenter"})

    _guard(go)


# train and pretrain declare their few overriding options here: their config dataclasses live beside torch and TRL,
# and importing those to read the fields would make every `invoice-vlm` call 8 s slower to start (0.15 s now)
@app.command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (configs/<model>/<method>.yaml)"),
    data: Optional[str] = typer.Option(None, help="dataset folder"),
    model: Optional[str] = typer.Option(None, help="base model folder or hub id"),
    name: Optional[str] = typer.Option(None, help="run name (output: runs/<name>)"),
    output_root: Optional[str] = typer.Option(None, help="folder for runs"),
    method: Optional[str] = typer.Option(None, help="full | lora | qlora"),
    max_steps: Optional[int] = typer.Option(None, help="stop after this many optimizer steps"),
    eval_steps: Optional[int] = typer.Option(None, help="generate on the validation split every N steps"),
    resume: bool = typer.Option(False, help="continue from the run's last checkpoint"),
    sets: Optional[list[str]] = SetOpt,
) -> None:
    """Fine-tune a model with TRL's SFTTrainer (full, LoRA, QLoRA; evaluation while training): the row reader on
    the rows of the pages, a page model on a mix of tasks.

    Runs under `accelerate launch` too (DDP, FSDP, DeepSpeed: configs/accelerate/)."""
    from . import train as stage

    def go():
        overrides = dict(data=data, model=model, name=name, output_root=output_root, method=method,
                         resume=resume or None)
        if eval_steps is not None:
            overrides["eval.steps"] = eval_steps
        if max_steps is not None:
            overrides["sft.max_steps"] = max_steps
        cfg = stage.load_config(str(config) if config else None, overrides, sets)
        run_dir = stage.main(cfg)
        out.print(f"run folder: {run_dir}  (model: {run_dir / 'model'})")

    _guard(go)


@app.command()
def pretrain(
    config: Path = typer.Option(Path("configs/tiny/pretrain.yaml"), "--config", "-c", help="YAML config"),
    name: Optional[str] = typer.Option(None, help="run name (output: runs/<name>)"),
    max_steps: Optional[int] = typer.Option(None, help="steps the schedule is planned over"),
    time_budget: Optional[float] = typer.Option(None, help="seconds for this invocation; ends with a checkpoint"),
    resume: bool = typer.Option(False, help="continue from the run's last checkpoint (exactly)"),
    sets: Optional[list[str]] = SetOpt,
) -> None:
    """Pretrain the embedded row reader (from scratch, or on from `init`) on synthetic rows, rows of real PDFs and
    drawn strings: CTC head beside the decoder, exact resume."""
    from .train import pretrain as stage

    def go():
        cfg = stage.load_config(str(config), sets, dict(name=name, max_steps=max_steps, time_budget=time_budget))
        run_dir = stage.main(cfg, resume=resume)
        out.print(f"run folder: {run_dir}")

    _guard(go)


@app.command("pdf-bank")
def pdf_bank(
    pdfs: Path = typer.Option(..., help="folder of born-digital PDFs (recursive); its sources.jsonl names sources"),
    out_path: Path = typer.Option(Path("data/pdf-bank.npz"), "--out", help="row bank to write (.npz; a .json "
                                                                          "beside it lists sources and licences)"),
    sources: Optional[Path] = typer.Option(None, help="JSONL naming each PDF's source and licence (file: path "
                                                      "relative to --pdfs); default: PDFS/sources.jsonl if present"),
    model: str = typer.Option("invoice-vlm-tiny", help="the row model whose reading unit and characters to use"),
    exclude: Optional[list[Path]] = typer.Option(None, help="folder of evaluation documents: PDFs with the same "
                                                          "content are never used (repeatable)"),
    pages_per_pdf: int = typer.Option(6, help="pages drawn from each PDF"),
    max_pages: int = typer.Option(30000, help="pages in all"),
    rows_per_page: int = typer.Option(40, help="rows kept from a page at most (drawn at random)"),
    workers: int = typer.Option(2, help="processes"),
    seed: int = typer.Option(0, help="random seed (pages, resolutions, rows)"),
) -> None:
    """Cut the text rows of real PDFs into a pretraining row bank: labels from the text layer, crops as the
    segmenter cuts them; untrustworthy rows (invisible, rotated, unmapped, overlapping, inkless) left out."""
    from .models import load, reading_unit_of, resolve_model
    from .train.rowdata import PdfBankConfig, build_pdf_bank, chars_of

    def go():
        path = resolve_model(model, Path("runs"))
        unit = reading_unit_of(path)
        if unit is None:
            raise InvoiceVLMError(f"{model}: not a row model (its config.json records no reading unit)")
        _, processor = load(path)
        cfg = PdfBankConfig(pdfs=str(pdfs), sources=str(sources or ""), out=str(out_path),
                            exclude=[str(e) for e in exclude or []],
                            pages_per_pdf=pages_per_pdf, max_pages=max_pages, rows_per_page=rows_per_page,
                            workers=workers, seed=seed)
        summary = build_pdf_bank(cfg, unit, chars_of(processor.tokenizer), say=err.print)
        out.print(f"wrote {out_path}: {summary['rows']} rows ({summary['held_out_rows']} held out) from "
                  f"{summary['pages']} pages of {summary['pdfs']} PDFs; left out: {summary['left_out']}")

    _guard(go)


@app.command("eval")
@config_options(EvalConfig)
def eval_(
    data: str = typer.Option(..., help="dataset folder, or a manifest .jsonl (PDF pages rendered at --dpi)"),
    ray: bool = typer.Option(False, "--ray", help="run the model on Ray (a local Ray unless --ray-address)"),
    ray_address: Optional[str] = typer.Option(None, help="join this Ray cluster ('auto' or host:port); implies --ray"),
    sets: Optional[list[str]] = SetOpt,
    **options,
) -> None:
    """Score a model, an OCR engine or a predictions file on a dataset split or a manifest.

    Writes bleu.json, ter.json (evaluate's shapes), metrics.json, fields.json, predictions.jsonl, report.html."""
    from . import evaluate as stage
    from .jobs import eval_on_ray, ray_target

    def go():
        cfg = build_config(EvalConfig, overrides=dict(options, data=data, ray=ray_target(ray, ray_address)),
                           sets=sets)
        scores = stage.main(cfg, on_ray=eval_on_ray)
        _print_scores(scores)
        if scores.get("skipped"):
            raise typer.Exit(1)  # the rest was scored and written; the exit code says that something was left out

    _guard(go)


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="evaluation output folders (each with metrics.json)"),
    markdown: Optional[Path] = typer.Option(None, help="also write the table as Markdown to this file"),
) -> None:
    """Evaluation runs side by side: text metrics and field scores."""
    from .evaluate import compare as stage

    def go():
        table = stage.compare(runs)
        out.print(stage.rich_table(table))
        if markdown:
            markdown.write_text(stage.markdown(table), encoding="utf-8")
            out.print(f"wrote {markdown}")

    _guard(go)


@app.command()
@config_options(PredictJobConfig, skip=("inputs", "out", "ray", "min_new_tokens"))
def predict(
    files: list[Path] = typer.Argument(..., help="images, PDFs, or folders of them"),
    fmt: str = typer.Option("text", "--format", help="text | json | jsonl"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="write the results as a dataset here: JSONL shards "
                                                               "and job.json; the same command again resumes"),
    ray: bool = typer.Option(False, "--ray", help="with --out: run on Ray (a local Ray unless --ray-address)"),
    ray_address: Optional[str] = typer.Option(None, help="join this Ray cluster ('auto' or host:port); implies --ray"),
    **options,
) -> None:
    """Read invoices: every page of each image or PDF, printed as each batch finishes (bad files: one line each on
    stderr, the others still read; exit code 1 if any failed). With --out, a sharded, resumable dataset instead,
    in one process or on Ray (--ray)."""
    from .data import parse_pages
    from .infer import Predictor
    from .infer import files as fio
    from .fields import TASKS, task_prompt, task_result

    o = options

    def go():
        task = o["task"]
        if task not in TASKS:
            raise InvoiceVLMError(f"--task must be ocr or extract, got {task!r}")
        if fmt not in ("text", "json", "jsonl"):
            raise InvoiceVLMError(f"--format must be text, json or jsonl, got {fmt!r}")
        from . import jobs

        target = jobs.ray_target(ray, ray_address)
        if target and not out_dir:
            raise InvoiceVLMError("--ray needs --out DIR: the results are written as a sharded dataset")
        if out_dir:
            cfg = build_config(PredictJobConfig, overrides=dict(o, inputs=[str(f) for f in files], out=str(out_dir),
                                                                ray=target))
            done = jobs.run_predict(cfg, on_error=_error_line)
            out.print(escape(f"{done['pages']} pages from {done['files']} files in {done['shards']} shards "
                             f"({done['skipped']} already done) -> {done['out']} in {done['seconds']:.1f} s"
                             + (f"; {done['errors']} failed (error records)" if done["errors"] else "")),
                      soft_wrap=True, highlight=False)
            if done["errors"]:
                raise typer.Exit(1)
            return
        wanted = parse_pages(o["pages"] or None)
        paths, errors = fio.expand(files)
        docs = []
        for p in paths:
            try:
                docs.append(fio.plan(p, wanted, o["max_pages"]))
            except InvoiceVLMError as e:
                errors.append(str(e))
        for e in errors:
            _error_line(e)
        if not docs:
            raise typer.Exit(1)
        predictor = Predictor.from_pretrained(o["model"], device=o["device"] or None, dtype=o["dtype"] or None,
                                              quantize=o["quantize"] or None, compile=o["compile"],
                                              max_new_tokens=o["max_new_tokens"], batch_size=o["batch_size"],
                                              decode=o["decode"], workers=o["workers"],
                                              pages=sum(d.count for d in docs))
        failed = [len(errors)]

        def items():
            for d in docs:
                try:
                    for k, image in fio.page_images(d, o["dpi"]):
                        yield (str(d.path), k, d.count), image
                except InvoiceVLMError as e:
                    _error_line(str(e))
                    failed[0] += 1

        from .common import progress_bar

        results = []
        multi = len(paths) > 1 or any(d.count > 1 for d in docs)  # by the inputs given, not those that opened
        try:
            with progress_bar("reading", "pages", stderr=True, transient=True) as bar:
                job = bar.add_task("pages", total=sum(d.count for d in docs))
                for (name, k, count), text in predictor.predict_stream(items(), task_prompt(task, o["prompt"])):
                    row = {"file": name, "page": k, "task": task, **task_result(task, text)}
                    if fmt == "jsonl":
                        typer.echo(json.dumps(row, ensure_ascii=False))
                    elif fmt == "json":
                        results.append(row)
                    else:
                        if multi:
                            typer.echo(f"==> {name}" + (f" page {k}" if count > 1 else "") + " <==")
                        typer.echo(text)  # plain: the output is meant for pipes, so no Rich wrapping
                    bar.advance(job)
        finally:
            predictor.close()  # (the page workers)
        if fmt == "json":
            results.sort(key=lambda r: (r["file"], r["page"]))
            typer.echo(json.dumps(results, ensure_ascii=False, indent=2))
        if failed[0]:
            raise typer.Exit(1)

    _guard(go)


@app.command()
@config_options(ServeConfig, envvars={"api_key": "INVOICE_VLM_API_KEY"})
def serve(**options) -> None:
    """HTTP API (POST /v1/ocr, /v1/extract; GET /health, /metrics, /docs) and a web page at /."""
    from . import serve as srv

    _guard(lambda: srv.main(build_config(ServeConfig, overrides=options)))


@app.command()
def export(
    model: str = typer.Option(..., help="run folder, model or adapter folder, or checkpoint (runs/<name>, "
                                        "runs/<name>/checkpoint-N)"),
    out_dir: Path = typer.Option(..., "--out", help="release folder to write"),
    dtype: str = typer.Option("bf16", help="bf16 | fp16 | fp32 (or bfloat16 | float16 | float32)"),
    merge_lora: bool = typer.Option(False, "--merge-lora", help="merge a LoRA adapter into its base model"),
    adapter_only: bool = typer.Option(False, "--adapter-only", help="export the PEFT adapter alone"),
    evals: Optional[list[Path]] = typer.Option(None, "--eval", help="evaluation folder whose numbers go into the "
                                                                    "model card (repeatable)"),
    name: Optional[str] = typer.Option(None, help="model name in the card, e.g. the repo id (default: the folder "
                                                  "name)"),
    card: Optional[Path] = typer.Option(None, help="Markdown file with the card's description"),
    average: Optional[list[Path]] = typer.Option(
        None, "--average", help="a further checkpoint of the same model whose weights are averaged in (repeatable)"),
) -> None:
    """Export a trained model as a folder plain transformers (or PEFT) loads: safetensors, processor, model card."""
    from . import hub

    def go():
        if card and not card.is_file():
            raise InvoiceVLMError(f"{card}: card file not found")
        body = card.read_text(encoding="utf-8") if card else ""
        path = hub.export(model, out_dir, dtype, evals, name, body, merge_lora=merge_lora, adapter_only=adapter_only,
                          average=average)
        out.print(f"wrote {path}")

    _guard(go)


@app.command()
def push(
    model: Path = typer.Option(..., help="an export folder (invoice-vlm export)"),
    repo_id: str = typer.Option(..., "--repo-id", help="USER/NAME on the Hugging Face Hub"),
    private: bool = typer.Option(False, help="create the repo private"),
    token: Optional[str] = typer.Option(None, help="Hub token (default: HF_TOKEN or the saved login)"),
) -> None:
    """Upload an exported model (or adapter) with its card to a Hub model repo."""
    from . import hub

    def go():
        out.print(f"pushed {model} to {hub.push(model, repo_id, private, token)}")

    _guard(go)


@app.command("push-dataset")
def push_dataset(
    data: Path = typer.Option(..., help="dataset folder (invoice-vlm synth or an import)"),
    repo_id: str = typer.Option(..., "--repo-id", help="USER/NAME on the Hugging Face Hub"),
    private: bool = typer.Option(False, help="create the repo private"),
    token: Optional[str] = typer.Option(None, help="Hub token (default: HF_TOKEN or the saved login)"),
    keep: Optional[Path] = typer.Option(None, help="also keep the parquet folder and card here"),
) -> None:
    """Upload a dataset as parquet (images embedded) with a dataset card to a Hub dataset repo."""
    from . import hub

    def go():
        out.print(f"pushed {data} to {hub.push_dataset(data, repo_id, private, token, keep)}")

    _guard(go)


@app.command("init-model")
def init_model(
    out_dir: Path = typer.Option(..., "--out", help="output folder"),
    variant: str = typer.Option("paligemma", help="paligemma, paligemma2, idefics3 or rows (invoice-vlm-tiny's "
                                                  "architecture: a FastVLM row reader)"),
    seed: int = typer.Option(0, help="random seed for the weights"),
) -> None:
    """Build a random tiny model (PaliGemma, PaliGemma 2, Idefics3, or the row reader) with the project's tokenizer
    and processor; save it like a hub checkpoint."""
    from .models import (RowModelConfig, TinyIdefics3Config, TinyModelConfig, count_parameters, create_row_model,
                         create_tiny, create_tiny_idefics3, load)

    def go():
        if variant == "rows":
            path = create_row_model(out_dir, RowModelConfig(seed=seed))
        elif variant == "idefics3":
            path = create_tiny_idefics3(out_dir, TinyIdefics3Config(seed=seed))
        else:
            cfg = build_config(TinyModelConfig, overrides={"variant": variant, "seed": seed})
            path = create_tiny(out_dir, cfg)
        model, _ = load(path)
        out.print(f"wrote {path} ({count_parameters(model) / 1e6:.1f}M parameters)")

    _guard(go)


# The demo's held-out style: pretraining (configs/tiny/pretrain.yaml) never saw this layout family or locale.
DEMO_LAYOUT, DEMO_LOCALE = "modern", "nl_NL"


@app.command()
def demo(
    workdir: Path = typer.Option(Path("."), help="where data/ and runs/ are written"),
    model: str = typer.Option("invoice-vlm-tiny", help="the model to adapt"),
    n: int = typer.Option(200, help="synthetic invoices of the new style to generate"),
    max_steps: int = typer.Option(90, help="fine-tuning steps (90 of 32 rows: the demo within 5 minutes here)"),
    learning_rate: float = typer.Option(1e-4, help="fine-tuning learning rate"),
    seed: int = typer.Option(0, help="random seed"),
) -> None:
    """The main job: adapt invoice-vlm-tiny to an invoice style it has never seen (a new layout family in a new
    locale) in a few minutes, and print BLEU/TER on held-out pages before and after."""
    from . import evaluate, synth
    from . import train as train_stage

    def go():
        t0 = time.time()
        data_dir, run_root = workdir / "data" / "demo", workdir / "runs"
        out.rule(f"1/4 synthetic invoices in a new style: layout {DEMO_LAYOUT!r}, locale {DEMO_LOCALE}")
        # short invoices (up to 6 items), as in pretraining: targets within a CPU-sized token budget
        synth.main(synth.SynthConfig(out=str(data_dir), n=n, seed=seed + 1000, dpi=100, overwrite=True, workers=2,
                                     max_items=6, layouts=DEMO_LAYOUT, locales=DEMO_LOCALE,
                                     split="train=0.85,validation=0.03,test=0.12"))
        shutil.rmtree(run_root / "demo", ignore_errors=True)
        out.rule(f"2/4 before: {model} on the new style's test pages")
        before = evaluate.main(evaluate.EvalConfig(model=model, data=str(data_dir), split="test",
                                                   out=str(run_root / "demo" / "eval-before"), report=False))
        _print_scores(before)
        out.rule(f"3/4 fine-tuning {max_steps} steps")
        from .models import reading_unit_of

        overrides = {"model": model, "data": str(data_dir), "name": "demo", "output_root": str(run_root),
                     "seed": seed, "sft.max_steps": max_steps, "sft.learning_rate": learning_rate,
                     "sft.save_strategy": "no"}
        if reading_unit_of(model) is not None:  # a row reader's examples are rows: many to a batch
            overrides["sft.per_device_train_batch_size"] = 32
        cfg = train_stage.load_config(str(_config_path("tiny/full.yaml")), overrides)
        run_dir = train_stage.main(cfg)
        out.rule("4/4 after: the fine-tuned model on the same pages")
        after = evaluate.main(evaluate.EvalConfig(model=str(run_dir / "model"), data=str(data_dir), split="test",
                                                  out=str(run_dir / "eval-after")))
        _print_scores(after)
        _print_before_after(before, after)
        out.print(f"run folder: {run_dir}   report: {run_dir / 'eval-after' / 'report.html'}   "
                  f"({time.time() - t0:.0f} s)")

    _guard(go)


def _print_before_after(before: dict, after: dict) -> None:
    from rich.table import Table

    t = Table(title=f"held-out style ({DEMO_LAYOUT}, {DEMO_LOCALE}): {after['num_samples']} test pages")
    for c in ("", "before", "after", "change"):
        t.add_column(c, justify="right")
    for label, get, fmt in (("BLEU", lambda s: s["bleu"]["bleu"], "{:.4f}"), ("TER", lambda s: s["ter"]["score"],
                            "{:.2f}"), ("CER", lambda s: s["cer"], "{:.4f}"), ("chrF", lambda s: s["chrf"], "{:.2f}")):
        b, a = get(before), get(after)
        t.add_row(label, fmt.format(b), fmt.format(a), ("+" if a >= b else "") + fmt.format(a - b))
    out.print(t)


def _config_path(rel: str) -> Path:
    """Shipped configs live in the repository's configs/ folder (next to the package in a source checkout)."""
    here = Path(__file__).resolve().parent.parent / "configs" / rel
    if not here.is_file():
        raise InvoiceVLMError(f"{here}: shipped config not found (run from a source checkout)")
    return here


def _print_scores(scores: dict) -> None:
    out.print("bleu.json")
    out.print_json(json.dumps(scores["bleu"]))
    out.print("ter.json")
    out.print_json(json.dumps(scores["ter"]))
    out.print(f"CER {scores['cer']:.4f}  WER {scores['wer']:.4f}  chrF {scores['chrf']:.2f}  "
              f"exact match {scores['exact_match']:.3f}  ({scores['num_samples']} pages)")
    if scores.get("fields"):
        o = scores["fields"]["overall"]
        out.print(f"fields: F1 {o['f1']:.3f}  exact match {o['exact_match']:.3f}  "
                  f"all correct {scores['fields']['all_fields_correct']:.3f}")
    for line in scores.get("skipped") or []:
        err.print(f"[yellow]skipped:[/] {escape(line)}", highlight=False, soft_wrap=True)
    if scores.get("out"):
        out.print(f"results: {scores['out']}")


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    sys.exit(main())
