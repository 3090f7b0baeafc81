"""The emoji renderer: Noto Color Emoji glyphs (Debian's fonts-noto-color-emoji) on white,
cropped to their ink, padded to a square; captions are their lowercased Unicode names.
The dataset over them is ``emoji[:split]`` (:class:`hart.data.sources.Emoji`).
"""
from __future__ import annotations

import functools
import unicodedata
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from hart.common.errors import UserError

EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_FONT_SIZE = 109  # the colour bitmap (CBDT) font renders at this size only
EMOJI_BACKGROUND = (255, 255, 255)
# where the font's single-codepoint emoji live (used when fontTools cannot read its cmap)
EMOJI_RANGES = ((0x00A9, 0x00AF), (0x203C, 0x3300), (0x1F000, 0x1FB00))
_EMOJI_SKIP_CATEGORIES = {"Cc", "Cf", "Cn", "Co", "Cs", "Mn", "Me", "Sk", "Zs"}  # marks, tags, skin tones


@functools.lru_cache(maxsize=4)
def _emoji_font(path: str):
    if not Path(path).is_file():
        raise UserError(f"emoji font {path} not found; install it with apt-get install fonts-noto-color-emoji")
    try:
        return ImageFont.truetype(path, EMOJI_FONT_SIZE)
    except OSError as e:
        raise UserError(f"cannot load the emoji font {path} at size {EMOJI_FONT_SIZE}: {e}") from None


def _emoji_rgba(ch: str, font) -> Image.Image | None:
    """The glyph cropped to its ink (RGBA), or None when the font draws nothing."""
    x0, y0, x1, y1 = font.getbbox(ch)
    if x1 <= x0 or y1 <= y0:
        return None
    im = Image.new("RGBA", (x1 + 4, y1 + 4), (0, 0, 0, 0))
    ImageDraw.Draw(im).text((0, 0), ch, font=font, embedded_color=True)
    box = im.getchannel("A").getbbox()
    return im.crop(box) if box else None


@functools.lru_cache(maxsize=4)
def emoji_glyphs(font_path: str = str(EMOJI_FONT)) -> tuple:
    """``(character, caption)`` for every single-codepoint emoji the font draws, in codepoint
    order; caption = the lowercased Unicode name. Sequences (flags, ZWJ, keycaps) are left out."""
    font = _emoji_font(font_path)
    try:
        from fontTools.ttLib import TTFont

        cps = sorted(TTFont(font_path, lazy=True).getBestCmap())
        drawn = None  # the cmap says which glyphs exist
    except ImportError:
        cps = [c for lo, hi in EMOJI_RANGES for c in range(lo, hi)]
        drawn = lambda ch: _emoji_rgba(ch, font) is not None  # noqa: E731
    out = []
    for cp in cps:
        ch = chr(cp)
        name = unicodedata.name(ch, "")
        if cp < 0x80 or not name or unicodedata.category(ch) in _EMOJI_SKIP_CATEGORIES:
            continue
        if drawn is None or drawn(ch):
            out.append((ch, name.lower()))
    return tuple(out)


def render_emoji(ch: str, resolution: int, font_path: str = str(EMOJI_FONT)) -> Image.Image:
    """The glyph ``ch`` on white, cropped to its ink with a thin border, as a square RGB image."""
    im = _emoji_rgba(ch, _emoji_font(font_path))
    w, h = im.size
    side = round(max(w, h) * 1.0625)  # a thin border
    canvas = Image.new("RGBA", (side, side), EMOJI_BACKGROUND + (255,))
    canvas.alpha_composite(im, ((side - w) // 2, (side - h) // 2))
    return canvas.convert("RGB").resize((resolution, resolution), Image.LANCZOS)
