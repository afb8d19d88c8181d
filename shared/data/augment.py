"""Named augmentation policies, built from Keras' own preprocessing layers (keras-cv's
GridMask, and one affine layer of our own for "basic": see shared.data.random_affine), applied to
batches inside a tf.data pipeline.

A policy is a name from :data:`POLICIES` or several joined with "+" (``"basic+cutmix"``). The
parts are applied in the order of :data:`POLICIES` whatever the order named (per-image
transforms first, then label mixing, then erasing, which timm also applies last), so
``"cutmix+basic" == "basic+cutmix"``. Images are
float32 in [0, 255]; labels are one-hot, and cutmix/mixup mix them (rows still sum to 1).

The values (:data:`VALUES`) follow the students' reports and common practice:

==============  =========================================================================
policy          what it does (Keras layer: argument)
==============  =========================================================================
none            nothing
flip            horizontal flip (RandomFlip "horizontal")
dihedral        horizontal flip and a turn by 0, 1, 2 or 3 quarters: the 8 symmetries of a
                square, exact (no interpolation); for photos without an up, such as
                leaves or tissue seen from above
basic           horizontal flip; rotation ±10°; shift ±25% of height and width; zoom
                ±10%; shear up to 20% of the width, either way; empty areas repeat the
                nearest edge pixel (fill "nearest"). Composed into one affine map per
                image and resampled once, as the ImageDataGenerator the students used did
                (shared.data.random_affine.RandomAffine: Keras' separate layers would blur
                the image once per layer)
color           hue ±0.1 of the colour circle (RandomHue 0.2, which samples ±factor/2);
                brightness ±0.2·255 (RandomBrightness 0.2); saturation ×0.8–1.2
                (RandomSaturation (0.8/1.8, 1.2/2.2), Keras' f/(1-f) scale); contrast
                ×0.8–1.2 (RandomContrast 0.2)
randaugment     2 random operations of strength 0.5 per image (RandAugment)
gridmask        a rotated grid of square masks (keras_cv GridMask, ratio (0, 0.5),
                rotation ±0.15 turn, filled with 0)
cutmix          a patch of another image of the batch, labels mixed by area (CutMix 1.0)
mixup           a blend with another image of the batch, weight ~ Beta(0.2, 0.2), labels
                mixed alike (MixUp alpha 0.2)
erase           random erasing: with probability 0.5, a rectangle of 2-25% of the image
                filled with noise (RandomErasing factor (0.5, 0.5), scale (0.02, 0.25))
==============  =========================================================================
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

POLICIES = ("none", "flip", "dihedral", "basic", "color", "randaugment", "gridmask", "cutmix",
            "mixup", "erase")
MIXING = ("cutmix", "mixup")

VALUES: dict[str, dict] = {
    "none": {},
    "flip": {"horizontal_flip": True},
    "dihedral": {"horizontal_flip": True, "quarter_turns": True},
    "basic": {"horizontal_flip": True, "rotation_degrees": 10, "shift_fraction": 0.25,
              "zoom_fraction": 0.1, "shear_fraction": 0.2, "fill_mode": "nearest"},
    "color": {"hue_delta": 0.1, "brightness_delta": 0.2, "saturation_range": (0.8, 1.2),
              "contrast_range": (0.8, 1.2)},
    "randaugment": {"num_ops": 2, "factor": 0.5},
    "gridmask": {"ratio_factor": (0.0, 0.5), "rotation_factor": 0.15, "fill_value": 0.0},
    "cutmix": {"factor": 1.0},
    "mixup": {"alpha": 0.2},
    "erase": {"probability": 0.5, "scale": (0.02, 0.25)},
}


def parse(policy: str) -> list[str]:
    """The parts of a policy in application order ("none" dropped); unknown names raise."""
    if not isinstance(policy, str):
        raise ValueError(f"augmentation policy must be a string such as 'basic+cutmix', got "
                         f"{policy!r}")
    names = [p.strip().lower() for p in policy.split("+")]
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise ValueError(f"unknown augmentation policy {', '.join(map(repr, unknown))} in "
                         f"{policy!r}: choose from {', '.join(POLICIES)} (combine with '+')")
    return [n for n in POLICIES if n in names and n != "none"]


def describe(policy: str) -> dict[str, dict]:
    """The values of each part of a policy, e.g. for a report: {"basic": {...}, ...}."""
    return {name: dict(VALUES[name]) for name in parse(policy)} or {"none": {}}


def _layers(name: str, seed: int) -> list:
    import keras

    v = VALUES[name]
    rng = (0, 255)
    if name == "flip":
        return [keras.layers.RandomFlip("horizontal", seed=seed)]
    if name in ("dihedral", "basic"):
        from shared.data.random_affine import RandomAffine

        return [RandomAffine(**v, seed=seed)]
    if name == "color":
        (s_lo, s_hi), (c_lo, c_hi) = v["saturation_range"], v["contrast_range"]
        return [
            keras.layers.RandomHue(2 * v["hue_delta"], value_range=rng, seed=seed),
            keras.layers.RandomBrightness(v["brightness_delta"], value_range=rng, seed=seed + 1),
            keras.layers.RandomSaturation((s_lo / (1 + s_lo), s_hi / (1 + s_hi)),
                                          value_range=rng, seed=seed + 2),
            keras.layers.RandomContrast((1 - c_lo, c_hi - 1), value_range=rng, seed=seed + 3),
        ]
    if name == "randaugment":
        return [keras.layers.RandAugment(value_range=rng, num_ops=v["num_ops"],
                                         factor=v["factor"], seed=seed)]
    if name == "gridmask":
        import keras_cv

        return [keras_cv.layers.GridMask(ratio_factor=v["ratio_factor"],
                                         rotation_factor=v["rotation_factor"],
                                         fill_mode="constant", fill_value=v["fill_value"],
                                         seed=seed)]
    if name == "cutmix":
        return [keras.layers.CutMix(factor=v["factor"], seed=seed)]
    if name == "mixup":
        return [keras.layers.MixUp(alpha=v["alpha"], seed=seed)]
    if name == "erase":
        return [keras.layers.RandomErasing(factor=(v["probability"], v["probability"]),
                                           scale=v["scale"], value_range=rng, seed=seed)]
    raise AssertionError(name)


def build(policy: str, num_classes: int, seed: int = 0) -> Callable:
    """A function ``(images, labels) -> (images, labels)`` on batches that applies ``policy``;
    usable in ``tf.data.Dataset.map`` (and eagerly). Labels are one-hot with ``num_classes``
    columns.

    Map it sequentially (``num_parallel_calls=None``, as ``shared.data.pipeline`` does): Keras'
    random layers keep their seed state in a variable, and parallel calls race on it, which
    repeats random draws across batches and makes runs irreproducible. The work within a batch
    is still parallel."""
    names = parse(policy)
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    steps = [(name in MIXING, layer)
             for i, name in enumerate(names) for layer in _layers(name, seed + 100 * i)]

    def apply(images, labels):
        for mixes, layer in steps:
            if mixes:
                out = layer({"images": images, "labels": labels}, training=True)
                images, labels = out["images"], out["labels"]
            else:
                images = layer(images, training=True)
        return images, labels

    apply.policy = "+".join(names) or "none"
    return apply


def preview(policy: str, images, num_classes: int | None = None, seed: int = 0,
            labels=None) -> np.ndarray:
    """Augmented copies of a small batch of images (N, S, S, 3) in [0, 255], as float32, e.g.
    to show each policy on the same images (mixing policies mix the batch's own images; the
    labels, one-hot, default to image i in class i mod ``num_classes``)."""
    import tensorflow as tf

    images = tf.convert_to_tensor(np.asarray(images, dtype=np.float32))
    count = int(images.shape[0])
    if labels is None:
        labels = tf.one_hot(np.arange(count) % (num_classes or count), num_classes or count)
    labels = tf.convert_to_tensor(labels, tf.float32)
    fn = build(policy, int(labels.shape[-1]), seed)
    out, _ = fn(images, labels)
    return np.clip(np.asarray(out, dtype=np.float32), 0, 255)
