from __future__ import annotations

from PIL import Image

from invoice_vlm.models import load
from invoice_vlm.train import PaliGemmaCollator, token_budget


def test_collator_masks_prompt_and_padding_and_labels_the_suffix(tiny_model):
    _, processor = load(tiny_model)
    tok = processor.tokenizer
    texts = ["Total 1.234,56 €", "A"]
    examples = [{"image": Image.new("RGB", (50, 70), "white"), "text": t} for t in texts]
    batch = PaliGemmaCollator(processor, "ocr")(examples)
    ids, labels, tt, mask = batch["input_ids"], batch["labels"], batch["token_type_ids"], batch["attention_mask"]
    n_img = processor.image_seq_length
    prefix = tok(f"{tok.bos_token}ocr\n", add_special_tokens=False)["input_ids"]
    for row, text in enumerate(texts):
        target = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        # image tokens first, never truncated
        assert (ids[row] == processor.image_token_id).sum().item() == n_img
        assert ids[row, :n_img].eq(processor.image_token_id).all()
        # then bos, prompt, newline: token_type 0, no loss
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
    assert mask[1].sum() < mask[0].sum()  # the short sample really was padded


def test_token_budget_counts_image_prompt_and_target(tiny_model):
    _, processor = load(tiny_model)
    image, prefix, target = token_budget(processor, "ocr", ["AB", "Total 1.234,56 €"])
    batch = PaliGemmaCollator(processor, "ocr")([{"image": Image.new("RGB", (8, 8)), "text": "Total 1.234,56 €"}])
    assert image + prefix + target == int(batch["attention_mask"].sum())
    assert image == processor.image_seq_length
