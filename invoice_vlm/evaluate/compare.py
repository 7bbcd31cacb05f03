"""Evaluation runs side by side (``invoice-vlm compare DIR1 DIR2 ...``): one column per run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..common import InvoiceVLMError

# (label, path in metrics.json or fields.json, format, higher is better)
ROWS = [
    ("BLEU", ("metrics", "bleu", "bleu"), "{:.4f}", True),
    ("TER", ("metrics", "ter", "score"), "{:.2f}", False),
    ("chrF", ("metrics", "chrf"), "{:.2f}", True),
    ("CER", ("metrics", "cer"), "{:.4f}", False),
    ("WER", ("metrics", "wer"), "{:.4f}", False),
    ("exact match", ("metrics", "exact_match"), "{:.3f}", True),
    ("field F1", ("fields", "overall", "f1"), "{:.3f}", True),
    ("field exact match", ("fields", "overall", "exact_match"), "{:.3f}", True),
    ("all fields correct", ("fields", "all_fields_correct"), "{:.3f}", True),
    ("pages", ("metrics", "num_samples"), "{}", None),
    ("pages/s", ("metrics", "pages_per_s"), "{:.3f}", True),
]


def _load(run: Path) -> dict[str, Any]:
    metrics = run / "metrics.json"
    if not metrics.is_file():
        raise InvoiceVLMError(f"{run}: no metrics.json here (not an evaluation folder)")
    try:
        d = {"metrics": json.loads(metrics.read_text(encoding="utf-8"))}
        if (run / "fields.json").is_file():
            d["fields"] = json.loads((run / "fields.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InvoiceVLMError(f"{run}: unreadable JSON ({e})") from None
    return d


def _get(d: dict, path: tuple[str, ...]):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def compare(runs: list[Path]) -> dict[str, Any]:
    """{"runs": [names], "rows": [(label, [cells], best index or None)], "fields": per-field F1 rows}."""
    loaded = [_load(Path(r)) for r in runs]
    names = [_name(Path(r), d) for r, d in zip(runs, loaded)]
    rows = []
    for label, path, fmt, higher in ROWS:
        values = [_get(d, path) for d in loaded]
        if all(v is None for v in values):
            continue
        best = None
        nums = [(v, i) for i, v in enumerate(values) if isinstance(v, (int, float))]
        if higher is not None and len(nums) > 1:
            best = (max if higher else min)(nums)[1]
        rows.append((label, ["-" if v is None else fmt.format(v) for v in values], best))
    fields = sorted({k for d in loaded for k in (_get(d, ("fields", "per_field")) or {})})
    for key in fields:
        values = [_get(d, ("fields", "per_field", key, "f1")) for d in loaded]
        nums = [(v, i) for i, v in enumerate(values) if isinstance(v, (int, float))]
        rows.append((f"F1 {key}", ["-" if v is None else f"{v:.3f}" for v in values],
                     max(nums)[1] if len(nums) > 1 else None))
    return {"runs": names, "rows": rows}


def _name(run: Path, d: dict) -> str:
    m = d["metrics"]
    what = m.get("model") if m.get("engine") == "model" else m.get("engine")
    return f"{run.name} ({Path(str(what)).name})" if what else run.name


def rich_table(table: dict[str, Any]):
    from rich.table import Table

    t = Table(title="evaluation runs")
    t.add_column("metric")
    for name in table["runs"]:
        t.add_column(name, justify="right")
    for label, cells, best in table["rows"]:
        t.add_row(label, *[f"[bold green]{c}[/]" if i == best else c for i, c in enumerate(cells)])
    return t


def markdown(table: dict[str, Any]) -> str:
    lines = ["| metric | " + " | ".join(table["runs"]) + " |", "|---|" + "---:|" * len(table["runs"])]
    for label, cells, best in table["rows"]:
        lines.append(f"| {label} | " + " | ".join(f"**{c}**" if i == best else c for i, c in enumerate(cells)) + " |")
    return "\n".join(lines) + "\n"
