"""The data collator: a batch of (image, prompt, target) rows -> model inputs with labels, per model family."""

from __future__ import annotations

from typing import Any

import torch

from ..models import kind_of


class Collator:
    """Labels only the target (+ end token): image, prompt and padding tokens are -100. Nothing is truncated:
    preflight has checked the token budget before training starts."""

    def __init__(self, processor, raw_pixels: bool = False, kind=None):
        """``raw_pixels``: ``pixel_values`` as resized uint8 pages (see models.normalize_pixels); the trainer
        normalises them on the device. ``kind``: the model's (models.kind_of; default: the processor's page
        kind); a kind with a reading unit (the row reader) trains on rows, cut here from their pages."""
        self.processor = processor
        self.raw_pixels = raw_pixels
        self.kind = kind or kind_of(processor)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        unit = self.kind.unit
        if unit is not None:
            import numpy as np

            from ..rows import page_for_rows, row_image

            # the page as row_examples cut it (``rows.page_for_rows``), turned by the angle found then
            images = [np.asarray(row_image(page_for_rows(r["image"], float(r.get("angle") or 0.0))[0],
                                           tuple(r["box"]), unit).convert("L")) for r in rows]
        else:
            images = [r["image"].convert("RGB") for r in rows]
        return self.kind.training_batch(self.processor, images, [r["prompt"] for r in rows],
                                        [r["target"] for r in rows], raw_pixels=self.raw_pixels)
