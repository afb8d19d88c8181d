"""shared.data.augment does what its values (augment.VALUES) say: rotation and shift within their
declared ranges, the "basic" transforms resampled once (fine texture kept), and CutMix and
MixUp labels mixed exactly as the images are, per sample."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from shared.data import augment
from shared.data.random_affine import RandomAffine

N = 64                                 # samples: each gets its own random draw


def basic_part(part: str):
    """The "basic" policy's affine layer with only ``part`` of its values (the others 0)."""
    (layer,) = augment._layers("basic", seed=3)
    assert isinstance(layer, RandomAffine)
    values = augment.VALUES["basic"]
    assert {k: getattr(layer, k) for k in values} == values    # the policy's values, all
    return RandomAffine(**{part: values[part]}, fill_mode=values["fill_mode"], seed=3)


def centroids(images) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the brightness centroid of each image's red channel."""
    weight = np.asarray(images)[..., 0].astype(np.float64)
    ys, xs = np.mgrid[:weight.shape[1], :weight.shape[2]]
    total = weight.sum(axis=(1, 2))
    return (weight * xs).sum(axis=(1, 2)) / total, (weight * ys).sum(axis=(1, 2)) / total


def test_rotation_stays_within_the_declared_degrees():
    """Catches a rotation range other than ±rotation_degrees (e.g. the fraction of a turn
    computed as degrees/180, or a layer that does not rotate)."""
    degrees = augment.VALUES["basic"]["rotation_degrees"]
    size, centre, radius = 65, 32, 20
    images = np.zeros((N, size, size, 3), np.float32)
    images[:, centre - 1:centre + 2, centre + radius - 1:centre + radius + 2] = 255.0
    x, y = centroids(basic_part("rotation_degrees")(images, training=True))
    assert np.allclose(np.hypot(x - centre, y - centre), radius, atol=0.2)   # a rotation
    angles = np.degrees(np.arctan2(centre - y, x - centre))
    assert np.abs(angles).max() <= degrees + 0.3
    assert np.abs(angles).max() >= 0.8 * degrees            # the range is used, both ways
    assert (angles > 1).any() and (angles < -1).any()


def test_shift_stays_within_the_declared_fraction():
    """Catches a shift range other than ±shift_fraction of the height and of the width."""
    fraction = augment.VALUES["basic"]["shift_fraction"]
    size = 64
    images = np.zeros((N, size, size, 3), np.float32)
    images[:, 30:34, 30:34] = 255.0                        # centroid (31.5, 31.5)
    x, y = centroids(basic_part("shift_fraction")(images, training=True))
    limit = fraction * size
    for shift in (x - 31.5, y - 31.5):
        assert np.abs(shift).max() <= limit + 0.05
        assert np.abs(shift).max() >= 0.75 * limit
        assert (shift > 1).any() and (shift < -1).any()


def high_frequency(images) -> float:
    """Mean absolute difference between neighbouring pixels in the centre of the images."""
    grey = np.asarray(images)[:, 16:48, 16:48].mean(axis=-1)
    return float(np.abs(np.diff(grey, axis=1)).mean() + np.abs(np.diff(grey, axis=2)).mean())


def test_basic_resamples_each_image_once():
    """Catches the "basic" transforms applied as a chain of Keras layers (flip, rotation,
    shift, zoom, shear), which interpolates four times and keeps about a quarter of the
    pixel-to-pixel detail of noise images (0.26); one resampling keeps about half (0.56)."""
    images = np.random.default_rng(0).uniform(0, 255, (32, 64, 64, 3)).astype(np.float32)
    kept = high_frequency(augment.preview("basic", images, num_classes=4)) / high_frequency(images)
    assert kept > 0.45


def test_affine_without_transforms_is_the_identity_and_inference_passes_through():
    images = np.random.default_rng(1).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)
    assert np.array_equal(np.asarray(RandomAffine()(images, training=True)), images)
    assert np.array_equal(np.asarray(basic_part("rotation_degrees")(images, training=False)),
                          images)
    with pytest.raises(ValueError, match="zoom_fraction"):
        RandomAffine(zoom_fraction=1.5)


def test_dihedral_gives_each_of_the_8_symmetries_of_the_square_exactly():
    """Catches a turn or flip that interpolates (values change), or a symmetry never drawn."""
    image = np.arange(5 * 5 * 3, dtype=np.float32).reshape(5, 5, 3)
    out = augment.preview("dihedral", np.repeat(image[None], 64, axis=0), num_classes=2)
    symmetries = [turned[:, ::-1] if flipped else turned
                  for k in range(4) for turned in [np.rot90(image, k)] for flipped in (0, 1)]
    drawn = set()
    for sample in out:
        matches = [i for i, s in enumerate(symmetries) if np.array_equal(sample, s)]
        assert len(matches) == 1
        drawn.add(matches[0])
    assert drawn == set(range(8))


def mixed(policy: str, images: np.ndarray, batches: int = 4, seed: int = 5):
    """``batches`` draws of ``policy`` on the same batch, through tf.data as in the pipeline;
    image i is labelled class i. Returns [(images, labels), ...]."""
    labels = np.eye(len(images), dtype=np.float32)
    ds = tf.data.Dataset.from_tensors((images, labels)).repeat(batches)
    ds = ds.map(augment.build(policy, len(images), seed))
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_cutmix_label_weights_are_the_pasted_areas():
    """Catches CutMix labels that are not mixed, or not by the area each image covers in that
    sample (e.g. labels mixed with another draw than the images)."""
    count, size = 8, 64
    colours = np.random.default_rng(0).choice(256, (count, 3), replace=False).astype(np.float32)
    images = np.broadcast_to(colours[:, None, None, :], (count, size, size, 3)).copy()
    # a cut box of real-valued sides holds within one pixel row and column of its area
    tolerance = (2 * size + 1) / size**2
    pasted = []
    for out, labels in mixed("cutmix", images):
        for image, label in zip(out, labels, strict=True):
            pixels = image.reshape(-1, 3)
            share = np.array([(pixels == c).all(axis=1).mean() for c in colours])
            assert share.sum() == pytest.approx(1.0)       # every pixel is one image's
            assert np.abs(label - share).max() <= tolerance, (label, share)
            pasted.append(1 - share.max())
    assert max(pasted) > 0.3                               # some samples are well mixed


def test_mixup_labels_are_mixed_like_the_images():
    """Catches MixUp labels mixed with another weight than the images (per sample:
    image = lam·a + (1-lam)·b and label = lam·ya + (1-lam)·yb) and a blend weight not drawn
    from Beta(alpha, alpha) with the declared alpha (0.2: most blends are lopsided)."""
    count, size = 16, 6
    images = np.random.default_rng(1).uniform(0, 255, (count, size, size, 3)).astype(np.float32)
    weights = []
    for out, labels in mixed("mixup", images):
        for image, label in zip(out, labels, strict=True):
            assert label.sum() == pytest.approx(1.0, abs=1e-5)
            expected = np.tensordot(label, images, axes=1)   # the same mixture of the images
            assert np.allclose(image, expected, atol=1e-2), label
            if np.count_nonzero(label > 1e-6) == 2:
                weights.append(label.max())
    weights = np.array(weights)
    assert len(weights) >= 40
    assert (weights < 0.9).any()                           # some blends are even enough to see
    assert (weights > 0.9).mean() > 0.45                   # Beta(0.2, 0.2): ~0.67; alpha 1: 0.2
