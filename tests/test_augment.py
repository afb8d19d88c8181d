"""shared.data.augment: every policy runs on batches inside tf.data and keeps shapes and labels."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from shared import data
from shared.data import augment

BATCH, SIZE, CLASSES = 6, 16, 3


def batch():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (BATCH, SIZE, SIZE, 3)).astype(np.float32)
    labels = tf.one_hot(np.arange(BATCH) % CLASSES, CLASSES)
    return images, labels


def through_tf_data(policy: str, seed: int = 1):
    images, labels = batch()
    ds = tf.data.Dataset.from_tensors((images, labels)).repeat(3)
    ds = ds.map(augment.build(policy, CLASSES, seed))     # sequential, see augment.build
    return images, labels.numpy(), [(x.numpy(), y.numpy()) for x, y in ds]


@pytest.mark.parametrize("policy", [*augment.POLICIES, "basic+color+cutmix", "flip+mixup"])
def test_each_policy_runs_in_tf_data(policy):
    images, labels, out = through_tf_data(policy)
    for x, y in out:
        assert x.shape == images.shape and x.dtype == np.float32
        assert y.shape == labels.shape and np.allclose(y.sum(axis=1), 1, atol=1e-5)
        assert x.min() >= -1e-3 and x.max() <= 255 + 1e-3
        if policy == "none":
            assert np.array_equal(x, images) and np.array_equal(y, labels)
        else:
            assert not np.allclose(x, images)          # it did something
    if policy != "none":
        assert not np.allclose(out[0][0], out[1][0])    # and something new each batch


@pytest.mark.parametrize("policy", ["cutmix", "mixup"])
def test_mixing_policies_mix_the_labels(policy):
    _, labels, out = through_tf_data(policy, seed=3)
    mixed = np.concatenate([y for _, y in out])
    assert not np.array_equal(mixed, np.concatenate([labels, labels]))
    assert ((mixed > 0) & (mixed < 1)).any()


def test_flip_only_mirrors():
    images, _, out = through_tf_data("flip")
    mirrored = images[:, :, ::-1]
    for x, _ in out:
        for got, same, mirror in zip(x, images, mirrored, strict=True):
            assert np.allclose(got, same) or np.allclose(got, mirror)


def test_same_seed_same_augmentation():
    first = [x for x, _ in through_tf_data("basic+cutmix", seed=5)[2]]
    second = [x for x, _ in through_tf_data("basic+cutmix", seed=5)[2]]
    other = [x for x, _ in through_tf_data("basic+cutmix", seed=6)[2]]
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert not np.allclose(first[0], other[0])


def test_parse_describe_and_unknown_names():
    assert augment.parse("cutmix + Basic") == ["basic", "cutmix"]   # canonical order
    assert augment.parse("none") == []
    described = augment.describe("basic+color")
    assert described["basic"]["rotation_degrees"] == 10
    assert described["basic"]["shift_fraction"] == 0.25
    assert described["color"]["saturation_range"] == (0.8, 1.2)
    assert augment.describe("none") == {"none": {}}
    with pytest.raises(ValueError, match=r"unknown augmentation policy 'rotate'.*none, flip, "
                                         r"dihedral, basic, color, randaugment, gridmask, "
                                         r"cutmix, mixup"):
        augment.build("basic+rotate", CLASSES, 0)


def test_preview_returns_augmented_copies():
    images, _ = batch()
    shown = augment.preview("basic", images, seed=0)
    assert shown.shape == images.shape and shown.dtype == np.float32
    assert not np.allclose(shown, images)
    assert np.array_equal(augment.preview("none", images), images)
    mixed = augment.preview("mixup", images, CLASSES, seed=1)     # as the 00_data notebook
    assert mixed.shape == images.shape


def test_pipeline_applies_the_policy_to_training_batches(image_folder):
    ds = data.load(image_folder)
    plain = data.pipeline(ds.files, ds.root, ds.class_names, 8, 18)
    mixed = data.pipeline(ds.files, ds.root, ds.class_names, 8, 18, augment="mixup", seed=2)
    (x0, _), (x1, y1) = next(iter(plain)), next(iter(mixed))
    assert x1.shape == x0.shape == (18, 8, 8, 3)
    assert not np.allclose(x0, x1) and np.allclose(y1.numpy().sum(1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="unknown augmentation policy 'fancy'"):
        data.pipeline(ds.files, ds.root, ds.class_names, 8, 18, augment="fancy")
