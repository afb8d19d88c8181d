"""shared.data: the four source forms, bad files, errors, splits, run split files, pipeline."""

from __future__ import annotations

import gzip
import json
import os
import struct
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import BAD_FILES, GOOD_ODD_FILES, make_class_folder, write_image
from PIL import Image

from shared import data

SPLIT_CFG = dict(seed=7, val_fraction=0.2, test_fraction=0.2, per_class=None, test_per_class=None)


def load_quietly(spec, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return data.load(spec, **kwargs)


def epoch(ds):
    """All (images, labels) of one pass, concatenated."""
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    return np.concatenate(xs), np.concatenate(ys)


# ---------------------------------------------------------------------------- the four forms

def test_class_folders(image_folder):
    ds = data.load(image_folder)
    assert ds.class_names == ["bird", "cat", "dog"]
    assert len(ds.files) == 18 and ds.skipped.empty and ds.leakage.empty
    assert set(ds.files["given_split"]) == {""}
    assert ds.files["path"].iloc[0] == "bird/000.jpg"      # relative, POSIX, sorted


def test_split_folders_with_leakage(split_folder):
    (split_folder / "extra").mkdir()
    ds = data.load(split_folder)
    assert ds.skipped["path"].tolist() == ["extra/"]
    assert ds.class_names == ["a", "b"]
    counts = ds.files["given_split"].value_counts().to_dict()
    assert counts == {"train": 16, "val": 4, "test": 7}
    assert ds.leakage.to_dict("records") == [{"train_path": "train/a/001.png",
                                              "test_path": "test/a/leak.png"}]
    frame = data.split(ds, seed=0, val_fraction=0.25, test_fraction=0.25, test_per_class=2)
    assert (frame.loc[frame["split"] == "val", "path"].str.startswith("val/")).all()
    assert frame["split"].value_counts().to_dict() == {"train": 16, "val": 4, "test": 4}


def test_labels_csv_found_in_folder(labels_folder):
    ds = data.load(labels_folder)
    assert ds.class_names == ["0", "1", "2"] and len(ds.files) == 12
    assert ds.form == "labels file" and ds.labels_file.name == "labels.csv"


def test_labels_json_given_as_spec_with_numeric_order(tmp_path):
    root = tmp_path / "comp"
    labels = {}
    for i in range(12):
        write_image(root / "imgs" / f"{i}.jpg")
        labels[f"imgs/{i}.jpg"] = [2, 10, 1][i % 3]
    write_image(root / "imgs" / "unlisted.jpg")
    (root / "train.json").write_text(json.dumps(labels))
    ds = data.load(root / "train.json")
    assert ds.class_names == ["1", "2", "10"]          # numeric, not "10" < "2"
    assert ds.skipped.to_dict("records") == [{"path": "imgs/unlisted.jpg",
                                              "reason": "not listed in train.json"}]


@pytest.mark.parametrize("text, message", [
    ("filename,label\n10000.jpg,0\n99999.jpg,1\n", r"names 1 file.*'99999.jpg'"),
    ("filename,label\n10000.jpg,0\n10001.jpg,cat\n", r"unknown labels 'cat'"),
    ("filename,label\n10000.jpg,0\n10000.jpg,1\n10001.jpg,1\n", r"duplicate rows for '10000.jpg'"),
    ("file,class\n10000.jpg,0\n", r"header 'file,class'; expected 'filename,label'"),
    ("filename,label\n10000.jpg,\n", r"unknown .* labels: '10000.jpg': ''"),
])
def test_labels_file_errors(labels_folder, text, message):
    (labels_folder / "labels.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        data.load(labels_folder)


def test_labels_json_errors(labels_folder):
    (labels_folder / "labels.csv").unlink()
    (labels_folder / "labels.json").write_text('{"10000.jpg": 1, "10000.jpg": 2}')
    with pytest.raises(ValueError, match="duplicate entry for '10000.jpg'"):
        data.load(labels_folder)
    (labels_folder / "labels.json").write_text('{"10000.jpg": [1], "10001.jpg": 2}')
    with pytest.raises(ValueError, match=r"unknown .*'10000.jpg': \[1\]"):
        data.load(labels_folder)


# ---------------------------------------------------------------------------- bad input

def test_salted_folder_skips_and_lists_bad_files(salted_folder):
    with pytest.warns(UserWarning, match="class 'empty' has no usable images"):
        ds = data.load(salted_folder)
    assert ds.class_names == ["cat", "crème brûlée", "dog"]
    reasons = dict(zip(ds.skipped["path"], ds.skipped["reason"], strict=True))
    for path, words in BAD_FILES.items():
        assert words in reasons[path], (path, reasons.get(path))
    assert "empty/" in reasons and reasons["loose.jpg"] == "not inside a class folder"
    good = set(ds.files["path"])
    assert set(GOOD_ODD_FILES) <= good
    assert not good & set(reasons)
    assert ds.files.set_index("path").loc["cat/huge.png", "width"] == 8000


def test_salted_folder_through_the_pipeline(salted_folder):
    ds = load_quietly(salted_folder)
    images, labels = epoch(data.pipeline(ds.files, ds.root, ds.class_names, 12, 64))
    assert images.shape == (len(ds.files), 12, 12, 3) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 255
    assert labels.shape == (len(ds.files), 3) and (labels.sum(1) == 1).all()
    huge = list(ds.files["path"]).index("cat/huge.png")
    assert np.allclose(images[huge], 90, atol=1)       # solid grey, reduced through Pillow


def test_odd_formats_decode_to_the_right_colours(salted_folder):
    """At their own size, the pipeline's pixels match Pillow's RGB conversion (JPEGs within a
    few levels: decoders differ in chroma upsampling)."""
    ds = load_quietly(salted_folder)
    small = ds.files[(ds.files["width"] == 16) & (ds.files["height"] == 16)]
    images, _ = epoch(data.pipeline(small, ds.root, ds.class_names, 16, 64))
    for image, path in zip(images, small["path"], strict=True):
        with Image.open(ds.root / path) as im:
            expected = data.to_rgb(im).astype(np.float32)
        tolerance = 6 if path.lower().endswith(".jpg") else 1
        assert np.abs(image - expected).max() <= tolerance, path


def test_missing_dataset_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="'.*nowhere' not found.*fashion-mnist"):
        data.load(tmp_path / "nowhere")


def test_fewer_than_two_usable_classes(tmp_path):
    make_class_folder(tmp_path / "one", ("only",), 3)
    (tmp_path / "one" / "broken").mkdir()
    (tmp_path / "one" / "broken" / "x.jpg").write_text("not an image")
    with pytest.warns(UserWarning, match="'broken' has no usable images"), \
            pytest.raises(ValueError, match="at least 2 classes.*found 1: 'only'"):
        data.load(tmp_path / "one")


def test_class_too_small_to_split(tmp_path):
    make_class_folder(tmp_path / "few", ("many", "single"), 6)
    for path in list((tmp_path / "few" / "single").iterdir())[1:]:
        path.unlink()
    ds = data.load(tmp_path / "few")
    with pytest.raises(ValueError, match=r"class\(es\) 'single' \(1 image\).*at least 3"):
        data.split(ds, 0, 0.2, 0.2)
    assert len(data.split(ds, 0, 0.0, 0.0)) == 7       # nothing to split off: fine


def test_test_folder_with_a_class_train_lacks(split_folder):
    write_image(split_folder / "test" / "zebra" / "z.png")
    with pytest.raises(ValueError, match="test/ has class folder.*'zebra'"):
        data.load(split_folder)


# ---------------------------------------------------------------------------- split, prepare

def test_split_is_seeded_stratified_and_subsampled(tmp_path):
    ds = data.load(make_class_folder(tmp_path / "d", ("a", "b", "c"), 20))
    first = data.split(ds, 3, 0.2, 0.25)
    assert first.equals(data.split(ds, 3, 0.2, 0.25))
    assert not first.equals(data.split(ds, 4, 0.2, 0.25))
    table = pd.crosstab(first["label"], first["split"])
    assert (table["test"] == 5).all() and (table["val"] == 4).all() and (table["train"] == 11).all()
    capped = data.split(ds, 3, 0.2, 0.2, per_class=10)
    assert capped["label"].value_counts().to_dict() == {"a": 10, "b": 10, "c": 10}
    assert set(capped["path"]) <= set(ds.files["path"])
    with pytest.raises(ValueError, match="val_fraction must be in"):
        data.split(ds, 3, 1.5, 0.2)


def test_prepare_writes_then_reuses_the_split(image_folder, tmp_path, monkeypatch):
    run = tmp_path / "run"
    made = data.prepare(image_folder, run, SPLIT_CFG)
    assert {"split.csv", "skipped.csv", "dataset.json"} <= {p.name for p in run.iterdir()}
    info = json.loads((run / "dataset.json").read_text())
    assert info["seed"] == 7 and info["class_names"] == ["bird", "cat", "dog"]
    assert sum(info["counts"]["test"].values()) == len(made.part("test"))
    monkeypatch.setattr(data.splits, "load",      # where prepare looks it up
                        lambda *a, **k: pytest.fail("split.csv was not reused"))
    again = data.prepare(image_folder, run, SPLIT_CFG)
    assert again.frame.equals(made.frame) and again.class_names == made.class_names
    with pytest.raises(ValueError, match="seed: run has 7, asked for 8"):
        data.prepare(image_folder, run, {**SPLIT_CFG, "seed": 8})
    with pytest.raises(ValueError, match="spec: run has"):
        data.prepare(tmp_path, run, SPLIT_CFG)
    part = made.part("train", per_class=2, seed=1)
    assert part["label"].value_counts().to_dict() == {"bird": 2, "cat": 2, "dog": 2}
    assert part.equals(made.part("train", per_class=2, seed=1))
    with pytest.raises(ValueError, match="unknown split 'testing'"):
        made.part("testing")


# ---------------------------------------------------------------------------- imbalance

def imbalanced(tmp_path):
    root = tmp_path / "imb"
    make_class_folder(root, ("big",), 8)
    make_class_folder(root, ("small",), 2)
    return data.load(root)


def test_class_weights_and_oversampling(tmp_path):
    ds = imbalanced(tmp_path)
    weights = data.class_weights(ds.files, ds.class_names)
    assert weights == pytest.approx({0: 10 / (2 * 8), 1: 10 / (2 * 2)})
    counts = data.oversampled_counts(ds.files, ds.class_names)
    assert counts["before"].tolist() == [8, 2] and counts["after"].tolist() == [8, 8]
    pipe = data.pipeline(ds.files, ds.root, ds.class_names, 8, 4, shuffle=True, oversample=True)
    for _ in range(2):
        _, labels = epoch(pipe)
        assert labels.sum(0).tolist() == [8, 8]


# ---------------------------------------------------------------------------- pipeline

def test_pipeline_shuffles_by_seed_each_epoch(image_folder):
    ds = data.load(image_folder)

    def orders(seed, cache="memory"):
        pipe = data.pipeline(ds.files, ds.root, ds.class_names, 8, 5, shuffle=True, seed=seed,
                             cache=cache)
        return [epoch(pipe)[0].sum(axis=(1, 2, 3)).tolist() for _ in range(2)]

    for cache in ("memory", None):
        first, second = orders(1, cache)
        assert first != second                         # a new order each epoch
        assert sorted(first) == sorted(second)         # of the same images
        assert orders(1, cache) == [first, second]     # the same for the same seed
        assert orders(2, cache)[0] != first


def test_pipeline_decodes_on_every_core_without_the_autotuner(image_folder):
    # benchmarks/pipeline.py: with the autotuner on, half the first epochs ran on one core
    ds = data.load(image_folder)
    pipe = data.pipeline(ds.files, ds.root, ds.class_names, 8, 5, augment="basic")
    assert pipe.options().autotune.enabled is False and pipe.augment == "basic"
    tuned = data.pipeline(ds.files, ds.root, ds.class_names, 8, 5, autotune=True)
    assert tuned.options().autotune.enabled is True     # to compare (benchmarks --autotune)


def test_disk_cache_and_cache_errors(image_folder, tmp_path):
    ds = data.load(image_folder)
    pipe = data.pipeline(ds.files, ds.root, ds.class_names, 8, 6, cache="disk",
                         cache_dir=tmp_path / "cache")
    one, two = epoch(pipe)[0], epoch(pipe)[0]
    assert np.array_equal(one, two)
    assert any(p.suffix == ".index" for p in (tmp_path / "cache").iterdir())
    with pytest.raises(ValueError, match="needs a cache_dir"):
        data.pipeline(ds.files, ds.root, ds.class_names, 8, 6, cache="disk")
    with pytest.raises(ValueError, match="unknown cache 'ram'.*memory, disk, auto, none"):
        data.pipeline(ds.files, ds.root, ds.class_names, 8, 6, cache="ram")
    with pytest.raises(ValueError, match="labels not among the class names: 'cow'"):
        data.pipeline(pd.DataFrame({"path": ["x.jpg"], "label": ["cow"]}), ds.root,
                      ds.class_names, 8, 6)


def test_plan_of_each_kind():
    jpeg = _jpeg_bytes(400, 300)
    assert data.plan_of(jpeg, 64) == ("jpeg/4", "bilinear")   # 100x75 decoded, then resized
    assert data.plan_of(jpeg, 32) == ("jpeg/8", "bilinear")
    assert data.plan_of(jpeg, 500) == ("jpeg/1", "bilinear")
    png = b"\x89PNG\r\n\x1a\n" + b"\0\0\0\rIHDR" + struct.pack(">II", 9000, 9000)
    assert data.plan_of(png, 32) == ("pillow", "auto")          # huge: Pillow reduces it
    small_png = png[:16] + struct.pack(">II", 640, 480)
    assert data.plan_of(small_png, 32) == ("tf", "area")
    assert data.plan_of(b"II*\0" + b"\0" * 40, 32) == ("pillow", "auto")   # TIFF


def _jpeg_bytes(width, height) -> bytes:
    from io import BytesIO
    buf = BytesIO()
    Image.new("RGB", (width, height), (9, 9, 9)).save(buf, format="JPEG")
    return buf.getvalue()


def test_check_results_are_cached(image_folder, monkeypatch):
    data.load(image_folder)
    real, seen = data.check_image, []
    monkeypatch.setattr(data.check, "check_image", lambda path: seen.append(path) or real(path))
    data.load(image_folder)
    assert seen == []                              # nothing checked again
    os.utime(image_folder / "cat" / "000.jpg", ns=(1, 1))
    data.load(image_folder)
    assert [os.path.basename(p) for p in seen] == ["000.jpg"]   # only the changed file


def test_check_opens_each_file_once_but_pngs(tmp_path, monkeypatch):
    """Opening a small JPEG again would cost as much as decoding it (benchmarks/data_size.py):
    only a PNG, which verify() leaves unusable, is opened twice."""
    import shared.data.images as images

    real, opened = images.Image.open, []
    monkeypatch.setattr(images.Image, "open",
                        lambda fp, *args, **kw: opened.append(fp) or real(fp, *args, **kw))
    for name, opens in (("a.jpg", 1), ("b.png", 2), ("c.bmp", 1), ("d.gif", 1)):
        opened.clear()
        result = images.check_image(write_image(tmp_path / name, size=(40, 30)))
        assert result["ok"] and (result["width"], result["height"]) == (40, 30), name
        assert len(opened) == opens, name


def test_image_sizes(image_folder):
    ds = data.load(image_folder)
    sizes = data.image_sizes(ds.files, ds.root)
    assert (sizes["width"] == 16).all() and (sizes["height"] == 16).all()


def test_notebook_helpers(image_folder, tmp_path):
    split = data.prepare(image_folder, tmp_path / "run", SPLIT_CFG)
    assert "3: 'bird', 'cat', 'dog'" in data.summary(split)
    assert data.summary(split, sentences=True).startswith(
        f"The dataset {image_folder} gives 18 images in 3 classes")
    table = data.class_counts_table(split)
    assert list(table.columns) == ["train", "val", "test"] and table.to_numpy().sum() == 18
    imbalance = data.imbalance_table(split)
    assert list(imbalance.columns) == ["images", "share", "class_weight", "oversampled"]
    assert imbalance["images"].sum() == (split.frame["split"] == "train").sum()
    cfg = dict(SPLIT_CFG, image_size=8, batch_size=4, augment="flip", oversample=True,
               class_weight=True, train_per_class=None, cache="memory", run_dir=tmp_path / "run")
    with pytest.warns(UserWarning, match="over-correct"):
        train, val, weights = data.training_data(split, cfg)
    assert train.augment == "flip" and set(weights) == {0, 1, 2}
    images, labels = epoch(train)
    assert images.shape[1:] == (8, 8, 3) and len(set(labels.sum(0))) == 1   # oversampled
    assert epoch(val)[0].shape[0] == (split.frame["split"] == "val").sum()
    samples = data.sample_images(split, n=4, image_size=10, part="test", seed=1)
    assert samples.shape == (4, 10, 10, 3) and samples.dtype == np.float32
    sizes = data.image_sizes(split, limit=5, seed=0)
    assert len(sizes) == 5 and (sizes["width"] == 16).all()


# ---------------------------------------------------------------------------- Fashion-MNIST

def write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_fashion_gz(folder, n_train=20, n_test=10):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for part, n in (("train", n_train), ("test", n_test)):
        images_name, labels_name = data.FASHION_FILES[part]
        write_idx(folder / images_name, rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / labels_name, np.arange(n) % 10)


def test_fashion_mnist_folder_from_user_gz_files(tmp_path):
    fake_fashion_gz(tmp_path / "fashion-mnist")
    root = data.fashion_mnist_folder(tmp_path, system_dir=None, download=False)
    assert root == tmp_path / "fashion-mnist"
    pngs = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    assert len(pngs) == 30 and "test/Ankle_boot/00009.png" in pngs
    with Image.open(root / "train" / "T-shirt_top" / "00000.png") as im:
        assert im.size == (28, 28) and im.mode == "L"
    marker = json.loads((root / ".complete").read_text())
    assert marker["counts"] == {"train": 20, "test": 10}
    ds = data.load(root)
    assert len(ds.class_names) == 10
    assert ds.files["given_split"].value_counts().to_dict() == {"train": 20, "test": 10}
    # done once; a folder without the marker (half written) is written again
    (root / "train" / "Bag" / "stray.png").write_bytes(b"")
    assert data.fashion_mnist_folder(tmp_path, system_dir=None, download=False) == root
    assert (root / "train" / "Bag" / "stray.png").exists()
    (root / ".complete").unlink()
    data.fashion_mnist_folder(tmp_path, system_dir=None, download=False)
    assert not (root / "train" / "Bag" / "stray.png").exists()


def test_fashion_mnist_missing_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"apt-get install dataset-fashion-mnist.*"
                                                r"train-images-idx3-ubyte.gz"):
        data.fashion_mnist_folder(tmp_path, system_dir=None, download=False)


def test_read_idx_rejects_a_truncated_file(tmp_path):
    write_idx(tmp_path / "x.gz", np.zeros((3, 4, 4)))
    with gzip.open(tmp_path / "x.gz") as f:
        raw = f.read()
    with gzip.open(tmp_path / "y.gz", "wb") as f:
        f.write(raw[:-5])
    with pytest.raises(ValueError, match="y.gz is truncated"):
        data.read_idx(tmp_path / "y.gz")


def test_command_line_summary(image_folder, capsys):
    assert data.main([str(image_folder)]) == 0
    out = capsys.readouterr().out
    assert "18 usable images" in out and "3 classes" in out
    assert data.main([str(image_folder / "nope")]) == 1
    assert "not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------- real photos

LEAVES = os.environ.get("SHARED_LEAVES_DIR")


@pytest.mark.leaves
@pytest.mark.skipif(not LEAVES, reason="set SHARED_LEAVES_DIR to the leaves dataset "
                                       "(e.g. /work/shared/datasets/leaves) to run this test")
def test_real_leaves_dataset():
    ds = data.load(LEAVES)
    assert len(ds.class_names) == 8
    assert len(ds.files) + len(ds.skipped) == 3542 and len(ds.files) >= 3500
    frame = data.split(ds, 42, 0.1, 0.2, per_class=10)
    images, _ = epoch(data.pipeline(frame, ds.root, ds.class_names, 32, 40))
    assert images.shape == (80, 32, 32, 3)
