"""The data collator: a batch of (image, prompt, target) rows -> model inputs with labels, per model family."""

from __future__ import annotations

from typing import Any

import torch

from ..models import training_batch


class Collator:
    """Labels only the target (+ end token): image, prompt and padding tokens are -100. Nothing is truncated:
    preflight has checked the token budget before training starts."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images = [r["image"].convert("RGB") for r in rows]
        return training_batch(self.processor, images, [r["prompt"] for r in rows], [r["target"] for r in rows])
