"""Images keep their labels through shared.data.pipeline and data.training_data, and each part of
the split goes where it belongs.

Every image is generated so that its pixels say who it is: the red channel encodes its class
(40·k + 20), the green channel its part of the split and its number (60·part + n), and the blue
channel is a horizontal gradient (so that a flip or any other geometric change shows). Each
(image, label) pair a pipeline yields is checked against that, element by element.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from shared import data

SIZE = 8
CLASSES = ("ant", "bee", "cat", "dog")       # sorted: class index k = position here
PARTS = ("train", "val", "test")
GRADIENT = (25 * np.arange(SIZE) + 10).astype(np.uint8)


def coded_image(k: int, part: int, n: int) -> np.ndarray:
    pixels = np.empty((SIZE, SIZE, 3), np.uint8)
    pixels[..., 0] = 40 * k + 20
    pixels[..., 1] = 60 * part + n
    pixels[..., 2] = GRADIENT[None, :]
    return pixels


def decode(image) -> tuple[int, int, int]:
    """(class, part, number) that an image's red and green channels say."""
    red, green = (int(np.rint(np.asarray(image)[..., c].mean())) for c in (0, 1))
    assert (red - 20) % 40 == 0, red
    return (red - 20) // 40, green // 60, green % 60


def write_coded(path, k: int, part: int, n: int) -> np.ndarray:
    pixels = coded_image(k, part, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def yielded(ds) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every (image, label) pair of one pass, in order."""
    return [(x, y) for xs, ys in ds for x, y in zip(xs.numpy(), ys.numpy(), strict=True)]


def check_pairs(pairs, num_classes: int = len(CLASSES)) -> list[tuple[int, int, int]]:
    """Each label is exactly the one-hot vector of the class its image encodes; returns the
    decoded (class, part, number) of every image."""
    seen = []
    for image, label in pairs:
        k, part, n = decode(image)
        expected = np.eye(num_classes, dtype=np.float32)[k]
        assert np.array_equal(label, expected), (k, part, n, label)
        seen.append((k, part, n))
    return seen


@pytest.fixture
def coded_folder(tmp_path):
    """Form 2: classes of 5, 3, 4 and 2 coded images (part code 0), and the frame of all."""
    root = tmp_path / "coded"
    rows, n = [], 0
    for k, count in enumerate((5, 3, 4, 2)):
        for _ in range(count):
            write_coded(root / CLASSES[k] / f"img{n:02d}.png", k, 0, n)
            rows.append((f"{CLASSES[k]}/img{n:02d}.png", CLASSES[k], n))
            n += 1
    return root, pd.DataFrame(rows, columns=["path", "label", "n"])


@pytest.mark.parametrize("cache", ["memory", "disk", None])
@pytest.mark.parametrize("shuffle", [False, True])
def test_pipeline_keeps_each_label_with_its_image(coded_folder, tmp_path, shuffle, cache):
    """Catches labels not reordered with the shuffled files, a one-hot shifted by a class, and
    files shuffled (or decoded out of order) while the labels stay put; without shuffling, the
    images come in the frame's own (unsorted) order."""
    root, files = coded_folder
    frame = files.sample(frac=1, random_state=3).reset_index(drop=True)   # not in path order
    pipe = data.pipeline(frame, root, list(CLASSES), SIZE, 4, shuffle=shuffle, seed=5,
                         cache=cache, cache_dir=tmp_path / "cache")
    for _ in range(2):                        # the second epoch is read from the cache
        seen = check_pairs(yielded(pipe))
        numbers = [n for _, _, n in seen]
        assert sorted(numbers) == sorted(frame["n"])          # every image once
        if not shuffle:
            assert numbers == frame["n"].tolist()


@pytest.mark.parametrize("cache", ["memory", None])
@pytest.mark.parametrize("shuffle", [False, True])
def test_oversampled_pipeline_keeps_each_label_with_its_image(coded_folder, shuffle, cache):
    """Catches oversampling that pairs a class's label with another class's images (or its
    labels shifted or left unshuffled), and class counts that are not raised to the largest."""
    root, frame = coded_folder
    pipe = data.pipeline(frame, root, list(CLASSES), SIZE, 4, shuffle=shuffle, seed=2,
                         cache=cache, oversample=True)
    class_of = dict(zip(frame["n"], frame["label"].map(CLASSES.index), strict=True))
    for _ in range(2):
        seen = check_pairs(yielded(pipe))
        assert all(class_of[n] == k for k, _, n in seen)
        assert np.bincount([k for k, _, _ in seen]).tolist() == [5, 5, 5, 5]


# ---------------------------------------------------------------------------- training_data


@pytest.fixture
def coded_split_folder(tmp_path):
    """Form 3: train/ (5, 4, 3, 3 per class), val/ (2 per class), test/ (3 per class) of coded
    images: val and test differ in size and in their part code. Returns the folder and
    {path: pixels}."""
    root = tmp_path / "coded_splits"
    written = {}
    counts = {"train": (5, 4, 3, 3), "val": (2, 2, 2, 2), "test": (3, 3, 3, 3)}
    for part, per_class in counts.items():
        n = 0
        for k, count in enumerate(per_class):
            for _ in range(count):
                rel = f"{part}/{CLASSES[k]}/{n:02d}.png"
                written[rel] = write_coded(root / rel, k, PARTS.index(part), n)
                n += 1
    return root, written


def split_cfg(tmp_path, **overrides):
    cfg = dict(seed=7, val_fraction=0.2, test_fraction=0.2, per_class=None, test_per_class=None,
               image_size=SIZE, batch_size=4, augment="basic", oversample=False,
               class_weight=False, train_per_class=None, cache="memory",
               run_dir=tmp_path / "run")
    cfg.update(overrides)
    return cfg


def numbers_of(frame: pd.DataFrame) -> list[int]:
    return [int(p.rsplit("/", 1)[1].split(".")[0]) for p in frame["path"]]


@pytest.mark.parametrize("cache, oversample", [("memory", False), ("disk", True)])
def test_training_data_takes_each_part_from_its_place(coded_split_folder, tmp_path, cache,
                                                     oversample):
    """Catches train or validation taken from the wrong part of the split (val and test
    swapped, test used for validation, val for training) and labels parted from their images
    on the way (augmented, shuffled, oversampled, cached on disk)."""
    root, _ = coded_split_folder
    cfg = split_cfg(tmp_path, cache=cache, oversample=oversample)
    split = data.prepare(root, cfg["run_dir"], cfg)
    assert len(split.part("val")) == 8 and len(split.part("test")) == 12
    train, val, _ = data.training_data(split, cfg)

    train_numbers = numbers_of(split.part("train"))
    for _ in range(2):
        seen = check_pairs(yielded(train))
        assert {part for _, part, _ in seen} == {PARTS.index("train")}
        if oversample:
            assert np.bincount([k for k, _, _ in seen]).tolist() == [5, 5, 5, 5]
            assert {n for _, _, n in seen} <= set(train_numbers)
        else:
            assert sorted(n for _, _, n in seen) == sorted(train_numbers)

    seen = check_pairs(yielded(val))
    assert [part for _, part, _ in seen] == [PARTS.index("val")] * 8
    assert [n for _, _, n in seen] == numbers_of(split.part("val"))


def test_validation_images_are_not_augmented(coded_split_folder, tmp_path):
    """Catches the training policy (here "basic": flips, rotations, shifts) applied to the
    validation images: they must be byte-identical to the decoded files."""
    root, written = coded_split_folder
    cfg = split_cfg(tmp_path, augment="basic")
    split = data.prepare(root, cfg["run_dir"], cfg)
    train, val, _ = data.training_data(split, cfg)
    images = np.concatenate([x.numpy() for x, _ in val])
    paths = split.part("val")["path"].tolist()
    assert len(images) == len(paths) == 8
    for image, path in zip(images, paths, strict=True):
        assert np.array_equal(image, data.read_image(root / path, SIZE).astype(np.float32))
        assert np.array_equal(image, written[path].astype(np.float32)), path
    # the training images of the same pipeline settings are changed by "basic"
    first, _ = next(iter(train))
    assert not all(np.array_equal(x[..., 2], np.broadcast_to(GRADIENT, (SIZE, SIZE)))
                   for x in first.numpy())
    assert train.augment == "basic" and val.augment == "none"


def test_training_data_with_a_subsample_stays_in_train(coded_split_folder, tmp_path):
    """Catches train_per_class drawing from the whole split instead of the train part."""
    root, _ = coded_split_folder
    cfg = split_cfg(tmp_path, augment="flip", train_per_class=2, cache=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)   # no leakage warning: parts differ
        split = data.prepare(root, cfg["run_dir"], cfg)
    train, _, _ = data.training_data(split, cfg)
    seen = check_pairs(yielded(train))
    assert len(seen) == 8 and {part for _, part, _ in seen} == {PARTS.index("train")}
    assert np.bincount([k for k, _, _ in seen]).tolist() == [2, 2, 2, 2]
    assert sorted(n for _, _, n in seen) == sorted(numbers_of(split.part("train", 2, 7)))
