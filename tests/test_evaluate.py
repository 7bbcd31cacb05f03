from __future__ import annotations

import math

import pytest
import sacrebleu

from invoice_vlm import evaluate as ev

BLEU_KEYS = {"bleu", "precisions", "brevity_penalty", "length_ratio", "translation_length", "reference_length"}
TER_KEYS = {"score", "num_edits", "ref_length"}


def test_shapes_match_hf_evaluate():
    preds, refs = ["the cat sat on the mat"], ["the cat sat on a mat"]
    b, t = ev.bleu(preds, refs), ev.ter(preds, refs)
    assert set(b) == BLEU_KEYS and set(t) == TER_KEYS
    assert len(b["precisions"]) == 4 and all(0 <= p <= 1 for p in b["precisions"])
    assert isinstance(b["translation_length"], int) and isinstance(t["num_edits"], int)


def test_identical_text_gives_bleu_1_and_ter_0():
    refs = ["INVOICE\nInvoice No.: 42\nTotal 1.234,56 €", "Rechnung Nr. 7 Gesamtbetrag 99,00 €"]
    b, t = ev.bleu(refs, refs), ev.ter(refs, refs)
    assert b["bleu"] == pytest.approx(1.0)
    assert b["precisions"] == pytest.approx([1.0] * 4)
    assert b["brevity_penalty"] == 1.0 and b["length_ratio"] == 1.0
    assert t == {"score": 0.0, "num_edits": 0, "ref_length": pytest.approx(13.0)}  # 7 + 6 words
    assert ev.cer(refs, refs) == 0 and ev.wer(refs, refs) == 0 and ev.exact_match(refs, refs) == 1


def test_hand_counted_ter_and_bleu():
    # one substitution (on -> under) and one deletion (mat) against a 6-word reference: 2 edits / 6 words
    t = ev.ter(["the cat sat under the"], ["the cat sat on the mat"])
    assert t == {"score": pytest.approx(100 * 2 / 6), "num_edits": 2, "ref_length": 6.0}
    # BLEU by hand: hyp "the cat sat on the" vs ref "the cat sat on the mat"
    # precisions 5/5, 4/4, 3/3, 2/2; bp = exp(1 - 6/5)
    b = ev.bleu(["the cat sat on the"], ["the cat sat on the mat"])
    assert b["precisions"] == pytest.approx([1, 1, 1, 1])
    assert b["brevity_penalty"] == pytest.approx(math.exp(1 - 6 / 5))
    assert b["bleu"] == pytest.approx(math.exp(1 - 6 / 5))
    assert (b["translation_length"], b["reference_length"]) == (5, 6)


def test_ter_is_case_insensitive_like_evaluate_and_cer_is_not():
    assert ev.ter(["TOTAL"], ["total"])["num_edits"] == 0
    assert ev.cer(["TOTAL"], ["total"]) == 1.0


def test_values_agree_with_sacrebleu_directly():
    preds = ["Invoice 12 total 30,00 €", "Rechnung 7\nSumme 9,99 €", "nothing here"]
    refs = ["Invoice 12 total 31,00 €", "Rechnung 7\nSumme 9,99 €", "Facture 3 Total 5,00 €"]
    direct = sacrebleu.corpus_bleu(preds, [refs], smooth_method="none")
    assert ev.bleu(preds, refs)["bleu"] == pytest.approx(direct.score / 100)
    assert ev.chrf(preds, refs) == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score)
    assert ev.ter(preds, refs)["score"] == pytest.approx(sacrebleu.corpus_ter(preds, [refs]).score)


def test_cer_hand_counted():
    # "Total 12" -> "Tota1 12x": one substitution, one insertion over 8 reference characters
    assert ev.cer(["Tota1 12x"], ["Total 12"]) == pytest.approx(2 / 8)
    assert ev.wer(["Tota1 12"], ["Total 12"]) == pytest.approx(1 / 2)


def test_mismatched_lengths_fail():
    with pytest.raises(ValueError):
        ev.bleu(["a"], ["a", "b"])
