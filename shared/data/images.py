"""One image file: its format and size from its first bytes, its check with Pillow, its pixels as
8-bit RGB. The lowest layer of :mod:`shared.data`: it imports none of the others."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import struct
import threading

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
HUGE_PIXELS = 40_000_000       # above this, non-JPEG images are checked one at a time
HEAD_BYTES = 4096              # the first bytes read to tell a file's format and size

WORKERS = min(8, os.cpu_count() or 2)   # more threads only contend (GIL, directory locks)
_ONE_HUGE = threading.Lock()   # held while a huge image is decoded: one whole one in memory


def sniff(head: bytes):
    """("jpeg" | "tf" | "pillow", (width, height) or None) from a file's first bytes."""
    head = head.ljust(40, b"\0")
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg", _jpeg_size(head)
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "tf", struct.unpack(">II", head[16:24])
    if head[:3] == b"GIF":   # Pillow: TensorFlow rejects GIFs Pillow reads (colour indices
        return "pillow", struct.unpack("<HH", head[6:10])     # beyond the colour map)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "tf", None
    if head[:2] == b"BM":
        width, height, _, bits, compression = struct.unpack("<iiHHI", head[18:34])
        if bits in (24, 32) and compression in (0, 3):
            return "tf", (width, abs(height))
    return "pillow", None


def _jpeg_size(head: bytes):
    """(width, height) from the first SOF marker within ``head``, or None."""
    i = 2
    while i + 9 <= len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:
            i += 1
        elif marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            i += 2
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", head[i + 5:i + 9])
            return (width, height) if width and height else None
        else:
            i += 2 + struct.unpack(">H", head[i + 2:i + 4])[0]
    return None


def check_image(path: str | os.PathLike) -> dict:
    """Open and decode one file with Pillow: ok, reason, width, height, mode, format, digest.

    JPEGs are decoded at reduced scale (``draft``), which still reads every byte; PNGs also
    have every chunk's checksum verified (as libpng, which decodes them in the pipeline, does).
    Other images above Pillow's ``Image.MAX_IMAGE_PIXELS`` are refused as too large (a
    decompression bomb, or more than the pipeline can hold); those above :data:`HUGE_PIXELS`
    are decoded one at a time.
    """
    out = dict(ok=False, reason="", width=0, height=0, mode="", format="", decoder="",
               digest="")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        out["reason"] = f"cannot be read: {err.strerror or err}"
        return out
    if not data:
        out["reason"] = "empty file (0 bytes)"
        return out
    out["digest"] = file_digest(data)
    out["decoder"], sniffed = sniff(data[:HEAD_BYTES])
    try:
        with Image.open(io.BytesIO(data)) as im:
            out.update(width=im.width, height=im.height, mode=im.mode, format=im.format or "")
            pixels = im.width * im.height
            if im.width < 1 or im.height < 1:
                out["reason"] = "image has no pixels"
                return out
            limit = Image.MAX_IMAGE_PIXELS
            if im.format != "JPEG" and limit and pixels > limit:
                out["reason"] = (f"too large ({im.width}x{im.height} pixels, more than "
                                 f"{limit:,}: refused as a possible decompression bomb)")
                return out
            # opening a file again costs as much as decoding a small JPEG: only PNGs are
            if im.format == "PNG":
                im.verify()               # leaves im unusable: decoded from a new one below
            else:
                _decode_small(im, pixels)
        if out["format"] == "PNG":
            with Image.open(io.BytesIO(data)) as im:
                _decode_small(im, pixels)
    except UnidentifiedImageError:
        out["reason"] = "not an image (Pillow cannot identify the format)"
        return out
    except Image.DecompressionBombError as err:
        size = (out["width"], out["height"]) if out["width"] else sniffed
        out["reason"] = (f"too large ({size[0]}x{size[1]} pixels: refused as a possible "
                         "decompression bomb)" if size else f"too large ({short(err)})")
        return out
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        out["reason"] = f"cannot be decoded ({short(err)})"
        return out
    except Exception as err:   # noqa: BLE001 - a malformed file can make a plugin raise anything
        out["reason"] = f"cannot be decoded ({type(err).__name__}: {short(err)})"
        return out
    out["ok"] = True
    return out


def _decode_small(im: Image.Image, pixels: int) -> None:
    """Decode ``im`` as cheaply as possible (one huge image at a time), and check that an
    unusual mode converts to RGB."""
    with _ONE_HUGE if pixels > HUGE_PIXELS else contextlib.nullcontext():
        im.draft("RGB", (1, 1))       # JPEG: decode at 1/8 scale, other formats: no-op
        im.load()
        if im.mode not in _RGB_READY:
            to_rgb(im)


def file_digest(data: bytes) -> str:
    """The digest of a file's bytes that the check records (a 128-bit BLAKE2b, hex)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def short(err: Exception) -> str:
    """The first line of an error's message (at most 120 characters), for a reason."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:120]


def to_rgb(im: Image.Image) -> np.ndarray:
    """An 8-bit RGB array of a Pillow image of any mode (16-bit scaled, alpha dropped)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if im.mode != "F" and arr.max(initial=0) > 255:
            arr = arr / 257.0
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if im.mode in ("P", "PA"):      # via RGBA: Pillow warns on P -> RGB with transparency
        im = im.convert("RGBA")
    return np.asarray(im.convert("RGB"))


_RGB_READY = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I;16",
              "I;16B", "I;16L", "I;16N", "I", "F"}     # modes that to_rgb converts for sure
