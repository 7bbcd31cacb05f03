"""The row reader's model (invoice_vlm.models.rows): saved and loaded by plain transformers, its row
batches equal to its processor's, the training width grid, its character tokenizer, its CTC head's checks."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from invoice_vlm.models import ReadingUnit, build_char_tokenizer, load, reading_unit_of, row_batch
from invoice_vlm.train.rowdata import draw_string


def test_row_model_saves_and_loads_with_plain_transformers_and_records_its_reading_unit(row_model):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cfg = json.loads((row_model / "config.json").read_text())
    assert cfg["model_type"] == "fast_vlm" and cfg["vision_config"]["model_type"] == "resnet"
    assert cfg["reading"] == {"unit": "row", "height": 16, "max_width": 256, "multiple": 8, "grayscale": True}
    assert reading_unit_of(row_model) == ReadingUnit(height=16, max_width=256, multiple=8)
    assert not list(row_model.glob("*.bin")) and (row_model / "model.safetensors").is_file()
    model = AutoModelForImageTextToText.from_pretrained(row_model, use_safetensors=True)
    processor = AutoProcessor.from_pretrained(row_model)
    assert type(model).__name__ == "FastVlmForConditionalGeneration"
    assert type(processor).__name__ == "LlavaProcessor"


def test_row_batch_equals_what_the_processor_gives_and_logits_survive_a_reload(row_model, tmp_path):
    model, processor = load(row_model)
    unit = reading_unit_of(row_model)
    rng = random.Random(0)
    rows = [draw_string(rng, t, unit) for t in ("Total 12,50 €", "INV-0042")]
    ours = row_batch(rows, None, processor.tokenizer, unit, model.config.image_token_index)
    from invoice_vlm.models import ROW_MARGIN  # the engine's white margin is part of every row

    wide = [np.pad(r, ((0, 0), (0, ROW_MARGIN)), constant_values=255) for r in rows]
    width = -(-max(r.shape[1] for r in wide) // unit.multiple) * unit.multiple  # white on the right to one width
    images = [Image.fromarray(np.pad(r, ((0, 0), (0, width - r.shape[1])), constant_values=255)).convert("RGB")
              for r in wide]
    theirs = processor(images=images, text=["<image><bos>"] * 2, return_tensors="pt")
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.allclose(ours["pixel_values"], theirs["pixel_values"], atol=1e-6)
    model.save_pretrained(tmp_path / "again")
    processor.save_pretrained(tmp_path / "again")
    again, _ = load(tmp_path / "again")
    inputs = {k: ours[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, again(**inputs).logits)


def test_training_width_grid_keeps_each_rows_tokens_but_for_its_margins_end(row_model):
    """Training encodes rows a width group at a time (models.TRAIN_WIDTH_GRID): fewer tower calls, and every token
    over a row's ink and most of its white margin is the one inference computes (each row alone at its own width);
    tokens past a row's own columns stay zero and masked."""
    from invoice_vlm.models import ROW_MARGIN, row_model_inputs

    model, processor = load(row_model)
    model.eval()
    unit = reading_unit_of(row_model)
    rng = random.Random(3)
    rows = [draw_string(rng, t, unit) for t in ("Total 12,50 €", "INV-0042", "Rechnung Nr. 2024-117 vom 3.8.", "A")]
    batch = row_batch(rows, None, processor.tokenizer, unit, model.config.image_token_index)
    calls = []
    original = model.model.get_image_features
    model.model.get_image_features = lambda **kw: calls.append(kw["pixel_values"].shape[-1]) or original(**kw)
    with torch.no_grad():
        exact, inputs = row_model_inputs(model, batch)
        n_exact = len(calls)
        grouped, grouped_inputs = row_model_inputs(model, batch, grid=256)
    assert len(calls) - n_exact < n_exact  # fewer tower calls
    per_col = unit.height // unit.multiple
    cols = batch["pixel_values"].shape[-1] // unit.multiple
    a, b = exact.view(len(rows), per_col, cols, -1), grouped.view(len(rows), per_col, cols, -1)
    for i, r in enumerate(rows):
        keep = -(-(r.shape[1] + ROW_MARGIN // 2) // unit.multiple)  # the ink and half the margin
        assert torch.allclose(a[i, :, :keep], b[i, :, :keep], atol=1e-4), i
        own = int(batch["image_columns"][i])
        assert not b[i, :, own:].any()
    assert torch.equal(inputs["attention_mask"], grouped_inputs["attention_mask"])


def test_character_tokenizer_round_trips_every_character_the_invoices_print():
    tok = build_char_tokenizer()
    text = "Rechnungsbetrag: 1.234,56 € — Müller & Söhne, Façade n° 7"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert tok.unk_token_id not in ids


def test_a_ctc_head_that_does_not_fit_is_one_line_naming_the_file(row_model, row_model_ctc, tmp_path):
    import shutil

    from safetensors.torch import save_file

    from invoice_vlm.common import InvoiceVLMError
    from invoice_vlm.models import CTC_HEAD_FILE, CtcHead

    model, _ = load(row_model)
    assert CtcHead.load(row_model, model) is None  # none beside it: the decoder reads
    bad = tmp_path / "bad"
    shutil.copytree(row_model_ctc, bad)
    save_file({"weight": torch.zeros(10, 3), "bias": torch.zeros(10)}, str(bad / CTC_HEAD_FILE))
    with pytest.raises(InvoiceVLMError, match=rf"{CTC_HEAD_FILE}: a head of shape 10x3 does not fit"):
        CtcHead.load(bad, model)
    save_file({"bias": torch.zeros(10)}, str(bad / CTC_HEAD_FILE))
    with pytest.raises(InvoiceVLMError, match="not a CTC head"):
        CtcHead.load(bad, model)


def test_ctc_nbest_sums_every_path_that_spells_a_reading():
    """The prefix beam search against brute force: every frame path of a 5-frame, 2-label row, collapsed (repeats
    merged, blanks dropped), its probability summed per reading; with a wide beam and no pruning the readings and
    their log-probabilities are exactly those, best first."""
    import itertools
    import math

    from invoice_vlm.models import ctc_nbest

    rng = np.random.default_rng(0)
    lp = torch.from_numpy(rng.normal(size=(5, 3)) * 2).log_softmax(-1).numpy()  # labels 0, 1; blank 2
    truth: dict[tuple, float] = {}
    for path in itertools.product(range(3), repeat=5):
        seq = tuple(c for i, c in enumerate(path) if c != 2 and (i == 0 or c != path[i - 1]))
        truth[seq] = truth.get(seq, 0.0) + math.exp(sum(lp[t, c] for t, c in enumerate(path)))
    found = ctc_nbest(lp, blank=2, beam=1000, prune=-math.inf)
    assert {tuple(ids) for ids, _ in found} == set(truth)
    for ids, score in found:
        assert score == pytest.approx(math.log(truth[tuple(ids)]), abs=1e-9)
    assert [s for _, s in found] == sorted((s for _, s in found), reverse=True)
    best = max(truth, key=truth.get)
    assert ctc_nbest(lp, blank=2, beam=3)[0][0] == list(best)  # a narrow beam still finds the best reading here


def test_ctc_nbest_prunes_labels_but_holds_the_last_through_frames_of_blank():
    """With pruning: a label under ``prune`` at a frame starts nowhere there, but a label already being read holds
    through it (frames that try only the blank are carried in runs). Against brute force over the paths that rule
    allows, on 9 frames of 2 labels with two runs of frames where the blank has nearly all the mass."""
    import itertools
    import math

    from invoice_vlm.models import ctc_nbest

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(9, 3)) * 2
    logits[[2, 3, 4, 7], 2] = 12.0  # frames 2-4 and 7: only the blank is above e^-7 (labels held may go on)
    lp = torch.from_numpy(logits).log_softmax(-1).numpy()
    truth: dict[tuple, float] = {}
    for path in itertools.product(range(3), repeat=9):
        if any(c != 2 and lp[t, c] <= -7.0 and (t == 0 or path[t - 1] != c) for t, c in enumerate(path)):
            continue  # a label that starts where it is pruned
        seq = tuple(c for i, c in enumerate(path) if c != 2 and (i == 0 or c != path[i - 1]))
        truth[seq] = truth.get(seq, 0.0) + math.exp(sum(lp[t, c] for t, c in enumerate(path)))
    found = ctc_nbest(lp, blank=2, beam=10_000, prune=-7.0)
    assert {tuple(ids) for ids, _ in found} == set(truth) and len(truth) > 10
    for ids, score in found:
        assert score == pytest.approx(math.log(truth[tuple(ids)]), abs=1e-9)


def test_ctc_head_log_probs_sum_every_path_that_spells_a_reading(row_model):
    """CtcHead.log_probs (the score a reading the head did not propose gets in joint decoding) is the same sum over
    frame paths as the prefix beam search gives each of its readings: brute force on a 1-column row of 2 frames;
    a reading the row's frames cannot spell is -inf."""
    import itertools
    import math

    from invoice_vlm.models import CtcHead

    model, _ = load(row_model)
    torch.manual_seed(1)
    head = CtcHead.for_model(model, frames=2)
    torch.nn.init.normal_(head.weight, std=0.5)
    tokens = torch.randn(1, head.rows, model.config.text_config.hidden_size)  # one column
    lp = head.logits(tokens).float().log_softmax(-1)[0].tolist()
    truth: dict[tuple, float] = {}
    for path in itertools.product(range(head.blank + 1), repeat=2):
        seq = tuple(c for i, c in enumerate(path) if c != head.blank and (i == 0 or c != path[i - 1]))
        truth[seq] = truth.get(seq, 0.0) + math.exp(lp[0][path[0]] + lp[1][path[1]])
    readings = [[], [5], [7, 5], [9, 9], [3, 4, 5]]
    got = head.log_probs(tokens.repeat(len(readings), 1, 1), torch.ones(len(readings), dtype=torch.long), readings)
    for ids, g in zip(readings[:3], got):
        assert g == pytest.approx(math.log(truth[tuple(ids)]), abs=1e-4), ids
    assert got[3:] == [-math.inf, -math.inf]  # a repeat needs a blank between; three labels in two frames


def _teacher_forced(model, tok, unit, row, ids):
    """log p(ids + <eos> | row) and whether each step's most likely token is the reading's, by one forward pass."""
    from invoice_vlm.models import row_model_inputs

    one = row_batch([row], [tok.decode(ids)], tok, unit, model.config.image_token_index)
    _, inputs = row_model_inputs(model, one)
    labels = inputs.pop("labels")[:, 1:]
    keep = labels != -100
    assert labels[keep].tolist() == list(ids) + [tok.eos_token_id]
    lp = model(**inputs).logits[:, :-1].float().log_softmax(-1)
    return float((lp.gather(-1, labels.clamp(min=0)[..., None])[..., 0] * keep).sum()), \
        bool((lp.argmax(-1) == labels)[keep].all())


def _teacher_forced_steps(model, tok, unit, row, ids):
    """log p of each token of ids + <eos> given the row and the tokens before it, by one forward pass."""
    from invoice_vlm.models import row_model_inputs

    one = row_batch([row], [tok.decode(ids)], tok, unit, model.config.image_token_index)
    _, inputs = row_model_inputs(model, one)
    labels = inputs.pop("labels")[:, 1:]
    keep = labels != -100
    lp = model(**inputs).logits[:, :-1].float().log_softmax(-1)
    return lp.gather(-1, labels.clamp(min=0)[..., None])[..., 0][keep]


def test_decoder_log_probs_equal_one_forward_per_candidate(row_model):
    """Candidates scored on a shared KV cache of their row's image prefix (rows of different widths, readings of
    different lengths) get the log-probability that one forward pass over row + reading + <eos> gives, and are
    flagged greedy exactly when that pass's most likely token is theirs at every step."""
    from invoice_vlm.models import decoder_log_probs, row_image_tokens

    model, processor = load(row_model)
    tok = processor.tokenizer
    unit = ReadingUnit.from_config(model.config)
    rows = [draw_string(random.Random(i), t, unit) for i, t in enumerate(["Total 12.50", "Nr"])]
    cands = [tok(c, add_special_tokens=False)["input_ids"] for c in ["Total", "Total 12.50", "T", "Nr 1"]]
    owner = [0, 0, 0, 1]
    with torch.no_grad():
        batch = row_batch(rows, None, tok, unit, model.config.image_token_index)
        got = decoder_log_probs(model, batch, row_image_tokens(model, batch), cands, owner, tok.eos_token_id,
                                tok.pad_token_id)
        for k, (c, o) in enumerate(zip(cands, owner)):
            want, greedy = _teacher_forced(model, tok, unit, rows[o], c)
            assert float(got.log_probs[k]) == pytest.approx(want, abs=1e-3)
            assert bool(got.greedy[k]) == greedy


def test_the_decoders_own_reading_is_greedy_with_the_log_probability_it_wrote_it_with():
    """decoder_readings (what joins the head's readings in joint decoding), on the shipped reader: each row's reading
    ends within its budget, decoder_log_probs flags it greedy and scores it as the decoder wrote it, and a row that
    has not ended within its budget has no reading (it ran on). decoder_log_probs knows where greedy decoding departs
    from a reading (its lead), and the decoder reads the same from a lead, and on the scoring pass's KV cache of the
    rows' images (rows of different widths), as from the start."""
    from invoice_vlm.models import EMBEDDED_DIR, decoder_log_probs, decoder_readings, row_image_tokens

    model, processor = load(EMBEDDED_DIR)
    model = model.float()
    tok = processor.tokenizer
    unit = ReadingUnit.from_config(model.config)
    texts = ["Total 12.50", "Invoice Nr 2024-117", "Rechnungsdatum: 03.05.2024"]
    rows = [draw_string(random.Random(i), t, unit) for i, t in enumerate(texts)]
    with torch.no_grad():
        batch = row_batch(rows, None, tok, unit, model.config.image_token_index)
        tokens = row_image_tokens(model, batch)
        written = decoder_readings(model, batch, tokens, [60] * 3, tok.eos_token_id, tok.pad_token_id)
        assert all(w is not None and len(w[0]) > 3 for w in written), written
        got = decoder_log_probs(model, batch, tokens, [w[0] for w in written], [0, 1, 2], tok.eos_token_id,
                                tok.pad_token_id)
        assert got.greedy.tolist() == [True, True, True]
        for row, (ids, score), g in zip(rows, written, got.log_probs.tolist()):
            want, greedy = _teacher_forced(model, tok, unit, row, ids)
            assert greedy and score == pytest.approx(want, abs=1e-3) and g == pytest.approx(want, abs=1e-3)
        short = [len(written[0][0]), 60, 60]  # the first row's reading needs one token more (its <eos>)
        again = decoder_readings(model, batch, tokens, short, tok.eos_token_id, tok.pad_token_id)
        assert again[0] is None and again[1:] == written[1:]
        # a reading wrong from its fourth token: the decoder follows it to there, and would write its own token
        wrong = [w[0][:3] + [tok.convert_tokens_to_ids("#")] + w[0][4:] for w in written]
        got = decoder_log_probs(model, batch, tokens, wrong + [w[0] for w in written], [0, 1, 2] * 2,
                                tok.eos_token_id, tok.pad_token_id)
        for k, (row, (ids, score)) in enumerate(zip(rows, written)):
            assert got.leads[k] == ids[:4] and got.leads[k + 3] == ids + [tok.eos_token_id]
            assert got.lead_log_probs[k + 3] == pytest.approx(score, abs=1e-3)
            want = float(_teacher_forced_steps(model, tok, unit, row, ids)[:4].sum())
            assert got.lead_log_probs[k] == pytest.approx(want, abs=1e-3)
        # the decoder writes on from a lead (that ends a reading or not) as it would from the row's start
        leads = [got.leads[0], got.leads[4], []]
        again = decoder_readings(model, batch, tokens, [60] * 3, tok.eos_token_id, tok.pad_token_id, leads,
                                 [got.lead_log_probs[0], got.lead_log_probs[4], 0.0])
        assert [a[0] for a in again] == [w[0] for w in written]
        assert [a[1] for a in again] == pytest.approx([w[1] for w in written], abs=1e-3)
        # and on the KV cache the scoring pass left of each row's image tokens, as from the image
        cached = decoder_readings(model, batch, tokens, [60] * 3, tok.eos_token_id, tok.pad_token_id, leads,
                                  [got.lead_log_probs[0], got.lead_log_probs[4], 0.0], got.prefix)
        assert [a[0] for a in cached] == [w[0] for w in written]
        assert [a[1] for a in cached] == pytest.approx([w[1] for w in written], abs=1e-3)


def test_the_row_reader_is_a_kind_like_the_page_models(row_model, tiny_model):
    """models.kind_of: a config with a reading unit gives RowKind (rows, their batch as row_batch builds it, the
    decoder's inputs on the training width grid, the widest row's budget, no square side); a page model's kind
    has no unit, hands its batch to the model as it is, and counts its budget by building one."""
    from invoice_vlm.models import PageKind, RowKind, kind_of, row_model_inputs, TRAIN_WIDTH_GRID

    model, processor = load(row_model)
    kind = kind_of(processor, model.config)
    assert isinstance(kind, RowKind) and kind.unit == ReadingUnit.from_config(model.config)
    assert not isinstance(kind_of(processor), RowKind)  # without the config: the processor's page kind
    rows = [draw_string(random.Random(i), t, kind.unit) for i, t in enumerate(["Total 12.50", "Nr"])]
    batch = kind.training_batch(processor, rows, ["ocr", "ocr"], ["Total 12.50", "Nr"])
    want = row_batch(rows, ["Total 12.50", "Nr"], processor.tokenizer, kind.unit, model.config.image_token_index)
    assert batch.keys() == want.keys() and all(torch.equal(batch[k], want[k]) for k in want)
    with torch.no_grad():
        tokens, inputs = kind.model_inputs(model, batch)
        ref_tokens, ref_inputs = row_model_inputs(model, batch, TRAIN_WIDTH_GRID)
    assert torch.equal(tokens, ref_tokens) and torch.equal(inputs["inputs_embeds"], ref_inputs["inputs_embeds"])
    budget = kind.token_budget(processor, None, "ocr", "Total 12.50")
    cells = (kind.unit.height // kind.unit.multiple) * (kind.unit.max_width // kind.unit.multiple)
    assert budget == {"total": cells + 1 + 12, "image": cells, "prompt": 1, "target": 12}
    assert kind.image_side(processor) == 0

    page_model, page_processor = load(tiny_model)
    page = kind_of(page_processor, page_model.config)
    assert isinstance(page, PageKind) and page.unit is None and page.image_side(page_processor) > 0
    pb = page.training_batch(page_processor, [Image.new("RGB", (64, 64), "white")], ["ocr"], ["Total 12.50"])
    assert page.model_inputs(page_model, pb) == (None, pb)
    b = page.token_budget(page_processor, Image.new("RGB", (64, 64), "white"), "ocr", "Total 12.50")
    assert b["total"] == int(pb["attention_mask"].sum()) and b["target"] == int((pb["labels"] != -100).sum())
