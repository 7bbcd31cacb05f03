"""Font families with regular and bold weights, from Debian font packages (the Makefile installs them).

Layout is measured in points with the same TrueType files that draw the image (Pillow) and the PDF (reportlab).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

from ..common import InvoiceVLMError

FONT_ROOT = Path("/usr/share/fonts/truetype")
# family -> (folder, regular file, bold file, Debian package)
FONT_FAMILIES: dict[str, tuple[str, str, str, str]] = {
    "DejaVuSans": ("dejavu", "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "fonts-dejavu-core"),
    "DejaVuSerif": ("dejavu", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "fonts-dejavu-core"),
    "DejaVuSansMono": ("dejavu", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "fonts-dejavu-core"),
    "LiberationSans": ("liberation", "LiberationSans-Regular.ttf", "LiberationSans-Bold.ttf", "fonts-liberation"),
    "LiberationSerif": ("liberation", "LiberationSerif-Regular.ttf", "LiberationSerif-Bold.ttf", "fonts-liberation"),
    "LiberationMono": ("liberation", "LiberationMono-Regular.ttf", "LiberationMono-Bold.ttf", "fonts-liberation"),
    "FreeSans": ("freefont", "FreeSans.ttf", "FreeSansBold.ttf", "fonts-freefont-ttf"),
    "FreeSerif": ("freefont", "FreeSerif.ttf", "FreeSerifBold.ttf", "fonts-freefont-ttf"),
    "FreeMono": ("freefont", "FreeMono.ttf", "FreeMonoBold.ttf", "fonts-freefont-ttf"),
    "Carlito": ("crosextra", "Carlito-Regular.ttf", "Carlito-Bold.ttf", "fonts-crosextra-carlito"),
    "Caladea": ("crosextra", "Caladea-Regular.ttf", "Caladea-Bold.ttf", "fonts-crosextra-caladea"),
    "Lato": ("lato", "Lato-Regular.ttf", "Lato-Bold.ttf", "fonts-lato"),
    "OpenSans": ("open-sans", "OpenSans-Regular.ttf", "OpenSans-Bold.ttf", "fonts-open-sans"),
}
DEBIAN_PACKAGES = sorted({v[3] for v in FONT_FAMILIES.values()})
_MEASURE_PX = 200  # layout metrics come from a large size, where hinting no longer rounds advances


def font_file(family: str, bold: bool = False) -> str:
    try:
        folder, regular, heavy, package = FONT_FAMILIES[family]
    except KeyError:
        raise InvoiceVLMError(f"unknown font family {family!r} (known: {', '.join(FONT_FAMILIES)})") from None
    path = FONT_ROOT / folder / (heavy if bold else regular)
    if not path.is_file():
        raise InvoiceVLMError(f"font {path} not found: install Debian's {package} "
                              f"(apt-get install {' '.join(DEBIAN_PACKAGES)})")
    return str(path)


def check_fonts(families: list[str] | None = None) -> None:
    """Fail in one line, before any work starts, when a font file is missing."""
    for family in families or FONT_FAMILIES:
        font_file(family, False)
        font_file(family, True)


@lru_cache(maxsize=512)
def get_font(family: str, bold: bool, size: float) -> ImageFont.FreeTypeFont:
    """A Pillow font of ``size`` pixels (basic layout: no shaping is needed for Latin text, and it is faster)."""
    return ImageFont.truetype(font_file(family, bold), size, layout_engine=ImageFont.Layout.BASIC)


@lru_cache(maxsize=64)
def _metrics(family: str, bold: bool) -> tuple[ImageFont.FreeTypeFont, float, float]:
    font = get_font(family, bold, _MEASURE_PX)
    ascent, descent = font.getmetrics()
    return font, ascent / _MEASURE_PX, descent / _MEASURE_PX


@lru_cache(maxsize=64)
def _advances(family: str, bold: bool) -> dict[str, float]:
    return {}


def text_width(text: str, family: str, bold: bool, size: float) -> float:
    """Advance width of ``text`` in points at ``size`` points (sum of unhinted glyph advances, cached per
    character: layout measures tens of thousands of strings per second)."""
    adv = _advances(family, bold)
    total = 0.0
    for ch in text:
        w = adv.get(ch)
        if w is None:
            w = adv[ch] = _metrics(family, bold)[0].getlength(ch) / _MEASURE_PX
        total += w
    return total * size


def ascent_descent(family: str, bold: bool, size: float) -> tuple[float, float]:
    _, a, d = _metrics(family, bold)
    return a * size, d * size
