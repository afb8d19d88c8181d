"""One random affine map per image, resampled once: the geometric part of the "basic" policy.

Keras 3 has a layer per transform (RandomFlip, RandomRotation, RandomTranslation, RandomZoom,
RandomShear), and chaining them interpolates the image once per layer: four bilinear
resamplings blur fine texture away, so a model trained on the blurred images meets sharper
ones at validation (on the leaf photos at 96 px the baseline reached 28.5% with the chain and
56.4% with one resampling: `benchmarks/recipe.py`; the table is in
`git show 393d175:README.md`, *The baseline's recipe*). Keras 2's ImageDataGenerator,
which the students used, composed the transforms into one matrix and resampled once;
:class:`RandomAffine` does the same with ``keras.ops.image.affine_transform``.
"""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="shared")
class RandomAffine(keras.layers.Layer):
    """Per image: horizontal flip (probability 0.5, when ``horizontal_flip``), a turn by 0, 1,
    2 or 3 quarters (when ``quarter_turns``: with the flip, the 8 symmetries of a square, which
    map pixels onto pixels), rotation by up to ±``rotation_degrees``, shear ``x += s·y`` with
    s up to ±``shear_fraction``, zoom by a factor in 1 ± ``zoom_fraction`` (both axes alike)
    about the centre, and a shift by up to ±``shift_fraction`` of the width and of the height,
    composed into one affine map; areas from outside the image are filled by ``fill_mode`` (as
    in ``affine_transform``). Inputs are batches (N, H, W, C); outside training the images pass
    unchanged."""

    def __init__(self, horizontal_flip: bool = False, quarter_turns: bool = False,
                 rotation_degrees: float = 0.0,
                 shift_fraction: float = 0.0, zoom_fraction: float = 0.0,
                 shear_fraction: float = 0.0, fill_mode: str = "nearest",
                 interpolation: str = "bilinear", seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("rotation_degrees", rotation_degrees),
                            ("shift_fraction", shift_fraction), ("zoom_fraction", zoom_fraction),
                            ("shear_fraction", shear_fraction)):
            if not value >= 0:
                raise ValueError(f"{name} must be at least 0, not {value!r}")
        if zoom_fraction >= 1:
            raise ValueError(f"zoom_fraction must be below 1, not {zoom_fraction!r}")
        self.horizontal_flip = bool(horizontal_flip)
        self.quarter_turns = bool(quarter_turns)
        self.rotation_degrees = float(rotation_degrees)
        self.shift_fraction = float(shift_fraction)
        self.zoom_fraction = float(zoom_fraction)
        self.shear_fraction = float(shear_fraction)
        self.fill_mode = fill_mode
        self.interpolation = interpolation
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _draw(self, count, limit: float):
        """``count`` values uniform in [-limit, limit]."""
        return keras.random.uniform((count,), -limit, limit, seed=self.seed_generator)

    def transforms(self, count, height, width):
        """The (count, 8) rows ``affine_transform`` takes: each maps an output pixel to the
        input point it samples."""
        height, width = ops.cast(height, "float32"), ops.cast(width, "float32")
        angle = self._draw(count, math.radians(self.rotation_degrees))
        shear = self._draw(count, self.shear_fraction)
        zoom = 1.0 + self._draw(count, self.zoom_fraction)
        flip = ops.ones((count,))
        if self.horizontal_flip:
            flip = ops.where(self._draw(count, 1.0) < 0, -1.0, 1.0)
        shift_x = self._draw(count, self.shift_fraction) * width
        shift_y = self._draw(count, self.shift_fraction) * height
        cos, sin = ops.cos(angle), ops.sin(angle)
        if self.quarter_turns:      # exact 0/±1 entries, so a turn alone moves whole pixels
            turn = keras.random.randint((count,), 0, 4, seed=self.seed_generator)
            turn_cos = ops.take(ops.array([1.0, 0.0, -1.0, 0.0]), turn)
            turn_sin = ops.take(ops.array([0.0, 1.0, 0.0, -1.0]), turn)
            cos, sin = turn_cos * cos - turn_sin * sin, turn_sin * cos + turn_cos * sin
        # A = rotation · shear · zoom · flip, mapping output offsets from the centre to input ones
        a00, a01 = cos * zoom * flip, (cos * shear - sin) * zoom
        a10, a11 = sin * zoom * flip, (sin * shear + cos) * zoom
        cx, cy = (width - 1) / 2, (height - 1) / 2
        b0 = cx - a00 * cx - a01 * cy + shift_x
        b1 = cy - a10 * cx - a11 * cy + shift_y
        zeros = ops.zeros((count,))
        return ops.stack([a00, a01, b0, a10, a11, b1, zeros, zeros], axis=1)

    def call(self, images, training=True):
        if not training:
            return images
        images = ops.convert_to_tensor(images)
        shape = ops.shape(images)
        matrices = self.transforms(shape[0], shape[1], shape[2])
        out = ops.image.affine_transform(ops.cast(images, "float32"), matrices,
                                         interpolation=self.interpolation,
                                         fill_mode=self.fill_mode)
        return ops.cast(out, images.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "horizontal_flip": self.horizontal_flip,
                "quarter_turns": self.quarter_turns,
                "rotation_degrees": self.rotation_degrees, "shift_fraction": self.shift_fraction,
                "zoom_fraction": self.zoom_fraction, "shear_fraction": self.shear_fraction,
                "fill_mode": self.fill_mode, "interpolation": self.interpolation,
                "seed": self.seed}
