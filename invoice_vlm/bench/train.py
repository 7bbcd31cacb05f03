"""``invoice-vlm bench train``: our training step against a plain PyTorch loop, same model, same batches, one run.

Three ways to fine-tune a page model (a tiny random PaliGemma, the family of the hub checkpoints in
``configs/paligemma2-*``) on the same synthetic pages, in the same order:

- ``plain``: a hand-written loop (DataLoader with our collator, forward, backward, clip, AdamW step);
- ``invoice-vlm``: ``InvoiceTrainer`` (TRL's SFTTrainer with the plain loss), as ``invoice-vlm train`` runs it;
- ``trl-default``: TRL's SFTTrainer with its own loss (fused log-probs, token accuracy and entropy metrics).

Each variant runs in a fresh process. Reported: samples/s (warm-up steps excluded), the ratio to the plain loop,
peak resident memory above the process's level before loading the model, and for the trainers the share of each
step spent outside the step callbacks (waiting for the next batch).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch


class _PeakRSS:
    """Samples this process's resident memory every 5 ms; ``peak`` is the highest value seen, in MiB."""

    def __init__(self):
        self.peak = 0.0
        self._stop = threading.Event()

    @staticmethod
    def now() -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def __enter__(self):
        self.base = self.now()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def _step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Step time from one step's start to the next one's, and the part spent outside the step (data)."""

        def __init__(self):
            self.begins, self.ends = [], []

        def on_step_begin(self, args, state, control, **kwargs):
            self.begins.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    return StepTimer()


def _summary(name: str, step_times: list[float], wait: list[float], batch: int, mem: _PeakRSS) -> dict[str, Any]:
    mean = sum(step_times) / len(step_times)
    return {"variant": name, "step_s": round(mean, 3), "samples_per_s": round(batch / mean, 2),
            "peak_rss_mb": round(mem.peak - mem.base, 1),
            "data_wait_pct": round(100 * sum(wait) / sum(step_times), 2) if wait else None}


def _run_variant(name: str, base: str, data: str, tmp: str, steps: int, warmup: int, batch_size: int,
                 seed: int, sft: dict | None = None) -> dict[str, Any]:
    """One variant, in a fresh process: its memory peak and warm caches are its own."""
    from torch.utils.data import DataLoader, SequentialSampler
    from trl import SFTTrainer

    from ..data import read_split
    from ..models import load
    from ..train.collate import Collator
    from ..train.config import TrainConfig
    from ..train.tasks import build_examples, to_dataset
    from ..train.trainer import InvoiceTrainer, _sft_args

    torch.manual_seed(seed)
    total = steps + warmup
    dataset = to_dataset(build_examples(read_split(data, "train"), {"ocr": 1.0}, seed))
    with _PeakRSS() as mem:
        model, processor = load(base)
        model.train()
        if name == "plain":
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-6)
            loader = DataLoader(dataset, batch_size=batch_size, sampler=SequentialSampler(dataset),
                                collate_fn=Collator(processor))
            times, it = [], iter(loader)
            for i in range(total):
                t0 = time.perf_counter()
                batch = next(it)  # data loading is part of a step, as in the trainers
                loss = model(**batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
            return _summary(name, times, [], batch_size, mem)
        cls = SFTTrainer if name == "trl-default" else InvoiceTrainer
        if name == "invoice-vlm, logits everywhere":  # the loss from every position's logits, as the model's own
            cls = type("AllLogits", (InvoiceTrainer,), {"logits_where_labelled": False})
        # one step more than measured: a step's time runs from its start to the next one's start, so every
        # variant is timed over the same batches
        cfg = TrainConfig(model=base, data=data, output_root=tmp, name=name, seed=seed, sft={
            "max_steps": total + 1, "per_device_train_batch_size": batch_size, "learning_rate": 1e-4,
            "lr_scheduler_type": "constant", "warmup_steps": 0, "report_to": "none", "save_strategy": "no",
            "logging_steps": 10**6, "disable_tqdm": True, **(sft or {})})

        class Sequential(cls):  # type: ignore[misc, valid-type]
            def _get_train_sampler(self, train_dataset=None):  # the plain loop's order
                return SequentialSampler(train_dataset or self.train_dataset)

        timer = _step_timer()
        trainer = Sequential(model=model, args=_sft_args(cfg, Path(tmp) / name), train_dataset=dataset,
                             processing_class=processor, data_collator=Collator(processor), callbacks=[timer])
        trainer.train()
    b, e = timer.begins, timer.ends
    step_times = [b[i + 1] - b[i] for i in range(warmup, total)]
    wait = [b[i + 1] - e[i] for i in range(warmup, total)]
    return _summary(name, step_times, wait, batch_size, mem)


def bench(steps: int = 12, warmup: int = 2, batch_size: int = 8, seed: int = 0, model_cfg=None) -> list[dict]:
    """``model_cfg``: a TinyModelConfig (default: its defaults, the tiny PaliGemma of the tests)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from .. import synth
    from ..models import TinyModelConfig, create_tiny

    pages = (steps + warmup + 2) * batch_size
    with tempfile.TemporaryDirectory(prefix="invoice-vlm-bench-train-") as tmp:
        data = Path(tmp) / "data"
        synth.main(synth.SynthConfig(out=str(data), n=pages, seed=seed, dpi=100, max_items=6, split="train=1",
                                     workers=min(2, os.cpu_count() or 1)), progress=False)
        base = create_tiny(Path(tmp) / "base", model_cfg or TinyModelConfig(seed=seed))
        rows = []
        # a fresh process per variant; spawn, not fork: the parent has already started torch's thread pool
        ctx = mp.get_context("spawn")
        for name in ("plain", "invoice-vlm", "invoice-vlm, logits everywhere", "trl-default"):
            with ProcessPoolExecutor(1, mp_context=ctx) as pool:  # not mp.Pool: its daemonic workers cannot
                rows.append(pool.submit(_run_variant, name, str(base), str(data), tmp, steps, warmup,  # start
                                        batch_size, seed).result())                             # DataLoader workers
    plain = rows[0]["samples_per_s"]
    for r in rows:
        r["vs_plain"] = round(r["samples_per_s"] / plain, 3)
    return rows


# ------------------------------------------------------------------------------------------ bench collate
def bench_collate(n: int = 64, batch_size: int = 32, rounds: int = 3, seed: int = 0, model_cfg=None) -> list[dict]:
    """CPU milliseconds per page to collate a page model's training batches (a tiny PaliGemma at 768 x 768; ocr
    and extract examples, pages read from disk), with the processor's float pixels against raw uint8 pixels normalised afterwards (here on the
    CPU and counted; the trainer does it on the device). Variants alternate batch by batch, ``rounds`` times over
    the same batches, and each reports its median round; also the bytes of ``pixel_values`` a DataLoader worker
    hands over per batch."""
    import statistics

    from .. import synth
    from ..data import read_split
    from ..models import TinyModelConfig, create_tiny, load, normalize_pixels
    from ..train.collate import Collator
    from ..train.tasks import build_examples, to_dataset

    with tempfile.TemporaryDirectory(prefix="invoice-vlm-bench-collate-") as tmp:
        data = Path(tmp) / "data"
        synth.main(synth.SynthConfig(out=str(data), n=n, seed=seed, dpi=100, max_items=6, split="train=1",
                                     workers=min(2, os.cpu_count() or 1)), progress=False)
        base = create_tiny(Path(tmp) / "base", model_cfg or TinyModelConfig(seed=seed, image_size=768, patch_size=32))
        _, processor = load(base)
        ds = to_dataset(build_examples(read_split(data, "train"), {"ocr": 0.9, "extract": 0.1}, seed))
        batches = [[ds[i] for i in range(k, min(k + batch_size, len(ds)))] for k in range(0, len(ds), batch_size)]
        ref, raw = Collator(processor), Collator(processor, raw_pixels=True)

        def raw_normalised(rows):
            b = raw(rows)
            b["pixel_values"] = normalize_pixels(b["pixel_values"], processor.image_processor)
            return b

        variants = {"processor (float32)": ref, "raw uint8": raw, "raw uint8 + normalise on CPU": raw_normalised}
        times: dict[str, list[float]] = {k: [] for k in variants}
        sizes = {}
        torch.set_num_threads(1)  # as in a DataLoader worker
        for _ in range(rounds):
            spent = dict.fromkeys(variants, 0.0)
            for rows in batches:
                for name, fn in variants.items():
                    t0 = time.perf_counter()
                    b = fn(rows)
                    spent[name] += time.perf_counter() - t0
                    pv = b["pixel_values"]
                    sizes[name] = pv.element_size() * pv[:1].numel() * batch_size
            for name in variants:
                times[name].append(spent[name] / len(ds))
    base_ms = statistics.median(times["processor (float32)"]) * 1e3
    rows = []
    for name in variants:
        ms = statistics.median(times[name]) * 1e3
        rows.append({"variant": name, "ms_per_page": round(ms, 2), "speedup": round(base_ms / ms, 2),
                     "pixel_mb_per_batch": round(sizes[name] / 2**20, 1)})
    return rows
