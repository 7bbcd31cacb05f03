"""Load test for ``invoice-vlm serve``: N requests at a given concurrency; throughput, latency percentiles, errors,
and the server's memory (``process_resident_memory_bytes`` from ``/metrics``) after the warm-up and at the end.

    python scripts/load_test.py                                  # starts a server with the embedded model itself
    python scripts/load_test.py --url http://127.0.0.1:8000      # against a running server
    python scripts/load_test.py --requests 500 --concurrency 16 --json load.json

Pages are synthetic invoices (a few different ones, PNG, 100 dpi). Memory is read after the warm-up, halfway and
at the end. Exit code 1 if any request failed or memory grew by more than --max-growth (default 10%) between the
end of the warm-up and the end of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def pages(k: int) -> list[bytes]:
    from invoice_vlm.bench.predict import bench_pages

    out = []
    for im in bench_pages(k):
        buf = io.BytesIO()
        im.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def rss(client, url: str) -> float:
    text = client.get(f"{url}/metrics").text
    m = re.search(r"^process_resident_memory_bytes ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


async def run(url: str, files: list[bytes], n: int, concurrency: int, endpoint: str) -> tuple[list[float], list[str]]:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    lat: list[float] = []
    errors: list[str] = []

    async def one(i: int, client):
        async with sem:
            t0 = time.perf_counter()
            try:
                r = await client.post(f"{url}{endpoint}", files={"file": (f"page{i}.png", files[i % len(files)],
                                                                          "image/png")})
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:120]}")
            except httpx.HTTPError as e:
                errors.append(f"{type(e).__name__}: {e}")
            lat.append(time.perf_counter() - t0)

    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(one(i, client) for i in range(n)))
    return lat, errors


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="a running server (default: start one)")
    ap.add_argument("--model", default="invoice-vlm-tiny", help="model for the server this script starts")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=None, help="requests before the first memory reading "
                                                             "(default: a fifth)")
    ap.add_argument("--endpoint", default="/v1/ocr")
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--workers", type=int, default=-1, help="the started server's --workers (a row reader's page "
                                                              "preparing processes; -1: one a core)")
    ap.add_argument("--max-growth", type=float, default=0.10)
    ap.add_argument("--json", type=Path, help="also write the summary here")
    args = ap.parse_args(argv)
    import httpx

    server = None
    url = args.url
    if not url:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        server = subprocess.Popen([sys.executable, "-m", "invoice_vlm", "serve", "--model", args.model, "--port",
                                   str(port), "--batch-size", str(args.concurrency), "--max-new-tokens",
                                   str(args.max_new_tokens), "--workers", str(args.workers)],
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(timeout=30) as client:
            for _ in range(600):
                try:
                    if client.get(f"{url}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server and server.poll() is not None:
                    print(f"server exited: see {log.name}", file=sys.stderr)
                    return 1
                time.sleep(0.5)
            files = pages(8)
            warm = args.warmup if args.warmup is not None else max(1, args.requests // 5)
            lat0, err0 = asyncio.run(run(url, files, warm, args.concurrency, args.endpoint))
            rss0 = rss(client, url)
            t0 = time.perf_counter()
            half = args.requests // 2
            lat, errors = asyncio.run(run(url, files, half, args.concurrency, args.endpoint))
            rss_mid = rss(client, url)
            lat2, errors2 = asyncio.run(run(url, files, args.requests - half, args.concurrency, args.endpoint))
            secs = time.perf_counter() - t0
            lat, errors = lat + lat2, errors + errors2
            rss1 = rss(client, url)
        summary = {"requests": args.requests, "concurrency": args.concurrency, "seconds": round(secs, 2),
                   "requests_per_s": round(args.requests / secs, 3),
                   "p50_s": round(statistics.median(lat), 3), "p95_s": round(pct(lat, 0.95), 3),
                   "p99_s": round(pct(lat, 0.99), 3), "errors": len(errors) + len(err0),
                   "warmup_requests": warm, "rss_mb_after_warmup": round(rss0 / 2**20, 1),
                   "rss_mb_at_half": round(rss_mid / 2**20, 1), "rss_mb_at_end": round(rss1 / 2**20, 1),
                   "rss_growth": round(rss1 / rss0 - 1, 4) if rss0 == rss0 and rss0 > 0 else None}
        print(json.dumps(summary, indent=2))
        for e in (err0 + errors)[:5]:
            print("error:", e, file=sys.stderr)
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2) + "\n")
        grew = summary["rss_growth"] is None or summary["rss_growth"] > args.max_growth
        return 1 if summary["errors"] or grew else 0
    finally:
        if server:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    sys.exit(main())
