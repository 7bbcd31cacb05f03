"""One self-contained HTML page for an evaluation: summary, per-field scores, plots and every document's diff.

Run as (from Python, over the files ``invoice-vlm eval`` writes)::

    from invoice_vlm.evaluate.report import write_report
    write_report(Path("runs/tiny-full/eval/report.html"), summary=metrics, rows=rows)

The page needs nothing but itself: CSS is inline, plots are inline SVG, page images are base64 JPEG data URIs,
and there are no external URLs. It reads fine without JavaScript; the one small inline script only records, on
``<body data-loaded=...>``, how many images decoded, so a headless browser can check the page.

To keep a 1,000-page report in the megabytes, only the ``MAX_THUMBS`` worst documents get a thumbnail and only the
``MAX_LARGE`` worst get a click-to-enlarge version; every document gets its diff.
"""

from __future__ import annotations

import base64
import io
import math
import os
import re
import statistics
from difflib import SequenceMatcher
from html import escape
from pathlib import Path
from typing import Any

MAX_THUMBS = 200  # documents (worst first) that get a thumbnail
MAX_LARGE = 50  # documents (worst first) whose thumbnail opens a larger version
THUMB_BOX = (160, 480)  # width, height limits in pixels
LARGE_BOX = (900, 1800)
CHAR_DIFF_LIMIT = 200  # a replaced span up to this many characters is diffed again character by character

_RUN_KEYS = ("model", "engine", "data", "split", "task")
_METRIC_KEYS = ("bleu", "ter", "chrf", "cer", "wer", "exact_match", "num_samples", "signatures", "skipped",
                "environment")


def write_report(path: Path, summary: dict, rows: list[dict], fields: dict | None = None,
                 title: str = "invoice-vlm evaluation") -> Path:
    """Write the report to ``path`` (or ``path/report.html`` if ``path`` is a folder) atomically; return the file.

    ``summary`` is ``score_all``'s dict plus optional ``model``, ``engine``, ``data``, ``split``, ``task`` and
    ``skipped`` (one-line strings). ``rows`` hold one dict per document: ``id``, ``reference``, ``prediction``,
    ``cer`` (float) and optionally ``image`` (a file path or a ``PIL.Image``); they are shown worst CER first.
    ``fields`` is ``{"per_field": {name: {precision, recall, f1, exact_match, support, predicted}}, "overall":
    {...}}`` as ``fields.score_fields`` writes it (other scalar keys are listed).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "report.html"
    ordered = sorted(rows, key=lambda r: -float(r["cer"]))  # stable: ties keep their input order
    page = _page(title, summary, ordered, fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ------------------------------------------------------------------------------------------------ page


def _page(title: str, summary: dict, rows: list[dict], fields: dict | None) -> str:
    run = [f"{k}: <b>{escape(str(summary[k]))}</b>" for k in _RUN_KEYS if summary.get(k) not in (None, "")]
    nav = ['<a href="#summary">summary</a>', '<a href="#cer-histogram">CER histogram</a>',
           '<a href="#documents">documents</a>']
    if _per_field(fields):
        nav.insert(1, '<a href="#fields">fields</a>')
    documents, n_thumbs, n_large = _documents(rows)
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>", f"<style>{_CSS}</style>", "</head>",
        f'<body data-images="{n_thumbs}" data-large-images="{n_large}">',
        f"<h1>{escape(title)}</h1>",
        f'<p class="run">{" · ".join(run)}</p>' if run else "",
        f'<nav>{" | ".join(nav)}</nav>',
        '<section id="summary-section"><h2>Summary</h2>', _summary_table(summary), "</section>",
        _fields_section(fields) if _per_field(fields) else "",
        '<section id="cer-histogram"><h2>CER per document</h2>', _cer_histogram([r["cer"] for r in rows]),
        "</section>",
        documents,
        f"<script>{_SCRIPT}</script>",
        "</body>", "</html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def _summary_table(s: dict) -> str:
    rows: list[tuple[str, str]] = []
    if isinstance(s.get("bleu"), dict):
        b = s["bleu"]
        precisions = " / ".join(f"{p:.3f}" for p in b.get("precisions", []))
        note = (f"0–1; 1–4-gram precisions {precisions}; brevity penalty {b.get('brevity_penalty', 0):.3f}; "
                f"length ratio {b.get('length_ratio', 0):.3f} "
                f"({b.get('translation_length', '?')} / {b.get('reference_length', '?')} tokens)")
        rows.append(("BLEU", f"{b['bleu']:.4f}", note))
    if isinstance(s.get("ter"), dict):
        t = s["ter"]
        note = (f"0–100+, lower is better; {t.get('num_edits', 0):g} edits over {t.get('ref_length', 0):g} "
                "reference words")
        rows.append(("TER", f"{t['score']:.2f}", note))
    if s.get("chrf") is not None:
        rows.append(("chrF", f"{s['chrf']:.2f}", "0–100"))
    if s.get("cer") is not None:
        rows.append(("CER", _pct(s["cer"]), "character edits / reference characters, over all pages"))
    if s.get("wer") is not None:
        rows.append(("WER", _pct(s["wer"]), "word edits / reference words, over all pages"))
    if s.get("exact_match") is not None:
        rows.append(("exact match", _pct(s["exact_match"]), "pages transcribed exactly (surrounding space ignored)"))
    if s.get("num_samples") is not None:
        rows.append(("pages", str(s["num_samples"]), ""))
    body = "".join(f"<tr><th>{escape(k)}</th><td class='num'>{escape(v)}</td><td>{escape(note)}</td></tr>"
                   for k, v, note in rows)
    run = [(k, v) for k, v in s.items() if k not in _METRIC_KEYS and isinstance(v, (str, int, float, bool))]
    body += "".join(f"<tr><th>{escape(str(k))}</th><td colspan='2'>{escape(str(v))}</td></tr>" for k, v in run)
    out = [f'<table id="summary"><tbody>{body}</tbody></table>']
    if s.get("skipped"):
        items = "".join(f"<li>{escape(str(x))}</li>" for x in s["skipped"])
        out.append(f'<h3>Skipped ({len(s["skipped"])})</h3><ul class="skipped">{items}</ul>')
    if s.get("signatures"):
        items = "".join(f"<li>{escape(k)}: <code>{escape(str(v))}</code></li>" for k, v in s["signatures"].items())
        out.append(f"<details><summary>sacrebleu signatures</summary><ul>{items}</ul></details>")
    if isinstance(s.get("environment"), dict):
        items = "".join(f"<li>{escape(str(k))}: <code>{escape(str(v))}</code></li>"
                        for k, v in s["environment"].items())
        out.append(f"<details><summary>environment</summary><ul>{items}</ul></details>")
    return "\n".join(out)


def _fields_section(fields: dict) -> str:
    per_field = _per_field(fields)
    cols = ("support", "predicted", "precision", "recall", "f1", "exact_match")
    heads = "".join(f"<th>{c.replace('_', ' ')}</th>" for c in ("field", *cols))

    def row(name: str, m: dict, cls: str = "") -> str:
        cells = "".join(f"<td class='num'>{escape(_cell(m.get(c)))}</td>" for c in cols)
        return f"<tr{cls}><th>{escape(str(name))}</th>{cells}</tr>"

    body = "".join(row(name, m) for name, m in per_field.items())
    if isinstance(fields.get("overall"), dict):
        body += row("overall", fields["overall"], " class='overall'")
    extra = [f"{escape(str(k).replace('_', ' '))}: {escape(_cell(v))}" for k, v in fields.items()
             if k not in ("per_field", "overall") and isinstance(v, (str, int, float, bool))]
    return "\n".join([
        '<section id="fields"><h2>Fields</h2>',
        f'<p class="note">{" · ".join(extra)}</p>' if extra else "",
        f'<table id="field-table"><thead><tr>{heads}</tr></thead><tbody>{body}</tbody></table>',
        _field_bars(per_field), "</section>",
    ])


def _per_field(fields: dict | None) -> dict[str, dict]:
    return (fields or {}).get("per_field") or {}


def _documents(rows: list[dict]) -> tuple[str, int, int]:
    """The per-document table, and how many thumbnails and large images it embeds."""
    thumbs = large = 0
    out = []
    for i, r in enumerate(rows, 1):
        cell = f'<span class="missing">no thumbnail (beyond the {MAX_THUMBS} worst)</span>'
        if i <= MAX_THUMBS:
            img = _open_image(r.get("image"))
            if img is None:
                cell = '<span class="missing">no image</span>'
            else:
                cell = _image_cell(img, i, str(r.get("id", i)), with_large=i <= MAX_LARGE)
                thumbs += 1
                large += i <= MAX_LARGE
        ref_html, pred_html = diff_html(str(r.get("reference") or ""), str(r.get("prediction") or ""))
        cer = float(r["cer"])
        out.append(
            f'<tr class="doc" id="doc-{i}" data-cer="{cer!r}"><td class="num">{i}</td>'
            f'<td class="id">{escape(str(r.get("id", "")))}</td>'
            f'<td class="num cer" style="background:{_cer_colour(cer)}">{_pct(cer)}</td>'
            f'<td class="img">{cell}</td><td><div class="txt">{ref_html or _EMPTY}</div></td>'
            f'<td><div class="txt">{pred_html or _EMPTY}</div></td></tr>')
    capped = (f"Thumbnails only for the {MAX_THUMBS} worst, to keep this file small; " if len(rows) > MAX_THUMBS
              else "")
    note = (f"{len(rows)} documents, worst character error rate first. {capped}clicking the thumbnail of one of "
            f"the {MAX_LARGE} worst opens a larger image (click it again to close). "
            "<del>Struck red</del> text in the reference is missing from the prediction; "
            "<ins>green</ins> text in the prediction is not in the reference; ␣ and ↵ mark spaces and line breaks.")
    html = "\n".join([
        '<section id="documents"><h2>Documents</h2>', f'<p class="note">{note}</p>',
        ('<table id="doc-table"><thead><tr><th>#</th><th>id</th><th>CER</th><th>page</th>'
         "<th>reference</th><th>prediction</th></tr></thead><tbody>"),
        *out, "</tbody></table></section>",
    ])
    return html, thumbs, large


_EMPTY = '<span class="missing">(empty)</span>'

# ------------------------------------------------------------------------------------------------ diff

# A word with the space after it, or one punctuation mark with its space: fewer, more distinctive tokens than
# characters keep SequenceMatcher fast and its alignment readable on long pages.
_TOKEN = re.compile(r"\w+\s*|[^\w\s]\s*|\s+")


def diff_html(reference: str, prediction: str) -> tuple[str, str]:
    """HTML for both sides of a diff: the reference with deletions in ``<del>``, the prediction with insertions in
    ``<ins>``. Short replaced spans are diffed again by character, so one misread letter marks one letter."""
    if reference == prediction:
        return escape(reference), escape(prediction)
    a, b = _TOKEN.findall(reference), _TOKEN.findall(prediction)
    ref_out: list[str] = []
    pred_out: list[str] = []
    for op, i1, i2, j1, j2 in SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        ra, pb = "".join(a[i1:i2]), "".join(b[j1:j2])
        if op == "equal":
            ref_out.append(escape(ra))
            pred_out.append(escape(pb))
        elif op == "replace" and len(ra) + len(pb) <= CHAR_DIFF_LIMIT:
            for cop, k1, k2, l1, l2 in SequenceMatcher(None, ra, pb, autojunk=False).get_opcodes():
                if cop == "equal":
                    ref_out.append(escape(ra[k1:k2]))
                    pred_out.append(escape(pb[l1:l2]))
                else:
                    ref_out.append(_mark("del", ra[k1:k2]))
                    pred_out.append(_mark("ins", pb[l1:l2]))
        else:
            ref_out.append(_mark("del", ra))
            pred_out.append(_mark("ins", pb))
    return "".join(ref_out), "".join(pred_out)


def _mark(tag: str, text: str) -> str:
    if not text:
        return ""
    if not text.strip():  # a changed space or line break would be invisible
        text = text.replace(" ", "␣").replace("\t", "→").replace("\n", "↵\n")
    return f"<{tag}>{escape(text)}</{tag}>"


# ---------------------------------------------------------------------------------------------- images


def _open_image(source: Any):
    """A PIL image from a path or an image, or None when there is none or it cannot be read."""
    if source is None or source == "":
        return None
    from PIL import Image, ImageOps

    if isinstance(source, Image.Image):
        return source
    try:
        with Image.open(source) as img:
            img.draft("RGB", LARGE_BOX)  # JPEG scans decode at a reduced scale: much faster for big pages
            return ImageOps.exif_transpose(img)  # phone photos carry their rotation in EXIF; also loads pixels
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _image_cell(img, i: int, doc_id: str, with_large: bool) -> str:
    alt = escape(f"page {doc_id}")
    small, w, h = _jpeg_uri(img, THUMB_BOX, quality=70)
    thumb = f'<img class="thumb" src="{small}" width="{w}" height="{h}" alt="{alt}">'
    if not with_large:
        return thumb
    big, bw, bh = _jpeg_uri(img, LARGE_BOX, quality=75)
    # A CSS :target overlay opens the large image without JavaScript; closing returns to the row.
    return (f'<a href="#zoom-{i}" title="enlarge">{thumb}</a>'
            f'<div class="zoom" id="zoom-{i}"><a href="#doc-{i}" title="close">'
            f'<img class="large" src="{big}" width="{bw}" height="{bh}" alt="{alt}"></a></div>')


def _jpeg_uri(img, box: tuple[int, int], quality: int) -> tuple[str, int, int]:
    from PIL import Image

    if img.mode in ("RGBA", "LA", "P"):
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, "white")
        img.paste(rgba, mask=rgba.getchannel("A"))  # transparency onto white paper, not black
    elif img.mode != "RGB":
        img = img.convert("RGB")
    else:
        img = img.copy()
    img.thumbnail(box, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), img.width, img.height


# ----------------------------------------------------------------------------------------------- plots


def _cer_histogram(cers: list[float]) -> str:
    """Bars of documents per 5-point CER bin, 0–5 % up to a last bin for 100 % and more."""
    counts = [0] * 21
    for c in cers:
        if not math.isnan(c):
            counts[min(int(c * 100 // 5), 20)] += 1
    W, H, left, right, top, bottom = 680, 260, 48, 12, 12, 46
    pw, ph = W - left - right, H - top - bottom
    bw = pw / 21
    top_count = max(counts) or 1
    step = _nice_step(top_count)
    ymax = math.ceil(top_count / step) * step
    out = [(f'<svg class="plot" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" '
            'aria-label="histogram of CER per document">')]
    for v in range(0, ymax + 1, step):
        y = top + ph - v / ymax * ph
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v}</text>')
    for k, n in enumerate(counts):
        x, hgt = left + k * bw, n / ymax * ph
        label = "≥100 %" if k == 20 else f"{5 * k}–{5 * k + 5} %"
        out.append(f'<rect x="{x + 1:.1f}" y="{top + ph - hgt:.1f}" width="{bw - 2:.1f}" height="{hgt:.1f}" '
                   f'class="{"bar worst" if k == 20 else "bar"}"><title>{label}: {n} documents</title></rect>')
        if n:
            out.append(f'<text x="{x + bw / 2:.1f}" y="{top + ph - hgt - 3:.1f}" text-anchor="middle" '
                       f'class="small">{n}</text>')
    for k in range(0, 21, 2):
        x = left + k * bw
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + ph}" y2="{top + ph + 4}" class="axis"/>')
        if k < 20:  # the last bin is labelled "≥100" under its middle instead
            out.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">{5 * k}</text>')
    out.append(f'<text x="{left + 20.5 * bw:.1f}" y="{top + ph + 16}" text-anchor="middle">≥100</text>')
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" class="axis"/>'
               f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" class="axis"/>'
               f'<text x="{left + pw / 2}" y="{H - 6}" text-anchor="middle">CER per document (%)</text>'
               f'<text transform="translate(12 {top + ph / 2}) rotate(-90)" text-anchor="middle">documents</text>'
               "</svg>")
    valid = [c for c in cers if not math.isnan(c)]
    if valid:
        mean, median = _pct(statistics.mean(valid)), _pct(statistics.median(valid))
        out.append(f'<p class="note">{len(valid)} documents; mean CER per document {mean}, median {median}. '
                   "The summary's CER is over all characters, so long pages weigh more.</p>")
    return "".join(out)


def _field_bars(per_field: dict[str, dict]) -> str:
    """Horizontal bars, two per field: F1 and exact match, both 0–1."""
    names = list(per_field)
    label_w = min(260, 16 + 7 * max((len(str(n)) for n in names), default=4))
    W, bar_h, gap, top, bottom = label_w + 420, 10, 8, 24, 30
    pw = W - label_w - 50
    H = top + len(names) * (2 * bar_h + gap) + bottom
    out = [(f'<svg class="plot" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" '
            'aria-label="F1 and exact match per field">'),
           (f'<rect x="{label_w}" y="4" width="10" height="10" class="bar"/><text x="{label_w + 14}" y="13">F1</text>'
            f'<rect x="{label_w + 50}" y="4" width="10" height="10" class="bar em"/>'
            f'<text x="{label_w + 64}" y="13">exact match</text>')]
    for v in (0, 0.25, 0.5, 0.75, 1):
        x = label_w + v * pw
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top - 4}" y2="{H - bottom}" class="grid"/>'
                   f'<text x="{x:.1f}" y="{H - bottom + 14}" text-anchor="middle">{v:g}</text>')
    for k, name in enumerate(names):
        y = top + k * (2 * bar_h + gap)
        out.append(f'<text x="{label_w - 6}" y="{y + bar_h + 4}" text-anchor="end">{escape(str(name))}</text>')
        for j, (key, cls) in enumerate((("f1", "bar"), ("exact_match", "bar em"))):
            v = per_field[name].get(key)
            w = (v or 0) * pw
            yy = y + j * bar_h
            out.append(f'<rect x="{label_w}" y="{yy}" width="{w:.1f}" height="{bar_h - 1}" class="{cls}">'
                       f'<title>{escape(str(name))} {key.replace("_", " ")}: {_cell(v)}</title></rect>'
                       f'<text x="{label_w + w + 4:.1f}" y="{yy + bar_h - 1}" class="small">{_cell(v)}</text>')
    out.append(f'<text x="{label_w + pw / 2}" y="{H - 4}" text-anchor="middle">score (0–1)</text></svg>')
    return "".join(out)


def _nice_step(top: int) -> int:
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000):
        if top / step <= 6:
            return step
    return 10 ** len(str(top))


# ------------------------------------------------------------------------------------------------ bits


def _pct(x: float) -> str:
    return "—" if x is None or math.isnan(x) else f"{100 * x:.2f} %"


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _cer_colour(cer: float) -> str:
    """Green at 0 through yellow to red at 50 % CER and above."""
    t = 1.0 if math.isnan(cer) else min(max(cer / 0.5, 0.0), 1.0)
    return f"hsl({120 * (1 - t):.0f},70%,85%)"


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em;color:#222}
h1{margin:0 0 .2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
nav{margin:.5em 0}.run{color:#555;margin:0}.note{color:#555;max-width:70em}
table{border-collapse:collapse}th,td{border:1px solid #ddd;padding:3px 6px;vertical-align:top;text-align:left}
thead th{background:#f4f4f4;position:sticky;top:0;z-index:1}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.overall{font-weight:bold;background:#fafafa}
#summary th{white-space:nowrap}#summary td:last-child{color:#555}
#doc-table{width:100%;table-layout:fixed}
#doc-table th:nth-child(1){width:3em}#doc-table th:nth-child(2){width:10em}#doc-table th:nth-child(3){width:5.5em}
#doc-table th:nth-child(4){width:170px}td.id{word-break:break-all}
.txt{white-space:pre-wrap;word-wrap:break-word;font:12px/1.35 ui-monospace,"DejaVu Sans Mono",monospace;
 max-height:24em;overflow:auto;resize:vertical}
del{background:#fdd;color:#a00;text-decoration:line-through}ins{background:#dfd;color:#060;text-decoration:none}
.missing{color:#999;font-style:italic}
img.thumb{display:block;max-width:160px;height:auto;border:1px solid #ccc}
.zoom{display:none}
.zoom:target{display:flex;position:fixed;inset:0;background:rgba(0,0,0,.75);z-index:10;
 align-items:center;justify-content:center}
.zoom img{max-width:95vw;max-height:95vh;width:auto;height:auto;background:#fff}
svg.plot{font-size:11px;display:block;margin:.5em 0}svg text{fill:#333}svg text.small{font-size:9px}
.grid{stroke:#eee}.axis{stroke:#333}.bar{fill:#4a7fb5}.bar.em{fill:#e0a030}.bar.worst{fill:#c44}
ul.skipped{font-size:12px;max-height:15em;overflow:auto}
""".strip()

# Not needed to read the page: records how many images decoded, for a headless browser to check.
_SCRIPT = """
window.addEventListener("load", function () {
  var ok = function (sel) {
    var imgs = document.querySelectorAll(sel);
    return Array.prototype.filter.call(imgs, function (i) { return i.naturalWidth > 0; }).length;
  };
  document.body.setAttribute("data-loaded", ok("img.thumb"));
  document.body.setAttribute("data-loaded-large", ok("img.large"));
});
""".strip()
