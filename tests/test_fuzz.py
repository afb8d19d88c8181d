"""Fuzzed images: a few hundred real JPEG, PNG, GIF and WebP files, mutated from a fixed seed
(random byte flips, truncations at random offsets, wrong extensions, headers that declare
absurd sizes), through the check of every file (``data.load``), the decoding
(``data.pipeline``, ``data.read_image``) and ``predict.predict_folder``: nothing crashes or
hangs, every file is decoded to the asked size or listed as skipped with a reason, no decode
takes long, and decompression bombs are refused."""

from __future__ import annotations

import io
import resource
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from shared import data

pytestmark = pytest.mark.trains  # not in `make check`

SEED = 20240611
FORMATS = {"jpeg": ("JPEG", ".jpg"), "png": ("PNG", ".png"), "gif": ("GIF", ".gif"),
           "webp": ("WEBP", ".webp")}
PER_FORMAT = {"clean": 10, "flip": 30, "head": 12, "truncate": 16, "extension": 6, "huge": 8}
SIZE = 16                      # the size images are decoded to
SLOWEST_S = 2.0                # no single check or decode may take longer
MEMORY_MB = 1024               # nor raise the peak memory of the process by more than this
# declared sizes: far over Pillow's bomb error, over 2x its limit, over its limit (a warning only
# in Pillow: refused by the check), under it (decoded: over HUGE_PIXELS, so one at a time)
HUGE_SIDES = ((65000, 65000), (30000, 20000), (12000, 12000), (9000, 9000))
WATCHDOG_S = 180               # a hang ends the test process with every thread's traceback


def clean_image(rng: np.random.Generator, fmt: str) -> bytes:
    """A small photo-like image (smooth gradient plus noise) of a random size, as ``fmt``."""
    w, h = (int(v) for v in rng.integers(32, 65, 2))
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    pixels = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if fmt == "GIF":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 80} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


def flip(rng, raw: bytes, start: int = 0, end: int | None = None) -> bytes:
    """1-8 random bytes in ``raw[start:end]`` XORed with a random non-zero value."""
    out = bytearray(raw)
    end = len(raw) if end is None else min(end, len(raw))
    for pos in rng.integers(start, end, int(rng.integers(1, 9))):
        out[pos] ^= int(rng.integers(1, 256))
    return bytes(out)


def with_size(raw: bytes, fmt: str, width: int, height: int) -> bytes:
    """``raw`` whose header declares ``width`` x ``height`` (checksums kept valid)."""
    out = bytearray(raw)
    if fmt == "PNG":                            # IHDR at 8: length, type, w, h, ..., CRC
        out[16:24] = struct.pack(">II", width, height)
        out[29:33] = struct.pack(">I", zlib.crc32(bytes(out[12:29])))
    elif fmt == "JPEG":                         # the first SOF marker
        i = 2
        while out[i + 1] not in (0xC0, 0xC1, 0xC2):
            i += 2 + struct.unpack(">H", out[i + 2:i + 4])[0]
        out[i + 5:i + 9] = struct.pack(">HH", min(height, 65535), min(width, 65535))
    elif fmt == "GIF":                          # logical screen and the first image descriptor
        out[6:10] = struct.pack("<HH", min(width, 65535), min(height, 65535))
        i = out.index(b",", 13)
        out[i + 5:i + 9] = struct.pack("<HH", min(width, 65535), min(height, 65535))
    else:                                       # WebP: the VP8 frame header (14-bit sides)
        i = out.index(b"VP8 ") + 8 + 6
        out[i:i + 4] = struct.pack("<HH", min(width, 16383), min(height, 16383))
    return bytes(out)


def fuzzed_folder(root: Path) -> dict[str, str]:
    """Write the fuzzed dataset (one class folder per format) under ``root``; returns each
    file's relative path → how it was made. Everything follows from :data:`SEED`."""
    rng = np.random.default_rng(SEED)
    made = {}
    names = list(FORMATS)
    for name, (fmt, ext) in FORMATS.items():
        for kind, count in PER_FORMAT.items():
            for i in range(count):
                raw = clean_image(rng, fmt)
                file_ext = ext
                if kind == "flip":
                    raw = flip(rng, raw)
                elif kind == "head":                    # flips within the header
                    raw = flip(rng, raw, 0, 64)
                elif kind == "truncate":
                    raw = raw[:int(rng.integers(1, len(raw)))]
                elif kind == "extension":               # another format's extension
                    other = names[(names.index(name) + 1 + i % 3) % len(names)]
                    file_ext = FORMATS[other][1].upper() if i % 2 else FORMATS[other][1]
                elif kind == "huge":
                    w, h = HUGE_SIDES[i % len(HUGE_SIDES)]
                    raw = with_size(raw, fmt, w, h)
                    if i >= len(HUGE_SIDES):            # and cut short
                        raw = raw[:len(raw) * 2 // 3]
                rel = f"{name}/{kind}-{i:02d}{file_ext}"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(raw)
                made[rel] = kind
    return made


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz") / "fuzzed"
    return root, fuzzed_folder(root)


@pytest.fixture
def watchdog():
    """Nothing may hang: past WATCHDOG_S the process exits with every thread's traceback (a
    decode stuck in C would not see a Python alarm)."""
    import faulthandler

    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024     # KiB on Linux


def test_fuzzed_files_are_decoded_or_listed(fuzzed, watchdog):
    root, made = fuzzed
    timings = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")    # Pillow's DecompressionBombWarning
        for rel in made:                   # the check of every file, one at a time
            start = time.perf_counter()
            data.check_image(root / rel)
            timings[rel] = time.perf_counter() - start
        ds = data.load(root)
    usable = set(ds.files["path"])
    skipped = dict(zip(ds.skipped["path"], ds.skipped["reason"], strict=True))
    assert usable.isdisjoint(skipped) and usable | set(skipped) == set(made)
    assert all(reason.strip() for reason in skipped.values())
    for rel, kind in made.items():
        if kind in ("clean", "extension"):      # the content decides, not the extension
            assert rel in usable, (rel, skipped.get(rel))
    for i in range(PER_FORMAT["huge"]):        # refused: JPEGs (decoded at 1/8 scale) over
        w, h = HUGE_SIDES[i % len(HUGE_SIDES)]  # twice Pillow's limit, others over the limit;
        for name, (_, ext) in FORMATS.items():  # as too large unless also cut short
            limit = Image.MAX_IMAGE_PIXELS * (2 if name == "jpeg" else 1)
            rel = f"{name}/huge-{i:02d}{ext}"
            if w * h > limit:
                assert rel in skipped, rel
                assert i >= len(HUGE_SIDES) or skipped[rel].startswith("too large ("), rel
    assert len(usable) >= 100 and len(skipped) >= 100    # the fuzzing bites, but not always

    before = _peak_mb()
    for rel in sorted(usable):              # the decode of every usable file, one at a time
        start = time.perf_counter()
        image = data.read_image(root / rel, SIZE)
        timings[rel] = max(timings[rel], time.perf_counter() - start)
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8, rel
    slowest = max(timings, key=timings.get)
    assert timings[slowest] < SLOWEST_S, f"{slowest} took {timings[slowest]:.2f} s"
    assert _peak_mb() - before < MEMORY_MB

    batches = data.pipeline(ds.files, ds.root, ds.class_names, SIZE, 64, cache=None)
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in batches], strict=True)
    assert np.concatenate(images).shape == (len(usable), SIZE, SIZE, 3)
    expected = np.bincount(ds.files["label"].map(ds.class_names.index), minlength=4)
    assert np.concatenate(labels).sum(0).tolist() == expected.tolist()


def _saved_experiment(folder: Path, size: int) -> Path:
    """A tiny untrained model saved as an experiment of a run (as shared.training leaves
    it)."""
    import keras

    from shared.files import write_json

    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(len(FORMATS), activation="softmax")(x))
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    write_json(folder / "metrics.json", {"experiment": folder.name, "image_size": size,
                                         "class_names": list(FORMATS), "status": "complete"})
    return folder


def test_predict_folder_on_fuzzed_files(fuzzed, tmp_path, watchdog, capsys):
    from shared.serve import predict

    root, made = fuzzed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = data.load(root)
    model = _saved_experiment(tmp_path / "run" / "tiny", SIZE)
    out = tmp_path / "predicted.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predict.predict_folder(model, root, out)
    frame = pd.read_csv(out, keep_default_na=False)
    assert frame["file"].tolist() == sorted(ds.files["path"])
    assert np.isfinite(frame.filter(like="p_").to_numpy()).all()
    listed = pd.read_csv(predict.skipped_path(out), keep_default_na=False)
    assert dict(zip(listed["file"], listed["reason"], strict=True)) == dict(
        zip(ds.skipped["path"], ds.skipped["reason"], strict=True))


def test_large_palette_and_one_bit_images_are_reduced_by_pillow(tmp_path):
    """Large images decoded by Pillow are reduced before resizing: palette and 1-bit images
    (which Image.reduce does not take) are made RGB first."""
    gif, bmp = tmp_path / "big.gif", tmp_path / "big.bmp"
    palette = Image.new("P", (600, 400), 1)
    palette.putpalette([0, 0, 0, 200, 40, 90])
    palette.save(gif)
    Image.new("1", (500, 300), 1).save(bmp)
    np.testing.assert_array_equal(data.read_image(gif, 32), np.full((32, 32, 3), (200, 40, 90)))
    np.testing.assert_array_equal(data.read_image(bmp, 32), np.full((32, 32, 3), 255))


def test_png_with_a_bad_data_checksum_is_listed(tmp_path):
    """Pillow alone reads a PNG whose IDAT checksum is wrong; libpng (TensorFlow's decoder, in
    the pipeline) refuses it: the check verifies every chunk's checksum."""
    raw = bytearray(clean_image(np.random.default_rng(SEED), "PNG"))
    at = raw.index(b"IDAT")
    end = at + 4 + struct.unpack(">I", raw[at - 4:at])[0]      # the IDAT CRC follows its data
    raw[end] ^= 0xFF
    path = tmp_path / "bad crc.png"
    path.write_bytes(bytes(raw))
    with Image.open(path) as im:
        im.load()                                                   # Pillow: fine
    assert data.check_image(path)["reason"] == ("cannot be decoded (broken PNG file (bad header "
                                                "checksum in b'IDAT'))")
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError, match="PNG"):
        data.read_image(path, 8)                                    # TensorFlow: refused
