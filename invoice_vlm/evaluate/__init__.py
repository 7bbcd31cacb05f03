"""Evaluation: generate over a dataset split and score it.

Run as::

    invoice-vlm eval --model runs/tiny-full/model --data data/synth --split test --out runs/tiny-full/eval

Writes ``bleu.json`` and ``ter.json`` in exactly the shape of Hugging Face ``evaluate``'s ``bleu`` and ``ter``
metrics (computed with sacrebleu, no network), ``metrics.json`` (those plus chrF, CER, WER, exact match and
sacrebleu signatures) and ``predictions.jsonl``. The metric functions are pure functions over lists of strings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common import InvoiceVLMError, environment_info, staged_dir, write_json

# ------------------------------------------------------------------------------------------ metrics


def bleu(predictions: list[str], references: list[str]) -> dict[str, Any]:
    """``evaluate.load("bleu")`` semantics: 13a tokenisation, 4-grams, no smoothing, fractions not percent."""
    _check_lengths(predictions, references)
    score = _bleu_metric().corpus_score(predictions, [references])
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
    score = _ter_metric().corpus_score(predictions, [references])
    return {"score": score.score, "num_edits": score.num_edits, "ref_length": score.ref_length}


def chrf(predictions: list[str], references: list[str]) -> float:
    _check_lengths(predictions, references)
    return _chrf_metric().corpus_score(predictions, [references]).score


def cer(predictions: list[str], references: list[str]) -> float:
    """Character error rate over the corpus (edits / reference characters), case and newlines counted."""
    import jiwer

    _check_lengths(predictions, references)
    return float(jiwer.cer(references, predictions))


def wer(predictions: list[str], references: list[str]) -> float:
    """Word error rate over the corpus; words are whitespace-separated (newlines are whitespace)."""
    import jiwer

    _check_lengths(predictions, references)
    refs = [" ".join(r.split()) for r in references]
    hyps = [" ".join(h.split()) for h in predictions]
    return float(jiwer.wer(refs, hyps))


def exact_match(predictions: list[str], references: list[str]) -> float:
    _check_lengths(predictions, references)
    return sum(p.strip() == r.strip() for p, r in zip(predictions, references)) / len(references)


def _bleu_metric():
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize="13a", smooth_method="none", max_ngram_order=4)


def _ter_metric():
    from sacrebleu.metrics import TER

    return TER(normalized=False, no_punct=False, asian_support=False, case_sensitive=False)


def _chrf_metric():
    from sacrebleu.metrics import CHRF

    return CHRF()


def signatures() -> dict[str, str]:
    """sacrebleu's signature of each metric's settings, so a number can be reproduced exactly."""
    sigs = {}
    for name, make in (("bleu", _bleu_metric), ("ter", _ter_metric), ("chrf", _chrf_metric)):
        metric = make()
        metric.corpus_score(["x"], [["x"]])  # sacrebleu fills the signature in on first use
        sigs[name] = str(metric.get_signature())
    return sigs


def score_all(predictions: list[str], references: list[str]) -> dict[str, Any]:
    b, t = bleu(predictions, references), ter(predictions, references)
    return {
        "bleu": b, "ter": t, "chrf": chrf(predictions, references), "cer": cer(predictions, references),
        "wer": wer(predictions, references), "exact_match": exact_match(predictions, references),
        "num_samples": len(references), "signatures": signatures(),
    }


def _check_lengths(predictions: list[str], references: list[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("nothing to score: no references")


# ------------------------------------------------------------------------------------------ entry point


@dataclass
class EvalConfig:
    model: str = field(default="", metadata={"help": "model folder or hub id"})
    data: str = field(default="", metadata={"help": "dataset folder"})
    split: str = field(default="test", metadata={"help": "split to evaluate"})
    out: str = field(default="", metadata={"help": "output folder (default: <model>/../eval-<split>)"})
    prompt: str = field(default="ocr", metadata={"help": "task prompt"})
    batch_size: int = field(default=8, metadata={"help": "pages per forward pass"})
    max_new_tokens: int = field(default=0, metadata={"help": "0: from the longest reference, plus 10%"})
    limit: int = field(default=0, metadata={"help": "evaluate only the first N samples (0: all)"})


def run(predictor, samples, out: Path, prompt: str = "ocr", extra: dict | None = None) -> dict[str, Any]:
    """Generate for ``samples`` with ``predictor``, score, and write the result files into ``out``."""
    from rich.progress import Progress

    from ..data import open_image

    references = [s.text for s in samples]
    predictions: list[str] = []
    with Progress(transient=True) as progress:
        task = progress.add_task("eval", total=len(samples))
        images = (open_image(s.image) for s in samples)
        for text in predictor.predict_iter(images, prompt):
            predictions.append(text)
            progress.advance(task)
    scores = score_all(predictions, references)
    with staged_dir(out) as stage:
        with open(stage / "predictions.jsonl", "w", encoding="utf-8") as f:
            for s, p in zip(samples, predictions):
                f.write(json.dumps({"id": s.id, "reference": s.text, "prediction": p}, ensure_ascii=False) + "\n")
        write_json(stage / "bleu.json", scores["bleu"])
        write_json(stage / "ter.json", scores["ter"])
        write_json(stage / "metrics.json", {**scores, **(extra or {}), "environment": environment_info()})
    return scores


def main(cfg: EvalConfig) -> dict[str, Any]:
    from ..data import read_split
    from ..infer import Predictor
    from ..models import load

    if not cfg.model:
        raise InvoiceVLMError("eval: --model is required")
    if not cfg.data:
        raise InvoiceVLMError("eval: --data is required")
    samples = read_split(cfg.data, cfg.split)
    if cfg.limit:
        samples = samples[: cfg.limit]
    model, processor = load(cfg.model)
    max_new = cfg.max_new_tokens or max_new_tokens_for(processor, [s.text for s in samples])
    predictor = Predictor(model, processor, max_new_tokens=max_new, batch_size=cfg.batch_size)
    out = Path(cfg.out) if cfg.out else Path(cfg.model).parent / f"eval-{cfg.split}"
    return run(predictor, samples, out, cfg.prompt,
               extra={"model": cfg.model, "data": cfg.data, "split": cfg.split, "max_new_tokens": max_new})


def max_new_tokens_for(processor, texts: list[str]) -> int:
    """Room for the longest reference plus 10%: enough to finish, bounded so a looping model stops."""
    longest = max(len(processor.tokenizer(t)["input_ids"]) for t in texts)
    return int(longest * 1.1) + 8
