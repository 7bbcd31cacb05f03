"""The README's Python snippet runs as written (model path and image swapped for tiny ones)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

README = Path(__file__).parent.parent / "README.md"


def test_readme_loading_snippet_runs_without_invoice_vlm(tiny_model, tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    snippet = next(b for b in blocks if "PaliGemmaForConditionalGeneration" in b)
    assert 'model_id = "runs/pg2-896/model"' in snippet and 'Image.open("invoice.png")' in snippet
    Image.new("RGB", (120, 160), "white").save(tmp_path / "invoice.png")
    code = snippet.replace('"runs/pg2-896/model"', repr(str(tiny_model))).replace("max_new_tokens=512",
                                                                                "max_new_tokens=5")
    code = "import sys; sys.modules['invoice_vlm'] = None\n" + code  # plain transformers only
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_readme_commands_exist():
    from typer.testing import CliRunner

    from invoice_vlm.cli import app

    text = README.read_text()
    for command in set(re.findall(r"(?:^|`)invoice-vlm ([a-z-]+)", text, flags=re.M)):
        result = CliRunner().invoke(app, [command, "--help"])
        assert result.exit_code == 0, command


def test_readme_flags_exist():
    """Every --flag the README shows on an invoice-vlm command line is one that command accepts."""
    from typer.testing import CliRunner

    from invoice_vlm.cli import app

    text = README.read_text().replace("\\\n", " ")
    checked = 0
    for line in re.findall(r"^\s*invoice-vlm ([a-z-]+(?: [a-z-]+)?)([^\n]*)", text, flags=re.M):
        words, rest = line
        cmd = words.split()
        if cmd[0] == "bench":
            rest = " ".join(cmd[2:]) + rest
            cmd = cmd[:2]
        else:
            rest = " ".join(cmd[1:]) + rest
            cmd = cmd[:1]
        helptext = CliRunner().invoke(app, [*cmd, "--help"], terminal_width=200).output
        for flag in re.findall(r"(--[a-z][a-z-]*)", rest):
            assert flag in helptext, (cmd, flag)
            checked += 1
    assert checked >= 10
