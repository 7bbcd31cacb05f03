"""What every stage shares: the user-facing error, dataclass configs from YAML + overrides, atomic output.

Config precedence follows litgpt/TRL: dataclass defaults < YAML file < ``--set key=value`` flags. Unknown keys
and values of the wrong type fail before any work starts, naming the file (or flag) and the key.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import platform
import shutil
import sys
import types
import typing
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml


# pages per document that predict reads (--max-pages): a job's shard holds every page of a document at once
MAX_DOCUMENT_PAGES = 200

# how a row reader with a CTC head reads (infer.Predictor's ``decode``); here so that the configs of eval, serve and
# jobs name them without importing the engine
DECODE_MODES = ("auto", "rescore", "ctc", "generate")
DECODE_HELP = ("a row reader with a CTC head: auto (rescore) | rescore (the head's best readings of a row, the "
               "decoder choosing) | ctc (the head alone: fastest) | generate (the decoder alone)")
# predict's, predict --out's and eval's --workers (the server's only prepare pages: its own help)
WORKERS_HELP = ("a row reader: worker processes (-1: one a core; 0: none). On a CPU each reads whole batches of pages "
                "with its own copy of the model (two batches a worker at least, where the page count is known; not "
                "with --decode ctc); otherwise they prepare pages (deskew, segment) while the model reads")
LEXICON_HELP = ("words the rescoring favours: auto (the system's word lists in /usr/share/dict, as make install "
                "installs them) | none | a word list file (one word a line) or a folder of them")


@dataclasses.dataclass(frozen=True)
class ReadingUnit:
    """How a model reads, recorded in its config.json under ``reading``. Here, below the models, because page
    preparation (``invoice_vlm.rows``, in worker processes that need no torch) is cut to it too."""

    unit: str = "row"  # "row": one text row an input; "page": the whole page (PaliGemma hub checkpoints)
    height: int = 32  # a row is scaled to this height, its width following the aspect ratio
    max_width: int = 1536  # wider rows are squeezed to this
    multiple: int = 16  # widths are padded to a multiple of the vision tower's stride (white on the right)
    grayscale: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config) -> "ReadingUnit | None":
        """The unit recorded in a model's config (or config dict); None for a page model."""
        data = config.get("reading") if isinstance(config, dict) else getattr(config, "reading", None)
        if not data or data.get("unit", "page") == "page":
            return None
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class InvoiceVLMError(Exception):
    """A problem with the user's input or environment; the CLI prints it as one line, without a traceback."""


# The dtypes a model is loaded, exported or served in, by their torch names; the short names the CLI accepts too.
DTYPE_NAMES = ("float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def dtype_name(dtype: str, what: str = "dtype") -> str:
    """``bf16``/``bfloat16`` -> ``bfloat16`` (and fp16, fp32); anything else is a one-line error naming ``what``."""
    name = _DTYPE_ALIASES.get(dtype, dtype)
    if name not in DTYPE_NAMES:
        raise InvoiceVLMError(f"{what} must be one of bf16, fp16, fp32, got {dtype!r}")
    return name


def torch_dtype(dtype: str, what: str = "dtype"):
    import torch

    return getattr(torch, dtype_name(dtype, what))


# --------------------------------------------------------------------------------------------- configs


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check (and gently convert) one config value against its dataclass annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except InvoiceVLMError as e:
                errors.append(str(e))
        raise InvoiceVLMError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise InvoiceVLMError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise InvoiceVLMError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise InvoiceVLMError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise InvoiceVLMError(f"{where}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise InvoiceVLMError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise InvoiceVLMError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads "1e-3" as a string
            except ValueError:
                pass
        raise InvoiceVLMError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise InvoiceVLMError(f"{where}: expected a string, got {value!r}")
    return value


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value is read as YAML so ``3``, ``1e-4``, ``true`` work."""
    if "=" not in item:
        raise InvoiceVLMError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    if raw.strip().lower() in ("no", "yes", "on", "off", "y", "n"):
        return key.strip(), raw.strip()  # YAML 1.1 would make these booleans: `save_strategy=no` means "no"
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _set_nested(data: dict, dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InvoiceVLMError(f"--set {dotted}: {part!r} is not a section")
    node[parts[-1]] = value


MAX_CONFIG_BYTES = 1_000_000
MAX_CONFIG_NODES = 100_000  # values after aliases are expanded: a billion-laughs document stops here


def read_yaml(path: str | Path) -> dict:
    """A config file as plain data: PyYAML's safe loader (a ``!!python/...`` tag is refused, never run), at most
    1 MB, and at most 100,000 values once anchors and aliases are expanded."""
    path = Path(path)
    if not path.is_file():
        raise InvoiceVLMError(f"{path}: config file not found")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise InvoiceVLMError(f"{path}: config too large ({path.stat().st_size} bytes; at most {MAX_CONFIG_BYTES})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InvoiceVLMError(f"{path}: not UTF-8 text (byte {e.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise InvoiceVLMError(f"{path}{line}: {e.problem} - refused, not safe: a config is plain data and nothing "
                              "in it is executed") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise InvoiceVLMError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvoiceVLMError(f"{path}: expected a mapping of settings at the top level")
    _check_size(data, path)
    return data


def _check_size(data: Any, path: Path) -> None:
    # aliases make a small document a huge tree of shared nodes; anything that walks it (JSON dumps, merging)
    # would expand it, so count values up to a budget and stop
    budget, stack = MAX_CONFIG_NODES, [data]
    while stack:
        node = stack.pop()
        budget -= 1
        if budget < 0:
            raise InvoiceVLMError(f"{path}: config too large once its aliases are expanded (more than "
                                  f"{MAX_CONFIG_NODES:,} values)")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def build_config(cls: type, path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                 sets: list[str] | None = None) -> Any:
    """Instantiate dataclass ``cls`` from defaults, then the YAML at ``path``, then ``overrides``/``sets``."""
    data: dict[str, Any] = read_yaml(path) if path else {}
    source = str(path) if path else "config"
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_nested(data, key, value)
    for item in sets or []:
        key, value = parse_override(item)
        _set_nested(data, key, value)
    return from_dict(cls, data, source)


def from_dict(cls: type, data: dict[str, Any], source: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise InvoiceVLMError(
                f"{source}: unknown key {key!r} (known: {', '.join(sorted(known))})"
            )
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise InvoiceVLMError(f"{source}: {key} must be a mapping")
            kwargs[key] = from_dict(annotation, value, f"{source}: {key}")
        else:
            kwargs[key] = _coerce(value, annotation, f"{source}: {key}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise InvoiceVLMError(f"{source}: {e}") from None


# --------------------------------------------------------------------------------------------- outputs


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically: a reader never sees a half-written file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@contextmanager
def staged_dir(final: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a sibling staging folder and move it to ``final`` only when the block succeeds.

    A crash or Ctrl-C leaves ``final`` as it was (absent or the previous complete result), never half written.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _clear_dead_stages(final)
    stage = final.with_name(f".{final.name}.partial-{os.getpid()}")
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if final.exists():
        if not overwrite:
            shutil.rmtree(stage, ignore_errors=True)
            raise InvoiceVLMError(f"{final}: already exists")
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(stage, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(stage, final)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _clear_dead_stages(final: Path) -> None:
    """Remove the staging (and moved-aside) folders of ``final`` left by a process killed with SIGKILL: nothing
    else ever clears them. A live process's folder (a concurrent writer) is left alone."""
    for p in final.parent.glob(f".{glob.escape(final.name)}.*-*"):
        kind, _, pid = p.name[len(final.name) + 2:].rpartition("-")
        if kind in ("partial", "old") and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """A run's ``checkpoint-N`` folders that were written to the end, oldest first. Trainer writes a checkpoint
    in place and ``trainer_state.json`` last, so one without a readable one was cut short (a kill mid-save)."""
    found = []
    for c in Path(run_dir).glob("checkpoint-*"):
        step = c.name.split("-")[-1]
        if not (step.isdigit() and c.is_dir()):
            continue
        try:
            json.loads((c / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        found.append((int(step), c))
    return [c for _, c in sorted(found)]


def environment_info() -> dict[str, str]:
    """Library versions recorded next to every run's results."""
    import importlib.metadata as md

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("invoice-vlm", "torch", "transformers", "trl", "peft", "accelerate", "datasets",
                 "tokenizers", "sacrebleu", "jiwer", "Pillow", "Faker", "reportlab", "segno", "pypdfium2", "numpy"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "not installed"
    versions["argv"] = " ".join(sys.argv)
    return versions


def progress_bar(label: str, unit: str = "", *, info: bool = False, stderr: bool = False, transient: bool = False,
                 disable: bool = False):
    """The project's one progress bar (Rich): ``label``, the bar, done/total ``unit``, time left; ``info`` adds a
    free-text field (``bar.update(task, info=...)``) and ``stderr`` keeps stdout for results."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn()] + ([TextColumn(unit)] if unit else [])
    columns += ([TextColumn("{task.fields[info]}")] if info else []) + [TimeRemainingColumn()]
    return Progress(*columns, console=Console(stderr=True) if stderr else None, transient=transient,
                    disable=disable)
