"""Decoding: each image file read, decoded and resized to the square the model sees.

How a file is decoded and resized (its plan, :func:`plan_of`) is chosen in Python from its first
bytes, so that the tf.data graph holds no per-image format tests (a few hundred microseconds per
small image): a dataset of one kind of file gets one straight decode → resize path, a mixed one a
switch. :func:`read_image` decodes a single file the same way.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from shared.data.check import manifest_path, read_manifest
from shared.data.images import HEAD_BYTES, HUGE_PIXELS, WORKERS, sniff, to_rgb

JPEG_SCALES = (1, 2, 4, 8)
DECODERS = ("jpeg/1", "jpeg/2", "jpeg/4", "jpeg/8", "jpeg/auto", "tf", "pillow")
RESIZES = ("bilinear", "area", "auto")


def plan_of(head: bytes, image_size: int) -> tuple[str, str]:
    """(decoder, resize) for a file whose first bytes are ``head``.

    decoder: "jpeg/<n>" (``decode_jpeg`` at DCT scale 1/n, the largest that keeps both sides
    ≥ ``image_size``; "jpeg/auto" when the size is not in ``head``), "tf" (``decode_image``:
    PNG, WebP, 24/32-bit BMP) or "pillow" (anything else: GIF, palette or 1-bit BMP, TIFF, ...,
    and non-JPEG images over :data:`HUGE_PIXELS`, which Pillow reduces first).
    resize: "area" where both decoded sides are ≥ 2x ``image_size`` (antialiased), "bilinear"
    otherwise (several times cheaper in tf.data), "auto" when the size is unknown.
    """
    return _plan(*sniff(head), image_size)


@functools.lru_cache(maxsize=4096)
def _plan(kind: str, size: tuple[int, int] | None, image_size: int) -> tuple[str, str]:
    if kind == "jpeg":
        if size is None:
            return "jpeg/auto", "auto"
        scale = max(n for n in JPEG_SCALES if n == 1 or min(size) // n >= image_size)
        return f"jpeg/{scale}", _resize_for([-(-side // scale) for side in size], image_size)
    if kind == "tf" and size is not None and size[0] * size[1] > HUGE_PIXELS:
        kind = "pillow"
    if kind == "pillow" or size is None:
        return kind, "auto"
    return kind, _resize_for(size, image_size)


def _resize_for(size, image_size: int) -> str:
    return "area" if min(size) >= 2 * image_size else "bilinear"


def file_plans(root: Path, rel_paths: list[str], image_size: int) -> np.ndarray:
    """The plan of every file, as indices into :data:`PLANS`: from the check cache where it
    is current (size and mtime unchanged), else from the file's first bytes."""
    known = read_manifest(manifest_path(root)).drop_duplicates("path", keep="last")
    rows = pd.DataFrame({"path": rel_paths}).merge(known, on="path", how="left")
    stats = [_stat(os.path.join(root, rel)) for rel in rel_paths]
    current = ((rows["size"].to_numpy() == [st[0] for st in stats])
               & (rows["mtime_ns"].to_numpy() == [st[1] for st in stats])
               & (rows["decoder"].fillna("").to_numpy() != ""))
    out = np.empty(len(rel_paths), np.int32)
    if current.any():
        hit = rows[current]
        out[current] = [_PLAN_INDEX[_plan(kind, (int(w), int(h)), image_size)]
                        for kind, w, h in zip(hit["decoder"], hit["width"], hit["height"],
                                              strict=True)]

    def from_head(rel):
        try:
            with open(os.path.join(root, rel), "rb") as f:
                return _PLAN_INDEX[plan_of(f.read(HEAD_BYTES), image_size)]
        except OSError:      # read_file in the pipeline raises, naming the file
            return _PLAN_INDEX[("pillow", "auto")]
    todo = np.flatnonzero(~current)
    if len(todo):
        with cf.ThreadPoolExecutor(WORKERS) as pool:
            out[todo] = list(pool.map(from_head, [rel_paths[i] for i in todo], chunksize=256))
    return out


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


PLANS = [(d, r) for d in DECODERS for r in RESIZES]   # every (decoder, resize): a plan's index
_REDUCIBLE = {"L", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "F", "PA"}   # Image.reduce's modes
_PLAN_INDEX = {plan: i for i, plan in enumerate(PLANS)}


def read_image(path: str | os.PathLike, image_size: int) -> np.ndarray:
    """One image file as the pipeline sees it: uint8 (S, S, 3) (e.g. for figures)."""
    with open(path, "rb") as f:
        plan = plan_of(f.read(HEAD_BYTES), image_size)
    return decode_file(str(path), image_size, plan).numpy()


def decode_file(path, image_size: int, plan: tuple[str, str]):
    """Read, decode and resize one file (a string tensor) by ``plan``: uint8 (S, S, 3)."""
    import tensorflow as tf

    return _decode_bytes(tf.io.read_file(path), image_size, plan)


def _decode_bytes(data, image_size: int, plan: tuple[str, str]):
    import tensorflow as tf

    decoder, resize = plan
    if decoder == "tf":
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    elif decoder == "pillow":
        image = _decode_pillow(data, image_size)
    elif decoder == "jpeg/auto":
        image = _decode_jpeg(data, image_size)
    else:
        image = tf.io.decode_jpeg(data, channels=3, ratio=int(decoder.split("/")[1]),
                                  dct_method="INTEGER_FAST")
    image.set_shape([None, None, 3])
    size = [image_size, image_size]
    if resize == "auto":
        shape = tf.shape(image)
        far = tf.logical_and(shape[0] >= 2 * image_size, shape[1] >= 2 * image_size)
        image = tf.cond(far, lambda: tf.image.resize(image, size, method="area"),
                        lambda: tf.image.resize(image, size, method="bilinear"))
    else:
        image = tf.image.resize(image, size, method=resize)
    return tf.saturate_cast(tf.round(image), tf.uint8)


def _decode_jpeg(data, image_size: int):
    """decode_jpeg at the largest DCT scale that keeps both sides ≥ image_size."""
    import tensorflow as tf

    shape = tf.image.extract_jpeg_shape(data)
    short = tf.minimum(shape[0], shape[1])
    scale = tf.reduce_sum(tf.cast(short >= image_size * tf.constant([2, 4, 8]), tf.int32))
    return tf.switch_case(scale, [
        lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r, dct_method="INTEGER_FAST")
        for r in JPEG_SCALES])


def _decode_pillow(data, image_size: int):
    import tensorflow as tf

    def decode(raw):
        with Image.open(io.BytesIO(raw.numpy())) as im:
            im.draft("RGB", (image_size, image_size))
            factor = max(1, min(im.size) // (2 * image_size))
            im.load()
            if factor > 1:
                if im.mode in ("P", "1") and "transparency" not in im.info:
                    im = im.convert("RGB")        # Image.reduce takes neither: RGB first
                elif im.mode not in _REDUCIBLE:   # e.g. 16-bit, or with transparency
                    im = Image.fromarray(to_rgb(im))
                im = im.reduce(factor)
            return to_rgb(im)

    return tf.py_function(decode, [data], tf.uint8)
