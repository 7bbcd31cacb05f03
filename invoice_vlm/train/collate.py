"""The data collator: a batch of (image, prompt, target) rows -> model inputs with labels, per model family."""

from __future__ import annotations

from typing import Any

import torch

from ..models import training_batch


class Collator:
    """Labels only the target (+ end token): image, prompt and padding tokens are -100. Nothing is truncated:
    preflight has checked the token budget before training starts."""

    def __init__(self, processor, raw_pixels: bool = False, unit=None, image_token_id: int | None = None):
        """``raw_pixels``: ``pixel_values`` as resized uint8 pages (see models.normalize_pixels); the trainer
        normalises them on the device. ``unit`` (a row model's ReadingUnit): examples are rows of their pages."""
        self.processor = processor
        self.raw_pixels = raw_pixels
        self.unit = unit
        self.image_token_id = image_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if self.unit is not None:
            import numpy as np

            from ..rows import deskew, row_image
            from ..models import row_batch

            crops = [np.asarray(row_image(deskew(r["image"], float(r.get("angle") or 0.0)), tuple(r["box"]),
                                          self.unit).convert("L")) for r in rows]
            # image_columns stay (the trainer encodes rows by width), and the CTC targets (for a CTC head)
            return row_batch(crops, [r["target"] for r in rows], self.processor.tokenizer, self.unit,
                             self.image_token_id)

        images = [r["image"].convert("RGB") for r in rows]
        return training_batch(self.processor, images, [r["prompt"] for r in rows], [r["target"] for r in rows],
                              raw_pixels=self.raw_pixels)
