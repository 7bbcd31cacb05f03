"""How well a segmenter cuts real pages into rows, against the rows of born-digital PDFs' text layers.

    invoice-vlm bench segment --data ../shared/data/real-invoices/manifest.jsonl --limit 40 --dpi 200 \\
        --candidate own --candidate rapidocr [--augment scan]

Truth: every text-layer row of the page (``data.pdf_rows``: characters grouped into rows as the transcription
convention groups them), scaled to the render and tightened to its ink on the clean render. Rows that ``pdf_rows``
marks (invisible, rotated or unmapped text, rows overlapping another) and rows with no ink are left out of the truth,
but a box over them is not counted as extra. With ``--augment scan|photo`` the whole render is degraded by the
synthetic presets (``synth.augment``, seeded per page) and the truth follows the preset's geometry (scan's
rotation, photo's perspective): each truth box's corners are mapped, and the row's box is their bounding box.

A candidate (:data:`CANDIDATES`) is a function page image -> :class:`Cut`: boxes (left, top, right, bottom) in
reading order, on the page as the candidate turned it (``rows.deskew`` by ``angle`` degrees; 0: not turned). The
truth is mapped onto that page too. Per text-layer row, one of:

- found: exactly one box covers at least half its height and half its width, and that box covers no other row;
- merged: a box that covers it covers another row too;
- split: neither, and boxes hold parts of it (two or more; or one covering less than half of it);
- missed: no box holds any of it (a box holds part of a row when it overlaps half the row's height and some of
  its width).

A box that holds part of no row at all is extra. Time: the candidate's call on one page at a time (the first page
once before, unmeasured), as wall and CPU milliseconds; CPU time is what one core costs when other work shares the
machine (candidates run one thread).
"""

from __future__ import annotations

import io
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
from PIL import Image

from ..common import InvoiceVLMError
from ..rows import SEGMENTER_VERSION, deskew, pillow_rotation, rectify, segment, skew_angle, tighten
from ..evaluate.engines import group_rows

Box = tuple[float, float, float, float]  # left, top, right, bottom, pixels


class Cut(NamedTuple):
    boxes: list[Box]  # in reading order, on the page flattened by ``flat`` and turned by ``angle``
    angle: float  # degrees, as rows.deskew turns a page (expanding it); 0: the page as given
    # 3 x 3, the given page's pixels to those of the page the boxes are on, when more than a turn by ``angle`` made
    # it (rows.rectify flattened a photo first); None: the turn alone
    to_page: np.ndarray | None = None


# ------------------------------------------------------------------------------------------------ candidates


def _upright(image: Image.Image) -> tuple[Image.Image, float]:
    """The page as rows.deskew turns it, and the angle it turned it by (0 when it left the page as it was)."""
    angle = skew_angle(image)
    turned = deskew(image, angle)
    return turned, angle if turned is not image else 0.0


def own(image: Image.Image) -> Cut:
    """The project's own: rows.rectify, rows.deskew, then rows.segment, the segmenter alone (the engine,
    ``rows.page_for_rows``, also takes a scan's dust off and cuts a small scan at twice its size first)."""
    flat, matrix = rectify(image)
    turned, angle = _upright(flat)
    boxes = [tuple(map(float, b)) for b in segment(turned)]
    if flat is image:
        return Cut(boxes, angle)
    return Cut(boxes, angle, (_pil_rotation(flat.size, angle, expand=True) if angle else np.eye(3)) @ matrix)


@lru_cache(maxsize=1)
def _rapidocr_engine():
    from ..evaluate.engines import RapidOCREngine

    return RapidOCREngine(threads=1)  # one core, as the project's own segmenter has


def rapidocr(image: Image.Image) -> Cut:
    """PP-OCRv6 small's text detector (the rapidocr wheel, ONNX Runtime), its boxes grouped into rows in reading
    order (engines.group_rows, as the engines' text is), a row's box the union of its boxes. The page is not turned."""
    return Cut(row_boxes(_rapidocr_engine().detect(image)), 0.0)


def rapidocr_deskew(image: Image.Image) -> Cut:
    """rows.deskew, then the PP-OCRv6 detector's boxes grouped into rows: a page turned by a degree or two tilts
    a long row by more than its height, and rows grouped by vertical overlap then merge."""
    turned, angle = _upright(image)
    return Cut(row_boxes(_rapidocr_engine().detect(turned)), angle)


def row_boxes(boxes: Sequence[Box]) -> list[Box]:
    """Boxes grouped into rows (engines.group_rows), each row as the union of its boxes, in reading order."""
    return [(min(boxes[i][0] for i in row), min(boxes[i][1] for i in row), max(boxes[i][2] for i in row),
             max(boxes[i][3] for i in row)) for row in group_rows(boxes)]


CANDIDATES: dict[str, Callable[[Image.Image], Cut]] = {"own": own, "rapidocr": rapidocr,
                                                        "rapidocr-deskew": rapidocr_deskew}


# ------------------------------------------------------------------------------------------------ truth


def page_truth(page, dpi: int, gray: np.ndarray, texts: list | None = None) -> tuple[list[Box], list[Box]]:
    """(rows to find, rows left out) of a pdfium page rendered at ``dpi`` as ``gray``, as boxes in pixels. With
    ``texts``, each row drawn on the page (trusted or not) is appended as (box, text), in the text layer's order."""
    from ..data import pdf_rows

    scale = dpi / 72
    truth, left_out = [], []
    for r in pdf_rows(page):
        if not r.text.strip():
            continue
        box = tuple(v * scale for v in r.box)
        tight = tighten(gray, box)
        if r.problem or tight is None:
            left_out.append(tight or box)
        else:
            truth.append(tight)
        if texts is not None and tight is not None and r.problem != "invisible text":
            texts.append((tight, r.text))
    return truth, left_out


def assemble(rows: Sequence[tuple[Box, str]], boxes: Sequence[Box]) -> str:
    """A page's text as a reader that reads every box perfectly would write it: each text-layer row goes to the box
    that covers most of it (none: lost), a box's rows are joined left to right by a space, the boxes in the
    candidate's order by a newline. Against the page's reference this measures the candidate's grouping and reading
    order alone (issue 27's multi-column figure)."""
    held: list[list[tuple[float, str]]] = [[] for _ in boxes]
    for (l, t, r, b), text in rows:
        area = max(1e-6, (r - l) * (b - t))
        overlaps = [max(0.0, min(r, x1) - max(l, x0)) * max(0.0, min(b, y1) - max(t, y0)) for x0, y0, x1, y1 in boxes]
        if overlaps and max(overlaps) >= 0.5 * area:
            held[int(np.argmax(overlaps))].append((l, text))
    return "\n".join(" ".join(t for _, t in sorted(h, key=lambda x: x[0])) for h in held if h)


# ------------------------------------------------------------------------------------------------ geometry


def _pil_rotation(size: tuple[int, int], angle: float, expand: bool) -> np.ndarray:
    """The 3x3 map from a page's pixels to those of ``Image.rotate(angle, expand=expand)`` (Pillow's own matrix,
    ``rows.pillow_rotation``, which maps the other way, inverted)."""
    m, _ = pillow_rotation(size, angle, expand)
    return np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))


def augment_geometry(preset: str, size: tuple[int, int], seed: int) -> np.ndarray:
    """The 3x3 map (homogeneous) from the clean render's pixels to those of ``synth.augment(render, preset,
    random.Random(seed))``: the presets draw their geometry first (scan: one rotation; photo: four corners moved
    inwards), so the same seed gives the same draws here. tests/test_bench_segment.py checks it against the presets."""
    rng = random.Random(seed)
    if preset == "none":
        return np.eye(3)
    if preset == "scan":
        return _pil_rotation(size, rng.uniform(-2.0, 2.0), expand=False)
    if preset == "photo":
        from ..synth.augment import _perspective_coeffs

        w, h = size
        j = lambda s: rng.uniform(0.0, s)  # noqa: E731  (the preset's own draws, in its order)
        dst = [(j(0.06) * w, j(0.05) * h), (w - j(0.06) * w, j(0.05) * h), (w - j(0.06) * w, h - j(0.05) * h),
               (j(0.06) * w, h - j(0.05) * h)]
        c = _perspective_coeffs(dst, [(0, 0), (w, 0), (w, h), (0, h)])  # render -> photo (the preset's, inverted)
        return np.array([c[0:3], c[3:6], [c[6], c[7], 1.0]])
    raise InvoiceVLMError(f"unknown augmentation preset {preset!r} (known: none, scan, photo)")


def map_boxes(boxes: Sequence[Box], matrix: np.ndarray) -> list[Box]:
    """Each box's corners through ``matrix``; the result is their bounding box."""
    out = []
    for left, top, right, bottom in boxes:
        pts = matrix @ np.array([[left, right, right, left], [top, top, bottom, bottom], [1.0, 1.0, 1.0, 1.0]])
        xs, ys = pts[0] / pts[2], pts[1] / pts[2]
        out.append((float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())))
    return out


# ------------------------------------------------------------------------------------------------ scoring


def score_page(truth: Sequence[Box], boxes: Sequence[Box], left_out: Sequence[Box] = ()) -> dict[str, int]:
    """Rows found, merged, split and missed, and extra boxes (see the module docstring); ``left_out``: rows not in
    the truth whose boxes are not extra."""
    counts = {"rows": len(truth), "found": 0, "merged": 0, "split": 0, "missed": 0, "boxes": len(boxes), "extra": 0}
    if not boxes:
        counts["missed"] = len(truth)
        return counts
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    rows = np.asarray(list(truth) + list(left_out), dtype=np.float64).reshape(-1, 4)
    if len(rows) == 0:
        counts["extra"] = len(boxes)
        return counts
    vov = np.minimum(b[:, None, 3], rows[None, :, 3]) - np.maximum(b[:, None, 1], rows[None, :, 1])
    hov = np.minimum(b[:, None, 2], rows[None, :, 2]) - np.maximum(b[:, None, 0], rows[None, :, 0])
    height, width = rows[:, 3] - rows[:, 1], rows[:, 2] - rows[:, 0]
    holds = (vov >= 0.5 * height) & (hov > 0)  # (boxes, rows)
    covers = holds & (hov >= 0.5 * width)
    n = len(truth)
    counts["extra"] = int((~holds.any(axis=1)).sum())
    covered = covers[:, :n].sum(axis=1)  # rows of the truth each box covers
    for r in range(n):
        mine = np.flatnonzero(covers[:, r])
        if len(mine) == 1 and covered[mine[0]] == 1:
            counts["found"] += 1
        elif (covered[mine] > 1).any():
            counts["merged"] += 1
        elif holds[:, r].any():
            counts["split"] += 1
        else:
            counts["missed"] += 1
    return counts


def summarize(name: str, pages: list[dict]) -> dict:
    rows = sum(p["rows"] for p in pages)
    boxes = sum(p["boxes"] for p in pages)

    def pct(k: str, total: int) -> float:
        return round(100 * sum(p[k] for p in pages) / max(1, total), 1)

    return {"candidate": name, "pages": len(pages), "rows": rows, "found_pct": pct("found", rows),
            "merged_pct": pct("merged", rows), "split_pct": pct("split", rows), "missed_pct": pct("missed", rows),
            "boxes": boxes, "extra_pct": pct("extra", boxes),
            "cpu_ms": round(statistics.mean(p["cpu_ms"] for p in pages)) if pages else 0,
            "wall_ms": round(statistics.mean(p["wall_ms"] for p in pages)) if pages else 0}


# ------------------------------------------------------------------------------------------------ the run


@dataclass
class SegBenchConfig:
    data: str = "../shared/data/real-invoices/manifest.jsonl"  # a manifest (each record's pdf page) or a PDF folder
    dpi: int = 200  # render resolution
    augment: str = "none"  # none | scan | photo: the synthetic presets applied to each render
    limit: int = 40  # first N pages (0: all)
    candidates: list[str] = field(default_factory=lambda: ["own", "rapidocr"])
    out: str = ""  # results JSON; default runs/bench/segment-<augment>-<dpi>dpi.json
    seed: int = 0  # augmentation seed of the first page (page k: seed + k)

    def __post_init__(self) -> None:
        if not 72 <= self.dpi <= 600:
            raise ValueError(f"--dpi {self.dpi}: use 72 to 600 (the issue measures 150 to 300)")
        if self.augment not in ("none", "scan", "photo"):
            raise ValueError(f"--augment {self.augment!r}: use none, scan or photo")
        unknown = [c for c in self.candidates if c not in CANDIDATES]
        if unknown or not self.candidates:
            raise ValueError(f"--candidate {', '.join(unknown) or '(none)'}: known candidates are "
                             f"{', '.join(CANDIDATES)}")
        if self.limit < 0:
            raise ValueError("--limit must be >= 0 (0: every page)")
        self.out = self.out or f"runs/bench/segment-{self.augment}-{self.dpi}dpi.json"


def list_pages(data: str) -> list[tuple[str, Path, int]]:
    """(id, pdf, page index) of a manifest's PDF records, or of page 1 of every PDF in a folder (sorted)."""
    from ..data import inside

    path = Path(data)
    if path.is_dir():
        return [(str(p.relative_to(path)), p, 0) for p in sorted(path.rglob("*.pdf")) if p.is_file()]
    if not path.is_file():
        raise InvoiceVLMError(f"{path}: neither a manifest nor a folder of PDFs")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            rec = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError:
            continue  # the eval names bad records; this benchmark measures the good ones
        if isinstance(rec, dict) and isinstance(rec.get("pdf"), str):
            page = rec.get("page", 0)
            out.append((str(rec.get("id") or f"line{n}"), inside(path.parent, rec["pdf"], f"{path}:{n}",
                                                                 "the manifest's folder"),
                        page if isinstance(page, int) and page >= 0 else 0))
    return out


def _load(pdf_path: Path, index: int, dpi: int, texts: list | None = None) -> tuple[Image.Image, list[Box], list[Box]]:
    from ..data import _open_pdf, _render

    pdf = _open_pdf(pdf_path)
    try:
        if not 0 <= index < len(pdf):
            raise InvoiceVLMError(f"{pdf_path}: no page {index + 1}")
        image = _render(pdf, index + 1, str(pdf_path), dpi)
        truth, left_out = page_truth(pdf[index], dpi, np.asarray(image.convert("L")), texts)
    finally:
        pdf.close()
    return image, truth, left_out


def references(data: str) -> dict[str, str]:
    """Page references of a manifest by record id ({} for a folder of PDFs)."""
    from ..data import inside

    if Path(data).is_dir():
        return {}
    refs = {}
    for line in Path(data).read_text(encoding="utf-8").splitlines():
        rec = json.loads(line) if line.strip() else {}
        if isinstance(rec, dict) and isinstance(rec.get("text"), str):
            ref = inside(Path(data).parent, rec["text"], str(data), "the manifest's folder")
            refs[str(rec.get("id"))] = ref.read_text(encoding="utf-8").strip()
    return refs


def degrade(image: Image.Image, preset: str, seed: int) -> Image.Image:
    """The render through the synthetic preset, saved and read back as the JPEG the preset asks for."""
    from ..synth.augment import augment

    out, quality = augment(image, preset, random.Random(seed))
    buf = io.BytesIO()
    out.convert("RGB").save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def run(cfg: SegBenchConfig, progress: bool = True) -> dict:
    """Every candidate on the same pages; writes ``cfg.out`` (config, versions, per-page results) and returns it."""
    pages = list_pages(cfg.data)
    pages = pages[:cfg.limit] if cfg.limit else pages
    if not pages:
        raise InvoiceVLMError(f"{cfg.data}: no PDF pages")
    candidates = {name: CANDIDATES[name] for name in cfg.candidates}
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # the segmenter's morphology (OpenCV) on one core, as every candidate runs
    try:
        return _run(cfg, pages, candidates, progress)
    finally:
        cv2.setNumThreads(threads)


def _run(cfg: SegBenchConfig, pages: list, candidates: dict, progress: bool) -> dict:
    from rich.progress import track

    from ..common import environment_info, write_json

    results: dict[str, list[dict]] = {name: [] for name in candidates}
    refs = references(cfg.data)
    order: dict[str, list[str]] = {name: [] for name in ["text layer", *candidates]}  # assembled page texts
    order_refs: list[str] = []
    skipped: list[str] = []
    warm = False
    for k, (pid, pdf_path, index) in enumerate(track(pages, description="pages", disable=not progress)):
        texts: list[tuple[Box, str]] = []
        try:
            image, truth, left_out = _load(pdf_path, index, cfg.dpi, texts)
        except InvoiceVLMError as e:
            skipped.append(str(e))
            continue
        geometry = augment_geometry(cfg.augment, image.size, cfg.seed + k)
        if cfg.augment != "none":
            image = degrade(image, cfg.augment, cfg.seed + k)
        if not warm:  # model loading and first-call allocation are not a page's cost
            for fn in candidates.values():
                fn(image)
            warm = True
        for name, fn in candidates.items():
            wall, cpu = time.perf_counter(), time.process_time()
            cut = fn(image)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            # one map from the clean render to the candidate's page: a box's corners are mapped once, so a rotation
            # that deskewing undid leaves the box as tight as it was
            turn = _pil_rotation(image.size, cut.angle, expand=True) if cut.angle else np.eye(3)
            to_cut = (turn if cut.to_page is None else cut.to_page) @ geometry
            scores = score_page(map_boxes(truth, to_cut), cut.boxes, map_boxes(left_out, to_cut))
            results[name].append({"id": pid, **scores, "left_out": len(left_out), "angle": cut.angle,
                                  "wall_ms": round(1000 * wall, 1), "cpu_ms": round(1000 * cpu, 1)})
            if pid in refs:
                order[name].append(assemble(list(zip(map_boxes([b for b, _ in texts], to_cut),
                                                     [t for _, t in texts])), cut.boxes))
        if pid in refs:
            order_refs.append(refs[pid])
            order["text layer"].append("\n".join(t for _, t in texts))
    if not any(results.values()):
        raise InvoiceVLMError(f"{cfg.data}: no page could be read ({skipped[0] if skipped else 'none listed'})")
    from importlib.metadata import PackageNotFoundError, version

    versions = environment_info()
    for package in ("rapidocr", "onnxruntime", "opencv-python-headless", "scipy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    versions["segmenter_version"] = SEGMENTER_VERSION
    summary = [summarize(name, results[name]) for name in candidates]
    if order_refs:  # page CER of perfect row texts grouped and ordered by each candidate (the text layer's own: the floor)
        from ..evaluate import cer

        for line in summary:
            line["order_cer_pct"] = round(100 * cer(order[line["candidate"]], order_refs), 2)
        summary.append({"candidate": "text layer", "pages": len(order_refs),
                        "order_cer_pct": round(100 * cer(order["text layer"], order_refs), 2)})
    report = {"config": asdict(cfg), "versions": versions, "summary": summary, "skipped": skipped,
              "pages": results}
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    return report


# ------------------------------------------------------------------------------------------------ the reader alone


def read_text_layer_rows(data: str, model: str = "invoice-vlm-tiny", dpi: int = 200, limit: int = 40,
                         out: str = "", progress: bool = True, decode: str = "auto") -> dict:
    """The row reader given perfect rows: each text-layer row of a page (``data.pdf_rows``) cut where the text layer
    puts it, tightened to its ink and padded as the segmenter pads (``rows._padded``), so it looks like a segmenter
    crop, and read by the engine. Scores (CER, characters): the rows the text layer can be trusted on, each against
    its own text (the reader alone); and each page as the reader writes it from all its inked rows in reading order
    against the page's reference, next to the same page read through the segmenter (``Predictor.predict``): what
    the segmenter costs. Manifests only (the page references come from them)."""
    from ..infer import Predictor
    from ..rows import _padded, row_image
    from ..evaluate import cer

    pages = list_pages(data)
    if Path(data).is_dir():
        raise InvoiceVLMError(f"{data}: the reader benchmark needs a manifest (page references)")
    pages = pages[:limit] if limit else pages
    refs = references(data)
    engine = Predictor.from_pretrained(model, device="cpu", decode=decode)
    from ..data import _open_pdf, _render, pdf_rows
    from rich.progress import track

    row_refs, row_hyps, page_refs, page_layer, page_seg, per_page = [], [], [], [], [], []
    for pid, pdf_path, index in track(pages, description="pages", disable=not progress):
        if pid not in refs:
            continue
        pdf = _open_pdf(pdf_path)
        try:
            image = _render(pdf, index + 1, str(pdf_path), dpi)
            rows = pdf_rows(pdf[index])
        finally:
            pdf.close()
        gray = np.asarray(image.convert("L"))
        crops, texts, trusted = [], [], []
        for r in rows:
            if not r.text.strip():
                continue
            tight = tighten(gray, tuple(v * dpi / 72 for v in r.box))
            if tight is None:
                continue
            box = _padded(int(tight[0]), int(tight[1]), int(tight[2]), int(tight[3]), gray.shape)
            crops.append(np.asarray(row_image(image, box, engine.unit, squeeze=False).convert("L")))
            texts.append(r.text)
            trusted.append(not r.problem)
        hyps = engine.read_rows(crops)
        row_refs += [t for t, ok in zip(texts, trusted) if ok]
        row_hyps += [h for h, ok in zip(hyps, trusted) if ok]
        layer = "\n".join(h for h in hyps if h)
        seg = engine.predict([image])[0]
        page_refs.append(refs[pid])
        page_layer.append(layer)
        page_seg.append(seg)
        per_page.append({"id": pid, "rows": len(crops), "trusted_rows": sum(trusted),
                         "rows_cer": round(cer([h for h, ok in zip(hyps, trusted) if ok],
                                               [t for t, ok in zip(texts, trusted) if ok]), 4) if any(trusted) else None,
                         "page_cer_text_layer_rows": round(cer([layer], [refs[pid]]), 4),
                         "page_cer_segmenter_rows": round(cer([seg], [refs[pid]]), 4)})
    report = {"data": data, "model": model, "decode": engine.decode,
              "dpi": dpi, "pages": len(per_page), "rows": len(row_refs),
              "rows_cer": round(cer(row_hyps, row_refs), 4),
              "rows_exact": round(sum(a == b for a, b in zip(row_hyps, row_refs)) / max(1, len(row_refs)), 4),
              "page_cer_text_layer_rows": round(cer(page_layer, page_refs), 4),
              "page_cer_segmenter_rows": round(cer(page_seg, page_refs), 4), "per_page": per_page}
    if out:
        from ..common import environment_info, write_json

        Path(out).mkdir(parents=True, exist_ok=True)
        write_json(Path(out) / "reader.json", {**report, "environment": environment_info()})
    return report
