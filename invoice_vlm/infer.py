"""Batched greedy inference: the one engine behind ``predict``, ``eval`` and (later) the server.

It takes PIL images and returns strings: it knows nothing about files or HTTP.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch
from PIL import Image

DEFAULT_PROMPT = "ocr"


class Predictor:
    """Wraps a (model, processor) pair. ``predict`` returns only the generated text, prompt excluded."""

    def __init__(self, model, processor, max_new_tokens: int = 512, batch_size: int = 8):
        self.model = model
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs) -> "Predictor":
        from .models import load

        model, processor = load(name_or_path)
        return cls(model, processor, **kwargs)

    @torch.inference_mode()
    def _generate(self, images: Sequence[Image.Image], prompt: str | Sequence[str]) -> list[str]:
        from .models import generation_inputs

        prompts = [prompt] * len(images) if isinstance(prompt, str) else list(prompt)
        inputs = generation_inputs(self.processor, list(images), prompts).to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        tok = self.processor.tokenizer
        eos = self.model.generation_config.eos_token_id
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=tok.pad_token_id,
                                      eos_token_id=eos if eos is not None else tok.eos_token_id)
        finally:
            if was_training:
                self.model.train()
        generated = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.processor.batch_decode(generated, skip_special_tokens=True)]

    def predict_iter(self, images: Iterable[Image.Image], prompt: str = DEFAULT_PROMPT) -> Iterator[str]:
        batch: list[Image.Image] = []
        for im in images:
            batch.append(im)
            if len(batch) == self.batch_size:
                yield from self._generate(batch, prompt)
                batch = []
        if batch:
            yield from self._generate(batch, prompt)

    def predict(self, images: Sequence[Image.Image], prompt: str = DEFAULT_PROMPT) -> list[str]:
        return list(self.predict_iter(images, prompt))
