"""Export: a trained model (a run's ``model/`` or any ``checkpoint-N``) as a release folder, with a model card
that carries the measured metrics.

Run as::

    invoice-vlm export --model runs/pretrain-tiny/checkpoint-1000 --out models/invoice-vlm-tiny \
        --eval runs/pretrain-tiny/eval-test --dtype bfloat16

The folder is what ``from_pretrained`` and the Hub expect: ``config.json``, ``model.safetensors``, the processor
and tokenizer files, ``README.md`` (the card) and ``export.json`` (source, dtype, sizes, versions).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .common import InvoiceVLMError, environment_info, staged_dir, write_json

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def read_eval(folder: Path) -> dict[str, Any]:
    """The headline numbers of one ``invoice-vlm eval`` output folder."""
    metrics = folder / "metrics.json"
    if not metrics.is_file():
        raise InvoiceVLMError(f"{folder}: no metrics.json (not an evaluation output folder)")
    m = json.loads(metrics.read_text(encoding="utf-8"))
    row = {"name": folder.name, "data": m.get("data", ""), "split": m.get("split", ""), "task": m.get("task", "ocr"),
           "engine": m.get("engine", "model"), "pages": m.get("num_samples"), "bleu": m["bleu"]["bleu"],
           "ter": m["ter"]["score"], "cer": m["cer"], "wer": m["wer"], "chrf": m["chrf"]}
    if (folder / "fields.json").is_file():
        f = json.loads((folder / "fields.json").read_text(encoding="utf-8"))
        row["field_f1"] = f["overall"]["f1"]
        row["field_exact_match"] = f["overall"]["exact_match"]
    return row


def metrics_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| evaluation | data | pages | BLEU | TER | CER | WER | field EM | field F1 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        fem = f"{r['field_exact_match']:.3f}" if "field_exact_match" in r else "-"
        ff1 = f"{r['field_f1']:.3f}" if "field_f1" in r else "-"
        what = f"{r['name']} ({r['task']}{', ' + r['engine'] if r['engine'] not in ('model', 'file') else ''})"
        lines.append(f"| {what} | {r['data']} {r['split'] if not str(r['data']).endswith('.jsonl') else ''} | "
                     f"{r['pages']} | {r['bleu']:.4f} | {r['ter']:.2f} | {r['cer']:.4f} | {r['wer']:.4f} | {fem} | "
                     f"{ff1} |")
    return "\n".join(lines)


def model_card(name: str, info: dict[str, Any], evals: list[dict[str, Any]], body: str = "") -> str:
    front = ["---", "library_name: transformers", "pipeline_tag: image-text-to-text", "license: apache-2.0",
             "tags:", "- invoice-vlm", "- ocr", "- invoices", f"- {info.get('model_type', 'vision-language')}", "---"]
    lines = [*front, "", f"# {name}", ""]
    if body:
        lines += [body.strip(), ""]
    lines += ["## Model", "",
              f"- architecture: `{info['architecture']}` ({info['parameters'] / 1e6:.1f}M parameters)",
              f"- weights: `model.safetensors`, {info['dtype']}, {info['weights_mb']:.1f} MB",
              f"- exported from: `{info['source']}`", ""]
    if evals:
        lines += ["## Measured", "", metrics_table(evals), "",
                  "BLEU and TER as Hugging Face `evaluate` computes them (sacrebleu, 13a, TER case-insensitive); "
                  "CER/WER with jiwer; field scores after normalising dates, amounts and currencies "
                  "(`invoice_vlm.evaluate.fields`). Reproduce with `invoice-vlm eval` (see `export.json`).", ""]
    lines += ["## Use", "", "```python", "from transformers import AutoModelForImageTextToText, AutoProcessor", "",
              f'processor = AutoProcessor.from_pretrained("{name}")',
              f'model = AutoModelForImageTextToText.from_pretrained("{name}")',
              'inputs = processor(images=page, text="<image>ocr", return_tensors="pt")',
              "text = processor.decode(model.generate(**inputs, max_new_tokens=512)[0, inputs['input_ids'].shape[1]:],",
              "                        skip_special_tokens=True)", "```", "",
              "or `invoice-vlm predict --model <this folder> page.png`.", ""]
    return "\n".join(lines)


def export(model: str, out: str | Path, dtype: str = "bfloat16", evals: list[str | Path] | None = None,
           name: str | None = None, body: str = "") -> Path:
    """Write ``model`` (folder or checkpoint) to ``out`` in ``dtype`` with its processor and a model card."""
    from .models import count_parameters, load

    if dtype not in DTYPES:
        raise InvoiceVLMError(f"export: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    eval_rows = [read_eval(Path(e)) for e in evals or []]  # read first: a bad folder fails before any writing
    m, processor = load(model)
    m.to(DTYPES[dtype])
    out = Path(out)
    with staged_dir(out) as stage:
        m.save_pretrained(stage, safe_serialization=True)
        processor.save_pretrained(stage)
        weights = sum(p.stat().st_size for p in stage.glob("*.safetensors"))
        info = {"source": str(model), "dtype": dtype, "parameters": count_parameters(m),
                "weights_mb": weights / 1e6, "architecture": type(m).__name__, "model_type": m.config.model_type}
        (stage / "README.md").write_text(model_card(name or out.name, info, eval_rows, body), encoding="utf-8")
        write_json(stage / "export.json", {**info, "evaluations": eval_rows, "environment": environment_info()})
    return out
