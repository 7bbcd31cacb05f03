"""The fast TER, chrF, CER and WER give exactly the numbers of the libraries they replace in the hot path
(sacrebleu's TER and CHRF, jiwer's cer and wer), on random pairs built to hit every branch: shifts, repeated
words, empty sides, very unequal lengths, alphabets too large for the numpy n-gram keys."""

from __future__ import annotations

import random

import jiwer
import pytest
from sacrebleu.metrics import CHRF as SacreCHRF
from sacrebleu.metrics import TER as SacreTER
from sacrebleu.metrics.lib_ter import translation_edit_rate as sacre_ter

from invoice_vlm import evaluate as ev
from invoice_vlm.evaluate import fast
from invoice_vlm.bench.eval import make_pairs

VOCAB = "a b c d the of 1 2 x Total 12,00".split()


def _perturb(words: list[str], rng: random.Random) -> list[str]:
    w = list(words)
    for _ in range(rng.randint(0, max(1, len(w) // 3))):
        if not w:
            w.append(rng.choice(VOCAB))
            continue
        i, op = rng.randrange(len(w)), rng.random()
        if op < 0.3:
            w[i] = rng.choice(VOCAB)
        elif op < 0.5:
            del w[i]
        elif op < 0.7:
            w.insert(i, rng.choice(VOCAB))
        else:  # move a block: what TER's shifts are for
            block = w[i:i + rng.randint(1, 12)]
            del w[i:i + len(block)]
            j = rng.randint(0, len(w))
            w[j:j] = block
    return w


def _random_pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    hyps, refs = [], []
    for _ in range(n):
        ref = [rng.choice(VOCAB) for _ in range(rng.choice([0, 1, 2, 5, 10, 25]))]
        r = rng.random()
        hyp = (_perturb(ref, rng) if r < 0.8 else [rng.choice(VOCAB) for _ in range(rng.randint(0, 30))] if r < 0.9
               else ref * 3 if r < 0.95 else ref[: len(ref) // 8])  # and very unequal lengths
        hyps.append(" ".join(hyp))
        refs.append(" ".join(ref))
    return hyps, refs


def test_fast_ter_equals_sacrebleu_pair_by_pair():
    hyps, refs = _random_pairs(200, seed=0)
    for h, r in zip(hyps, refs):
        assert fast.translation_edit_rate(h.split(), r.split()) == sacre_ter(h.split(), r.split()), (h, r)


@pytest.mark.parametrize("seed", [1, 2])
def test_fast_ter_and_chrf_equal_sacrebleu_on_a_corpus(seed):
    hyps, refs = _random_pairs(150, seed)
    samples, ocr, _ = make_pairs(40, seed=seed, noise=0.05)  # page-length OCR output: the batched path
    hyps += ocr
    refs += [s.text for s in samples]
    for mine, theirs in ((fast.TER(case_sensitive=False), SacreTER(case_sensitive=False)),
                         (fast.CHRF(), SacreCHRF())):
        stats = mine._extract_corpus_statistics(hyps, [refs])
        assert stats == theirs._extract_corpus_statistics(hyps, [refs])
        assert str(mine.corpus_score(hyps, [refs])) == str(theirs.corpus_score(hyps, [refs]))
        assert str(mine.get_signature()) == str(theirs.get_signature())
    # the batched first edit distance was really used (and still agreed)
    assert any(len(r.split()) > 50 for r in refs)


def test_fast_chrf_with_unicode_and_an_alphabet_too_large_for_int64_keys():
    rng = random.Random(3)
    letters = "ab c\nxé€ÄΩ漢"
    hyps = ["".join(rng.choice(letters) for _ in range(rng.choice([0, 1, 3, 6, 7, 20]))) for _ in range(300)]
    refs = ["".join(rng.choice(letters) for _ in range(rng.choice([0, 1, 3, 6, 7, 20]))) for _ in range(300)]
    hyps.append("".join(chr(0x4E00 + i) for i in range(2000)))  # 2,600 distinct characters: sacrebleu's path
    refs.append("".join(chr(0x4E00 + i) for i in range(1000, 2600)))
    assert fast.CHRF()._extract_corpus_statistics(hyps, [refs]) == SacreCHRF()._extract_corpus_statistics(hyps, [refs])


def test_chrf_plus_plus_falls_back_to_sacrebleu():
    hyps, refs = ["the cat sat", "a b"], ["the cat sat down", "a c"]
    assert fast.CHRF(word_order=2).corpus_score(hyps, [refs]).score == \
        SacreCHRF(word_order=2).corpus_score(hyps, [refs]).score


def test_cer_and_wer_equal_jiwer():
    rng = random.Random(4)
    chars = "ab c\n\t 1é"
    refs = ["".join(rng.choice(chars) for _ in range(rng.randint(1, 30))) for _ in range(300)] + ["x", "ab"]
    hyps = ["".join(rng.choice(chars) for _ in range(rng.randint(0, 30))) for _ in range(300)] + ["", "  "]
    refs = [r if r.strip() else r + "z" for r in refs]  # jiwer refuses references that are only whitespace
    assert ev.cer(hyps, refs) == pytest.approx(jiwer.cer(refs, hyps), abs=1e-12)
    assert ev.wer(hyps, refs) == pytest.approx(jiwer.wer([" ".join(r.split()) for r in refs],
                                                         [" ".join(h.split()) for h in hyps]), abs=1e-12)
    for h, r in zip(hyps[:50], refs[:50]):
        assert ev.cer([h], [r]) == pytest.approx(jiwer.cer(r, h), abs=1e-12)


def test_eval_bench_compares_with_the_libraries_and_fails_on_a_difference(monkeypatch):
    from invoice_vlm.bench import eval as eb

    rows = eb.bench(n=20)  # serial below ev.PARALLEL_FROM, so the patch below reaches the scoring code
    assert [r["speedup"] for r in rows] == ["1.00x", rows[1]["speedup"], "1.00x", rows[3]["speedup"], "-"]
    assert all(r["seconds"] >= 0 for r in rows) and rows[1]["speedup"].endswith("x")
    real = ev._library_edit_counts
    monkeypatch.setattr(ev, "_library_edit_counts", lambda p, r: (lambda c: (c[0] + 1, *c[1:]))(real(p, r)))
    with pytest.raises(RuntimeError, match="differ"):
        eb.bench(n=20)


@pytest.mark.parametrize("chunk,max_cells", [(1, 10**9), (64, 1), (3, 5000)])
def test_batched_first_edit_distance_is_the_same_in_any_chunking(chunk, max_cells):
    samples, ocr, _ = make_pairs(12, seed=5, noise=0.05)
    eds = [fast.BeamEditDistance(s.text.split()) for s in samples]
    fast.prime([(o.split(), e) for o, e in zip(ocr, eds)], chunk=chunk, max_cells=max_cells)
    for o, s, e in zip(ocr, samples, eds):
        assert e._cache, "primed"
        assert fast.translation_edit_rate(o.split(), s.text.split(), e) == sacre_ter(o.split(), s.text.split())
