"""``invoice-vlm bench synth``: invoices per second of the generator, one worker against several, with and without
the ``scan`` and ``photo`` presets."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..synth.generate import MANIFEST, SynthConfig, main


def bench(n: int = 400, workers: int = 2, dpi: int = 150, seed: int = 0) -> list[dict[str, Any]]:
    """Invoices per second: one worker without augmentation (the baseline), then ``workers`` processes without
    and with the ``scan`` preset; each writes a full dataset (PNG/JPEG + metadata) to a temporary folder."""
    import tempfile

    rows = []
    cases = [(1, "none"), (workers, "none"), (workers, "scan"), (workers, "photo")]
    with tempfile.TemporaryDirectory(prefix="invoice-vlm-bench-") as tmp:
        for w, preset in cases:
            # shards small enough that every worker stays busy to the end
            cfg = SynthConfig(out=f"{tmp}/{w}-{preset}", n=n, seed=seed, dpi=dpi, workers=w, augment=preset,
                              shard_size=max(1, n // (8 * w)), split="train=1")
            t0 = time.perf_counter()
            main(cfg, progress=False)
            secs = time.perf_counter() - t0
            info = json.loads((Path(cfg.out) / MANIFEST).read_text())
            mb = sum(p.stat().st_size for p in Path(cfg.out).rglob("*") if p.is_file()) / 2**20
            rows.append({"workers": w, "augment": preset, "dpi": dpi, "invoices": n, "pages": info["pages"],
                         "seconds": round(secs, 2), "invoices_per_s": round(n / secs, 1),
                         "pages_per_s": round(info["pages"] / secs, 1), "mb": round(mb, 1)})
    base = rows[0]["invoices_per_s"]
    for r in rows:
        r["vs_1_worker"] = round(r["invoices_per_s"] / base, 2)
    return rows
