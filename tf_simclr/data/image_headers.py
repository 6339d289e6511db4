"""The width and height an image file announces, read from its header without decoding it.

A small file can announce a huge image (a 20000x20000 PNG of one colour compresses to some
hundred KB and decodes to 1.2 GB of RGB), so a folder source must know the size before anything
decodes the pixels. :func:`announced_size` reads the formats ``tf.io.decode_image`` decodes
(PNG, JPEG, GIF, BMP, WebP) by their signature, whatever the file's extension; for any other
content it asks Pillow, whose ``Image.open`` reads only the header.

Pillow itself is not used for the formats above: ``Image.open`` refuses images above its global
``Image.MAX_IMAGE_PIXELS`` (raising before the size can be read), and that global is left alone.
"""

from __future__ import annotations

import struct
import warnings
from typing import BinaryIO

from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (the frame header holds the size); C4, C8 and CC are other markers.
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# JPEG markers without a length field: TEM, RST0-7, SOI, EOI.
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xDA)])


def _png(handle: BinaryIO) -> tuple[int, int] | None:
    """Width and height from the IHDR chunk, the first after the signature."""
    header = handle.read(24)
    if len(header) < 24 or header[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", header[16:24])


def _gif(handle: BinaryIO) -> tuple[int, int] | None:
    """The logical screen's size: what a decoder allocates per frame."""
    header = handle.read(10)
    return struct.unpack("<HH", header[6:10]) if len(header) == 10 else None


def _bmp(handle: BinaryIO) -> tuple[int, int] | None:
    """Size from the DIB header: 16-bit fields in the old 12-byte core header, else 32-bit
    (the height negative for top-down bitmaps)."""
    header = handle.read(26)
    if len(header) < 22:
        return None
    (dib_size,) = struct.unpack("<I", header[14:18])
    if dib_size == 12:
        return struct.unpack("<HH", header[18:22])
    if len(header) < 26:
        return None
    width, height = struct.unpack("<ii", header[18:26])
    return abs(width), abs(height)


def _jpeg(handle: BinaryIO) -> tuple[int, int] | None:
    """Size from the first start-of-frame segment, walking the segments before it."""
    handle.seek(2)  # past SOI
    while True:
        byte = handle.read(1)
        while byte and byte != b"\xff":  # stray bytes before a marker, skipped as libjpeg does
            byte = handle.read(1)
        marker = handle.read(1)
        while marker == b"\xff":  # fill bytes
            marker = handle.read(1)
        if not marker:
            return None
        if marker[0] in _JPEG_STANDALONE:
            continue
        if marker[0] == 0xDA:  # start of scan before any frame header: not a valid JPEG
            return None
        length_bytes = handle.read(2)
        if len(length_bytes) < 2:
            return None
        (length,) = struct.unpack(">H", length_bytes)
        if marker[0] in _JPEG_FRAMES:
            frame = handle.read(5)  # precision, height, width
            if len(frame) < 5:
                return None
            height, width = struct.unpack(">HH", frame[1:5])
            return width, height
        if length < 2:
            return None
        handle.seek(length - 2, 1)


def _webp(handle: BinaryIO) -> tuple[int, int] | None:
    """Size from the first chunk: VP8X (extended: the canvas), VP8L (lossless) or VP8."""
    header = handle.read(30)
    if len(header) < 30:
        return None
    kind = header[12:16]
    if kind == b"VP8X":
        width = int.from_bytes(header[24:27], "little") + 1
        return width, int.from_bytes(header[27:30], "little") + 1
    if kind == b"VP8L":
        bits = int.from_bytes(header[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8 ":
        width, height = struct.unpack("<HH", header[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def _with_pillow(path: str) -> tuple[int, int] | None:
    """The size Pillow reads from the header of a format TF does not decode, or None when
    Pillow cannot open the file or refuses it as above its own pixel limit (it will not decode
    it either, so the file ends up unreadable)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.size
    except Exception:  # whatever Pillow raises, it reads no size from this file
        return None


def announced_size(path: str) -> tuple[int, int] | None:
    """``(width, height)`` the file's header announces, or None when it announces none (not an
    image, or a truncated header). Reads a few bytes (JPEG: the segment headers before the
    frame), never the pixels."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(12)
            handle.seek(0)
            if start.startswith(PNG_SIGNATURE):
                return _png(handle)
            if start.startswith(b"\xff\xd8"):
                return _jpeg(handle)
            if start.startswith((b"GIF87a", b"GIF89a")):
                return _gif(handle)
            if start.startswith(b"BM"):
                return _bmp(handle)
            if start.startswith(b"RIFF") and start[8:12] == b"WEBP":
                return _webp(handle)
    except OSError:
        return None
    return _with_pillow(path)
