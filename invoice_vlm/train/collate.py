"""The data collator: a batch of (image, prompt, target) rows -> model inputs with labels, per model family."""

from __future__ import annotations

from typing import Any

import torch

from ..models import training_batch


def show_band(image, window) -> Any:
    """Paint the page white outside the visible band (the ``lines`` task); the whole page when there is none."""
    if not window or (window[0] <= 0 and window[1] >= 1):
        return image
    from PIL import ImageDraw

    w, h = image.size
    draw = ImageDraw.Draw(image)
    top, bottom = int(window[0] * h), int(round(window[1] * h))
    if top > 0:
        draw.rectangle((0, 0, w, top - 1), fill="white")
    if bottom < h:
        draw.rectangle((0, bottom, w, h), fill="white")
    return image


class Collator:
    """Labels only the target (+ end token): image, prompt and padding tokens are -100. Nothing is truncated:
    preflight has checked the token budget before training starts."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images = [show_band(r["image"].convert("RGB"), r.get("window")) for r in rows]
        return training_batch(self.processor, images, [r["prompt"] for r in rows], [r["target"] for r in rows])
