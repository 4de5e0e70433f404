"""A bar chart as a PNG, drawn in pure Python (zlib + struct), so it needs no matplotlib.

One horizontal bar per scenario (requests per second), labelled with a tiny 3x5 bitmap font.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

__all__ = ["Bar", "bar_chart_png", "write_png"]

Color = tuple[int, int, int]
Bar = tuple[str, float | None, str, Color]  # label, value (None = skipped), caption, color

_GLYPHS = {
    "0": "### #.# #.# #.# ###",
    "1": ".#. ##. .#. .#. ###",
    "2": "### ..# ### #.. ###",
    "3": "### ..# ### ..# ###",
    "4": "#.# #.# ### ..# ..#",
    "5": "### #.. ### ..# ###",
    "6": "### #.. ### #.# ###",
    "7": "### ..# ..# ..# ..#",
    "8": "### #.# ### #.# ###",
    "9": "### #.# ### ..# ###",
    "A": "### #.# ### #.# #.#",
    "B": "##. #.# ##. #.# ##.",
    "C": "### #.. #.. #.. ###",
    "D": "##. #.# #.# #.# ##.",
    "E": "### #.. ##. #.. ###",
    "F": "### #.. ##. #.. #..",
    "G": "### #.. #.# #.# ###",
    "H": "#.# #.# ### #.# #.#",
    "I": "### .#. .#. .#. ###",
    "J": "..# ..# ..# #.# ###",
    "K": "#.# #.# ##. #.# #.#",
    "L": "#.. #.. #.. #.. ###",
    "M": "#.# ### ### #.# #.#",
    "N": "##. #.# #.# #.# #.#",
    "O": "### #.# #.# #.# ###",
    "P": "### #.# ### #.. #..",
    "Q": "### #.# #.# ### ..#",
    "R": "##. #.# ##. #.# #.#",
    "S": "### #.. ### ..# ###",
    "T": "### .#. .#. .#. .#.",
    "U": "#.# #.# #.# #.# ###",
    "V": "#.# #.# #.# #.# .#.",
    "W": "#.# #.# ### ### #.#",
    "X": "#.# #.# .#. #.# #.#",
    "Y": "#.# #.# .#. .#. .#.",
    "Z": "### ..# .#. #.. ###",
    "-": "... ... ### ... ...",
    ".": "... ... ... ... .#.",
    "/": "..# ..# .#. #.. #..",
    " ": "... ... ... ... ...",
    "(": ".#. #.. #.. #.. .#.",
    ")": ".#. ..# ..# ..# .#.",
    ",": "... ... ... .#. #..",
    "%": "#.# ..# .#. #.. #.#",
    "=": "... ### ... ### ...",
    ":": "... .#. ... .#. ...",
}
_SCALE = 2
_CHAR_W = 4 * _SCALE  # 3 columns + 1 of spacing
_BG: Color = (255, 255, 255)
_INK: Color = (40, 40, 40)
_GRID: Color = (225, 225, 225)


class _Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self.rows = [bytearray(bytes(_BG) * width) for _ in range(height)]

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        x0, x1 = max(0, x0), min(self.width, x1)
        if x1 <= x0:
            return
        fill = bytes(color) * (x1 - x0)
        for y in range(max(0, y0), min(self.height, y1)):
            self.rows[y][x0 * 3 : x1 * 3] = fill

    def text(self, x: int, y: int, text: str, color: Color = _INK) -> None:
        for ch in text.upper():
            glyph = _GLYPHS.get(ch, _GLYPHS[" "])
            for gy, row in enumerate(glyph.split()):
                for gx, bit in enumerate(row):
                    if bit == "#":
                        self.rect(
                            x + gx * _SCALE,
                            y + gy * _SCALE,
                            x + (gx + 1) * _SCALE,
                            y + (gy + 1) * _SCALE,
                            color,
                        )
            x += _CHAR_W

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(row) for row in self.rows)
        return _png_bytes(self.width, self.height, raw)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _png_bytes(width: int, height: int, raw: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 9))
        + _chunk(b"IEND", b"")
    )


def bar_chart_png(title: str, bars: Sequence[Bar]) -> bytes:
    """Horizontal bars scaled to the largest value; skipped bars show their caption only."""
    label_w = max((len(label) for label, *_ in bars), default=4) * _CHAR_W + 24
    width, bar_area, row_h, top = 900, 0, 34, 44
    bar_area = width - label_w - 300
    height = top + row_h * len(bars) + 20
    canvas = _Canvas(width, height)
    canvas.text(16, 14, title)
    top_value = max((v for _, v, _, _ in bars if v), default=1.0)
    for tick in range(5):
        x = label_w + bar_area * tick // 4
        canvas.rect(x, top - 6, x + 1, height - 12, _GRID)
    for index, (label, value, caption, color) in enumerate(bars):
        y = top + index * row_h
        canvas.text(16, y + 8, label)
        length = 0 if not value else max(1, round(bar_area * value / top_value))
        canvas.rect(label_w, y + 2, label_w + length, y + row_h - 8, color)
        canvas.text(label_w + length + 10, y + 8, caption)
    return canvas.png()


def write_png(path: Path, title: str, bars: Sequence[Bar]) -> None:
    path.write_bytes(bar_chart_png(title, bars))
