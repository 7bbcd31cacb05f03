"""Augmentation presets, deterministic by seed; they change pixels only, never the target.

``scan``: skew within ±2°, contrast and brightness, blur, sensor noise, speckles, JPEG artefacts.
``photo``: perspective, uneven light, a soft shadow, colour cast, blur, noise, JPEG artefacts.

Each returns the image and the JPEG quality to save it with: the artefacts come from that one save, not from an
extra encode/decode. Pixel work runs in Pillow's C operations (lookup tables, blends) rather than float arrays:
augmentation must keep up with rendering.
"""

from __future__ import annotations

import random
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

PRESETS = ("none", "scan", "photo")
_BANK = 1024  # side of the noise tile


@lru_cache(maxsize=1)
def _noise_bank() -> Image.Image:
    """One fixed tile of Gaussian noise (sigma 16 around 128); pages use random crops of it, scaled by a LUT."""
    rng = np.random.default_rng(20240229)
    return Image.fromarray(np.clip(rng.normal(128, 16, (_BANK, _BANK)), 0, 255).astype(np.uint8), "L")


def _noise(im: Image.Image, rng: random.Random, sigma: float) -> Image.Image:
    w, h = im.size
    bank = _noise_bank()
    tile = bank.transpose(rng.choice((Image.Transpose.ROTATE_90, Image.Transpose.FLIP_LEFT_RIGHT,
                                      Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_180)))
    tile = tile.point([int(max(0, min(255, 128 + (v - 128) * sigma / 16))) for v in range(256)])
    noise = Image.new("L", (w, h))
    ox, oy = rng.randrange(_BANK), rng.randrange(_BANK)
    for y in range(-oy, h, _BANK):  # tile the page with the shifted noise
        for x in range(-ox, w, _BANK):
            noise.paste(tile, (x, y))
    if im.mode != "L":
        noise = Image.merge(im.mode, [noise] * len(im.getbands()))
    return ImageChops.add(im, noise, scale=1.0, offset=-128)


def _levels(im: Image.Image, contrast: float, bright: float, gains: tuple[float, ...] = (1.0, 1.0, 1.0)) -> Image.Image:
    lut = []
    for g in gains[: len(im.getbands())]:
        lut += [int(max(0, min(255, ((v - 128) * contrast + 128 + bright) * g))) for v in range(256)]
    return im.point(lut)


def scan(im: Image.Image, rng: random.Random) -> tuple[Image.Image, int]:
    fill = 255 if im.mode == "L" else (255, 255, 255)
    im = im.rotate(rng.uniform(-2.0, 2.0), resample=Image.Resampling.BILINEAR, fillcolor=fill)
    if rng.random() < 0.8:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))
    im = _levels(im, rng.uniform(0.75, 1.1), rng.uniform(-25, 10))
    im = _noise(im, rng, rng.uniform(2.0, 9.0))
    draw = ImageDraw.Draw(im)
    w, h = im.size
    for _ in range(int(rng.uniform(50, 600))):  # dust and toner specks
        x, y, r = rng.randrange(w), rng.randrange(h), rng.choice((0, 1, 1, 2))
        v = rng.randrange(0, 120)
        draw.rectangle((x, y, x + r, y + r), fill=v if im.mode == "L" else (v, v, v))
    return im, rng.randint(30, 80)


def _perspective_coeffs(src: list[tuple[float, float]], dst: list[tuple[float, float]]) -> list[float]:
    """Coefficients for Image.transform(PERSPECTIVE), which maps output (dst) points to input (src) points."""
    rows = []
    for (x, y), (u, v) in zip(dst, src):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    A = np.array(rows, dtype=np.float64)
    b = np.array([c for p in src for c in p], dtype=np.float64)
    return np.linalg.solve(A, b).tolist()


def photo(im: Image.Image, rng: random.Random) -> tuple[Image.Image, int]:
    w, h = im.size
    j = lambda s: rng.uniform(0.0, s)  # noqa: E731
    dst = [(j(0.06) * w, j(0.05) * h), (w - j(0.06) * w, j(0.05) * h), (w - j(0.06) * w, h - j(0.05) * h),
           (j(0.06) * w, h - j(0.05) * h)]
    src = [(0, 0), (w, 0), (w, h), (0, h)]
    table = rng.randint(60, 140)
    # geometry and defocus before colour: on a grayscale page they touch a third of the bytes
    im = im.transform((w, h), Image.Transform.PERSPECTIVE, _perspective_coeffs(src, dst),
                      Image.Resampling.BILINEAR, fillcolor=table if im.mode == "L" else (table,) * 3)
    if rng.random() < 0.6:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.0)))
    im = im.convert("RGB")
    # light and shadow are smooth: computed on a small grid, then upscaled
    gw, gh = 32, 44
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)
    cx, cy = rng.uniform(0, gw), rng.uniform(0, gh)
    light = 1.0 - rng.uniform(0.1, 0.35) * np.hypot(xx - cx, yy - cy) / np.hypot(gw, gh)
    light *= rng.uniform(0.8, 1.0)
    if rng.random() < 0.7:  # a soft shadow over one side
        edge, ang = rng.uniform(0.2, 0.8), rng.uniform(0, 2 * np.pi)
        side = (xx / gw - 0.5) * np.cos(ang) + (yy / gh - 0.5) * np.sin(ang) - (edge - 0.5)
        light *= 1.0 - rng.uniform(0.2, 0.45) / (1.0 + np.exp(-side * 25))
    light_im = Image.fromarray((np.clip(light, 0, 1) * 255).astype(np.uint8), "L").resize(
        (w, h), Image.Resampling.BILINEAR)
    im = ImageChops.multiply(im, Image.merge("RGB", [light_im] * 3))
    gains = (rng.uniform(0.95, 1.05), rng.uniform(0.95, 1.03), rng.uniform(0.88, 1.0))  # colour cast
    im = _levels(im, rng.uniform(0.85, 1.05), rng.uniform(-10, 15), gains)
    im = _noise(im, rng, rng.uniform(2.0, 6.0))
    return im, rng.randint(55, 90)


def augment(im: Image.Image, preset: str, rng: random.Random) -> tuple[Image.Image, int]:
    """(augmented image, JPEG quality to save it with)."""
    if preset == "scan":
        return scan(im, rng)
    if preset == "photo":
        return photo(im, rng)
    raise ValueError(f"unknown augmentation preset {preset!r} (known: {', '.join(PRESETS)})")
