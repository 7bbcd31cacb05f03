"""Pages read by worker processes that each hold their own copy of a row reader: how its pages go fastest.

A row reader is small (5M parameters) and its work comes in small pieces: the tower over a few dozen rows, a
teacher-forced pass, a CTC beam search in Python. Two threads in one process read 16 pages 1.4x faster than one
thread; two processes of one thread each read twice the pages in the same time, and each runs its beam search
on its own core (docs/embedded-model.md section 10). So on a CPU each worker takes whole batches of pages,
prepares them (``rows.page_rows``) and reads them with its own model, one thread per core it is given; the
model's process only decodes the files and hands the pages out. On a GPU the workers share it, each with its own
model there: the decoder's passes take little of the GPU, while a page's beam search and the Python around the passes
(a core's work, 58-62 ms a page for the beam alone) would hold one process to some 10 pages/s.

A row's text does not depend on its batch, so the pages may go to any worker in any grouping: the texts are those
of one process, except where bf16 arithmetic split over another number of threads tips a near tie (one row of
850 on 32 synthetic pages, one thread against two)."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any, Hashable, Iterable, Iterator

_READER = None  # a worker's own Predictor


def _start_reader(model: str, threads: int, kwargs: dict[str, Any]) -> None:
    """A reader process: ``threads`` for torch (and one for OpenCV), then the model, as the caller loads it
    (``kwargs``: ``Predictor.from_pretrained``'s, the device among them)."""
    import torch

    from ..rows import prepare_worker
    from . import Predictor

    torch.set_num_threads(threads)
    prepare_worker()
    from transformers.utils import logging

    logging.disable_progress_bar()  # the caller's own load shows one
    global _READER
    _READER = Predictor.from_pretrained(model, **{"device": "cpu", **kwargs, "workers": 0})


def _read(images: list, prompt: str, settings: dict[str, Any]) -> tuple[list[str], dict[str, float]]:
    """A batch of pages read in a worker with the caller's ``settings`` as they are now (``Predictor.max_new_tokens``
    and the like, which a caller may set after the start: eval does): their texts and what the counters gained."""
    for name, value in settings.items():
        setattr(_READER, name, value)
    before = dict(_READER.stats)
    texts = _READER.generate_batch(images, prompt)
    return texts, {k: v - before[k] for k, v in _READER.stats.items()}


# Batches whose seconds a page (the workers' own, preparing and reading) differ by this factor or more: the pages cost
# unevenly, and the end of a stream is shared out in smaller pieces (``piece``)
UNEVEN = 1.5


def piece(left: int, loads: list[int], batch_size: int, spread: float = 1.0) -> int:
    """How many of the ``left`` pages at the end of a stream a worker that has come free takes: its even share of
    what is left and of the pages the others are still reading (``loads``, the free one's 0), at most
    ``batch_size``, at least one (guided self-scheduling); half that share where the batches read so far took
    seconds a page that differ by ``spread`` >= UNEVEN (factoring, Hummel, Schonberg and Flynn 1992). A whole share
    suits pages that cost alike (32 synthetic pages in two batches of 16: 14.8 s; in pieces of 8 down to 1: 16.4 s);
    a real page costs 0.6-3.3 s of a core, and a last batch of 8 long ones kept one worker reading 7 s after the
    other had finished (docs/embedded-model.md section 12)."""
    share = -(-(left + sum(loads)) // ((2 if spread >= UNEVEN else 1) * len(loads)))
    return min(left, batch_size, max(1, share))


class ReaderPool:
    """``workers`` processes, each with its own copy of the model at ``max(1, cores // workers)`` threads, started
    now (their start overlaps the caller's own model load). ``kwargs``: the Predictor's, as the caller's."""

    def __init__(self, workers: int, model: str, kwargs: dict[str, Any], cores: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        threads = max(1, cores // workers)
        # one executor a worker, not one pool: each loads its model in a task of its own (an error there is raised
        # as it was), and a batch goes to a worker that has nothing to read
        ctx = multiprocessing.get_context("spawn")  # not fork: the parent holds torch's thread pools
        self.pools = [ProcessPoolExecutor(1, mp_context=ctx) for _ in range(workers)]
        # each worker's first task (which starts its process: an executor starts it lazily) loads its model; a
        # failure there is the task's, raised as it was (an initializer's would only break the pool)
        self._started = [p.submit(_start_reader, model, threads, kwargs) for p in self.pools]
        self._loads = [0] * workers  # pages given to each worker and not yet read
        self._rates: list[float] = []  # seconds a page of each batch read (the worker's own: preparing, reading)
        self._changed = threading.Condition()
        self._next = 0

    def wait_ready(self) -> None:
        """Wait until every worker has loaded its model (a worker that failed to raises here)."""
        for f in self._started:
            f.result()

    def __len__(self) -> int:
        return len(self.pools)

    def submit(self, images: list, prompt: str, worker: int, settings: dict[str, Any] | None = None) -> Future:
        """A batch of (grey) pages read by ``worker`` with ``settings`` (``_read``): a Future of (texts, counters)."""
        with self._changed:
            self._loads[worker] += len(images)
        f = self.pools[worker].submit(_read, images, prompt, settings or {})

        def done(f, n=len(images)):
            with self._changed:
                self._loads[worker] -= n
                if not f.cancelled() and f.exception() is None:
                    gained = f.result()[1]
                    self._rates.append((gained["prepare_seconds"] + gained["generate_seconds"]) / n)
                self._changed.notify_all()

        f.add_done_callback(done)
        return f

    def prepare(self, image, unit) -> Future:
        """A page's preparation alone (``rows.page_rows``) in the next worker: what the server asks of workers."""
        from ..rows import page_rows

        self._next = (self._next + 1) % len(self.pools)
        return self.pools[self._next].submit(page_rows, image, unit)

    def stream(self, items: Iterable[tuple[Hashable, Any]], prompt: str, batch_size: int, stats: dict[str, float],
               settings: dict[str, Any] | None = None) -> Iterator[tuple[Hashable, str]]:
        """(key, text) for each (key, image), in input order, each batch as soon as it and those before it are read.
        A thread takes the pages from ``items`` (decoding the files, where ``items`` does), grey, and gives
        ``batch_size`` of them to a worker as soon as one has nothing to read (so that a batch of long pages holds
        up no other); it looks ``len(self) * batch_size`` pages ahead, so that at the end of the stream the last
        pages are shared out in smaller pieces (``piece``). The workers read with ``settings``; ``stats`` gains
        their counters."""
        import queue

        ahead = len(self.pools) * batch_size
        out: queue.Queue = queue.Queue()
        stop = threading.Event()
        end = object()

        def free() -> int | None:
            """A worker with nothing to read, once there is one (None once the caller has stopped)."""
            with self._changed:
                while not stop.is_set():
                    idle = [i for i, n in enumerate(self._loads) if n == 0]
                    if idle:
                        return idle[0]
                    self._changed.wait(0.1)
            return None

        def give(part: list, worker: int) -> None:
            out.put(([k for k, _ in part], self.submit([im for _, im in part], prompt, worker, settings)))

        def feed() -> None:
            buf: list = []
            failed: BaseException | None = None
            try:
                for key, image in items:
                    if stop.is_set():
                        return
                    buf.append((key, image.convert("L")))  # a third of an RGB page's bytes to send
                    if len(buf) > ahead:
                        if (worker := free()) is None:
                            return
                        give(buf[:batch_size], worker)
                        del buf[:batch_size]
            except BaseException as e:  # (a file that will not open: raised after the pages before it are read)
                failed = e
            try:
                while buf:  # the end of the stream: each worker as it comes free takes its share of the rest
                    if (worker := free()) is None:
                        return
                    with self._changed:
                        spread = max(self._rates) / max(1e-9, min(self._rates)) if self._rates else 1.0
                        n = piece(len(buf), list(self._loads), batch_size, spread)
                    give(buf[:n], worker)
                    del buf[:n]
            except BaseException as e:
                failed = failed or e
            out.put(end if failed is None else failed)

        feeder = threading.Thread(target=feed, name="invoice-vlm-pages", daemon=True)
        feeder.start()
        try:
            self.wait_ready()
            while (item := out.get()) is not end:
                if isinstance(item, BaseException):
                    raise item
                keys, future = item
                texts, gained = future.result()
                for k, v in gained.items():
                    stats[k] = stats.get(k, 0) + v
                yield from zip(keys, texts)
        finally:
            stop.set()
            with self._changed:
                self._changed.notify_all()

    def close(self) -> None:
        for p in self.pools:
            p.shutdown(cancel_futures=True)
