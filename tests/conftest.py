"""Shared fixtures: small generated image folders, clean and salted with every kind of bad file."""

from __future__ import annotations

import contextlib
import io
import itertools
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

_counter = itertools.count()


def write_image(path: Path, size=(16, 16), mode: str = "RGB", fmt: str | None = None,
                seed: int | None = None, **save_args) -> Path:
    """A noise image (different bytes for every call unless ``seed`` is given)."""
    rng = np.random.default_rng(next(_counter) if seed is None else seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode in ("I;16", "I"):
        image = Image.fromarray(rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16))
    elif mode == "P":
        image = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    else:
        image = rgb.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt or _format_of(path), **save_args)
    return path


def _format_of(path: Path) -> str:
    ext = path.suffix.lower().lstrip(".")
    return {"jpg": "JPEG", "jpeg": "JPEG", "tif": "TIFF"}.get(ext, ext.upper())


def make_class_folder(root: Path, classes=("cat", "dog", "bird"), per_class: int = 6,
                      size=(16, 16)) -> Path:
    """``root/<class>/<i>.jpg|png``: alternating JPEG and PNG noise images."""
    for c in classes:
        for i in range(per_class):
            ext = "jpg" if i % 2 == 0 else "png"
            write_image(root / c / f"{i:03d}.{ext}", size)
    return root


@pytest.fixture(autouse=True)
def _check_cache(tmp_path_factory, monkeypatch):
    """Keep the per-file check cache of shared.data out of the repository's data/ folder. The
    manifest of Fashion-MNIST that ``make data`` wrote there is copied in: checking its 70,000
    files again costs half a minute (a manifest whose files changed is checked again)."""
    from shared import config, data

    fashion = data.check.manifest_path(config.DATA_DIR / data.FASHION_MNIST)
    cache = tmp_path_factory.getbasetemp() / "checked"
    if fashion.is_file() and not (cache / fashion.name).is_file():
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copy2(fashion, cache / fashion.name)
    # patched where it is read: the package shared.data does not re-export it
    monkeypatch.setattr(data.check, "CHECK_CACHE_DIR", cache)


@pytest.fixture(autouse=True)
def _no_op_determinism_left_behind():
    """A test that starts an experiment with deterministic=True turns TensorFlow's op
    determinism on for its whole process: turn it off again, so the tests that follow in the
    same worker (XLA among them) see what they would see alone."""
    yield
    import sys

    if "tensorflow" in sys.modules:
        from tensorflow.python.framework import config as tf_config

        if tf_config.is_op_determinism_enabled():
            tf_config.disable_op_determinism()


@pytest.fixture
def image_writer():
    """The ``write_image(path, size, mode, fmt, seed, **save_args)`` helper."""
    return write_image


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Form 2: three classes (cat, dog, bird) of six 16x16 noise images each."""
    return make_class_folder(tmp_path / "animals")


@pytest.fixture
def split_folder(tmp_path) -> Path:
    """Form 3: train/ (8 per class), val/ (2), test/ (3) of classes a and b; one file of
    train/a is byte-identical to one of test/a (leakage)."""
    root = tmp_path / "splits"
    for part, n in (("train", 8), ("val", 2), ("test", 3)):
        make_class_folder(root / part, ("a", "b"), n)
    (root / "test" / "a" / "leak.png").write_bytes((root / "train/a/001.png").read_bytes())
    return root


@pytest.fixture
def labels_folder(tmp_path) -> Path:
    """Form 4: 12 images in one folder and labels.csv (filename,label) with classes 0, 1, 2."""
    root = tmp_path / "flat"
    rows = ["filename,label"]
    for i in range(12):
        write_image(root / f"{10000 + i}.jpg")
        rows.append(f"{10000 + i}.jpg,{i % 3}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


BAD_FILES = {   # relative path -> the words its skip reason must contain
    "cat/truncated.jpg": "decoded",
    "cat/empty.jpg": "empty",
    "cat/text.jpg": "not an image",
    "cat/.DS_Store": "hidden",
    "cat/.hidden.png": "hidden",
    "cat/.ipynb_checkpoints/": "hidden",
    "cat/notes.txt": "not an image file",
    "dog/Thumbs.db": "not an image file",
    "dog/truncated.png": "decoded",
}
GOOD_ODD_FILES = (
    "cat/rgba.png", "cat/palette.png", "cat/sixteen_bit.png", "cat/gray.jpg", "cat/cmyk.jpg",
    "cat/animated.gif", "cat/plain.bmp", "cat/palette.bmp", "cat/photo.webp", "cat/tiny.png",
    "cat/huge.png", "cat/name with spaces.jpg", "cat/ñandú 日本.png", "cat/sub/deeper/nested.jpg",
    "cat/UPPER.JPG", "cat/scan.tif", "crème brûlée/x 1.jpg",
)


@pytest.fixture(scope="session")
def _huge_png(tmp_path_factory) -> bytes:
    """An 8000x8000 solid-colour PNG (small on disk: it compresses well), made once."""
    buf = io.BytesIO()
    Image.new("L", (8000, 8000), 90).save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


@pytest.fixture
def salted_folder(tmp_path, _huge_png) -> Path:
    """Form 2 with classes cat, dog, 'crème brûlée' and an empty class folder 'empty', salted
    with every kind of bad file (:data:`BAD_FILES`) and every odd-but-good one
    (:data:`GOOD_ODD_FILES`), plus four ordinary JPEGs per class and a loose root image."""
    root = tmp_path / "salted"
    make_class_folder(root, ("cat", "dog", "crème brûlée"), per_class=4)
    (root / "empty").mkdir()
    (root / "empty" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    write_image(root / "loose.jpg")
    (root / "cat/truncated.jpg").write_bytes(write_image(root / "t.jpg", (32, 32)).read_bytes()
                                             [:300])
    (root / "t.jpg").unlink()
    (root / "cat/empty.jpg").write_bytes(b"")
    (root / "cat/text.jpg").write_text("this is not a picture\n")
    (root / "cat/.DS_Store").write_bytes(b"\0\0\0\1Bud1" * 10)
    write_image(root / "cat/.hidden.png")
    write_image(root / "cat/.ipynb_checkpoints/copy.jpg")
    (root / "cat/notes.txt").write_text("notes")
    (root / "dog/Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    png = write_image(root / "dog/full.png", (32, 32)).read_bytes()
    (root / "dog/truncated.png").write_bytes(png[: len(png) // 2])
    (root / "dog/full.png").unlink()

    write_image(root / "cat/rgba.png", mode="RGBA")
    write_image(root / "cat/palette.png", mode="P")
    write_image(root / "cat/sixteen_bit.png", mode="I;16")
    write_image(root / "cat/gray.jpg", mode="L")
    write_image(root / "cat/cmyk.jpg", mode="CMYK")
    frames = [Image.new("P", (16, 16), i) for i in (3, 7)]
    frames[0].save(root / "cat/animated.gif", save_all=True, append_images=frames[1:])
    write_image(root / "cat/plain.bmp")
    write_image(root / "cat/palette.bmp", mode="P")
    write_image(root / "cat/photo.webp", fmt="WEBP")
    write_image(root / "cat/tiny.png", size=(1, 1))
    (root / "cat/huge.png").write_bytes(_huge_png)
    write_image(root / "cat/name with spaces.jpg")
    write_image(root / "cat/ñandú 日本.png")
    write_image(root / "cat/sub/deeper/nested.jpg")
    write_image(root / "cat/UPPER.JPG", fmt="JPEG")
    write_image(root / "cat/scan.tif")
    write_image(root / "crème brûlée/x 1.jpg")
    return root


# --------------------------------------------------------------------------- models


def nested_model(size=16, classes=3, seed=1):
    """inputs -> Functional "backbone" (convolutions) -> pooling -> Functional "head"."""
    keras.utils.set_random_seed(seed)
    b_in = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255, name="scale")(b_in)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    backbone = keras.Model(b_in, x, name="backbone")
    h_in = keras.Input((8,))
    head = keras.Model(h_in, keras.layers.Dense(classes, activation="softmax")(h_in),
                       name="head")
    inputs = keras.Input((size, size, 3))
    outputs = head(keras.layers.GlobalAveragePooling2D()(backbone(inputs, training=False)))
    return keras.Model(inputs, outputs)


def images(n=3, size=16, seed=0):
    """Noise images with a bright corner, float32 in [0, 255]."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 255, (n, size, size, 3)).astype("float32")
    base[:, : size // 2, : size // 2] = 255.0  # a bright corner gives the maps structure
    return base


def run_all(run_dir: Path, profile: str, **environment: str) -> tuple[Path, int, str]:
    """(run directory, exit code, printed output) of the runner's `run-all` over the real
    notebooks on Fashion-MNIST, with none of the run's settings in the environment (the
    notebooks must get them as parameters) and ``environment`` set for their kernels."""
    from shared import config
    from shared.run import runner

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        for name in (config.ENV_FRESH, config.ENV_PROFILE, config.ENV_RUN_DIR, config.ENV_DATA):
            patch.delenv(name, raising=False)
        for name, value in environment.items():
            patch.setenv(name, value)
        with contextlib.redirect_stdout(out):
            code = runner.main(["run-all", "--profile", profile, "--data", "fashion-mnist",
                                "--run", str(run_dir)])
    return run_dir, code, out.getvalue()
