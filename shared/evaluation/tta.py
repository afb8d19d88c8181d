"""Test-time augmentation: a model predicts several views of each image and the probabilities
are averaged.

The views (:func:`views`) are, in order: the image itself, its horizontal flip, then shifts of
at most :data:`MAX_SHIFT` of the side in each direction (edges mirrored), drawn with a seeded
generator and flipped every other one, so the same ``n``, image size and seed give the same
views. A model trained with the ``dihedral`` policy (photos with no "up") is shown the views
it was trained on instead: quarter turns first, then their flips (:data:`DIHEDRAL`), and
shifts only past those eight (it never saw a shift in training). They are applied to whole
batches with TensorFlow ops (:func:`apply`), after the pipeline's decoding and resizing and
before the model's own preprocessing, exactly where training augmentation applies.
:func:`options` reads an experiment's ``tta`` settings (what
:func:`shared.evaluation.evaluate.finish` scores with them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

DEFAULT_VIEWS = 4     # the identity, a flip and two shifts
MAX_SHIFT = 0.08      # largest shift, as a fraction of the image side (2 px at 28, 6 at 75)


@dataclasses.dataclass(frozen=True)
class View:
    """One view: an optional horizontal flip, then a shift of the content by ``dy`` rows
    (down) and ``dx`` columns (right)."""

    flip: bool = False
    dy: int = 0
    dx: int = 0
    turns: int = 0      # quarter turns counter-clockwise, after the flip

    @property
    def identity(self) -> bool:
        return not (self.flip or self.dy or self.dx or self.turns)

    def describe(self) -> str:
        parts = (["flip"] if self.flip else []) + \
                ([f"turn {90 * self.turns}°"] if self.turns else []) + \
                ([f"shift {self.dy:+d},{self.dx:+d} px"] if self.dy or self.dx else [])
        return " + ".join(parts) or "identity"


# the eight symmetries of a square, the four turns first
DIHEDRAL = [View(flip=flip, turns=turns) for flip in (False, True) for turns in range(4)]


def views(n: int = DEFAULT_VIEWS, image_size: int = 32, seed: int = 0,
          policy: str | None = None) -> list[View]:
    """``n`` views for images of side ``image_size``: identity, flip, then seeded shifts; for a
    model trained with a ``policy`` that has ``dihedral`` in it, :data:`DIHEDRAL` first."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"tta: the number of views must be a whole number ≥ 1 (1: off), "
                         f"got {n!r}")
    dihedral = "dihedral" in (policy or "").lower().split("+")
    chosen = (DIHEDRAL if dihedral else [View(), View(flip=True)])[:n]
    reach = max(1, round(MAX_SHIFT * image_size))
    shifts = [(dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)
              if (dy, dx) != (0, 0)]
    picks = np.random.default_rng(seed).permutation(len(shifts))
    for k in range(n - len(chosen)):
        dy, dx = shifts[picks[k % len(shifts)]]
        chosen.append(View(flip=k % 2 == 1, dy=int(dy), dx=int(dx)))
    return chosen


def apply(images, view: View):
    """``view`` of a batch of images (B, H, W, C), as a float tensor."""
    import tensorflow as tf

    x = tf.convert_to_tensor(images)
    if view.flip:
        x = tf.reverse(x, axis=[2])
    if view.turns:
        x = tf.image.rot90(x, k=view.turns)
    if view.dy or view.dx:
        pad = max(abs(view.dy), abs(view.dx))
        height, width = tf.shape(x)[1], tf.shape(x)[2]
        padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="SYMMETRIC")
        x = tf.image.crop_to_bounding_box(padded, pad - view.dy, pad - view.dx, height, width)
    return x


def transform(data, view: View):
    """``view`` of every image of ``data``: a tf.data.Dataset of image batches (or of
    (images, labels, ...) batches), or an array of images."""
    import tensorflow as tf

    if view.identity:
        return data
    if isinstance(data, tf.data.Dataset):
        def mapped(images, *rest):
            return (apply(images, view), *rest) if rest else apply(images, view)
        return data.map(mapped)
    return apply(np.asarray(data, dtype=np.float32), view).numpy()


def average(predict: Callable[[object], np.ndarray], data, chosen: Sequence[View],
            identity: np.ndarray | None = None) -> np.ndarray:
    """The mean of ``predict``'s probabilities over the views ``chosen`` of ``data``;
    ``identity``, where given, stands for the prediction of the unchanged images (computed
    once already)."""
    if not chosen:
        raise ValueError("tta: no views to average")
    total = None
    for view in chosen:
        probs = identity if view.identity and identity is not None else \
            predict(transform(data, view))
        probs = np.asarray(probs, dtype=np.float64)
        total = probs if total is None else total + probs
    return (total / len(chosen)).astype(np.float32)


def options(cfg: dict) -> dict | None:
    """:func:`shared.evaluation.evaluate.tta_scores`' options from an experiment's settings; None
    when TTA is off."""
    count = cfg.get("tta") or 0
    if count is True:
        count = DEFAULT_VIEWS
    if count in (0, 1):
        return None
    views(count)    # a bad setting fails here, before metrics.json is written
    return {"views": count, "per_class": cfg.get("tta_per_class"), "seed": cfg.get("seed") or 0,
            "policy": cfg.get("augment")}
