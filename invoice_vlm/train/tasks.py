"""Tasks, mixed by ratio: each training page becomes one (image, prompt, target) example.

- ``ocr``: prompt ``ocr`` (configurable), target the transcription.
- ``extract``: prompt ``extract``, target the key fields as canonical JSON (schema order, compact, UTF-8); only
  pages that hold the whole invoice (one-page invoices), since the fields describe all of it.
- ``answer``: prompt ``answer en <question>`` (PaliGemma's QA prefix), target the answer as printed.

The choice is a pure function of (seed, page id), so a resumed or re-run training sees the same examples.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import Sample

EXTRACT_PROMPT = "extract"
FIELD_ORDER = ("invoice_number", "date", "due_date", "vendor", "vendor_address", "customer", "customer_address",
               "currency", "subtotal", "tax", "total", "line_items")
ITEM_ORDER = ("description", "quantity", "unit_price", "amount")


@dataclass
class Example:
    id: str
    image: Path
    task: str
    prompt: str
    target: str


def canonical_fields(fields: dict[str, Any]) -> str:
    """The extraction target: key fields as printed, in schema order, compact JSON."""
    out: dict[str, Any] = {}
    for key in FIELD_ORDER:
        if key == "line_items":
            out[key] = [{k: item.get(k, "") for k in ITEM_ORDER} for item in fields.get(key) or []]
        elif key in fields:
            out[key] = fields[key]
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def can_do(sample: Sample, task: str) -> bool:
    if task == "ocr":
        return bool(sample.text.strip())
    if task == "extract":
        return bool(sample.fields) and sample.meta.get("pages", 1) == 1
    if task == "answer":
        return bool(sample.qa)
    return False


def build_examples(samples: list[Sample], ratios: dict[str, float], seed: int, ocr_prompt: str = "ocr") -> list[Example]:
    tasks = [t for t, r in ratios.items() if r > 0]
    out = []
    for s in samples:
        rng = random.Random(f"tasks/{seed}/{s.id}")
        possible = [t for t in tasks if can_do(s, t)] or ["ocr"]
        task = rng.choices(possible, weights=[ratios.get(t, 1.0) for t in possible])[0]
        if task == "extract":
            out.append(Example(s.id, s.image, task, EXTRACT_PROMPT, canonical_fields(s.fields)))
        elif task == "answer":
            qa = rng.choice(s.qa)
            out.append(Example(s.id, s.image, task, f"answer en {qa['question']}", qa["answer"]))
        else:
            out.append(Example(s.id, s.image, "ocr", ocr_prompt, s.text))
    return out


def to_dataset(examples: list[Example]):
    """A ``datasets.Dataset`` with an ``image`` column (decoded lazily), as TRL's vision path expects."""
    import datasets

    ds = datasets.Dataset.from_dict({
        "id": [e.id for e in examples], "image": [str(e.image) for e in examples],
        "prompt": [e.prompt for e in examples], "target": [e.target for e in examples],
    })
    return ds.cast_column("image", datasets.Image())
