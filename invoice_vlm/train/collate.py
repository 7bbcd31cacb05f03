"""The data collator: a batch of (image, prompt, target) rows -> model inputs with labels, per model family."""

from __future__ import annotations

from typing import Any

import torch

from ..models import training_batch


def show_band(image, window) -> Any:
    """The ``lines`` task's image: the visible band moved to the top of a white page of the same size (same scale,
    so glyphs look exactly as on a full page); the whole page when there is no band. At the top, the first text
    token always finds its row in the first rows of patches: with the band left at its place on the page, a model
    trained from scratch never found it, and its vision tower collapsed to one output for every image."""
    if not window or (window[0] <= 0 and window[1] >= 1):
        return image
    from PIL import Image

    w, h = image.size
    top, bottom = int(window[0] * h), int(round(window[1] * h))
    page = Image.new(image.mode, (w, h), "white")
    page.paste(image.crop((0, top, w, bottom)), (0, 0))
    return page


class Collator:
    """Labels only the target (+ end token): image, prompt and padding tokens are -100. Nothing is truncated:
    preflight has checked the token budget before training starts."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        from .tasks import render_rows

        images = [render_rows(r["render"], r["target"]) if r.get("render") else
                  show_band(r["image"].convert("RGB"), r.get("window")) for r in rows]
        return training_batch(self.processor, images, [r["prompt"] for r in rows], [r["target"] for r in rows])
