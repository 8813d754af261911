"""Image files in, uint8 RGB tensors out; a file that cannot be used gives a reason, never a crash.

Two levels of checking:
- ``check_image_file`` (scan time, cheap): extension, regular file, non-empty, readable, and PIL's
  header parse with a size limit. No pixel data is decoded.
- ``decode_rgb`` (load time, in a loader worker): full decode; raises ``BadImage(reason)`` for
  anything PIL cannot decode (truncated data, corrupt streams, unsupported modes).

Bounded cost, both levels: a file is opened non-blocking and refused unless ``fstat`` says it is a
regular file (a FIFO, socket or device would block a read forever); only the decoders in
``PIL_FORMATS`` are tried (not every plugin Pillow has); the size declared in the header is checked
against ``MAX_PIXELS`` before any pixel is decoded, whatever ``PIL.Image.MAX_IMAGE_PIXELS`` is set to.

Conversions to RGB (what users get for unusual files):
- grayscale ("L", "1"), CMYK, YCbCr, palette without transparency: PIL's own conversion.
- transparency (RGBA, LA, PA, palette with a transparent colour): composited on white.
- 16-bit grayscale ("I;16*", "I"): value / 257, rounded (65535 -> 255; PIL's own conversion
  would clip everything above 255 to white). 16-bit RGB PNGs are reduced by PIL to their high
  byte on open (v >> 8, at most 1 below round(v / 257)).
- 32-bit float ("F"): clipped to 0..255 and rounded.
- EXIF orientation is applied (PIL.ImageOps.exif_transpose), so a phone photo stands upright.
"""

from __future__ import annotations

import os
import stat
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps

# Extensions that PIL decodes and that image data sets use. Anything else is skipped at scan time.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)

# The only PIL decoders tried (Image.open(..., formats=...)): those of IMAGE_EXTENSIONS (PIL's JPEG
# opener also returns a camera's multi-picture JPEG, as MPO).
PIL_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "PPM")

# Largest image accepted, in pixels: PIL's own default bomb limit (about 89.5 MP, a 1 GB RGBA
# buffer). Larger declared sizes are skipped as decompression bombs instead of being decoded.
MAX_PIXELS = 89_478_485


class BadImage(Exception):
    """A file that is skipped; ``reason`` is one line for skipped.jsonl."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path, self.reason = path, reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"

    def as_record(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_size(path: str, size: tuple[int, int]) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise BadImage(path, f"empty image ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise BadImage(path, f"image too large ({w}x{h} pixels > {MAX_PIXELS}): decompression bomb guard")


def _open_regular(path: str):
    """The file opened for reading, without ever blocking: refused unless it is a regular file."""
    extra = getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:  # O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting for one
        fh = open(path, "rb", opener=lambda p, flags: os.open(p, flags | extra))  # noqa: SIM115
    except OSError as exc:
        raise BadImage(path, f"cannot open as an image: {_describe(exc)}") from None
    try:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise BadImage(path, "not a regular file")
    except BaseException:
        fh.close()
        raise
    return fh


class _Opened:
    """``with _Opened(path) as img``: the checked PIL image; closes the image and its file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fh = _open_regular(path)
        try:
            self.img = self._open()
        except BaseException:
            self.fh.close()
            raise

    def _open(self) -> Image.Image:
        path = self.path
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(self.fh, formats=PIL_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise BadImage(path, f"image too large: decompression bomb guard ({_describe(exc)})") from None
        except Image.UnidentifiedImageError:
            raise BadImage(
                path, f"cannot open as an image: UnidentifiedImageError: not one of {', '.join(PIL_FORMATS)}"
            ) from None
        except Exception as exc:  # PermissionError, SyntaxError from broken headers, ...
            raise BadImage(path, f"cannot open as an image: {_describe(exc)}") from None
        try:
            _check_size(path, img.size)
        except BadImage:
            img.close()
            raise
        return img

    def __enter__(self) -> Image.Image:
        return self.img

    def __exit__(self, *exc) -> None:
        self.img.close()
        self.fh.close()


def check_image_file(path: str) -> str | None:
    """Cheap scan-time check: None when the file looks usable, else the reason to skip it."""
    if os.path.splitext(path)[1].lower() not in IMAGE_EXTENSIONS:
        return f"unknown extension {os.path.splitext(path)[1] or '(none)'!r}"
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"cannot stat: {_describe(exc)}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    try:
        with _Opened(path):
            pass
    except BadImage as bad:
        return bad.reason
    return None


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """uint8 (H, W, 3) from a PIL image of any mode (rules in the module docstring)."""
    mode = img.mode
    if mode.startswith("I"):  # "I;16", "I;16B", "I;16L", "I;16N", "I" (how PIL opens 16-bit grayscale)
        a = np.asarray(img).astype(np.float64)
        g = np.rint(np.clip(a, 0, 65535) / 257.0).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode == "F":
        g = np.rint(np.clip(np.asarray(img, dtype=np.float64), 0, 255)).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.array(img.convert("RGB") if mode != "RGB" else img)


def decode_rgb(path: str) -> torch.Tensor:
    """Fully decode ``path`` to uint8 (3, H, W); raises ``BadImage`` instead of any other error."""
    opened = _Opened(path)
    try:
        with opened as img:
            img.load()  # a truncated JPEG/PNG fails here (PIL's LOAD_TRUNCATED_IMAGES stays off)
            try:
                upright = ImageOps.exif_transpose(img)
            except Exception:  # a broken EXIF block is no reason to lose the pixels
                upright = img
            arr = to_rgb_array(upright if upright is not None else img)
    except BadImage:
        raise
    except Exception as exc:
        raise BadImage(path, f"cannot decode: {_describe(exc)}") from None
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()
