"""The project's own Keras layers and loss, registered so saved ``.keras`` models load.

:class:`DifferenceOfGaussians` (the baseline's optional edge channel),
:class:`RandomFourierFeatures` (the quasi-SVM head's kernel features) and
:func:`multiclass_hinge` (the quasi-SVM's loss) are registered with Keras under the package
"shared" (``shared>RandomFourierFeatures``...), the name saved models refer to them by;
:data:`CUSTOM_OBJECTS` names the layers (with
:class:`shared.models.backbones.BackbonePreprocess`) for loading a saved model.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

from shared.models.backbones import BackbonePreprocess


def require_positive(**values) -> None:
    """Raise a ValueError unless every value is a positive integer (named by its keyword)."""
    for key, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, not {value!r}")


# --------------------------------------------------------------------------------------------
# Layers and the hinge loss


@keras.saving.register_keras_serializable(package="shared")
class DifferenceOfGaussians(layers.Layer):
    """The difference of two Gaussian blurs (``sigma`` < ``sigma2``) of an image's brightness:
    a band-pass edge map, one channel, zero on flat regions. Fixed, not trained."""

    def __init__(self, sigma: float = 1.0, sigma2: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        if not 0 < sigma < sigma2:
            raise ValueError(f"need 0 < sigma < sigma2, got {sigma} and {sigma2}")
        self.sigma, self.sigma2 = float(sigma), float(sigma2)
        radius = math.ceil(3 * self.sigma2)
        steps = np.arange(-radius, radius + 1, dtype="float32")
        self._kernels = [np.exp(-steps ** 2 / (2 * s ** 2)) / np.exp(-steps ** 2 / (2 * s ** 2))
                         .sum() for s in (self.sigma, self.sigma2)]

    def _blur(self, gray, kernel):
        # separable: rows then columns; "same" padding by reflection keeps flat borders flat
        size = len(kernel)
        pad = size // 2
        x = ops.pad(gray, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="reflect")
        x = ops.conv(x, ops.convert_to_tensor(kernel.reshape(1, size, 1, 1), x.dtype))
        return ops.conv(x, ops.convert_to_tensor(kernel.reshape(size, 1, 1, 1), x.dtype))

    def call(self, images):
        gray = ops.mean(images, axis=-1, keepdims=True)
        return self._blur(gray, self._kernels[0]) - self._blur(gray, self._kernels[1])

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 1)

    def get_config(self):
        return super().get_config() | {"sigma": self.sigma, "sigma2": self.sigma2}


@keras.saving.register_keras_serializable(package="shared")
class RandomFourierFeatures(layers.Layer):
    """Random Fourier features (Rahimi & Recht 2007): ``sqrt(2/D) cos(x W / scale + b)``.

    The inner product of the features of x and y approximates a shift-invariant kernel:
    "gaussian" ``exp(-||x - y||^2 / (2 scale^2))`` (W ~ N(0, 1)), "laplacian"
    ``exp(-||x - y||_1 / scale)`` (W ~ Cauchy(0, 1)); b ~ U(0, 2 pi). W and b are
    non-trainable weights, so they are saved with the model. ``scale`` defaults to
    ``sqrt(input_dim / 2)`` for the Gaussian kernel (suits standardised inputs) and 1.0 for the
    Laplacian one, as the Keras 2 layer did; ``trainable=True`` learns it. Unlike the Keras 2
    layer the output has the paper's ``sqrt(2/D)`` factor, so feature inner products estimate
    the kernel itself.
    """

    KERNELS = ("gaussian", "laplacian")

    def __init__(self, output_dim: int, kernel_initializer: str = "gaussian", scale=None,
                 trainable: bool = False, **kwargs):
        super().__init__(trainable=trainable, **kwargs)
        require_positive(output_dim=output_dim)
        kernel = str(kernel_initializer).lower()
        if kernel not in self.KERNELS:
            raise ValueError(f"unknown kernel_initializer {kernel_initializer!r}: choose one of "
                             f"{', '.join(self.KERNELS)}")
        if scale is not None and not scale > 0:
            raise ValueError(f"scale must be positive, not {scale!r}")
        self.output_dim = output_dim
        self.kernel_initializer = kernel
        self.scale = scale

    def build(self, input_shape):
        input_dim = int(input_shape[-1])
        scale = self.scale
        if scale is None:
            scale = math.sqrt(input_dim / 2.0) if self.kernel_initializer == "gaussian" else 1.0
        self.unscaled_kernel = self.add_weight(
            name="unscaled_kernel", shape=(input_dim, self.output_dim),
            initializer=self._sample_kernel, trainable=False)
        self.bias = self.add_weight(
            name="bias", shape=(self.output_dim,),
            initializer=keras.initializers.RandomUniform(0.0, 2 * math.pi), trainable=False)
        self.kernel_scale = self.add_weight(
            name="kernel_scale", shape=(1,), initializer=keras.initializers.Constant(scale),
            constraint=keras.constraints.NonNeg(), trainable=True)

    def _sample_kernel(self, shape, dtype=None):
        if self.kernel_initializer == "gaussian":
            return keras.random.normal(shape, dtype=dtype)
        uniform = keras.random.uniform(shape, minval=1e-6, maxval=1 - 1e-6, dtype=dtype)
        return ops.tan(math.pi * (uniform - 0.5))  # standard Cauchy

    def call(self, inputs):
        inputs = ops.cast(inputs, self.compute_dtype)
        kernel = self.unscaled_kernel / ops.maximum(self.kernel_scale, 1e-6)
        projected = ops.matmul(inputs, kernel) + self.bias
        return math.sqrt(2.0 / self.output_dim) * ops.cos(projected)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.output_dim)

    def get_config(self):
        return {**super().get_config(), "output_dim": self.output_dim,
                "kernel_initializer": self.kernel_initializer, "scale": self.scale}


@keras.saving.register_keras_serializable(package="shared")
def multiclass_hinge(y_true, y_pred):
    """Crammer-Singer multiclass hinge ``max(0, 1 + max_{j != y} s_j - s_y)`` of the scores s
    behind the probabilities ``y_pred``, recovered as ``log y_pred`` (equal up to a constant per
    image, which the hinge ignores). Soft labels give the label-weighted mean of the hinges."""
    y_true = ops.cast(y_true, y_pred.dtype)
    scores = ops.log(ops.maximum(y_pred, 1e-30))
    top2 = ops.top_k(scores, k=2)[0]
    best_other = ops.where(scores >= top2[:, :1], top2[:, 1:2], top2[:, :1])
    return ops.sum(y_true * ops.relu(1.0 + best_other - scores), axis=-1)


# the project's own layers, for loading a saved model (they are also registered with Keras)
CUSTOM_OBJECTS = {"BackbonePreprocess": BackbonePreprocess,
                  "DifferenceOfGaussians": DifferenceOfGaussians,
                  "RandomFourierFeatures": RandomFourierFeatures}
