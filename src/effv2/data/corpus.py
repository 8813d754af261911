"""A corpus of awkward image files, made with PIL, to check that none of them crashes or hangs a run.

``write_corpus(folder)`` writes the files and returns what should happen to each:
"ok" (loaded, pixels as documented in decode.py), "scan" (skipped at scan time) or "decode"
(passes the cheap scan, fails the full decode, so the loader replaces/drops it). Used by the
tests and by the commands in docs/data.md.
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
from PIL import Image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, raw_rows: bytes = b"") -> bytes:
    """A PNG written by hand: lets the header claim any size (a bomb) or 16-bit RGB samples."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = _png_chunk(b"IDAT", zlib.compress(raw_rows)) if raw_rows else b""
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + idat + _png_chunk(b"IEND", b"")


def corrupt_png_bytes(width: int = 16, height: int = 16) -> bytes:
    """A PNG whose signature, IHDR and CRCs are valid (so it passes the header scan) but whose IDAT
    holds a corrupt deflate stream: the full decode fails."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x78\x9c" + bytes((i * 37 + 11) % 256 for i in range(64))  # a zlib header, then garbage
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


# 16-bit grayscale test values and the 8-bit values they must become (v / 257, rounded)
GRAY16_VALUES = (0, 128, 129, 25700, 32896, 65535)
GRAY16_EXPECTED = (0, 0, 1, 100, 128, 255)
# one 16-bit RGB pixel; PIL keeps the high byte of each sample
RGB16_PIXEL = (0xABCD, 0x00FF, 0xFFFF)
RGB16_EXPECTED = (0xAB, 0x00, 0xFF)


def write_corpus(folder: str) -> dict[str, str]:
    os.makedirs(folder, exist_ok=True)
    expect: dict[str, str] = {}

    def path(name: str) -> str:
        return os.path.join(folder, name)

    def save(name: str, img: Image.Image, outcome: str = "ok", **kw) -> None:
        img.save(path(name), **kw)
        expect[name] = outcome

    def write(name: str, data: bytes, outcome: str) -> None:
        with open(path(name), "wb") as fh:
            fh.write(data)
        expect[name] = outcome

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    save("good_rgb.jpg", photo, quality=95)
    save("good_rgb.png", photo)
    save("gray.png", Image.new("L", (20, 20), 77))
    save("bilevel.png", Image.new("1", (20, 20), 1))
    save("cmyk.jpg", Image.new("CMYK", (16, 16), (0, 255, 255, 0)), quality=95)  # pure red in CMYK
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 255))
    rgba.paste((0, 0, 255, 0), (0, 0, 8, 16))  # left half fully transparent blue -> white
    save("rgba.png", rgba)
    save("gray_alpha.png", Image.new("LA", (16, 16), (0, 0)))  # transparent black -> white
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 0, 200, 0] + [0] * (254 * 3))  # index 1 = green
    save("palette.png", pal)
    save("palette_transparent.png", pal, transparency=1)  # the only colour is transparent -> white
    gray16 = Image.fromarray(np.array([GRAY16_VALUES], dtype=np.uint16))  # mode I;16
    save("gray16.png", gray16)
    rgb16_row = b"\x00" + struct.pack(">3H", *RGB16_PIXEL)  # filter byte 0, one RGB pixel
    write("rgb16.png", png_bytes(1, 1, 16, 2, rgb16_row), "ok")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    save("exif_rotated.jpg", Image.new("RGB", (40, 20), (10, 120, 200)), exif=exif.tobytes())
    save("tiny.gif", Image.new("P", (1, 1), 0))

    buf = io.BytesIO()
    photo.resize((128, 96)).save(buf, format="JPEG", quality=95)
    write("truncated.jpg", buf.getvalue()[: len(buf.getvalue()) // 2], "decode")
    write("corrupt_data.png", corrupt_png_bytes(), "decode")  # a valid header, then broken image data
    pcx = io.BytesIO()
    photo.save(pcx, format="PCX")  # a format PIL reads but effv2 does not accept (decode.PIL_FORMATS)
    write("pcx_named.png", pcx.getvalue(), "scan")
    write("zero_bytes.jpg", b"", "scan")
    write("text_named.jpg", b"this is not an image\n" * 10, "scan")
    write("bomb.png", png_bytes(100_000, 100_000, 8, 2), "scan")  # header claims 10 gigapixels
    write("notes.txt", b"hello\n", "scan")
    write("image.xyz", b"\x00" * 100, "scan")
    return expect
