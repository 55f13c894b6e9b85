"""Image tokens: each provider's published rule, and an image's size read from its header.

Only a `data:` URL can be measured: an image at an http(s) URL would have to be
downloaded, and a count never touches the network. Its size is then unknown and its
tokens are the rule's upper bound, labelled an estimate.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from dataclasses import dataclass

# OpenAI, "Images and vision: calculating costs": high detail scales the image to fit
# 2048×2048, then its shortest side to 768 px, and counts 512 px tiles.
_FIT_SQUARE = 2048
_SHORT_SIDE = 768
_TILE = 512
# The largest image that rule allows is 768×2048: 2 × 4 tiles.
_MAX_TILES = 8


@dataclass(frozen=True, slots=True)
class TileRule:
    """OpenAI's tile rule for one model family: `base` tokens, plus `tile` per 512 px
    tile at high detail (a low-detail image costs `base` alone)."""

    base: int
    tile: int

    def tokens(self, detail: str, size: tuple[int, int] | None) -> int:
        """Tokens for one image; with `size` unknown, the rule's maximum."""
        if detail == "low":
            return self.base
        tiles = _MAX_TILES if size is None else openai_tiles(*size)
        return self.base + self.tile * tiles


def openai_tiles(width: int, height: int) -> int:
    """512 px tiles of an image after OpenAI's two high-detail resizes."""
    if width <= 0 or height <= 0:
        return 0
    scale = min(1.0, _FIT_SQUARE / max(width, height))
    w, h = width * scale, height * scale
    # "scaled such that the shortest side of the image is 768px long"; OpenAI's own
    # examples only ever scale down (a 512×512 image stays one tile).
    scale = min(1.0, _SHORT_SIDE / min(w, h))
    w, h = w * scale, h * scale
    return math.ceil(w / _TILE) * math.ceil(h / _TILE)


def anthropic_tokens(size: tuple[int, int] | None) -> int:
    """Anthropic, "Vision": about width × height / 750 tokens; a larger image is
    scaled down to about 1,600 tokens first."""
    if size is None:
        return _ANTHROPIC_MAX
    return min(_ANTHROPIC_MAX, math.ceil(size[0] * size[1] / 750))


_ANTHROPIC_MAX = 1600


def gemini_tokens(size: tuple[int, int] | None) -> int:
    """Google, "Understand and count tokens": 258 tokens when both sides are at most
    384 px, else 258 for each 768×768 tile the image is cropped and scaled into."""
    if size is None:
        return _GEMINI_TILE * 4
    width, height = size
    if width <= 384 and height <= 384:
        return _GEMINI_TILE
    return _GEMINI_TILE * math.ceil(width / 768) * math.ceil(height / 768)


_GEMINI_TILE = 258


def image_size(url: str) -> tuple[int, int] | None:
    """(width, height) of a base64 `data:` URL's PNG, GIF, JPEG or WebP image."""
    if not url.startswith("data:"):
        return None
    _, _, payload = url.partition(",")
    try:
        data = base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError):
        return None
    return size_of(data)


def size_of(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an image file's header, or None for another format."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            width, height = struct.unpack(">II", data[16:24])
            return width, height
        if data[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack("<HH", data[6:10])
            return width, height
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
    except (struct.error, IndexError):
        return None
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        return width, int.from_bytes(data[27:30], "little") + 1
    return None


# JPEG start-of-frame markers: every SOFn except DHT (C4), JPG (C8) and DAC (CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        length = int.from_bytes(data[offset + 2 : offset + 4], "big")
        if marker in _SOF_MARKERS:
            height, width = struct.unpack(">HH", data[offset + 5 : offset + 9])
            return width, height
        offset += 2 + length
    return None
