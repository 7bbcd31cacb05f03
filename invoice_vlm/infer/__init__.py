"""Batched greedy inference: the one engine behind ``predict``, ``eval`` and ``serve``.

It takes PIL images and returns strings: it knows nothing about files or HTTP.

What makes it fast (``invoice-vlm bench predict`` measures it against one ``generate`` call per page):
- pages are generated in batches, the prompts left-padded so that every row's next token comes from the same
  position, with the KV cache on;
- a window of pages is sorted by how much text each shows (its share of dark pixels, a cheap stand-in for the
  length of its transcription) so that a batch does not wait many steps for one long page;
- options: dynamic int8 quantisation of the linear layers on CPU, bf16 on a GPU, ``torch.compile``.

A model that reads rows (its config.json records ``reading: {"unit": "row"}``, as invoice-vlm-tiny does) gets the
same interface: each page is cut into rows by ``invoice_vlm.rows.segment`` (pixels only), the rows of all pages in
a batch are read together, widest first in batches of ``row_batch_size``, and each page's text is its rows
joined by newlines. A row reader with a CTC head beside its weights (``models.CtcHead``) reads a row in one pass
of its vision tower and the head; by default (``decode`` ``auto`` or ``rescore``) the decoder then chooses among
the head's best readings of a row where the head is unsure, its own reading among them where it would write none
(joint CTC/attention decoding; ``ctc``: the head alone; ``generate``: the decoder).
``extract`` on such a model gives the fields that the rule-based field reader
(``invoice_vlm.fields.fields_from_text``) finds in that transcription, as the same JSON.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Hashable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image

from ..common import DECODE_MODES
from .lexicon import load_lexicon

if TYPE_CHECKING:
    from ..models import RowPrefix

DEFAULT_PROMPT = "ocr"
# rescore: each row's RESCORE_BEAM best readings by the CTC head (prefix beam search), those within RESCORE_MARGIN
# (natural log) of the best, and the decoder's own greedy reading where it would write none of them, chosen by
# RESCORE_CTC_WEIGHT x their CTC log-probability + the rest x the decoder's, + RESCORE_LENGTH_BONUS a character (the
# decoder's log-probability falls with every character it has to explain). WeNet's "attention rescoring" and
# ESPnet's joint CTC/attention decoding; the figures that chose these: docs/embedded-model.md section 7.
RESCORE_BEAM, RESCORE_MARGIN, RESCORE_CTC_WEIGHT, RESCORE_LENGTH_BONUS = 8, 3.0, 0.5, 1.0
# ... + RESCORE_LEXICON_BONUS a word the lexicon holds (infer.lexicon; real invoices BLEU 0.871 -> 0.878)
RESCORE_LEXICON_BONUS = 1.0
# the decoder's own reading of a row may be at most this many tokens longer than the head's longest reading
JOIN_SLACK = 8


class Left(NamedTuple):
    """A row whose decoder would write none of its head's readings, until the decoder has read it itself."""

    found: list[tuple[list[int], float, float]]  # the head's readings: (ids, CTC, decoder log-probability)
    lead: list[int]  # what the decoder's own reading starts with (DecoderScores.leads: the longest of its readings')
    lead_log_prob: float
    tokens: torch.Tensor  # its image tokens, (rows of features, its own columns, hidden): not encoded twice
    prefix: "RowPrefix"  # and as the decoder's KV cache held them in the scoring pass: not read twice


def default_dtype(device: str) -> str:
    """The dtype a model reads in unless told: bf16 on a GPU, and on a CPU that computes in bf16 itself (AVX512-BF16
    or AMX): invoice-vlm-tiny's weights are bf16, and there it reads 1.7x faster than in fp32 with the same page
    figures (docs/embedded-model.md section 7). fp32 on other CPUs, which would emulate bf16 more slowly."""
    if device.startswith("cuda"):
        return "bf16"
    cpu = getattr(torch, "cpu", None)  # (private probes: a torch without them reads in fp32)
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return "bf16" if any(getattr(cpu, name, lambda: False)() for name in probes) else "fp32"


def ink(image: Image.Image) -> float:
    """Share of dark pixels on a 96x96 greyscale thumbnail: how much text a page shows."""
    hist = image.convert("L").resize((96, 96), Image.Resampling.BOX).histogram()
    return sum(hist[:160]) / (96 * 96)


def quantize_int8(model):
    """Dynamic int8 quantisation of every ``nn.Linear`` (weights int8, activations quantised on the fly): CPU only."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


class Predictor:
    """Wraps a (model, processor) pair. ``predict`` returns only the generated text, prompt excluded."""

    def __init__(self, model, processor, max_new_tokens: int = 512, batch_size: int = 8, sort_by_length: bool = True,
                 window: int = 4, min_new_tokens: int = 0, row_batch_size: int = 64, ctc_head=None,
                 decode: str = "auto", workers: int = 0, lexicon: str = "auto"):
        from ..common import InvoiceVLMError
        from ..models import kind_of

        self.model = model
        # the model's kind builds its inputs; one with a reading unit (the row reader) reads pages a row at a time
        self.kind = kind_of(processor, getattr(model, "config", None))
        self.unit = self.kind.unit
        # a row reader with a CTC head (models.CtcHead): "auto" and "rescore" read with the head's best readings, the
        # decoder choosing; "ctc" with the head alone; "generate" with the decoder alone, token by token
        if decode not in DECODE_MODES:
            raise InvoiceVLMError(f"decode must be one of {', '.join(DECODE_MODES)}, got {decode!r}")
        if decode in ("ctc", "rescore") and ctc_head is None:
            raise InvoiceVLMError(f"decode {decode} needs a row reader with a CTC head (ctc_head.safetensors beside "
                                  "it)")
        self.ctc_head = ctc_head if decode != "generate" else None
        # what a row reader reads with: the head alone, the head's readings chosen by the decoder, or the decoder
        self.decode = "generate" if self.ctc_head is None else ("ctc" if decode == "ctc" else "rescore")
        # words the rescoring favours (infer.lexicon): only the rescoring chooses among readings
        self.lexicon = load_lexicon(lexicon) if self.decode == "rescore" else None
        # a row reader's pages are prepared (deskew, segment, crop) by this many processes beside the model (0 or 1:
        # in the model's own process; below 0: one a core); the texts are the same
        self.workers = prepare_workers(workers)
        self._pool = None
        self._readers = None  # (infer.readers: workers that also read, from from_pretrained on a CPU)
        self.row_batch_size = max(1, row_batch_size)
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.min_new_tokens = min_new_tokens  # > 0 only for benchmarks: page-length output from any model
        self.batch_size = max(1, batch_size)
        self.sort_by_length = sort_by_length
        self.window = max(1, window)  # batches' worth of pages sorted together
        self.stats = {"pages": 0, "batches": 0, "generate_seconds": 0.0, "new_tokens": 0, "prepare_seconds": 0.0}
        self._trimmed = time.monotonic()  # when freed memory was last handed back (release_freed_memory)

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str | None = None, dtype: str | None = None,
                        quantize: str | None = None, compile: bool = False, read_in_workers: bool | None = None,
                        pages: int | None = None, **kwargs) -> "Predictor":
        """``device``: cpu | cuda (default: cuda when available); ``dtype``: float32 | bfloat16 | float16 (default:
        ``default_dtype``; fp32 under int8); ``quantize``: ``int8`` (CPU); ``compile``: wrap the forward in
        torch.compile. A row reader with ``workers`` (2 or more): each worker reads whole batches of pages with its
        own copy of the model on ``device`` (``infer.readers``; on a GPU they share it), unless it reads with its CTC
        head alone or ``read_in_workers`` is False (the server's batches are read in its own process); otherwise the
        workers prepare pages for the model. ``pages``: how many the caller will read, where it knows: a reading worker
        for every two batches of them at most, and none below two such workers. A worker's start costs a core
        seconds and a batch's reading time varies with its pages, so few pages read sooner in one process (the
        whole command, real 200-dpi pages, batches of 8: a page 6.9 s in one process, 12.8 s with two reading
        workers; 16 pages 26.3 s against 33.6 s; 32 pages 42.2 s against 39.1 s)."""
        from ..common import InvoiceVLMError, torch_dtype
        from ..models import load, reading_unit_of

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or ("fp32" if quantize == "int8" else default_dtype(device))
        if quantize not in (None, "", "none", "int8"):
            raise InvoiceVLMError(f"quantize must be int8 or none, got {quantize!r}")
        if quantize == "int8" and device != "cpu":
            raise InvoiceVLMError("int8 dynamic quantisation runs on the CPU only (use bf16 on a GPU)")
        if device.startswith("cuda") and not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise InvoiceVLMError(f"device {device}: no CUDA GPU is usable here (torch {torch.__version__}, {build})")
        # a row reader's workers start before the model loads: their start (a Python each) overlaps the load
        workers = prepare_workers(kwargs.get("workers", 0))
        pool = readers = None
        if workers >= 2 and reading_unit_of(name_or_path) is not None:
            # the workers read where the reading is the work: not with the CTC head alone (a page read in 150 ms,
            # prepared in 100-250), where a worker's start (torch and the model, seconds) would cost more than it saves.
            # On a GPU too: there the decoder's passes are quick, but a page's beam search (58 ms of Python on 100-dpi
            # pages) and the Python around the passes would hold one process to some 10 pages/s; a worker a core
            # runs them side by side (docs/embedded-model.md section 12)
            if read_in_workers is None:
                read_in_workers = kwargs.get("decode", "auto") != "ctc"
                if pages is not None:  # two batches a worker at least (see the docstring)
                    readers_for = min(workers, -(-pages // max(1, kwargs.get("batch_size", 8))) // 2)
                    read_in_workers = read_in_workers and readers_for >= 2
                    workers = readers_for if read_in_workers else workers
            if read_in_workers:
                from .readers import ReaderPool

                own = {k: v for k, v in kwargs.items() if k != "workers"}
                readers = ReaderPool(workers, name_or_path, dict(own, device=device, dtype=dtype, quantize=quantize,
                                                                 compile=compile), prepare_workers(-1))
            else:
                pool = prepare_pool(workers)
        try:
            model, processor = load(name_or_path, dtype=torch_dtype(dtype), device=device)
        except BaseException:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            if readers is not None:
                readers.close()
            raise
        head = load_ctc_head(name_or_path, model)
        if device == "cpu":
            # convolution weights channels-last, oneDNN's faster layout: the row reader's tower 1.3x faster
            # (docs/embedded-model.md section 7)
            model = model.to(memory_format=torch.channels_last)
        if quantize == "int8":
            model = quantize_int8(model)
        if compile:
            model.forward = torch.compile(model.forward, dynamic=True)
        predictor = cls(model, processor, ctc_head=head, **kwargs)
        predictor._pool, predictor._readers = pool, readers
        return predictor

    @property
    def device(self):
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def generate_batch(self, images: Sequence[Image.Image], prompt: str | Sequence[str]) -> list[str]:
        """One forward pass over a batch; rows may have different prompts (the server's micro-batches)."""
        from ..models import generated_tokens

        prompts = [prompt] * len(images) if isinstance(prompt, str) else list(prompt)
        if self.unit is not None:
            return self._read_pages(images, prompts)
        inputs = self.kind.generation_inputs(self.processor, list(images), prompts).to(self.device)
        if "pixel_values" in inputs:
            dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), torch.float32)
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        tok = self.processor.tokenizer
        eos = self.model.generation_config.eos_token_id
        was_training = self.model.training
        self.model.eval()
        t0 = time.perf_counter()
        try:
            extra = {"min_new_tokens": self.min_new_tokens} if self.min_new_tokens else {}
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, use_cache=True,
                                      **extra,
                                      pad_token_id=tok.pad_token_id,
                                      eos_token_id=eos if eos is not None else tok.eos_token_id)
        finally:
            if was_training:
                self.model.train()
        generated = generated_tokens(self.model, inputs, out)
        self.stats["pages"] += len(images)
        self.stats["batches"] += 1
        self.stats["generate_seconds"] += time.perf_counter() - t0
        self.stats["new_tokens"] += int((generated != tok.pad_token_id).sum())
        return [t.strip() for t in self.processor.batch_decode(generated, skip_special_tokens=True)]

    def _read_pages(self, images: Sequence[Image.Image], prompts: list[str]) -> list[str]:
        self._check_prompts(prompts)
        t0 = time.perf_counter()
        prepared = self._prepare(images)
        self.stats["prepare_seconds"] += time.perf_counter() - t0  # deskew, segment, crop: a page's preparation
        return self._read_prepared(prepared, prompts)

    @staticmethod
    def _check_prompts(prompts: Iterable[str]) -> None:
        from ..common import InvoiceVLMError
        from ..fields import EXTRACT_PROMPT

        for p in prompts:
            if p not in (DEFAULT_PROMPT, EXTRACT_PROMPT):
                raise InvoiceVLMError(f"this model reads text rows: it answers {DEFAULT_PROMPT!r} and "
                                      f"{EXTRACT_PROMPT!r}, not {p!r}")

    def _read_prepared(self, prepared: list[list[np.ndarray]], prompts: list[str]) -> list[str]:
        """Pages' texts from their rows (``page_rows``), all the pages' rows read together."""
        from ..fields import EXTRACT_PROMPT

        rows, owner = [], []
        for k, page in enumerate(prepared):
            rows += page
            owner += [k] * len(page)
        texts = self.read_rows(rows)
        pages: list[list[str]] = [[] for _ in prepared]
        for k, text in zip(owner, texts):
            if text:  # a row with nothing to read (a signature, a logo's remains) adds no line
                pages[k].append(text)
        self.stats["pages"] += len(prepared)
        out = []
        for lines, prompt in zip(pages, prompts):
            text = "\n".join(lines)
            if prompt == EXTRACT_PROMPT:
                import json

                from ..fields import fields_from_text

                text = json.dumps(fields_from_text(text), ensure_ascii=False)
            out.append(text)
        return out

    def _prepare(self, images: Sequence[Image.Image]) -> list[list[np.ndarray]]:
        from ..rows import page_rows

        if self.workers < 2 or len(images) < 2:
            return [page_rows(im, self.unit) for im in images]
        return [f.result() for f in [self.submit_page(im) for im in images]]

    def _settings(self) -> dict:
        """What a caller may change after the start (eval sets ``max_new_tokens``), as workers that read take it."""
        return {"max_new_tokens": self.max_new_tokens, "min_new_tokens": self.min_new_tokens,
                "row_batch_size": self.row_batch_size}

    @property
    def reads_in_workers(self) -> bool:
        """Its worker processes read whole batches of pages, each with its own model (``infer.readers``)."""
        return self._readers is not None

    @property
    def prepares_ahead(self) -> bool:
        """A row reader with page workers: a page can be prepared ahead of its reading (``submit_page``, then
        ``read_prepared``), as ``predict_stream`` and the server do."""
        return self.unit is not None and self.workers >= 2

    def read_prepared(self, prepared: list[list[np.ndarray]], prompts: list[str]) -> list[str]:
        """Pages' texts from their prepared rows (``submit_page``'s results), read together."""
        self._check_prompts(prompts)
        return self._read_prepared(prepared, prompts)

    def submit_page(self, image: Image.Image):
        """A page's preparation (``page_rows``) started in the worker processes: a Future of its rows."""
        from ..rows import page_rows

        # grey, as page_rows takes it first: a third of an RGB page's bytes to send
        if self._readers is not None:
            return self._readers.prepare(image.convert("L"), self.unit)
        if self._pool is None:
            self._pool = prepare_pool(self.workers)
        return self._pool.submit(page_rows, image.convert("L"), self.unit)

    def wait_ready(self) -> None:
        """Wait until the worker processes that read, if any, have loaded their models."""
        if self._readers is not None:
            self._readers.wait_ready()

    def close(self) -> None:
        """Stop the worker processes that prepare (or read) pages, if any."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
        if self._readers is not None:
            self._readers.close()
            self._readers = None

    def read_rows(self, rows: list[np.ndarray]) -> list[str]:
        """Transcriptions of row images (uint8, the unit's height), widest first in batches, read as ``decode``
        says. A row wider than the unit's ``max_width`` is read in pieces cut at word gaps (``rows.row_pieces``),
        their texts joined by a space; by the decoder alone, squeezed (it learned squeezed rows, and writes a
        piece's end as a row's: CER 2.4% -> 4.5% on 100-dpi synthetic pages, docs/embedded-model.md section 8)."""
        from ..rows import row_pieces, squeezed

        if self.unit is not None and self.decode == "generate":
            return self._read_row_images([squeezed(r, self.unit) for r in rows])
        pieces, owner = [], []
        for i, row in enumerate(rows):
            cut = row_pieces(row, self.unit) if self.unit is not None else [row]
            pieces += cut
            owner += [i] * len(cut)
        if len(pieces) == len(rows):
            return self._read_row_images(rows)
        texts: list[list[str]] = [[] for _ in rows]
        for i, text in zip(owner, self._read_row_images(pieces)):
            if text:
                texts[i].append(text)
        return [" ".join(t) for t in texts]

    @torch.inference_mode()
    def _read_row_images(self, rows: list[np.ndarray]) -> list[str]:
        from ..models import row_image_tokens, row_model_inputs, row_token_budget

        tok = self.processor.tokenizer
        order = sorted(range(len(rows)), key=lambda i: -rows[i].shape[1])
        out: dict[int, str] = {}
        was_training = self.model.training
        self.model.eval()
        dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), torch.float32)
        try:
            pending: dict[int, Left] = {}  # rows the decoder is to read as well
            for i in range(0, len(order), self.row_batch_size):
                chunk = order[i:i + self.row_batch_size]
                batch = self._row_inputs([rows[j] for j in chunk], dtype)
                if self.ctc_head is not None:  # the tower and the head: the decoder's inputs are not needed
                    t0 = time.perf_counter()
                    tokens = row_image_tokens(self.model, batch)
                    if self.decode == "ctc":
                        ids = self.ctc_head.read(tokens, batch["image_columns"])
                    else:
                        ids, left = self._rescore(batch, tokens)
                        pending.update((chunk[k], found) for k, found in left.items())
                    self.stats["generate_seconds"] += time.perf_counter() - t0
                    self.stats["batches"] += 1
                    self.stats["new_tokens"] += sum(map(len, ids))
                    out.update(zip(chunk, (t.strip() for t in tok.batch_decode(ids))))
                    continue
                _, inputs = row_model_inputs(self.model, batch)
                t0 = time.perf_counter()
                budgets = [row_token_budget(rows[j].shape[1], self.unit, self.max_new_tokens) for j in chunk]
                new = self.model.generate(**inputs, max_new_tokens=max(budgets), do_sample=False, use_cache=True,
                                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
                self.stats["generate_seconds"] += time.perf_counter() - t0
                self.stats["batches"] += 1
                texts = []
                for k, budget in enumerate(budgets):
                    ids = new[k, :budget]
                    self.stats["new_tokens"] += int((ids != tok.pad_token_id).sum())
                    texts.append(tok.decode(ids, skip_special_tokens=True).strip())
                out.update(zip(chunk, texts))
            if pending:  # their own readings, written in batches of rows gathered across the chunks
                t0 = time.perf_counter()
                chosen = self._join_decoder_readings([rows[j] for j in pending], list(pending.values()), dtype)
                out.update(zip(pending, (t.strip() for t in tok.batch_decode(chosen))))
                self.stats["generate_seconds"] += time.perf_counter() - t0
        finally:
            if was_training:
                self.model.train()
        self.release_memory()
        return [out[i] for i in range(len(rows))]

    def release_memory(self, every_s: float | None = None) -> None:
        """Hand the memory the C allocator holds freed back to the system (``release_freed_memory``), unless that was
        done less than ``every_s`` seconds ago (default TRIM_EVERY_S). A row reader does it as it reads; a server
        also when its queue runs dry."""
        if time.monotonic() - self._trimmed >= (TRIM_EVERY_S if every_s is None else every_s):
            release_freed_memory()
            self._trimmed = time.monotonic()

    def _row_inputs(self, rows: list[np.ndarray], dtype: torch.dtype) -> dict[str, torch.Tensor]:
        batch = self.kind.generation_inputs(self.processor, rows, [])
        batch = {k: v.to(self.device) for k, v in batch.items()}
        batch["pixel_values"] = batch["pixel_values"].to(dtype)
        return batch

    def _rescore(self, batch: dict[str, torch.Tensor],
                 tokens: torch.Tensor) -> tuple[list[list[int]], dict[int, "Left"]]:
        """Joint CTC/attention decoding, first part: each row's best reading among the head's (RESCORE_*), and the
        rows whose decoder would write none of the head's readings (``Left``): their decoder's own reading is to join
        them (``_join_decoder_readings``). A row whose head has one reading within the margin keeps it without the
        decoder."""
        from ..models import RowPrefix, decoder_log_probs

        nbest = self.ctc_head.nbest(tokens, batch["image_columns"], RESCORE_BEAM, RESCORE_MARGIN)
        out = [found[0][0] for found in nbest]
        need = [k for k, found in enumerate(nbest) if len(found) > 1]
        if not need:
            return out, {}
        tok = self.processor.tokenizer
        owner = [i for i, k in enumerate(need) for _ in nbest[k]]
        scored = decoder_log_probs(self.model, {k: v[need] for k, v in batch.items()}, tokens[need],
                                   [ids for k in need for ids, _ in nbest[k]], owner, tok.eos_token_id,
                                   tok.pad_token_id)
        att, follows = iter(scored.log_probs.tolist()), scored.greedy.tolist()
        followed = {need[o] for o, g in zip(owner, follows) if g}
        # where the decoder departs last from the head's readings: its own reading starts there (Left.lead)
        lead: dict[int, int] = {}
        for i, o in enumerate(owner):
            if need[o] not in lead or len(scored.leads[i]) > len(scored.leads[lead[need[o]]]):
                lead[need[o]] = i
        per_col = self.unit.height // self.unit.multiple
        left = {}
        for o, k in enumerate(need):
            found = [(ids, ctc, next(att)) for ids, ctc in nbest[k]]
            out[k] = self._best_reading(found)
            if k not in followed:
                cols, own = tokens.shape[1] // per_col, int(batch["image_columns"][k])
                p = scored.prefix[o]
                kept = RowPrefix([t.clone() for t in p.keys], [t.clone() for t in p.values], p.mask.clone())
                left[k] = Left(found, scored.leads[lead[k]], scored.lead_log_probs[lead[k]],
                               tokens[k].view(per_col, cols, -1)[:, :own].clone(), kept)
        return out, left

    def _join_decoder_readings(self, rows: list[np.ndarray], left: list["Left"], dtype: torch.dtype) -> list[list[int]]:
        """Joint CTC/attention decoding, second part: the decoder reads each of ``rows`` itself (greedy, each row to
        its own budget, from its lead on; a reading that runs past it is left out), its reading joins the row's
        readings with its CTC log-probability, and the best by both scores is the row's. Rows widest first, in
        batches, on the image tokens the scoring pass had."""
        from ..models import decoder_readings, row_token_budget

        tok = self.processor.tokenizer
        readings = [x.found for x in left]
        order = sorted(range(len(rows)), key=lambda i: -rows[i].shape[1])
        for i in range(0, len(order), self.row_batch_size):
            part = order[i:i + self.row_batch_size]
            batch = self._row_inputs([rows[k] for k in part], dtype)
            cols = batch["pixel_values"].shape[3] // self.unit.multiple
            tokens = torch.stack([torch.nn.functional.pad(left[k].tokens, (0, 0, 0, cols - left[k].tokens.shape[1]))
                                  for k in part]).flatten(1, 2)
            # a reading much longer than the head's longest has run on (the head would give it next to no chance):
            # capping it there keeps a batch of noisy rows from running to the widest row's budget
            budgets = [min(row_token_budget(rows[k].shape[1], self.unit, self.max_new_tokens),
                           max(len(ids) for ids, _, _ in readings[k]) + JOIN_SLACK + 1) for k in part]
            written = decoder_readings(self.model, batch, tokens, budgets, tok.eos_token_id, tok.pad_token_id,
                                       [left[k].lead for k in part], [left[k].lead_log_prob for k in part],
                                       [left[k].prefix for k in part])
            kept = [q for q, w in enumerate(written) if w is not None]
            if not kept:
                continue
            ctc = self.ctc_head.log_probs(tokens[kept], batch["image_columns"][kept], [written[q][0] for q in kept])
            for q, c in zip(kept, ctc):
                if c > -math.inf:  # a reading the head's frames can spell
                    readings[part[q]].append((written[q][0], c, written[q][1]))
        return [self._best_reading(found) for found in readings]

    def _best_reading(self, found: list[tuple[list[int], float, float]]) -> list[int]:
        """The reading (ids, CTC log-probability, decoder log-probability) that RESCORE_* scores best."""
        decode = self.processor.tokenizer.decode
        scores = [RESCORE_CTC_WEIGHT * c + (1 - RESCORE_CTC_WEIGHT) * a + RESCORE_LENGTH_BONUS * len(ids)
                  + (RESCORE_LEXICON_BONUS * self.lexicon.known(decode(ids)) if self.lexicon is not None else 0.0)
                  for ids, c, a in found]
        return found[max(range(len(found)), key=scores.__getitem__)][0]

    def predict_stream(self, items: Iterable[tuple[Hashable, Image.Image]],
                       prompt: str = DEFAULT_PROMPT) -> Iterator[tuple[Hashable, str]]:
        """(key, text) for each (key, image), yielded as each batch finishes. Within a window of
        ``window * batch_size`` pages the ones showing the most text go first, so batches hold pages of similar
        length; the output order is therefore not the input order (use :meth:`predict_iter` for that)."""
        if self.prepares_ahead:
            yield from self._stream_rows(items, prompt)
            return
        pending: list[tuple[Hashable, Image.Image]] = []
        size = self.batch_size * (self.window if self.sort_by_length else 1)
        for item in items:
            pending.append(item)
            if len(pending) == size:
                yield from self._run_window(pending, prompt)
                pending = []
        if pending:
            yield from self._run_window(pending, prompt)

    def _stream_rows(self, items: Iterable[tuple[Hashable, Image.Image]],
                     prompt: str) -> Iterator[tuple[Hashable, str]]:
        """A row reader with worker processes: a thread takes the pages as they come (decoding the files, where
        ``items`` does) and hands each to the workers, up to ``2 * batch_size`` pages ahead, while the model reads
        a batch of prepared pages, so that decoding, preparation and reading overlap. A page's text does not depend
        on its batch, so no window is sorted; texts in input order."""
        import queue
        import threading

        self._check_prompts([prompt])
        if self._readers is not None:  # the workers read too: they take whole batches of pages
            yield from self._readers.stream(items, prompt, self.batch_size, self.stats, self._settings())
            return
        ahead: queue.Queue = queue.Queue(maxsize=2 * self.batch_size)
        stop = threading.Event()
        end = object()

        def feed() -> None:
            try:
                for key, image in items:
                    item = (key, self.submit_page(image))
                    while not stop.is_set():
                        try:
                            ahead.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                ahead.put(end)
            except BaseException as e:  # (a file that will not open: raised where the pages are read)
                ahead.put(e)

        feeder = threading.Thread(target=feed, name="invoice-vlm-pages", daemon=True)
        feeder.start()

        def read(batch: list) -> Iterator[tuple[Hashable, str]]:
            t0 = time.perf_counter()
            prepared = [f.result() for _, f in batch]
            self.stats["prepare_seconds"] += time.perf_counter() - t0  # waiting for the workers, past the overlap
            yield from zip([k for k, _ in batch], self._read_prepared(prepared, [prompt] * len(batch)))

        batch: list = []
        try:
            while (item := ahead.get()) is not end:
                if isinstance(item, BaseException):
                    raise item
                batch.append(item)
                if len(batch) == self.batch_size:
                    yield from read(batch)
                    batch = []
            if batch:
                yield from read(batch)
        finally:
            stop.set()

    def _run_window(self, items: list[tuple[Hashable, Image.Image]], prompt: str) -> Iterator[tuple[Hashable, str]]:
        if self.sort_by_length and len(items) > self.batch_size:
            items = sorted(items, key=lambda kv: -ink(kv[1]))
        for i in range(0, len(items), self.batch_size):
            chunk = items[i:i + self.batch_size]
            yield from zip([k for k, _ in chunk], self.generate_batch([im for _, im in chunk], prompt))

    def predict_iter(self, images: Iterable[Image.Image], prompt: str = DEFAULT_PROMPT) -> Iterator[str]:
        """Texts in input order, each yielded as soon as it and every earlier one are done."""
        done: dict[int, str] = {}
        nxt = 0
        for k, text in self.predict_stream(enumerate(images), prompt):
            done[k] = text
            while nxt in done:
                yield done.pop(nxt)
                nxt += 1

    def predict(self, images: Sequence[Image.Image], prompt: str = DEFAULT_PROMPT) -> list[str]:
        return list(self.predict_iter(images, prompt))


# glibc keeps what a row reader's batches free (many tensors of a few hundred KB, each batch's rows of other widths)
# in its heaps, fragmented: a server's resident memory grew 50% over 160 requests and the engine's from 0.9 to 1.6 GB
# over 8 passes over the same 16 pages. malloc_trim hands the free pages back (RSS flat at 0.82 GB, reading time the
# same; docs/reliability.md); a call costs 20-65 ms, so at most once every TRIM_EVERY_S seconds of reading. Allocating
# those tensors with mmap instead (M_MMAP_THRESHOLD 64 KB) kept memory flat too, but read 1.7x slower.
TRIM_EVERY_S = 5.0
_malloc_trim = None  # glibc's malloc_trim once looked up; False where the C library has none


def release_freed_memory() -> None:
    """Memory the C allocator holds freed, handed back to the system (glibc's ``malloc_trim``; nothing elsewhere:
    other allocators return it themselves or keep it their own way)."""
    global _malloc_trim
    if _malloc_trim is None:
        import ctypes
        import ctypes.util

        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, musl): no such call
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


def prepare_workers(workers: int) -> int:
    """Processes preparing a row reader's pages: ``workers``, or below 0 one a core this process may use."""
    import os

    if workers >= 0:
        return workers
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def prepare_pool(workers: int):
    """Worker processes that prepare pages (``rows.page_rows``), started now: each imports only what preparing
    needs (no torch), once."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from ..rows import prepare_worker

    # spawn, not fork: the parent holds torch's and OpenCV's thread pools, which a fork copies half-alive
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=prepare_worker)
    for _ in range(workers):  # a task each, submitted at once, starts every process (the pool starts them lazily)
        pool.submit(int)
    return pool


def load_ctc_head(name_or_path: str, model):
    """The CTC head saved beside a row reader's checkpoint (models.CtcHead), or None (a hub id, a page model, or a
    row reader without one)."""
    from pathlib import Path

    from ..models import EMBEDDED, CtcHead, embedded_model

    if getattr(model.config, "reading", None) is None:
        return None
    folder = embedded_model() if str(name_or_path) == EMBEDDED else Path(name_or_path)
    return CtcHead.load(folder, model) if folder.is_dir() else None


def naive_predict(model, processor, image: Image.Image, prompt: str = DEFAULT_PROMPT,
                  max_new_tokens: int = 512, min_new_tokens: int = 0) -> str:
    """The blog-post way, the baseline of ``bench predict``: one ``generate`` per page, batch of one."""
    inputs = processor(images=image, text=f"<image>{prompt}", return_tensors="pt")
    extra = {"min_new_tokens": min_new_tokens} if min_new_tokens else {}
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, **extra)
    return processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
