"""The per-page costs behind docs/scale.md, on one core: the Ray rendering step of ``predict --ray``
(``invoice_vlm.jobs.render_file``: what a page costs the rendering tasks and the bytes it sends through Ray's object
store to an actor), and the driver writing shards.

Run as::

    invoice-vlm synth --out /tmp/scale/ds --n 64 --dpi 100 --pdf --max-items 6 --split test=1 --seed 7
    python scripts/scale_costs.py /tmp/scale/ds/test/00000 '*.png' 100
    python scripts/scale_costs.py /tmp/scale/ds/test/00000 '*.pdf' 200
"""

import sys
import tempfile
import time
from pathlib import Path

from invoice_vlm.jobs import Shard, render_file, shard_records, write_shard

folder, pattern, dpi = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
files = sorted(folder.glob(pattern))
render_file({"shard": 0, "index": 0, "file": str(files[0])}, None, dpi)  # imports and PDFium start-up: not timed
t0 = time.perf_counter()
rows = [r for i, f in enumerate(files) for r in render_file({"shard": 0, "index": i, "file": str(f)}, None, dpi)]
secs = time.perf_counter() - t0
kb = sum(len(r["data"]) for r in rows) / len(rows) / 1024
print(f"rendering {pattern} at {dpi} dpi: {len(rows)} pages, {secs / len(rows) * 1000:.2f} ms/page "
      f"({len(rows) / secs:.0f} pages/s a core), {kb:.0f} KB/page to the actor")

n, text = 100_000, "Rechnung RE-2021-04711  Schmidt GmbH  Hauptstr. 5, 10115 Berlin  Summe 1.234,50 EUR\n" * 20
shard = Shard(0, tuple(f"/shared/in/{i:08d}.png" for i in range(n)))
t0 = time.perf_counter()
with tempfile.TemporaryDirectory() as tmp:
    write_shard(Path(tmp), shard, shard_records(shard, {i: {1: text} for i in range(n)}, {}, "ocr"))
    size = (Path(tmp) / shard.name).stat().st_size
secs = time.perf_counter() - t0
print(f"driver: {n} records of {size / n / 1024:.1f} KB written in {secs:.2f} s ({n / secs:,.0f} pages/s)")
