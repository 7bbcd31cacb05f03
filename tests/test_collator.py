from __future__ import annotations

from PIL import Image

from invoice_vlm.models import load
from invoice_vlm.train import Collator, Example, token_budget


def test_collator_masks_prompt_and_padding_and_labels_the_suffix(tiny_model):
    _, processor = load(tiny_model)
    tok = processor.tokenizer
    rows = [{"image": Image.new("RGB", (50, 70), "white"), "prompt": "ocr", "target": "Total 1.234,56 €"},
            {"image": Image.new("RGB", (50, 70), "white"), "prompt": "answer en What is the total?", "target": "A"}]
    batch = Collator(processor)(rows)
    ids, labels, tt, mask = batch["input_ids"], batch["labels"], batch["token_type_ids"], batch["attention_mask"]
    n_img = processor.image_seq_length
    for row, r in enumerate(rows):
        prefix = tok(f"{tok.bos_token}{r['prompt']}\n", add_special_tokens=False)["input_ids"]
        target = tok(r["target"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        # image tokens first, never truncated
        assert (ids[row] == processor.image_token_id).sum().item() == n_img
        assert ids[row, :n_img].eq(processor.image_token_id).all()
        # then bos, this row's prompt, newline: token_type 0, no loss
        p_end = n_img + len(prefix)
        assert ids[row, n_img:p_end].tolist() == prefix
        assert labels[row, :p_end].eq(-100).all()
        assert tt[row, :p_end].eq(0).all()
        # then the suffix + eos: token_type 1, labels = ids
        s_end = p_end + len(target)
        assert ids[row, p_end:s_end].tolist() == target
        assert labels[row, p_end:s_end].tolist() == target
        assert tt[row, p_end:s_end].eq(1).all()
        assert mask[row, :s_end].eq(1).all()
        # padding on the right: no attention, no loss
        assert mask[row, s_end:].eq(0).all()
        assert labels[row, s_end:].eq(-100).all()
    assert batch["pixel_values"].shape[0] == 2


def test_token_budget_is_the_worst_case_of_prompt_and_target(tiny_model, tmp_path):
    _, processor = load(tiny_model)
    page = tmp_path / "page.png"
    Image.new("RGB", (60, 80), "white").save(page)
    examples = [Example("a", page, "ocr", "ocr", "Total 1.234,56 € and more text"),
                Example("b", page, "answer", "answer en What is the total amount?", "7")]
    budget = token_budget(processor, examples)
    worst = Collator(processor)([{"image": Image.new("RGB", (8, 8)), "prompt": examples[1].prompt,
                                  "target": examples[0].target}])
    assert budget["total"] == int(worst["attention_mask"].sum())
    assert budget["image"] == processor.image_seq_length
    assert budget["image"] + budget["prompt"] + budget["target"] == budget["total"]


def _ink_page(size, mode="RGB"):
    from PIL import ImageDraw

    im = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(im)
    for k in range(12):  # ink of several greys, edges the bicubic resize has to get right
        d.text((10 + 13 * k, 8 + 17 * k), f"INV-{k:03d} 1.234,56", fill=(20 * k, 10 * k, 0))
    d.rectangle((5, size[1] - 40, size[0] - 5, size[1] - 5), outline=(90, 90, 90), width=3)
    return im.convert(mode)


def test_raw_pixel_batches_normalise_to_the_processors_numbers(tiny_model):
    """The uint8 pages of a raw-pixel batch, normalised, are the processor's own pixel values (same resize,
    same rescale and normalisation); every other tensor is identical."""
    import torch

    from invoice_vlm.models import normalize_pixels, raw_pixels_supported

    _, processor = load(tiny_model)
    assert raw_pixels_supported(processor)
    side = processor.image_processor.size.height
    rows = [{"image": _ink_page((850, 1100)), "prompt": "ocr", "target": "INV-001 1.234,56"},
            {"image": _ink_page((300, 200), "L"), "prompt": "extract", "target": '{"total": "7"}'},
            {"image": _ink_page((side, side)), "prompt": "ocr", "target": "x"}]
    ref = Collator(processor)(rows)
    raw = Collator(processor, raw_pixels=True)(rows)
    assert raw["pixel_values"].dtype == torch.uint8 and ref["pixel_values"].dtype == torch.float32
    assert raw["pixel_values"].shape == ref["pixel_values"].shape == (3, 3, side, side)
    assert raw["pixel_values"].float().std() > 1  # real pages, not a blank tensor
    assert (normalize_pixels(raw["pixel_values"], processor.image_processor) - ref["pixel_values"]).abs().max() < 1e-5
    assert set(raw) == set(ref)
    for k in ref:
        if k != "pixel_values":
            assert torch.equal(raw[k], ref[k]), k


def test_raw_pixels_refuse_a_processor_that_resizes_its_own_way(tiny_model, monkeypatch):
    import pytest

    from invoice_vlm.models import raw_pixels_supported

    _, processor = load(tiny_model)
    # the torchvision backend resizes with torchvision, not PIL: not the same numbers
    monkeypatch.setattr(type(processor.image_processor), "backend", property(lambda self: "torchvision"))
    assert not raw_pixels_supported(processor)
    with pytest.raises(ValueError, match="PIL image processor"):
        Collator(processor, raw_pixels=True)([{"image": _ink_page((64, 64)), "prompt": "ocr", "target": "a"}])
