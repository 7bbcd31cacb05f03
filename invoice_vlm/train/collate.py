"""The data collator: a batch of (image, prompt, target) rows -> model inputs with labels, per model family."""

from __future__ import annotations

from typing import Any

import torch

from ..models import training_batch


def show_band(image, window, zoom: float = 1.0) -> Any:
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
    band = image.crop((0, top, w, bottom))
    if zoom > 1:
        band = _enlarge(band, zoom, w, h)
    page.paste(band, (0, 0))
    return page


def _enlarge(band, zoom: float, w: int, h: int):
    """The band's ink, enlarged by ``zoom`` or as far as the page allows (all of it stays visible, so the target
    still holds). Text several times larger than on a page puts about one glyph in a patch instead of a row of them:
    the vision tower gets a signal it can learn from, and the decoder a reason to look."""
    from PIL import Image, ImageOps

    box = ImageOps.invert(band.convert("L")).point(lambda v: 255 if v > 24 else 0).getbbox()
    if not box:
        return band
    margin = 8
    ink = band.crop((max(0, box[0] - margin), max(0, box[1] - margin), min(band.width, box[2] + margin),
                     min(band.height, box[3] + margin)))
    z = min(zoom, w / ink.width, h / ink.height)
    if z <= 1:
        return band
    return ink.resize((int(ink.width * z), int(ink.height * z)), Image.Resampling.BICUBIC)


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
        from .tasks import GLYPH_SIZE, render_rows

        if self.unit is not None:
            import numpy as np

            from ..rows import deskew, row_image
            from .rowdata import row_batch

            crops = [np.asarray(row_image(deskew(r["image"], float(r.get("angle") or 0.0)), tuple(r["box"]),
                                          self.unit).convert("L")) for r in rows]
            batch = row_batch(crops, [r["target"] for r in rows], self.processor.tokenizer, self.unit,
                              self.image_token_id)
            for key in ("ctc_targets", "ctc_lengths"):  # image_columns stay: the trainer encodes rows by width
                batch.pop(key)
            return batch

        images = [render_rows(r["render"], r["target"], font_px=tuple(r.get("glyph_size") or GLYPH_SIZE),
                              fixed=bool(r.get("glyph_fixed")))
                  if r.get("render") else
                  show_band(r["image"].convert("RGB"), r.get("window"), r.get("zoom") or 1.0) for r in rows]
        return training_batch(self.processor, images, [r["prompt"] for r in rows], [r["target"] for r in rows],
                              raw_pixels=self.raw_pixels)
