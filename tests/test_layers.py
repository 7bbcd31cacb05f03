"""Layers import only downward (README, Layout): every import of every module of invoice_vlm, at module level or
inside a function, relative or absolute, read with ``ast``; none may reach a higher layer, and no two stages of
one layer may import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "invoice_vlm"

# Lowest first. A module's layer is that of its stage: the first name under invoice_vlm (invoice_vlm.train.trainer
# is in train). A new stage must be placed here.
LAYERS = [
    {"common", "fields"},  # errors, configs, atomic output; key fields (pure functions, import nothing of ours)
    {"data"},  # the sample record, dataset folders, PDFs, manifests
    {"synth"},
    {"models"},
    {"rows"},  # the segmenter: page -> rows
    {"infer"},  # the engine: no training, evaluation or executor code
    {"train", "evaluate", "hub"},  # stages on top of the engine (train may use evaluate's scores, not back)
    {"jobs"},  # executors: local and Ray
    # benchmarks measure a stage against its baseline with whatever the measurement needs (the evaluator's CER,
    # Tesseract, a Ray job); only the CLI (`invoice-vlm bench`) calls them
    {"bench"},
    {"serve", "cli", "__main__"},
]

# Upward imports allowed: none. A concept two layers need lives in the lower one.
EXCEPTIONS: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, source: str, is_package: bool = False) -> list[tuple[str, int]]:
    """(module of invoice_vlm imported, line) for every import in ``source``, the text of module ``name``."""
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for a in node.names:  # `from . import jobs` imports the module invoice_vlm.jobs
                sub = f"{base}.{a.name}"
                found.append((sub if sub in MODULES else base, node.lineno))
    return [(m, line) for m, line in found if m == "invoice_vlm" or m.startswith("invoice_vlm.")]


def imports_of(name: str) -> list[tuple[str, int]]:
    path = MODULES[name]
    return imports(name, path.read_text(encoding="utf-8"), path.name == "__init__.py")


def layer(name: str) -> int:
    if name == "invoice_vlm":
        return 0
    stage = name.split(".")[1]
    for rank, stages in enumerate(LAYERS):
        if stage in stages:
            return rank
    raise AssertionError(f"{name}: stage {stage!r} has no layer; add it to LAYERS (and to the README's Layout)")


def upward(name: str, found: list[tuple[str, int]]) -> list[str]:
    return [f"{name}:{line} (layer {layer(name)}) imports {target} (layer {layer(target)})"
            for target, line in found if layer(target) > layer(name) and (name, target) not in EXCEPTIONS]


def test_every_module_has_a_layer():
    assert len(MODULES) > 30
    for name in MODULES:
        layer(name)


def test_no_layer_imports_a_higher_one():
    assert [line for name in MODULES for line in upward(name, imports_of(name))] == []


def test_stages_of_one_layer_do_not_import_each_other():
    def stage(name):
        return ".".join(name.split(".")[:2])

    edges = {(stage(n), stage(t)) for n in MODULES for t, _ in imports_of(n)
             if t != "invoice_vlm" and layer(t) == layer(n) and stage(t) != stage(n)}
    assert sorted((a, b) for a, b in edges if (b, a) in edges) == []


def test_every_exception_is_still_needed():
    """An exception whose import has gone must go too, or it would let the next such import through unseen."""
    used = {(n, t) for n in MODULES for t, _ in imports_of(n)}
    assert sorted(EXCEPTIONS - used) == []


@pytest.mark.parametrize("source", [
    "from ..jobs import eval_on_ray\n",  # relative, module level
    "def f():\n    from invoice_vlm.evaluate import cer\n",  # absolute, inside a function
    "def f():\n    from .. import serve\n",  # a stage imported as a name of the package
    "import invoice_vlm.train.trainer\n",
    "from ..bench import predict\n",  # the engine's benchmark sits above every stage
])
def test_an_upward_import_in_the_engine_is_caught(source):
    assert len(upward("invoice_vlm.infer.files", imports("invoice_vlm.infer.files", source))) == 1


def test_a_downward_import_passes():
    source = "from ..data import open_image\ndef f():\n    from ..models import load\n    from . import files\n"
    assert upward("invoice_vlm.infer", imports("invoice_vlm.infer", source, is_package=True)) == []
