"""How each family turns (image, prompt, target) into model inputs, and generated ids back into text."""

from __future__ import annotations

import torch

from ..common import InvoiceVLMError
from .chat import GOT_OCR2_CHAT_TEMPLATE


# ------------------------------------------------------------------------------------------ families
# How each family turns (image, prompt, target) into model inputs: one kind object each (PaliGemmaKind,
# Seq2SeqKind, ChatKind below; the row reader's RowKind in models.rows) with the same methods.


def family(processor) -> str:
    """``paligemma``, ``seq2seq`` (Florence-2) or ``chat`` (every other family)."""
    return kind_of(processor).name


def generated_tokens(model, inputs, out: torch.Tensor) -> torch.Tensor:
    """The new tokens of ``generate``'s output: a decoder-only model returns the prompt too, an encoder-decoder only
    the decoder's tokens (its start token is special and decodes to nothing)."""
    return out if model.config.is_encoder_decoder else out[:, inputs["input_ids"].shape[1]:]


def image_token_id(processor) -> int:
    """The id of the tokens that stand for image features in ``input_ids`` (one per feature: a batch holds exactly
    as many as the vision tower gives). Gemma 3's processor calls its begin-of-image token ``image_token``; the
    feature slots are the tokenizer's image token."""
    tok = processor.tokenizer
    if getattr(tok, "image_token", None) is not None:
        return tok.image_token_id
    if getattr(processor, "image_token_id", None) is not None:
        return processor.image_token_id
    return tok.convert_tokens_to_ids("<image>")


def image_token_count(processor, batch) -> int:
    """Image-feature tokens in a batch (``training_batch`` or ``generation_inputs``): what must never be cut."""
    return int((batch["input_ids"] == image_token_id(processor)).sum())


def _padding(processor, side: str):
    tok = processor.tokenizer
    old, tok.padding_side = tok.padding_side, side
    return tok, old


# ------------------------------------------------------------------------------------------ raw pixels
# The image processor's float path (PIL resize, then numpy rescale and normalise, then a float32 copy per image)
# is most of a training batch's CPU cost, and a float32 page is 7 MB to send from a DataLoader worker. A collator
# can instead send the resized page as uint8 (a quarter of the bytes, less than half the CPU time: `invoice-vlm
# bench collate`) and the trainer rescales and normalises it on the device. Same numbers: the resize is the
# processor's own PIL resize, and normalize_pixels computes what its rescale + normalise do (tested equal to 1e-5).


def raw_pixels_supported(processor) -> bool:
    """Only the PIL backend with a fixed output size: its resize is the one done here (the torchvision backend
    resizes differently, so it keeps its own path)."""
    ip = getattr(processor, "image_processor", None)
    size = getattr(ip, "size", None)
    return (isinstance(kind_of(processor), PaliGemmaKind) and getattr(ip, "backend", None) == "pil"
            and bool(getattr(ip, "do_resize", False)) and getattr(size, "height", None) is not None
            and getattr(size, "width", None) is not None)


def _resized(processor, images: list) -> list:
    from PIL import Image

    ip = processor.image_processor
    out = []
    for im in images:
        if ip.do_convert_rgb and im.mode != "RGB":
            im = im.convert("RGB")
        if im.size != (ip.size.width, ip.size.height):
            im = im.resize((ip.size.width, ip.size.height), resample=Image.Resampling(int(ip.resample)))
        out.append(im)
    return out


def normalize_pixels(pixel_values: torch.Tensor, image_processor, dtype=torch.float32) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> what the image processor's rescale and normalise give, in ``dtype``."""
    ip = image_processor
    scale = torch.full((3,), float(ip.rescale_factor) if ip.do_rescale else 1.0, dtype=torch.float32)
    shift = torch.zeros(3)
    if ip.do_normalize:
        mean, std = torch.tensor(ip.image_mean, dtype=torch.float32), torch.tensor(ip.image_std, dtype=torch.float32)
        scale, shift = scale / std, -mean / std
    x = pixel_values.to(torch.float32)  # in place from here: half the memory traffic of x * scale + shift
    x.mul_(scale.to(x.device).view(1, -1, 1, 1)).add_(shift.to(x.device).view(1, -1, 1, 1))
    return x.to(dtype)


class PageKind:
    """What every page model's kind shares: it reads whole pages (no reading unit), its batches go to the model as
    they are, and its worst-case batch is counted by building it."""

    name = "page"
    unit = None  # the row reader's kind (models.rows.RowKind) reads rows of this unit
    answer_outside_mask = False  # an encoder-decoder's answer is the decoder's input, not in the attention mask

    def model_inputs(self, model, batch: dict[str, torch.Tensor]) -> tuple[None, dict[str, torch.Tensor]]:
        """(image tokens for a CTC head: none here, the model's forward inputs)."""
        return None, batch

    def token_budget(self, processor, image, prompt: str, target: str) -> dict[str, int]:
        """Exact token counts of one (page, prompt, target): total, image, prompt, target (+ end token)."""
        batch = self.training_batch(processor, [image], [prompt], [target])
        total = int(batch["attention_mask"].sum())
        images = image_token_count(processor, batch)  # each family's own image token
        target_n = int((batch["labels"] != -100).sum())
        if self.answer_outside_mask:
            total += target_n
        return {"total": total, "image": images, "prompt": total - images - target_n, "target": target_n}

    def image_side(self, processor) -> int:
        """The side of the square the model sees a page at (0 when it does not resize to one)."""
        size = getattr(processor.image_processor, "size", None) or {}
        return int(size.get("height") or size.get("shortest_edge") or size.get("longest_edge") or 0)


class PaliGemmaKind(PageKind):
    """PaliGemma's processor API: the prompt is a bidirectional prefix (token_type_ids 0), the target a causal
    suffix (1); only the suffix carries loss. Pages may travel as uint8 (``raw_pixels``)."""

    name = "paligemma"

    def training_batch(self, processor, images: list, prompts: list[str], targets: list[str],
                       raw_pixels: bool = False) -> dict[str, torch.Tensor]:
        tok, old = _padding(processor, "right")
        raw = {}
        if raw_pixels:
            if not raw_pixels_supported(processor):
                raise ValueError(f"raw pixels need a PaliGemma processor with a PIL image processor of fixed size, "
                                 f"not {type(processor.image_processor).__name__}")
            images = _resized(processor, images)
            raw = {"do_resize": False, "do_rescale": False, "do_normalize": False}
        try:
            batch = processor(images=images, text=[f"<image>{p}" for p in prompts], suffix=targets,
                              return_tensors="pt", padding="longest", **raw)
        finally:
            tok.padding_side = old
        labels = batch["input_ids"].clone()
        labels[batch["token_type_ids"] == 0] = -100
        labels[batch["attention_mask"] == 0] = -100
        batch["labels"] = labels
        return dict(batch)

    def generation_inputs(self, processor, images: list, prompts: list[str]):
        tok, old = _padding(processor, "left")
        try:
            return processor(images=images, text=[f"<image>{p}" for p in prompts], return_tensors="pt",
                             padding="longest")
        finally:
            tok.padding_side = old


class Seq2SeqKind(PageKind):
    """An encoder-decoder (Florence-2): image and prompt go to the encoder, the target is the decoder's labels."""

    name = "seq2seq"
    answer_outside_mask = True

    def training_batch(self, processor, images: list, prompts: list[str], targets: list[str],
                       raw_pixels: bool = False) -> dict[str, torch.Tensor]:
        return _seq2seq_training_batch(processor, images, prompts, targets)

    def generation_inputs(self, processor, images: list, prompts: list[str]):
        return processor(images=images, text=prompts, padding=True, return_tensors="pt")


class ChatKind(PageKind):
    """Every other family (Idefics3, Gemma 3, LightOnOCR, PaddleOCR-VL, ...): its chat template, user turn = image
    + prompt, assistant turn = target; only the answer and its end-of-turn token carry loss."""

    name = "chat"

    def training_batch(self, processor, images: list, prompts: list[str], targets: list[str],
                       raw_pixels: bool = False) -> dict[str, torch.Tensor]:
        return _chat_training_batch(processor, images, prompts, targets)

    def generation_inputs(self, processor, images: list, prompts: list[str]):
        return _chat_generation_inputs(processor, images, prompts)


# One small interface per model kind: training_batch, generation_inputs, model_inputs, token_budget, image_side
# and the reading unit. A page model's kind follows its processor's class; a model whose config records a reading
# unit is the row reader (models.rows.RowKind), whatever its processor.
KINDS = {"PaliGemmaProcessor": PaliGemmaKind(), "Florence2Processor": Seq2SeqKind()}
CHAT_KIND = ChatKind()


def kind_of(processor, config=None):
    """The kind of a (processor, model config) pair; without a config, the page kind of the processor."""
    from .rows import ReadingUnit, RowKind

    unit = ReadingUnit.from_config(config) if config is not None else None
    if unit is not None:
        return RowKind(unit)
    return KINDS.get(type(processor).__name__, CHAT_KIND)


def training_batch(processor, images: list, prompts: list[str], targets: list[str],
                   raw_pixels: bool = False) -> dict[str, torch.Tensor]:
    """Inputs with ``labels``: -100 on image, prompt and padding tokens; the target (+ end token) elsewhere.
    ``raw_pixels`` (PaliGemma with a PIL image processor, see raw_pixels_supported): ``pixel_values`` are the
    resized pages as uint8, for normalize_pixels on the device."""
    return kind_of(processor).training_batch(processor, images, prompts, targets, raw_pixels)


def generation_inputs(processor, images: list, prompts: list[str]):
    """Prompt-only inputs, left-padded so every prompt ends where generation starts."""
    return kind_of(processor).generation_inputs(processor, images, prompts)


def _seq2seq_training_batch(processor, images: list, prompts: list[str], targets: list[str]) -> dict[str, torch.Tensor]:
    """The image and the prompt for the encoder; labels "<s>target</s>" (the model shifts them right behind its
    decoder start token), padding -100: only the answer carries loss."""
    tok = processor.tokenizer
    batch = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    answers = tok([f"{tok.bos_token}{t}{tok.eos_token}" for t in targets], add_special_tokens=False, padding=True,
                  padding_side="right", return_tensors="pt")
    batch["labels"] = answers["input_ids"].masked_fill(answers["attention_mask"] == 0, -100)
    return dict(batch)


def _conversation(prompt: str, target: str | None = None) -> list[dict]:
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    if target is not None:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": target}]})
    return msgs


# The few per-processor differences of the chat path. GOT-OCR 2.0's processor takes one image per text as a flat list
# (the others a list of images per text) and its checkpoint has no chat template.
_FLAT_IMAGES = ("GotOcr2Processor",)


def _chat_template(processor) -> str:
    template = processor.chat_template or (GOT_OCR2_CHAT_TEMPLATE if type(processor).__name__ == "GotOcr2Processor"
                                           else None)
    if template is None:
        raise InvoiceVLMError(f"{type(processor).__name__}: the model has no chat template; cannot build the "
                              "prompt and answer turns")
    return template


def _chat_images(processor, images: list) -> list:
    return list(images) if type(processor).__name__ in _FLAT_IMAGES else [[im] for im in images]


def _chat_training_batch(processor, images: list, prompts: list[str], targets: list[str]) -> dict[str, torch.Tensor]:
    tok = processor.tokenizer
    template = _chat_template(processor)
    full = [processor.apply_chat_template(_conversation(p, t), tokenize=False, chat_template=template)
            for p, t in zip(prompts, targets)]
    heads = [processor.apply_chat_template(_conversation(p), add_generation_prompt=True, tokenize=False,
                                           chat_template=template) for p in prompts]
    batch = processor(text=full, images=_chat_images(processor, images), padding=True, padding_side="right",
                      return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    labels = torch.full_like(ids, -100)
    for row, (text, head) in enumerate(zip(full, heads)):
        if not text.startswith(head):
            raise InvoiceVLMError(f"{type(processor).__name__}: the chat template's prompt is not a prefix of the "
                                  "full conversation; cannot tell the answer from the prompt")
        answer = tok(text[len(head):], add_special_tokens=False)["input_ids"]
        end = int(mask[row].sum())
        start = end - len(answer)
        if ids[row, start:end].tolist() != answer:
            raise InvoiceVLMError(f"{type(processor).__name__}: the answer tokenizes differently inside the "
                                  "conversation; cannot place the labels")
        stop = answer.index(tok.eos_token_id) + 1 if tok.eos_token_id in answer else len(answer)
        labels[row, start:start + stop] = ids[row, start:start + stop]  # the answer and its end-of-turn token
    batch["labels"] = labels
    return dict(batch)


def _chat_generation_inputs(processor, images: list, prompts: list[str]):
    template = _chat_template(processor)
    texts = [processor.apply_chat_template(_conversation(p), add_generation_prompt=True, tokenize=False,
                                           chat_template=template) for p in prompts]
    return processor(text=texts, images=_chat_images(processor, images), padding=True, padding_side="left",
                     return_tensors="pt")
