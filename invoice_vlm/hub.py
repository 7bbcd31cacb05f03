"""Export and push: a trained model as a release folder that plain transformers loads, its model card carrying the
measured metrics, and upload of models and synthetic datasets to the Hugging Face Hub.

Run as::

    invoice-vlm export --model runs/pretrain-tiny/checkpoint-1000 --out models/invoice-vlm-tiny \
        --eval runs/pretrain-tiny/eval-test --dtype bf16
    invoice-vlm export --model runs/my-lora --out release --merge-lora      # LoRA merged into its base
    invoice-vlm export --model runs/my-lora --out release-adapter --adapter-only
    invoice-vlm push --model release --repo-id acme/invoice-ocr
    invoice-vlm push-dataset --data data/synth --repo-id acme/synthetic-invoices

A full export is ``config.json``, ``model.safetensors``, the processor and tokenizer files, ``README.md`` (the
card) and ``export.json`` (source, dtype, sizes, evaluations, versions); an adapter export is the PEFT folder
(``adapter_config.json``, ``adapter_model.safetensors``) with the processor and the card. Every output folder is
written to a staging folder first and moved in place only when complete.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from .common import (InvoiceVLMError, complete_checkpoints, dtype_name, environment_info, staged_dir, torch_dtype,
                     write_json)

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


# --- what is being exported -------------------------------------------------------------------------------------

def _is_model(p: Path) -> bool:
    return (p / "config.json").is_file() and any(p.glob("*.safetensors"))


def _is_adapter(p: Path) -> bool:
    return (p / "adapter_config.json").is_file()


def _checkpoints(run: Path) -> list[Path]:
    return complete_checkpoints(run)  # not one a kill cut short mid-save


def resolve_source(model: str, want_adapter: bool) -> tuple[str, Path | None]:
    """(``"model"`` | ``"adapter"``, folder) for a model folder, an adapter folder, a checkpoint or a run folder
    (its ``model/`` or ``adapter/``, else its newest checkpoint). A hub id or the embedded name: ("model", None)."""
    from .models import EMBEDDED, embedded_model

    if model == EMBEDDED:
        return "model", embedded_model()
    p = Path(model)
    if not p.exists():
        if model.count("/") == 1 and not model.startswith((".", "/", "~")):
            return "model", None  # a hub id: transformers resolves it
        raise InvoiceVLMError(f"{model}: not found")
    if not p.is_dir():
        raise InvoiceVLMError(f"{model}: not a folder")
    if (p / "run.json").is_file():  # a training run: pick what it produced
        order = ("adapter", "model") if want_adapter else ("model", "adapter")
        for sub in order:
            if _is_adapter(p / sub) or _is_model(p / sub):
                p = p / sub
                break
        else:
            ckpts = [c for c in _checkpoints(p) if _is_adapter(c) or _is_model(c)]
            if not ckpts:
                raise InvoiceVLMError(f"{model}: a run folder without a model, an adapter or a checkpoint yet")
            p = ckpts[-1]
    if _is_adapter(p):
        return "adapter", p
    if _is_model(p):
        return "model", p
    raise InvoiceVLMError(f"{p}: no model here (neither config.json with safetensors weights nor a PEFT "
                          "adapter_config.json)")


def run_info(folder: Path | None) -> dict[str, Any]:
    """The ``run.json`` of the training run a folder came from (itself or its parent), else {}."""
    if folder is None:
        return {}
    for d in (folder, folder.parent):
        if (d / "run.json").is_file():
            try:
                return json.loads((d / "run.json").read_text(encoding="utf-8"))
            except ValueError:
                return {}
    return {}


def adapter_base(adapter: Path) -> str:
    cfg = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise InvoiceVLMError(f"{adapter / 'adapter_config.json'}: no base_model_name_or_path")
    return base


def _adapter_processor(adapter: Path, base_name: str):
    """The processor saved with the adapter (training saves it there), else the base model's."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(adapter if (adapter / "processor_config.json").is_file() else base_name)


def _load_merged(adapter: Path, base_name: str):
    """Base model in float32 plus the adapter, merged (QLoRA adapters too: the base is loaded unquantised)."""
    from peft import PeftModel

    from .models import load

    try:
        base, _ = load(base_name)
    except InvoiceVLMError as e:
        raise InvoiceVLMError(f"{adapter}: base model of the adapter cannot be loaded: {e}") from None
    processor = _adapter_processor(adapter, base_name)
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    merged.eval()
    return merged, processor


# --- the model card ---------------------------------------------------------------------------------------------

USAGE = '''from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

model_id = "{name}"
processor = AutoProcessor.from_pretrained(model_id)
model = AutoModelForImageTextToText.from_pretrained(model_id)
page = Image.open("invoice.png").convert("RGB")
inputs = processor(images=page, text="<image>{prompt}", return_tensors="pt").to(model.dtype)
out = model.generate(**inputs, max_new_tokens={max_new_tokens}, do_sample=False)
print(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())'''

USAGE_ADAPTER = '''from PIL import Image
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor

adapter_id = "{name}"
processor = AutoProcessor.from_pretrained(adapter_id)
model = AutoModelForImageTextToText.from_pretrained("{base}")
model = PeftModel.from_pretrained(model, adapter_id)
page = Image.open("invoice.png").convert("RGB")
inputs = processor(images=page, text="<image>{prompt}", return_tensors="pt").to(model.dtype)
out = model.generate(**inputs, max_new_tokens={max_new_tokens}, do_sample=False)
print(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())'''


USAGE_ROWS = '''from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

model_id = "{name}"
processor = AutoProcessor.from_pretrained(model_id)
model = AutoModelForImageTextToText.from_pretrained(model_id)
row = Image.open("row.png").convert("L")  # one text row, cut from a page
# as the model reads every row: {height} px high (at most {max_width} px wide), then {margin} px of white paper, on
# a canvas a multiple of {multiple} px wide
width = max({multiple}, min({max_width}, round(row.width * {height} / row.height)))
canvas = Image.new("L", (-(-(width + {margin}) // {multiple}) * {multiple}, {height}), 255)
canvas.paste(row.resize((width, {height}), Image.Resampling.BILINEAR), (0, 0))
inputs = processor(images=canvas.convert("RGB"), text="<image><bos>", return_tensors="pt").to(model.dtype)
out = model.generate(**inputs, max_new_tokens={max_new_tokens}, do_sample=False)
print(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())'''


# Appended to USAGE_ROWS when the export ships a CTC head (models.CtcHead): what the engine does with it.
USAGE_CTC = '''
# the CTC head beside the weights reads the same row in one pass (invoice-vlm --decode ctc; by default the engine
# also lets the decoder choose among the head's best readings)
import os
import torch
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file

path = os.path.join(model_id, "{file}") if os.path.isdir(model_id) else hf_hub_download(model_id, "{file}")
head = load_file(path)
tokens = model.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output  # (1, cells, hidden)
cols = tokens.shape[1] // {rows}  # each column's {rows} cells side by side, {frames} CTC frames a column
grid = tokens.view({rows}, cols, -1).transpose(0, 1).reshape(cols, -1)
logits = torch.nn.functional.linear(grid, head["weight"].to(grid.dtype), head["bias"].to(grid.dtype))
best = logits.view(cols * {frames}, -1).argmax(-1).tolist()
blank = logits.shape[-1] // {frames} - 1  # the last index
ids = [t for i, t in enumerate(best) if t != blank and (i == 0 or t != best[i - 1])]
print(processor.tokenizer.decode(ids).strip())'''


def card_metadata(name: str, info: dict[str, Any], evals: list[dict[str, Any]], run: dict[str, Any]):
    """YAML front matter through huggingface_hub's ``ModelCardData`` (``model-index`` from the evaluations)."""
    from huggingface_hub import EvalResult, ModelCardData

    results = []
    for r in evals:
        dataset = str(r["data"]) or r["name"]
        for metric, key in (("bleu", "bleu"), ("ter", "ter"), ("cer", "cer")):
            # dataset_config keeps evaluations of one dataset apart (model-index groups results by type, config
            # and split: the OCR and extract evaluations of one test split would merge into one entry)
            results.append(EvalResult(task_type="image-to-text", task_name=f"invoice {r['task']}",
                                      dataset_type=Path(dataset).name or dataset, dataset_name=r["name"],
                                      dataset_config=r["name"], dataset_split=r["split"] or None, metric_type=metric,
                                      metric_name=metric.upper(), metric_value=round(float(r[key]), 4)))
    base = str(info.get("base_model") or run.get("base_model") or "")
    # only a hub id means something on the Hub: a local folder (runs/x/base, /abs/path) or a fresh tiny-random is left out
    hub_base = base if base.count("/") == 1 and not base.startswith((".", "/", "~", "runs/")) and not Path(base).exists() \
        else None
    data = run.get("config", {}).get("data")
    datasets = [Path(d).name for d in (data if isinstance(data, list) else [data])] if data else None
    return ModelCardData(
        library_name="peft" if info.get("kind") == "adapter" else "transformers", pipeline_tag="image-text-to-text",
        license="apache-2.0", base_model=hub_base,
        datasets=datasets, tags=["invoice-vlm", "ocr", "invoices", info.get("model_type", "vision-language")],
        model_name=name, eval_results=results or None)


def model_card(name: str, info: dict[str, Any], evals: list[dict[str, Any]], body: str = "",
               run: dict[str, Any] | None = None) -> str:
    run = run or {}
    cfg = run.get("config", {})
    prompt = cfg.get("prompt", "ocr")
    front = card_metadata(name, info, evals, run).to_yaml()
    lines = ["---", front.rstrip(), "---", "", f"# {name}", ""]
    if body:
        lines += [body.strip(), ""]
    reading = info.get("reading")
    if reading:
        use = ("Reading invoices one text row at a time: `invoice-vlm predict`, `eval` and `serve` cut each page "
               "into rows (pixels only: deskew, projection profile, rules and QR codes removed; "
               "`invoice_vlm.rows`), read the rows in batches and join them top to bottom, one row a line. Key "
               "fields (`--task extract`) come from that transcription through the rule-based field reader. Check "
               "its numbers below on your own documents before relying on it (`invoice-vlm eval`).")
    else:
        use = ("Reading invoices: full-page transcription (prompt `ocr`: text in reading order, rows top to bottom, "
               "each row left to right) and key-field extraction to JSON (prompt `extract`), one page image at a "
               "time. Check its numbers below on your own documents before relying on it (`invoice-vlm eval`).")
    lines += ["## Intended use", "", use, "",
              "## Model", "",
              f"- architecture: `{info['architecture']}` ({info['parameters'] / 1e6:.1f}M parameters)",
              f"- weights: `{info['weights_file']}`, {info['dtype']}, {info['weights_mb']:.1f} MB",
              f"- exported from: `{info['source']}`" + (" (LoRA merged into its base)" if info.get("merged") else "")
              + (f", its weights averaged with {', '.join(f'`{p}`' for p in info['averaged_with'])}"
                 if info.get("averaged_with") else ""),
              ""]
    if reading:
        lines[-1:-1] = [f"- reading unit: one text row, scaled to {reading['height']} px high (widths up to "
                        f"{reading['max_width']} px, padded to a multiple of {reading['multiple']}), recorded in "
                        "`config.json` under `reading`"]
    if info.get("base_model"):
        lines += [f"- base model: `{info['base_model']}`", ""]
    if cfg and run.get("kind") == "pretrain":
        stages = ", ".join(f"random strings {st['strings']:.0%} until step {st['until']}" if st.get("until") else
                           f"then {st['strings']:.0%}" for st in cfg.get("stages", []))
        start = f"from `{cfg['init']}`" if cfg.get("init") else "from scratch"
        real = (f", rows of born-digital PDFs ({', '.join(f'`{d}`' for d in cfg['pdf_banks'])}: text-layer "
                "labels)" if cfg.get("pdf_banks") else "")
        lines += ["## Training", "",
                  f"- {start} (`invoice-vlm pretrain`) on rows of synthetic invoices: "
                  f"{', '.join(f'`{d}`' for d in cfg.get('data', []))}{real}, and random strings drawn as rows "
                  f"({stages})",
                  f"- {cfg.get('max_steps')} steps of {cfg.get('batch_size')} rows, AdamW, learning rate "
                  f"{cfg.get('learning_rate')} (cosine), CTC loss on the image tokens beside the decoder's (weight "
                  f"{cfg.get('ctc_weight')}; "
                  + (f"its head is `{info['ctc_head']['file']}`, the engine's reader" if info.get("ctc_head") else
                     "the head is not in this export") + f"), seed {cfg.get('seed')}", ""]
    elif cfg:
        sft = run.get("sft", {})
        lines += ["## Training", "",
                  f"- data: `{cfg.get('data')}`" + (f" ({run['data_identity']})" if run.get("data_identity") else ""),
                  f"- method: {cfg.get('method')}, tasks: {json.dumps(cfg.get('tasks', {}))}, seed {cfg.get('seed')}",
                  f"- steps: {sft.get('max_steps')}, batch {sft.get('per_device_train_batch_size')}, learning rate "
                  f"{sft.get('learning_rate')} ({sft.get('lr_scheduler_type')})",
                  f"- started from: `{run.get('base_model')}`", ""]
    if evals:
        lines += ["## Evaluation", "", metrics_table(evals), "",
                  "BLEU and TER as Hugging Face `evaluate` computes them (sacrebleu, 13a, TER case-insensitive); "
                  "CER/WER with jiwer; field scores after normalising dates, amounts and currencies "
                  "(`invoice_vlm.fields`). Reproduce with `invoice-vlm eval` (see `export.json`).", ""]
    else:
        lines += ["## Evaluation", "", "No evaluation was attached to this export (`--eval`).", ""]
    trained_on = ("synthetic invoices and rows of born-digital PDFs" if cfg.get("pdf_banks")
                  else "synthetic invoices only")
    lines += ["## Limitations", "",
              f"- Trained on {trained_on}: real scans, photos, handwriting, unusual layouts and languages outside "
              "the training locales read worse (see the real-invoice row above, where present).",
              "- Fields are read as printed and normalised by the evaluator, not validated.",
              "- Greedy decoding can repeat a line on pages longer than its training pages." if not reading else
              "- A page reads only as well as it is cut into rows: skewed photos and dense tables cost the most.", ""]
    if reading:
        from .models import ROW_MARGIN

        snippet = USAGE_ROWS.format(name=name, height=reading["height"], multiple=reading["multiple"],
                                    max_width=reading["max_width"], margin=ROW_MARGIN, max_new_tokens=256)
        if info.get("ctc_head"):
            snippet += USAGE_CTC.format(file=info["ctc_head"]["file"], frames=info["ctc_head"]["frames"],
                                        rows=reading["height"] // reading["multiple"])
        tail = "Whole pages and PDFs: `invoice-vlm predict --model <this folder> invoice.pdf` (cuts them into rows)."
    else:
        snippet = (USAGE_ADAPTER if info.get("kind") == "adapter" else USAGE).format(
            name=name, base=info.get("base_model", ""), prompt=prompt, max_new_tokens=512)
        tail = "or `invoice-vlm predict --model <this folder> invoice.png`."
    lines += ["## Use", "", "```python", snippet, "```", "", tail, ""]
    return "\n".join(lines)


def usage_snippet(card: str) -> str:
    """The Python block of a card's "Use" section (tests run it)."""
    m = re.search(r"## Use\n\n```python\n(.*?)\n```", card, re.S)
    if not m:
        raise InvoiceVLMError("model card: no usage snippet")
    return m.group(1)


# --- export -----------------------------------------------------------------------------------------------------

def average_weights(model, others: list[Path]) -> None:
    """Set ``model``'s weights to the mean of its own and those of ``others``, checkpoints of the same model later in
    one run (the mean of the last few is usually a little better than the last alone). Each is loaded as transformers
    loads it, so saved names and tied weights are its business."""
    from .models import load

    own = model.state_dict()
    total = {k: v.detach().float().clone() for k, v in own.items() if v.is_floating_point()}
    for folder in others:
        theirs = load(str(folder))[0].state_dict()
        if theirs.keys() != own.keys():
            odd = sorted(theirs.keys() ^ own.keys())[0]
            raise InvoiceVLMError(f"{folder}: not the same model (weight {odd!r} in one only)")
        for k in total:
            if theirs[k].shape != total[k].shape:
                raise InvoiceVLMError(f"{folder}: {k} has shape {tuple(theirs[k].shape)}, not {tuple(total[k].shape)}")
            total[k] += theirs[k].float()
    n = len(others) + 1
    model.load_state_dict({k: (v / n).to(own[k].dtype) for k, v in total.items()}, strict=False)


def _ctc_head(folder: Path | None, model, others: list[Path]):
    """A row reader's CTC head (models.CtcHead) from ``folder``, averaged with those of ``others`` as the weights
    are; None when the model has none. Averaged checkpoints must all have one."""
    from .models import CTC_HEAD_FILE, CtcHead

    if folder is None:
        return None
    head = CtcHead.load(folder, model)
    if head is None:
        return None
    theirs = []
    for o in others:
        h = CtcHead.load(o, model)
        if h is None:
            raise InvoiceVLMError(f"{o}: no {CTC_HEAD_FILE} here, unlike {folder}: its CTC head cannot be averaged")
        theirs.append(h)
    if theirs:
        with torch.no_grad():
            for name, p in head.named_parameters():
                p.copy_(sum([dict(h.named_parameters())[name].float() for h in theirs], p.float()) / (len(theirs) + 1))
    return head


def export(model: str, out: str | Path, dtype: str = "bfloat16", evals: list[str | Path] | None = None,
           name: str | None = None, body: str = "", merge_lora: bool = False, adapter_only: bool = False,
           average: list[str | Path] | None = None) -> Path:
    """Write ``model`` to ``out``: a full model in ``dtype`` (a LoRA adapter merged into its base with
    ``merge_lora``), or with ``adapter_only`` the PEFT adapter alone; processor, model card and export.json.
    ``average``: further checkpoints of the same model whose weights are averaged with ``model``'s."""
    from .models import CTC_HEAD_FILE, count_parameters, load

    dtype = dtype_name(dtype, "export: dtype")
    if merge_lora and adapter_only:
        raise InvoiceVLMError("export: --merge-lora and --adapter-only exclude each other")
    if average and (merge_lora or adapter_only):
        raise InvoiceVLMError("export: --average takes full models, not adapters")
    others = []
    for a in average or []:
        kind, folder = resolve_source(str(a), want_adapter=False)
        if kind != "model" or folder is None:
            raise InvoiceVLMError(f"{a}: --average takes model folders or checkpoints")
        others.append(folder)
    out = Path(out)
    eval_rows = [read_eval(Path(e)) for e in evals or []]  # read first: a bad folder fails before any writing
    kind, folder = resolve_source(model, want_adapter=merge_lora or adapter_only)
    if (merge_lora or adapter_only) and kind != "adapter":
        raise InvoiceVLMError(f"{folder or model}: no LoRA adapter here (adapter_config.json missing): nothing to "
                              + ("merge" if merge_lora else "export as an adapter"))
    if kind == "adapter" and not (merge_lora or adapter_only):
        raise InvoiceVLMError(f"{folder}: a LoRA adapter, not a full model: add --merge-lora (merged into its base) "
                              "or --adapter-only (the PEFT folder)")
    if folder is not None and out.resolve() == folder.resolve():
        raise InvoiceVLMError(f"{out}: the output folder is the model being exported")
    run = run_info(folder)
    info: dict[str, Any] = {"source": str(model), "dtype": dtype}
    base_name = adapter_base(folder) if kind == "adapter" else None
    with staged_dir(out) as stage:
        if adapter_only:
            from safetensors.torch import load_file, save_file

            weights = load_file(folder / "adapter_model.safetensors")
            save_file({k: v.to(torch_dtype(dtype)) for k, v in weights.items()}, stage / "adapter_model.safetensors",
                      metadata={"format": "pt"})
            shutil.copy2(folder / "adapter_config.json", stage / "adapter_config.json")
            _adapter_processor(folder, base_name).save_pretrained(stage)
            cfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
            base_config = Path(base_name) / "config.json"
            base_cfg = json.loads(base_config.read_text(encoding="utf-8")) if base_config.is_file() else {}
            info.update(kind="adapter", base_model=base_name, peft_type=cfg.get("peft_type"),
                        architecture=(base_cfg.get("architectures") or ["?"])[0],
                        model_type=base_cfg.get("model_type", "vision-language"),
                        parameters=sum(v.numel() for v in weights.values()),
                        weights_file="adapter_model.safetensors")
        else:
            m, processor = _load_merged(folder, base_name) if merge_lora else load(str(folder) if folder else model)
            head = _ctc_head(folder, m, others)
            if others:
                average_weights(m, others)
                info["averaged_with"] = [str(o) for o in others]
            m.to(torch_dtype(dtype))
            m.save_pretrained(stage, safe_serialization=True)
            processor.save_pretrained(stage)
            if head is not None:
                head.save(stage, torch_dtype(dtype))
                info["ctc_head"] = {"file": CTC_HEAD_FILE, "frames": head.frames}
            info.update(kind="model", merged=merge_lora, architecture=type(m).__name__,
                        model_type=m.config.model_type, parameters=count_parameters(m),
                        weights_file="model.safetensors")
            if getattr(m.config, "reading", None):
                info["reading"] = dict(m.config.reading)
            if merge_lora:
                info["base_model"] = base_name
        info["weights_mb"] = sum(p.stat().st_size for p in stage.glob("*.safetensors")) / 1e6
        (stage / "README.md").write_text(model_card(name or out.name, info, eval_rows, body, run), encoding="utf-8")
        write_json(stage / "export.json", {**info, "evaluations": eval_rows, "training": run.get("config", {}),
                                           "environment": environment_info()})
    return out


# --- push -------------------------------------------------------------------------------------------------------

def _api(token: str | None):
    """An ``HfApi`` with a token, or one line saying how to get one (module attribute: tests swap in a stand-in)."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise InvoiceVLMError("no Hugging Face token: pass --token, set HF_TOKEN or run `hf auth login`")
    return HfApi(token=token)


def HfApi(**kwargs):  # noqa: N802 - a factory with the class's name, so tests can replace it
    import huggingface_hub

    return huggingface_hub.HfApi(**kwargs)


def check_repo_id(repo_id: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise InvoiceVLMError(f"{repo_id!r}: invalid repo id ({str(e).splitlines()[0]})") from None
    if repo_id.count("/") != 1:
        raise InvoiceVLMError(f"{repo_id!r}: invalid repo id (expected USER/NAME)")
    return repo_id


def _upload(folder: Path, repo_id: str, repo_type: str, private: bool, token: str | None, message: str) -> str:
    api = _api(token)
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type,
                                 commit_message=message)
    except InvoiceVLMError:
        raise
    except Exception as e:  # network down, offline mode, 401/403, rate limits: one line, no traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvoiceVLMError(f"push to {repo_id} failed: {type(e).__name__}: {first}") from None
    return str(getattr(info, "commit_url", "") or f"https://huggingface.co/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}")


def push(model: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload an export folder (model or adapter, with its card) to a model repo."""
    check_repo_id(repo_id)
    folder = Path(model)
    if not folder.is_dir():
        raise InvoiceVLMError(f"{folder}: not a folder")
    if not (_is_model(folder) or _is_adapter(folder)):
        raise InvoiceVLMError(f"{folder}: no model here (export it first: invoice-vlm export --model ... --out DIR)")
    if not (folder / "README.md").is_file():
        raise InvoiceVLMError(f"{folder}: no README.md model card (export it with invoice-vlm export)")
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth")):
        raise InvoiceVLMError(f"{folder}: holds pickle files (.bin/.pt/.pth); push safetensors exports only")
    return _upload(folder, repo_id, "model", private, token, "Upload with invoice-vlm push")


# --- datasets ---------------------------------------------------------------------------------------------------

def dataset_to_parquet(data: str | Path, out: Path, splits: list[str] | None = None) -> dict[str, int]:
    """Each split as ``data/<split>-00000-of-00001.parquet`` with the image bytes embedded, fields as JSON."""
    import datasets

    from .data import available_splits, read_split

    data = Path(data)
    names = splits or available_splits(data)
    if not names:
        raise InvoiceVLMError(f"{data}: no splits (folders with metadata.jsonl) here")
    features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(),
                                  "text": datasets.Value("string"), "fields": datasets.Value("string"),
                                  "qa": datasets.Value("string"), "meta": datasets.Value("string")})
    counts = {}
    (out / "data").mkdir(parents=True, exist_ok=True)
    for split in names:
        samples = read_split(data, split)

        def rows(samples=samples):
            for s in samples:
                yield {"id": s.id, "image": {"bytes": Path(s.image).read_bytes(), "path": Path(s.image).name},
                       "text": s.text, "fields": json.dumps(s.fields, ensure_ascii=False),
                       "qa": json.dumps(s.qa, ensure_ascii=False), "meta": json.dumps(s.meta, ensure_ascii=False)}

        ds = datasets.Dataset.from_generator(rows, features=features, cache_dir=str(out / ".cache"))
        ds.to_parquet(str(out / "data" / f"{split}-00000-of-00001.parquet"))
        counts[split] = len(ds)
    shutil.rmtree(out / ".cache", ignore_errors=True)
    return counts


def dataset_card(name: str, counts: dict[str, int], identity: dict[str, Any]) -> str:
    from huggingface_hub import DatasetCardData

    data = DatasetCardData(license="cc0-1.0", task_categories=["image-to-text"], tags=["invoice-vlm", "invoices",
                           "ocr", "synthetic"], pretty_name=name,
                           configs=[{"config_name": "default", "data_files": [
                               {"split": s, "path": f"data/{s}-*.parquet"} for s in counts]}])
    gen = ", ".join(f"{k}={v}" for k, v in identity.items()) if identity else "not recorded"
    table = "\n".join(f"| {s} | {n} |" for s, n in counts.items())
    return f"""---
{data.to_yaml().rstrip()}
---

# {name}

Synthetic invoice pages made by `invoice-vlm synth`, with exact ground truth: the transcription in reading order
(`text`: rows top to bottom, each row left to right, runs joined by a space, rows by a newline), the key fields
(`fields`, JSON), questions and answers (`qa`, JSON) and what the page was made of (`meta`: layout, locale, fonts,
augmentation). Every name, address and amount is invented (Faker).

| split | pages |
|---|---:|
{table}

Generator settings: {gen}

```python
from datasets import load_dataset
ds = load_dataset("{name}")
```
"""


def push_dataset(data: str | Path, repo_id: str, private: bool = False, token: str | None = None,
                 out: str | Path | None = None) -> str:
    """Convert a dataset folder to parquet with a dataset card, then upload it to a dataset repo. With ``out`` the
    converted folder is kept there (and can be inspected or uploaded again)."""
    import tempfile

    check_repo_id(repo_id)
    data = Path(data)
    if not data.is_dir():
        raise InvoiceVLMError(f"{data}: dataset folder not found")
    _api(token)  # no token: say so before converting anything
    identity = {}
    if (data / "dataset.json").is_file():
        identity = json.loads((data / "dataset.json").read_text(encoding="utf-8")).get("identity", {})
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(out) if out else Path(tmp) / "dataset"
        with staged_dir(target) as stage:
            counts = dataset_to_parquet(data, stage)
            (stage / "README.md").write_text(dataset_card(repo_id, counts, identity), encoding="utf-8")
        return _upload(target, repo_id, "dataset", private, token, "Upload with invoice-vlm push-dataset")
