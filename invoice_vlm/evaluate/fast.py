"""sacrebleu's TER and chrF, computed faster with exactly the same results.

chrF: sacrebleu counts each segment's character n-grams (orders 1-6) in ``Counter`` objects built from string
slices; :class:`CHRF` counts them with numpy (each n-gram an integer: its characters' ranks in the pair's alphabet,
in positional notation) and matches them with a sorted intersection. Same statistics, same score.

TER: sacrebleu's (``sacrebleu.metrics.lib_ter``, a port of Tercom) spends a page-length OCR prediction's time in two
pure-Python loops: the beam edit distance, cell by cell, and the shift search, which walks every (hypothesis,
reference) position pair within 50 words of each other only to drop all but the few that touch an error. This module
runs the same algorithm, step for step, with changes that cannot alter a result:

- edit-distance rows are computed with numpy: the substitution/deletion choice is elementwise and the insertion
  chain along a row is a running minimum; ties are broken in sacrebleu's order (substitution, then deletion, then
  insertion), so values *and* traces (which decide the shifts) are identical;
- each segment's first edit distance, most of the work, is computed for a whole corpus chunk at once (one numpy
  row step for 64 segments) and put in the segment's row cache, where sacrebleu's first call would have put it;
- the shift search visits only the candidates that sacrebleu's filters let through, in sacrebleu's order (a
  candidate must cover a hypothesis error, so it starts at most 9 words before one, and its first word must equal
  the reference word it is paired with), so the 1,000-candidate cap trips at the same candidate.

``tests/test_fast_metrics.py`` compares statistics, scores and signatures with sacrebleu's on random pairs built to
reach every branch (moved blocks, repeated words, empty sides, very unequal lengths) and on page-length OCR output;
``invoice-vlm bench eval`` times both on the same predictions and fails if any number differs. Tokenisation and
normalisation stay sacrebleu's: the classes are sacrebleu's metric classes with the statistics step replaced.
Adversarial inputs (tiny vocabularies, long repeats) that hit the candidate cap are slower here than in sacrebleu.
"""

from __future__ import annotations

import math
from itertools import accumulate
from typing import Any

import numpy as np
from sacrebleu.metrics import CHRF as _SacreCHRF
from sacrebleu.metrics import TER as _SacreTER
from sacrebleu.metrics.lib_ter import (
    _BEAM_WIDTH,
    _MAX_CACHE_SIZE,
    _MAX_SHIFT_CANDIDATES,
    _MAX_SHIFT_DIST,
    _MAX_SHIFT_SIZE,
    _perform_shift,
    trace_to_alignment,
)

# sacrebleu's _INT_INFINITY (cells outside the beam) is 1e16; any value above every real cost behaves the same, and
# 2**30 lets the rows be int32 (half the memory traffic of int64).
_INF = 2 ** 30
# Operation codes in the row arrays, and their trace letters (sacrebleu's 'i', 'd', ' ', 's', 'x').
_INS, _DEL, _NOP, _SUB, _UNDEF = 0, 1, 2, 3, 4
_LETTER = "id sx"
_FLIP = str.maketrans("id", "di")


class CHRF(_SacreCHRF):
    """sacrebleu's ``CHRF`` with the character n-gram statistics counted by numpy (chrF, one reference per segment;
    anything else, such as chrF++ word n-grams, goes to sacrebleu's own code)."""

    def _extract_corpus_statistics(self, hypotheses, references) -> list[list[int]]:
        if self.word_order or self.whitespace or not references or len(references) != 1 or None in references[0]:
            return super()._extract_corpus_statistics(hypotheses, references)
        self.num_refs = 1  # what sacrebleu's reference pass would set (the signature reports it)
        return [char_ngram_statistics(self._preprocess_segment(h), self._preprocess_segment(r), self.char_order)
                for h, r in zip(hypotheses, references[0])]


def char_ngram_statistics(hyp: str, ref: str, order: int) -> list[int]:
    """[hypothesis n-grams, reference n-grams, matched n-grams] for n = 1..order, whitespace removed: sacrebleu's
    ``CHRF`` statistics of one segment against one reference."""
    h, r = "".join(hyp.split()), "".join(ref.split())
    alphabet = {c: k for k, c in enumerate(set(h) | set(r))}
    base = len(alphabet) + 1
    if base ** order >= 2 ** 63:  # n-grams no longer fit in an int64: count them sacrebleu's way
        from sacrebleu.metrics.helpers import extract_all_char_ngrams

        return [x for hg, rg in zip(extract_all_char_ngrams(h, order), extract_all_char_ngrams(r, order))
                for x in _SacreCHRF._get_match_statistics(hg, rg)]
    ids_h = np.array([alphabet[c] + 1 for c in h], dtype=np.int64)
    ids_r = np.array([alphabet[c] + 1 for c in r], dtype=np.int64)
    out: list[int] = []
    key_h, key_r = ids_h, ids_r
    for n in range(1, order + 1):
        if n > 1:  # extend each (n-1)-gram by the character after it
            key_h = key_h[:-1] * base + ids_h[n - 1:]
            key_r = key_r[:-1] * base + ids_r[n - 1:]
        n_h, n_r = len(key_h), len(key_r)
        match = 0
        if n_h and n_r:
            gh, ch = np.unique(key_h, return_counts=True)
            gr, cr = np.unique(key_r, return_counts=True)
            _, ih, ir = np.intersect1d(gh, gr, assume_unique=True, return_indices=True)
            match = int(np.minimum(ch[ih], cr[ir]).sum())
        out += [n_h if n_r else 0, n_r, match]
    return out


class TER(_SacreTER):
    """sacrebleu's ``TER`` (same options, signature, tokenisation and score) with a faster exact edit count."""

    def _extract_corpus_statistics(self, hypotheses, references) -> list[list[float]]:
        if references:
            ref_cache = self._cache_references(references)
        elif self._ref_cache:
            ref_cache = self._ref_cache
        else:
            raise RuntimeError("No references provided and the cache is empty.")
        words = [self._preprocess_segment(h).split() for h in hypotheses]
        eds = [[BeamEditDistance(r) if r else None for r in kw["ref_words"]] for kw in ref_cache]
        # Each segment's first edit distance (the unshifted hypothesis against each reference) is most of the work:
        # computed for all segments at once, row by row, and put in each one's cache.
        prime([(w, ed) for w, segment in zip(words, eds) for ed in segment if ed is not None])
        return [self._segment(w, kw, segment) for w, kw, segment in zip(words, ref_cache, eds)]

    def _compute_segment_statistics(self, hypothesis: str, ref_kwargs: dict) -> list[float]:  # sentence_score
        return self._segment(hypothesis.split(), ref_kwargs, [None] * len(ref_kwargs["ref_words"]))

    @staticmethod
    def _segment(words_hyp: list[str], ref_kwargs: dict, eds: list) -> list[float]:
        ref_words = ref_kwargs["ref_words"]
        best, ref_lengths = int(1e16), 0
        for words_ref, ed in zip(ref_words, eds):
            edits, ref_len = translation_edit_rate(words_hyp, words_ref, ed)
            ref_lengths += ref_len
            best = min(best, edits)
        return [best, ref_lengths / len(ref_words)]


def translation_edit_rate(words_hyp: list[str], words_ref: list[str],
                          cached_ed: BeamEditDistance | None = None) -> tuple[int, int]:
    """(edits, reference length), as ``sacrebleu.metrics.lib_ter.translation_edit_rate``; ``cached_ed`` is the
    reference's edit distance, possibly primed with :func:`prime`."""
    n_ref = len(words_ref)
    if n_ref == 0:
        return len(words_hyp), 0
    cached_ed = cached_ed or BeamEditDistance(words_ref)
    positions: dict[str, list[int]] = {}
    for j, w in enumerate(words_ref):
        positions.setdefault(w, []).append(j)
    shifts, words, checked = 0, words_hyp, 0
    while True:  # shift while a shift lowers the edit distance
        delta, shifted, checked = _shift(words, words_ref, positions, cached_ed, checked)
        if checked >= _MAX_SHIFT_CANDIDATES or delta <= 0:
            break
        shifts += 1
        words = shifted
    distance, _ = cached_ed(words)
    return shifts + distance, n_ref


def _shift(words_h: list[str], words_r: list[str], positions: dict[str, list[int]], cached_ed,
           checked: int) -> tuple[int, list[str], int]:
    pre_score, inv_trace = cached_ed(words_h)
    align, ref_err, hyp_err = trace_to_alignment(inv_trace.translate(_FLIP))
    errors_h = [k for k, e in enumerate(hyp_err) if e]
    if not errors_h or not any(ref_err):
        return 0, words_h, checked
    # Prefix sums: "has this span an error" in O(1), where sacrebleu sums the slice.
    cum_h = [0, *accumulate(hyp_err)]
    cum_r = [0, *accumulate(ref_err)]
    n_h, n_r = len(words_h), len(words_r)
    starts = sorted({s for e in errors_h for s in range(max(0, e - _MAX_SHIFT_SIZE + 1), min(n_h, e + 1))})
    best = None
    for start_h in starts:
        for start_r in positions.get(words_h[start_h], ()):
            if start_r < start_h - _MAX_SHIFT_DIST:
                continue
            if start_r > start_h + _MAX_SHIFT_DIST:
                break
            length = 0
            while words_h[start_h + length] == words_r[start_r + length] and length < _MAX_SHIFT_SIZE:
                length += 1
                # --- sacrebleu's loop body for the pair (start_h, start_r, length) ---
                if cum_h[start_h + length] - cum_h[start_h] and cum_r[min(start_r + length, n_r)] - cum_r[start_r] \
                        and not start_h <= align[start_r] < start_h + length:
                    prev_idx = -1
                    for offset in range(-1, length):
                        if start_r + offset == -1:
                            idx = 0
                        elif start_r + offset in align:
                            idx = align[start_r + offset] + 1
                        else:
                            break
                        if idx == prev_idx:
                            continue
                        prev_idx = idx
                        shifted = _perform_shift(words_h, start_h, length, idx)
                        candidate = (pre_score - cached_ed(shifted)[0], length, -start_h, -idx, shifted)
                        checked += 1
                        if not best or candidate > best:
                            best = candidate
                    if checked >= _MAX_SHIFT_CANDIDATES:
                        return (best[0], best[4], checked) if best else (0, words_h, checked)
                # ---
                if n_h == start_h + length or n_r == start_r + length:
                    break
    if not best:
        return 0, words_h, checked
    return best[0], best[4], checked


class BeamEditDistance:
    """sacrebleu's ``BeamEditDistance`` (beam around the length-scaled diagonal, prefix cache, trace), with rows
    as numpy arrays: costs (int64) and operation codes."""

    def __init__(self, words_ref: list[str]):
        self._ids: dict[str, int] = {}
        self._ref = np.array([self._ids.setdefault(w, len(self._ids)) for w in words_ref], dtype=np.int32)
        self._n_ref = len(words_ref)
        self._initial = (np.arange(self._n_ref + 1, dtype=np.int32), np.full(self._n_ref + 1, _INS, dtype=np.int8))
        self._cache: dict[str, Any] = {}
        self._cache_size = 0

    def __call__(self, words_hyp: list[str]) -> tuple[int, str]:
        rows = [self._initial]
        node = self._cache
        for word in words_hyp:  # the rows of the longest cached prefix
            if word not in node:
                break
            node, row = node[word]
            rows.append(row)
        start = len(rows) - 1
        new = self._rows(words_hyp, start, rows[-1])
        rows.extend(new)
        self._add_cache(words_hyp, start, new)
        return int(rows[-1][0][-1]), self._trace(rows)

    def _rows(self, words_h: list[str], start: int, last: tuple[np.ndarray, np.ndarray]) -> list:
        n_h, n_ref = len(words_h), self._n_ref
        ratio = n_ref / n_h if words_h else 1
        beam = math.ceil(ratio / 2 + _BEAM_WIDTH) if _BEAM_WIDTH < ratio / 2 else _BEAM_WIDTH
        prev = last[0]
        out = []
        for i in range(start + 1, n_h + 1):
            diag_j = math.floor(i * ratio)
            lo, hi = max(0, diag_j - beam), min(n_ref + 1, diag_j + beam)
            if i == n_h:
                hi = n_ref + 1
            cost = np.full(n_ref + 1, _INF, dtype=np.int32)
            op = np.full(n_ref + 1, _UNDEF, dtype=np.int8)
            seed = _INF  # the cell left of the first one computed: outside the beam, unless it is column 0
            first = lo
            if lo == 0:
                cost[0], op[0] = prev[0] + 1, _DEL
                seed, first = cost[0], 1
            if first < hi:
                js = np.arange(first, hi)
                match = self._ref[js - 1] == self._ids.get(words_h[i - 1], -1)
                diag = prev[js - 1] + ~match
                up = prev[js] + 1
                # sacrebleu tries substitution/no-op, then deletion, then insertion, each only if strictly cheaper
                # than what the cell holds (it starts at infinity)
                v = np.minimum(diag, _INF)
                o = np.where(diag < _INF, np.where(match, _NOP, _SUB), _UNDEF).astype(np.int8)
                take_up = up < v
                v = np.where(take_up, up, v)
                o[take_up] = _DEL
                # insertion chain: c[j] = min(v[j], c[j-1] + 1) = j + running min of (v[k] - k), seeded on the left
                k = np.arange(len(js))
                c = np.minimum(np.minimum.accumulate(v - k) + k, seed + 1 + k)
                left = np.concatenate(([seed], c[:-1])) + 1
                o[left < v] = _INS
                cost[first:hi] = c
                op[first:hi] = o
            out.append((cost, op))
            prev = cost
        return out

    def _trace(self, rows: list) -> str:
        ops = []
        i, j = len(rows) - 1, self._n_ref
        while i > 0 or j > 0:
            o = int(rows[i][1][j])
            ops.append(_LETTER[o])
            if o in (_SUB, _NOP):
                i, j = i - 1, j - 1
            elif o == _INS:
                j -= 1
            elif o == _DEL:
                i -= 1
            else:
                raise ValueError(f"unknown operation {_LETTER[o]!r}")
        return "".join(reversed(ops))

    def _add_cache(self, words_hyp: list[str], start: int, new: list) -> None:
        if self._cache_size >= _MAX_CACHE_SIZE:
            return
        node = self._cache
        for word in words_hyp[:start]:
            node = node[word][0]
        for word, row in zip(words_hyp[start:], new):
            if word not in node:
                node[word] = ({}, row)
                self._cache_size += 1
            node = node[word][0]


def prime(pairs: list[tuple[list[str], BeamEditDistance]], chunk: int = 64, max_cells: int = 20_000_000) -> None:
    """Compute the edit-distance rows of many (hypothesis, reference) pairs at once and cache them, as each
    reference's first call with that hypothesis would. A row step is a handful of numpy operations over all pairs
    (padded to the longest reference) instead of over one: the per-call overhead, which dominated, is shared.
    A chunk holds at most ``chunk`` pairs and ``max_cells`` matrix cells (5 bytes each), so long documents stay
    within memory."""
    todo = [(w, ed) for w, ed in pairs if w and ed._n_ref and not _BEAM_WIDTH < (ed._n_ref / len(w)) / 2]
    todo.sort(key=lambda p: len(p[0]))  # similar lengths share a chunk: little padding
    group: list = []
    rows = width = 0
    for w, ed in todo:
        rows, width = max(rows, len(w) + 1), max(width, ed._n_ref + 1)
        if group and (len(group) == chunk or (len(group) + 1) * rows * width > max_cells):
            _prime_chunk(group)
            group, rows, width = [], len(w) + 1, ed._n_ref + 1
        group.append((w, ed))
    if group:
        _prime_chunk(group)


def _prime_chunk(pairs: list[tuple[list[str], BeamEditDistance]]) -> None:
    d = len(pairs)
    n = np.array([len(w) for w, _ in pairs])
    m = np.array([ed._n_ref for _, ed in pairs])
    width = int(m.max()) + 1
    ref = np.full((d, width), -2, dtype=np.int32)  # padding never matches a word
    hyp = np.full((d, int(n.max())), -3, dtype=np.int32)
    for k, (w, ed) in enumerate(pairs):
        ref[k, 1:m[k] + 1] = ed._ref  # column j compares with reference word j - 1
        hyp[k, :n[k]] = [ed._ids.get(x, -1) for x in w]
    ratio = m / n
    cols = np.arange(width)
    cost = np.empty((d, int(n.max()) + 1, width), dtype=np.int32)
    op = np.empty((d, int(n.max()) + 1, width), dtype=np.int8)
    cost[:, 0] = cols
    op[:, 0] = _INS
    inf_col = np.full((d, 1), _INF, dtype=np.int32)
    for i in range(1, int(n.max()) + 1):
        diag_j = np.floor(i * ratio).astype(np.int32)
        lo = np.maximum(0, diag_j - _BEAM_WIDTH)
        hi = np.where(i == n, m + 1, np.minimum(m + 1, diag_j + _BEAM_WIDTH))
        inside = (cols >= lo[:, None]) & (cols < hi[:, None])
        prev = cost[:, i - 1]
        match = ref == hyp[:, i - 1:i]
        diag = np.concatenate((inf_col, prev[:, :-1] + ~match[:, 1:]), axis=1)
        up = prev + 1
        v = np.minimum(diag, _INF)
        o = np.where(diag < _INF, np.where(match, _NOP, _SUB), _UNDEF).astype(np.int8)
        take_up = up < v
        v = np.where(take_up, up, v)
        o[take_up] = _DEL
        v[:, 0], o[:, 0] = prev[:, 0] + 1, _DEL  # column 0: always a deletion (sacrebleu sets it outright)
        v = np.where(inside, v, _INF)
        c = np.minimum.accumulate(v - cols, axis=1) + cols
        left = np.concatenate((inf_col, c[:, :-1]), axis=1) + 1
        o[left < v] = _INS
        cost[:, i] = np.where(inside, c, _INF)
        op[:, i] = np.where(inside, o, _UNDEF)
    for k, (w, ed) in enumerate(pairs):
        rows = [(cost[k, i, :m[k] + 1], op[k, i, :m[k] + 1]) for i in range(1, n[k] + 1)]
        ed._add_cache(w, 0, rows)
