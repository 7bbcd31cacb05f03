"""``invoice-vlm bench eval``: how long scoring 1,000 predictions takes (target: under 5 s), stage by stage, against
the same pipeline run by the libraries' own code (sacrebleu's TER and chrF, jiwer's CER/WER): the baseline, which
must give identical numbers (the benchmark fails otherwise).

References are synthetic invoice transcriptions and fields; predictions are the references with a share of
the characters edited (seeded; ``noise``, default 2%, the CER the embedded model aims at). TER's shift search,
sacrebleu's pure-Python part, grows with the errors, so noisier predictions score slower."""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path
from typing import Any

BUDGET_S = 5.0


def _noisy(text: str, rng: random.Random, rate: float = 0.05) -> str:
    chars = list(text)
    for _ in range(int(len(chars) * rate)):
        i = rng.randrange(len(chars))
        op = rng.random()
        if op < 0.4:
            chars[i] = rng.choice("abcdefghijklmnopqrstuvwxyz0123456789.,€ ")
        elif op < 0.7:
            chars[i] = ""
        else:
            chars[i] += rng.choice("eaio1 ")
    return "".join(chars)


def make_pairs(n: int, seed: int = 0, noise: float = 0.02) -> tuple[list[Any], list[str], list[str]]:
    """n (sample, OCR prediction, extract prediction) triples from laid-out (not drawn) synthetic invoices."""
    from ..data import Sample
    from ..synth import generate
    from ..synth.content import public_fields
    from ..fields import canonical_fields

    cfg = generate.SynthConfig(n=n, max_items=6)
    rng = random.Random(seed)
    samples, ocr, extract = [], [], []
    for i in range(n):
        inv = generate.generate_invoice(seed, i, cfg)
        text = inv.pages[0].transcription()
        samples.append(Sample(id=f"doc{i}", image=Path(f"doc{i}.png"), text=text, fields=public_fields(inv.content)))
        ocr.append(_noisy(text, rng, noise))
        extract.append(_noisy(canonical_fields(samples[-1].fields), rng, noise / 2))
    return samples, ocr, extract


def bench(n: int = 1000, seed: int = 0, noise: float = 0.02) -> list[dict[str, Any]]:
    from ..evaluate import score

    samples, ocr, extract = make_pairs(n, seed, noise)
    rows = []

    def timed(stage: str, fn, baseline_s: float | None = None) -> Any:
        """Run and time one stage; ``baseline_s``: the baseline's seconds (the row shows the speed-up), or None."""
        t = time.perf_counter()
        result = fn()
        s = time.perf_counter() - t
        rows.append({"stage": stage, "documents": n, "noise": noise, "seconds": round(s, 2),
                     "vs_budget": f"{s / BUDGET_S:.2f}x", "speedup": f"{baseline_s / s:.2f}x" if baseline_s else "-"})
        return result, s

    for task, predictions in (("ocr", ocr), ("extract", extract)):
        what = "metrics + fields from text + per-page CER" if task == "ocr" else "metrics + JSON fields + per-page CER"
        base, base_s = timed(f"score {task} (baseline: sacrebleu TER/chrF, jiwer)",
                             lambda: score(samples, predictions, task, library=True))
        rows[-1]["speedup"] = "1.00x"
        mine, _ = timed(f"score {task}: {what}", lambda: score(samples, predictions, task), base_s)
        if _comparable(mine) != _comparable(base):
            raise RuntimeError(f"score {task}: the fast metrics differ from the libraries' results")
    from ..evaluate.report import write_report

    with tempfile.TemporaryDirectory() as tmp:
        summary, fields, doc_rows = score(samples, ocr, "ocr")
        timed("report.html (text only, no page images)",
              lambda: write_report(Path(tmp) / "report.html", summary, doc_rows, fields))
    return rows


def _comparable(result) -> tuple:
    """Everything score() returns that the metric implementations decide."""
    scores, fields, rows = result
    return ({k: v for k, v in scores.items() if k != "signatures"}, scores["signatures"], fields,
            [(r["cer"], r["fields"]) for r in rows])
