"""Evaluation: run a model, an OCR engine or a predictions file over a dataset split or a manifest, and score it.

Run as::

    invoice-vlm eval --model runs/tiny-full/model --data data/synth --split test --out runs/tiny-full/eval
    invoice-vlm eval --engine tesseract --data ../shared/data/real-invoices/manifest.jsonl --out runs/eval/tess

Writes ``bleu.json`` and ``ter.json`` in exactly the shape of Hugging Face ``evaluate``'s ``bleu`` and ``ter``
metrics (computed with sacrebleu, no network), ``metrics.json`` (those plus chrF, CER, WER, exact match, sacrebleu
signatures, what was skipped), ``fields.json`` (key-field scores, :mod:`invoice_vlm.fields`),
``predictions.jsonl`` and ``report.html`` (:mod:`.report`). The metric functions are pure functions over lists
of strings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..common import (DECODE_HELP, DECODE_MODES, LEXICON_HELP, WORKERS_HELP, InvoiceVLMError, environment_info,
                      staged_dir, write_json)

# ------------------------------------------------------------------------------------------ metrics


def bleu(predictions: list[str], references: list[str]) -> dict[str, Any]:
    """``evaluate.load("bleu")`` semantics: 13a tokenisation, 4-grams, no smoothing, fractions not percent."""
    _check_lengths(predictions, references)
    return _bleu_dict(_bleu_metric().corpus_score(predictions, [references]))


def _bleu_dict(score) -> dict[str, Any]:
    return {
        "bleu": score.score / 100,
        "precisions": [p / 100 for p in score.precisions],
        "brevity_penalty": score.bp,
        "length_ratio": score.sys_len / score.ref_len if score.ref_len else 0.0,
        "translation_length": score.sys_len,
        "reference_length": score.ref_len,
    }


def ter(predictions: list[str], references: list[str]) -> dict[str, Any]:
    """``evaluate.load("ter")`` semantics and defaults (not normalised, punctuation kept, case-insensitive)."""
    _check_lengths(predictions, references)
    return _ter_dict(_ter_metric().corpus_score(predictions, [references]))


def _ter_dict(score) -> dict[str, Any]:
    return {"score": score.score, "num_edits": score.num_edits, "ref_length": score.ref_length}


def chrf(predictions: list[str], references: list[str]) -> float:
    _check_lengths(predictions, references)
    return _chrf_metric().corpus_score(predictions, [references]).score


def edit_counts(prediction: str, reference: str) -> tuple[int, int, int, int]:
    """(character edits, reference characters, word edits, reference words): the counts behind jiwer's CER and WER
    with its default transforms (the stripped text's characters; whitespace-separated words), computed with
    rapidfuzz, jiwer's own edit-distance engine, without jiwer's per-call alignment objects (the tests check every
    figure against jiwer)."""
    from rapidfuzz.distance import Levenshtein

    ref, pred = reference.strip(), prediction.strip()
    ref_words, pred_words = reference.split(), prediction.split()
    return (Levenshtein.distance(ref, pred), len(ref), Levenshtein.distance(ref_words, pred_words), len(ref_words))


def _rate(edits: int, length: int) -> float:
    return edits / length if length else float(edits)  # jiwer: an empty reference scores its insertions


def cer(predictions: list[str], references: list[str]) -> float:
    """Character error rate over the corpus (edits / reference characters), case and newlines counted."""
    _check_lengths(predictions, references)
    counts = [edit_counts(p, r) for p, r in zip(predictions, references)]
    return _rate(sum(c[0] for c in counts), sum(c[1] for c in counts))


def wer(predictions: list[str], references: list[str]) -> float:
    """Word error rate over the corpus; words are whitespace-separated (newlines are whitespace)."""
    _check_lengths(predictions, references)
    counts = [edit_counts(p, r) for p, r in zip(predictions, references)]
    return _rate(sum(c[2] for c in counts), sum(c[3] for c in counts))


def exact_match(predictions: list[str], references: list[str]) -> float:
    _check_lengths(predictions, references)
    return sum(p.strip() == r.strip() for p, r in zip(predictions, references)) / len(references)


def _bleu_metric():
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize="13a", smooth_method="none", max_ngram_order=4)


def _ter_metric():
    from .fast import TER  # sacrebleu's TER, with an exact and faster edit count (see fast.py)

    return TER(normalized=False, no_punct=False, asian_support=False, case_sensitive=False)


def _chrf_metric():
    from .fast import CHRF  # sacrebleu's chrF, with the n-grams counted by numpy (exact; see fast.py)

    return CHRF()


def signatures() -> dict[str, str]:
    """sacrebleu's signature of each metric's settings, so a number can be reproduced exactly."""
    sigs = {}
    for name, make in (("bleu", _bleu_metric), ("ter", _ter_metric), ("chrf", _chrf_metric)):
        metric = make()
        metric.corpus_score(["x"], [["x"]])  # sacrebleu fills the signature in on first use
        sigs[name] = str(metric.get_signature())
    return sigs


def score_all(predictions: list[str], references: list[str], workers: int = 0) -> dict[str, Any]:
    """Every text metric over the corpus. Long corpora are split across ``workers`` processes (0: all CPUs
    from 200 documents on): sacrebleu's statistics are per segment and add up, so the result is identical."""
    _check_lengths(predictions, references)
    stats, _, counts = per_doc(predictions, references, "", workers)
    return _score_all(predictions, references, stats, counts)


def _score_all(predictions: list[str], references: list[str], stats: list[list],
               counts: list[tuple[int, int, int, int]]) -> dict[str, Any]:
    b, t, c = (make()._aggregate_and_compute(st) for make, st in zip(_METRICS, stats))
    totals = [sum(x[k] for x in counts) for k in range(4)]
    return {
        "bleu": _bleu_dict(b), "ter": _ter_dict(t), "chrf": c.score, "cer": _rate(totals[0], totals[1]),
        "wer": _rate(totals[2], totals[3]), "exact_match": exact_match(predictions, references),
        "num_samples": len(references), "signatures": signatures(),
    }


PARALLEL_FROM = 200  # documents; below this, starting processes costs more than it saves
_METRICS = (_bleu_metric, _ter_metric, _chrf_metric)


def _library_metrics() -> tuple:
    """The same metrics run by sacrebleu's own TER and chrF code (what :mod:`.fast` replaces): the baseline of
    ``invoice-vlm bench eval``, which checks that both give identical results."""
    from sacrebleu.metrics import CHRF, TER

    return (_bleu_metric(), TER(normalized=False, no_punct=False, asian_support=False, case_sensitive=False), CHRF())


def _library_edit_counts(prediction: str, reference: str) -> tuple[int, int, int, int]:
    """:func:`edit_counts` through jiwer's public API (the baseline)."""
    import jiwer

    c = jiwer.process_characters(reference, prediction)
    w = jiwer.process_words(" ".join(reference.split()), " ".join(prediction.split()))
    return (c.substitutions + c.deletions + c.insertions, c.substitutions + c.deletions + c.hits,
            w.substitutions + w.deletions + w.insertions, w.substitutions + w.deletions + w.hits)


def _chunk(predictions: list[str], references: list[str], task: str,
           library: bool = False) -> tuple[list[list], list[dict], list[tuple]]:
    """One chunk's per-segment sacrebleu statistics, predicted fields (``task`` ocr/extract; "" for none) and
    per-page :func:`edit_counts`; ``library``: with the libraries' own TER, chrF and jiwer code (the baseline)."""
    import gc

    # Scoring allocates millions of small objects and frees them by reference counting; the cycle collector's
    # passes over them took a third of TER's time (measured on 500 pages) and find nothing here. A chunk is
    # bounded, so pausing the collector for it is safe.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _chunk_stats(predictions, references, task, library)
    finally:
        if was_enabled:
            gc.enable()


def _chunk_stats(predictions: list[str], references: list[str], task: str, library: bool) -> tuple:
    from .. import fields as fmod

    metrics = _library_metrics() if library else [make() for make in _METRICS]
    stats = [m._extract_corpus_statistics(predictions, [references]) for m in metrics]
    if task == "extract":
        found = [fmod.parse_prediction(p)[0] for p in predictions]
    elif task:
        found = [fmod.fields_from_text(p) for p in predictions]
    else:
        found = []
    counts = _library_edit_counts if library else edit_counts
    return stats, found, [counts(p, r) for p, r in zip(predictions, references)]


def per_doc(predictions: list[str], references: list[str], task: str, workers: int = 0, library: bool = False):
    """:func:`_chunk` over the whole corpus, in ``workers`` processes for long ones; results in input order."""
    import os

    if not workers:
        workers = (os.cpu_count() or 1) if len(references) >= PARALLEL_FROM else 1
    if workers <= 1:
        return _chunk(predictions, references, task, library)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    step = -(-len(references) // (4 * workers))  # a few chunks per worker evens out long pages
    starts = range(0, len(references), step)
    # spawn, not fork: the caller may hold torch's threads, which a forked child can deadlock on
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(_chunk, [predictions[i:i + step] for i in starts],
                              [references[i:i + step] for i in starts], [task] * len(starts),
                              [library] * len(starts)))
    stats = [sum((p[0][k] for p in parts), []) for k in range(len(_METRICS))]
    return stats, sum((p[1] for p in parts), []), sum((p[2] for p in parts), [])


def _check_lengths(predictions: list[str], references: list[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("nothing to score: no references")


# ------------------------------------------------------------------------------------------ entry point

TASKS = ("ocr", "extract")


@dataclass
class EvalConfig:
    model: str = field(default="invoice-vlm-tiny", metadata={"help": "model folder or hub id (engine model)"})
    data: str = field(default="", metadata={"help": "dataset folder, or a manifest .jsonl of PDFs/images"})
    split: str = field(default="test", metadata={"help": "split to evaluate (dataset folders)"})
    out: str = field(default="", metadata={"help": "output folder (default: runs/eval/<model>-<split>)"})
    task: str = field(default="ocr", metadata={"help": "ocr (transcription) or extract (key fields as JSON)"})
    engine: str = field(default="model", metadata={"help": "model, tesseract or rapidocr"})
    predictions: str = field(default="", metadata={"help": "score this predictions .jsonl (id, prediction), or "
                                                            "a predict --out folder, instead of running an engine"})
    prompt: str = field(default="", metadata={"help": "model prompt (default: the task's)"})
    batch_size: int = field(default=8, metadata={"help": "pages per forward pass"})
    decode: str = field(default="auto", metadata={"help": DECODE_HELP})
    lexicon: str = field(default="auto", metadata={"help": LEXICON_HELP})
    workers: int = field(default=-1, metadata={"help": WORKERS_HELP})
    max_new_tokens: int = field(default=0, metadata={"help": "0: from the longest reference, plus 10%"})
    limit: int = field(default=0, metadata={"help": "evaluate only the first N samples (0: all)"})
    dpi: int = field(default=200, metadata={"help": "render resolution of manifest PDF pages"})
    tesseract_lang: str = field(default="", metadata={"help": "Tesseract languages (default: all installed "
                                                               "invoice languages)"})
    report: bool = field(default=True, metadata={"help": "write report.html"})
    ray: str = field(default="", metadata={"help": "run the model on Ray: 'local' (a Ray started here), 'auto' or "
                                                   "an address (a running cluster); '' one process"})
    actors: int = field(default=1, metadata={"help": "Ray: actors, each holding one model"})
    cpus_per_actor: float = field(default=1.0, metadata={"help": "Ray: CPUs reserved (and torch threads) per "
                                                                 "actor"})

    def __post_init__(self) -> None:
        from .engines import ENGINES

        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}, got {self.decode!r}")
        if self.ray and (self.engine != "model" or self.predictions):
            raise ValueError("--ray runs a model: it does not apply to --engine tesseract/rapidocr or --predictions")


def reference_for(sample, task: str) -> str:
    """What a prediction is compared with: the transcription, or for ``extract`` the canonical fields JSON (the
    exact training target; for a manifest with partly known fields, only those)."""
    if task == "extract":
        from ..fields import canonical_fields

        return canonical_fields(sample.fields)
    return sample.text


def load_samples(cfg: EvalConfig, pages_dir: Path, skipped: list[str]) -> list:
    from ..data import read_manifest, read_split

    data = Path(cfg.data)
    if data.is_file() or data.suffix == ".jsonl":
        samples = read_manifest(data, pages_dir, cfg.dpi, skipped)
    else:
        samples = read_split(data, cfg.split, skipped=skipped)
    if cfg.task == "extract":
        keep = [s for s in samples if s.fields]
        skipped += [f"{s.id}: no reference fields for the extract task" for s in samples if not s.fields]
        samples = keep
    return samples[: cfg.limit] if cfg.limit else samples


def read_predictions(path: Path, samples: list, skipped: list[str], task: str | None = None,
                     root: Path | None = None) -> tuple[list, list[str]]:
    """Predictions from a file (one JSON object a line: id, prediction), or from a ``predict --out`` folder (see
    :func:`read_job_predictions`); samples without one are skipped and named, as are lines that do not parse and
    ids the data does not have."""
    from ..data import json_line

    if path.is_dir():
        return read_job_predictions(path, samples, skipped, task, root)
    if not path.is_file():
        raise InvoiceVLMError(f"{path}: predictions file not found")
    by_id: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json_line(line, f"{path}:{lineno}")
                if not isinstance(row.get("id"), str) or not isinstance(row.get("prediction"), str):
                    raise InvoiceVLMError(f"{path}:{lineno}: expected string 'id' and 'prediction'")
            except InvoiceVLMError as e:
                skipped.append(str(e))
                continue
            by_id[row["id"]] = row["prediction"]
    known = {s.id for s in samples}
    skipped += [f"{path}: prediction for unknown id {i!r} ignored" for i in by_id if i not in known]
    kept = [s for s in samples if s.id in by_id]
    skipped += [f"{path}: no prediction for id {s.id!r}; left out" for s in samples if s.id not in by_id]
    return kept, [by_id[s.id] for s in kept]


def read_job_predictions(folder: Path, samples: list, skipped: list[str], task: str | None = None,
                         root: Path | None = None) -> tuple[list, list[str]]:
    """Predictions from a ``predict --out`` folder, matched to samples by file: a sample's image (resolved) is
    page 1 of that file; a manifest sample rendered from a PDF (``root``: the manifest's folder) is its page of
    that PDF. A sample whose file failed is left out with the file's error; ``task`` must be the job's."""
    from ..infer.files import iter_records, read_job

    job = read_job(folder)
    theirs = (job.get("identity") or {}).get("task")
    if task and theirs != task:
        raise InvoiceVLMError(f"{folder}: predictions of a --task {theirs} job; this evaluation is --task {task}")
    if not job.get("complete"):
        skipped.append(f"{folder}: the predict job is not complete (run the same predict command again); "
                       "scoring its finished shards")
    by_key: dict[tuple[str, int], str] = {}
    failed: dict[str, str] = {}
    for r in iter_records(folder):
        if r.get("error"):
            failed[str(r["file"])] = str(r["error"])
        elif isinstance(r.get("text"), str) and isinstance(r.get("page"), int):
            by_key[(str(r["file"]), r["page"])] = r["text"]

    def key(s) -> tuple[str, int]:
        if root is not None and s.meta.get("pdf"):
            return str((root / s.meta["pdf"]).resolve()), int(s.meta.get("pdf_page", 0)) + 1
        return str(Path(s.image).resolve()), 1

    kept, predictions = [], []
    for s in samples:
        k = key(s)
        if k in by_key:
            kept.append(s)
            predictions.append(by_key[k])
        elif k[0] in failed:
            skipped.append(f"{s.id}: left out: {failed[k[0]]}")
        else:
            skipped.append(f"{folder}: no prediction for {s.id!r} ({k[0]} page {k[1]}); left out")
    return kept, predictions


def score(samples: list, predictions: list[str], task: str, workers: int = 0, library: bool = False):
    """Text metrics, field scores (when the references have fields) and per-document rows (``library``: computed
    by the libraries' own code; the benchmark's baseline)."""
    from .. import fields as fmod

    references = [reference_for(s, task) for s in samples]
    _check_lengths(predictions, references)
    stats, predicted_fields, counts = per_doc(predictions, references, task, workers, library)
    scores = _score_all(predictions, references, stats, counts)
    cers = [_rate(c[0], c[1]) for c in counts]
    field_scores = None
    # Fields describe the whole invoice: a continuation page (page 2 of a synthetic invoice) is not asked for them.
    scored = [k for k, s in enumerate(samples) if s.fields and s.meta.get("page", 1) == 1]
    if scored:
        field_scores = fmod.score_fields([predicted_fields[k] for k in scored], [samples[k].fields for k in scored])
        # a field no reference knows (the real invoices list no due dates) has nothing to score
        field_scores["per_field"] = {k: v for k, v in field_scores["per_field"].items() if v["support"]}
        if task == "extract":
            field_scores["json_valid"] = sum(fmod.parse_prediction(predictions[k])[1] for k in scored) / len(scored)
    rows = [{"id": s.id, "reference": r, "prediction": p, "cer": c, "image": s.image, "fields": f}
            for s, p, r, c, f in zip(samples, predictions, references, cers, predicted_fields)]
    return scores, field_scores, rows


def main(cfg: EvalConfig, on_ray: Callable | None = None) -> dict[str, Any]:
    """Evaluate an engine (or a predictions file) on a dataset split or a manifest; writes the result files.

    ``on_ray``: how ``cfg.ray`` reads the samples, ``(cfg, samples, info, workdir, skipped) -> (samples,
    predictions)``; the executors sit above the harness, so the caller passes it (the CLI: ``jobs.eval_on_ray``)."""
    import tempfile
    import time

    if not cfg.data:
        raise InvoiceVLMError("eval: --data is required (a dataset folder or a manifest .jsonl)")
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="invoice-vlm-pages-") as tmp:
        samples = load_samples(cfg, Path(tmp), skipped)
        if not samples:
            raise InvoiceVLMError(f"{cfg.data}: nothing to evaluate" + (f" ({skipped[0]})" if skipped else ""))
        info: dict[str, Any] = {"data": cfg.data, "task": cfg.task, "engine": cfg.engine}
        if Path(cfg.data).is_dir():
            info["split"] = cfg.split
        t0 = time.perf_counter()
        if cfg.predictions:
            root = Path(cfg.data).parent if Path(cfg.data).is_file() else None
            samples, predictions = read_predictions(Path(cfg.predictions), samples, skipped, cfg.task, root)
            info.update(engine="file", predictions=cfg.predictions)
            if not samples:
                raise InvoiceVLMError(f"{cfg.predictions}: no prediction matches the data's samples")
        else:
            if cfg.ray:
                if on_ray is None:
                    raise InvoiceVLMError("eval: ray is set but no Ray executor was passed (jobs.eval_on_ray)")
                samples, predictions = on_ray(cfg, samples, info, Path(tmp), skipped)
                if not samples:
                    raise InvoiceVLMError(f"{cfg.data}: no page could be read" + (f" ({skipped[-1]})"
                                                                                   if skipped else ""))
            else:
                predictor = make_predictor(cfg, samples, info)
                try:
                    predictions = generate(predictor, samples, cfg.prompt or cfg.task)
                finally:
                    getattr(predictor, "close", lambda: None)()  # (the model's page workers)
            if cfg.engine != "model" and cfg.task == "extract":  # an OCR engine: fields from its text, as JSON
                from ..fields import fields_from_text

                predictions = [json.dumps(fields_from_text(p), ensure_ascii=False) for p in predictions]
            info["seconds"] = round(time.perf_counter() - t0, 2)
            info["pages_per_s"] = round(len(samples) / max(info["seconds"], 1e-9), 3)
        scores, field_scores, rows = score(samples, predictions, cfg.task)
        summary = {**scores, **info, "skipped": skipped, "environment": environment_info()}
        with staged_dir(out) as stage:
            with open(stage / "predictions.jsonl", "w", encoding="utf-8") as f:
                for r in rows:
                    f.write(json.dumps({k: v for k, v in r.items() if k != "image"}, ensure_ascii=False) + "\n")
            write_json(stage / "bleu.json", scores["bleu"])
            write_json(stage / "ter.json", scores["ter"])
            write_json(stage / "metrics.json", summary)
            if field_scores is not None:
                write_json(stage / "fields.json", field_scores)
            if cfg.report:
                from .report import write_report

                write_report(stage / "report.html", summary, rows, field_scores,
                             title=f"invoice-vlm eval: {info.get('model', info['engine'])} on {cfg.data}")
    return {**summary, "fields": field_scores, "out": str(out)}


def default_out(cfg: EvalConfig) -> Path:
    """runs/eval/<model, engine or predictions file>-<split or manifest name>"""
    who = Path(cfg.predictions).stem if cfg.predictions else (Path(cfg.model).name if cfg.engine == "model"
                                                               else cfg.engine)
    data = Path(cfg.data)
    return Path("runs") / "eval" / f"{who}-{cfg.split if data.is_dir() else data.stem}"


def make_predictor(cfg: EvalConfig, samples: list, info: dict[str, Any]):
    if cfg.engine != "model":
        from .engines import TESSERACT_LANGS, make_engine

        engine = make_engine(cfg.engine, **({"lang": cfg.tesseract_lang or TESSERACT_LANGS}
                                            if cfg.engine == "tesseract" else {}))
        info["engine_version"] = engine.version()
        return engine
    from ..infer import Predictor, default_dtype

    dtype = default_dtype("cpu")
    predictor = Predictor.from_pretrained(cfg.model, device="cpu", dtype=dtype, batch_size=cfg.batch_size,
                                          decode=cfg.decode, workers=cfg.workers, lexicon=cfg.lexicon,
                                          pages=len(samples))
    max_new = cfg.max_new_tokens or max_new_tokens_for(predictor.processor,
                                                       [reference_for(s, cfg.task) for s in samples])
    predictor.max_new_tokens = max_new
    info.update(model=cfg.model, dtype=dtype, max_new_tokens=max_new,
                **({"decode": predictor.decode} if predictor.unit else {}),
                **({"lexicon": predictor.lexicon.describe()} if predictor.lexicon is not None else {}))
    return predictor


def generate(predictor, samples: list, prompt: str) -> list[str]:
    from ..common import progress_bar
    from ..data import open_image

    predictions: list[str] = []
    with progress_bar("eval", "pages", transient=True) as progress:
        task = progress.add_task("eval", total=len(samples))
        for text in predictor.predict_iter((open_image(s.image) for s in samples), prompt):
            predictions.append(text)
            progress.advance(task)
    return predictions


def max_new_tokens_for(processor, texts: list[str]) -> int:
    """Room for the longest reference plus 10%: enough to finish, bounded so a looping model stops."""
    longest = max(len(processor.tokenizer(t)["input_ids"]) for t in texts)
    return int(longest * 1.1) + 8
