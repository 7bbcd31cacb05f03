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
