"""Models: a from-scratch CNN, keras.applications backbones with a head, and the quasi-SVM head.

Every model takes float32 images in [0, 255] and does its own scaling: the baseline CNN with a
``Rescaling`` layer, a transfer model with its backbone's ``preprocess_input`` (the registered
:class:`BackbonePreprocess` layer, so ``.keras`` files load without ``safe_mode`` issues). The
last layer of every model is a float32 softmax, also under mixed precision, so a model's output
is always class probabilities.

A transfer model is ``image -> [gray_to_rgb] -> preprocess -> backbone -> pooling -> head``:
``backbone`` is the keras.applications model, ``pooling`` a global average pooling whose output
is the feature vector, and ``head`` a sub-model from that vector to the probabilities. A
pretrained backbone is called with ``training=False`` and its BatchNormalization layers are
frozen (``trainable=False``, which keeps them in inference mode even under ``fit``, where Keras 3
overrides the nested ``training=False``), so their statistics survive fine-tuning. A backbone
with random weights is called plainly: its batch normalization must learn from the data.

Backbones and their weights (the ImageNet policy) are in :mod:`shared.models.backbones`.

The quasi-SVM head (``RandomFourierFeatures`` then a linear layer with L2 regularisation) also
ends in a softmax. With ``recipes.Recipe(loss="categorical_hinge")`` it is trained with
:func:`multiclass_hinge`, the Crammer-Singer multiclass SVM hinge of the linear scores, computed
from the log-probabilities (``log softmax(s)`` differs from ``s`` by one constant per image and
the hinge depends only on score differences, so the two are the same loss); with
``categorical_crossentropy`` it is a kernel logistic regression. Either way the evaluation code
reads probabilities.
"""

from __future__ import annotations

import inspect
import math

import keras
import numpy as np
from keras import layers, ops

from shared.models.backbones import (
    BackbonePreprocess,
    backbone_spec,
    build_backbone,
    cut,
    freeze_batch_norm,
    is_pretrained,
)

# --------------------------------------------------------------------------------------------
# Baseline CNN

# Keras' default of 0.99 leaves the moving statistics far from the batch statistics after the
# few hundred steps of a small dataset (a few thousand images, a few epochs), and a model that
# learns in training mode then predicts one class in inference mode; 0.9 tracks them in tens.
BN_MOMENTUM = 0.9


def build_baseline(input_shape, num_classes: int, *, blocks: int = 2, convs_per_block: int = 1,
                   filters: int = 32, kernel_size: int = 3, batch_norm: bool = True,
                   dropout: float = 0.3, conv_dropout: float = 0.0, l2: float = 0.0,
                   pooling: str = "flatten", dense: tuple[int, ...] = (128,),
                   residual: bool = False, dog: bool = False,
                   name: str = "baseline_cnn") -> keras.Model:
    """A CNN trained from scratch (not compiled).

    ``blocks`` blocks of ``convs_per_block`` convolutions (``filters`` doubling per block), each
    convolution followed by batch normalization and ReLU, then a 2x2 max-pooling; ``residual``
    adds a 1x1-projection shortcut around each block's convolutions. ``conv_dropout`` drops
    feature maps after each block. Then ``pooling`` ("gap": global average pooling, "flatten")
    and one Dense-BN-ReLU-Dropout layer per entry of ``dense``, with ``dropout`` also before the
    softmax. ``l2`` is the L2 weight decay of every kernel. ``dog`` adds a fourth input channel
    inside the model, the difference of Gaussians of the image's brightness
    (:class:`DifferenceOfGaussians`), so predicting needs no extra step.

    The defaults (two single-convolution blocks, flatten, one dense layer of 128; about 420k
    parameters) are made for small images on a CPU: at 28x28 they cost about 4.6M
    multiply-adds per image, four times less than two blocks of two convolutions.
    """
    arguments = dict(locals())
    height, width, channels = _image_shape(input_shape)
    _require_positive(num_classes=num_classes, blocks=blocks, convs_per_block=convs_per_block,
                      filters=filters, kernel_size=kernel_size)
    _check_num_classes(num_classes)
    if pooling not in ("gap", "flatten"):
        raise ValueError(f"unknown pooling {pooling!r}: choose one of gap, flatten")
    if min(height, width) < 2 ** blocks:
        raise ValueError(f"image size {height}x{width} is too small for {blocks} blocks "
                         f"(each halves it): use at least {2 ** blocks} px or fewer blocks")
    regularizer = keras.regularizers.L2(l2) if l2 else None

    inputs = keras.Input((height, width, channels), name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    if dog:
        x = layers.Concatenate(name="with_dog")([x, DifferenceOfGaussians(name="dog")(x)])
    for b in range(1, blocks + 1):
        width_b = filters * 2 ** (b - 1)
        block_input = x
        for c in range(1, convs_per_block + 1):
            x = layers.Conv2D(width_b, kernel_size, padding="same", use_bias=not batch_norm,
                              kernel_regularizer=regularizer, name=f"block{b}_conv{c}")(x)
            if batch_norm:
                x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"block{b}_bn{c}")(x)
            if residual and c == convs_per_block:
                shortcut = layers.Conv2D(width_b, 1, use_bias=not batch_norm,
                                         kernel_regularizer=regularizer,
                                         name=f"block{b}_shortcut")(block_input)
                if batch_norm:
                    shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM,
                                                         name=f"block{b}_shortcut_bn")(shortcut)
                x = layers.Add(name=f"block{b}_add")([x, shortcut])
            x = layers.ReLU(name=f"block{b}_relu{c}")(x)
        x = layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
        if conv_dropout:
            x = layers.SpatialDropout2D(conv_dropout, name=f"block{b}_dropout")(x)
    x = (layers.GlobalAveragePooling2D(name="pooling") if pooling == "gap"
         else layers.Flatten(name="pooling"))(x)
    for i, units in enumerate(dense, start=1):
        x = layers.Dense(units, use_bias=not batch_norm, kernel_regularizer=regularizer,
                         name=f"dense{i}")(x)
        if batch_norm:
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"dense{i}_bn")(x)
        x = layers.ReLU(name=f"dense{i}_relu")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = _output_layer(num_classes, regularizer)(x)
    model = keras.Model(inputs, outputs, name=name)
    model.weights_source = "none (trained from scratch)"
    model.build_settings = {"builder": "build_baseline", **arguments}
    return model


# --------------------------------------------------------------------------------------------
# Transfer models and heads


HEADS = ("dense", "quasi_svm")


def build_transfer(backbone: str, input_shape, num_classes: int, *, weights="imagenet",
                   head="dense", head_options: dict | None = None,
                   require_pretrained: bool = False, remove_blocks: int = 0) -> keras.Model:
    """A keras.applications backbone with global average pooling and a head (not compiled).

    ``input_shape`` is (size, size, 1 or 3); 1-channel images are repeated to 3 channels. Each
    backbone's minimum size is enforced. ``head`` is a name of :data:`HEADS` (built by
    :func:`build_head` with ``head_options``) or a model from :func:`build_head`.
    ``model.weights_source`` tells where the backbone's weights came from (a plain attribute:
    it does not survive saving, so record it in the results when the model is built).
    ``remove_blocks`` cuts that many blocks off the top of the backbone
    (:func:`shared.models.backbones.cut`; its weights are loaded first).
    """
    key = str(backbone).lower()
    spec = backbone_spec(key)
    height, width, channels = _image_shape(input_shape)
    if channels not in (1, 3):
        raise ValueError(f"a {key} backbone takes 1- or 3-channel images, not {channels}")
    if min(height, width) < spec.min_size:
        raise ValueError(f"image size {height}x{width} is below the minimum input size of "
                         f"{key}, {spec.min_size}x{spec.min_size}: use image_size >= "
                         f"{spec.min_size}")
    _check_num_classes(num_classes)
    base, source = build_backbone(key, (height, width, 3), weights=weights,
                                  require_pretrained=require_pretrained)
    base = cut(base, key, remove_blocks)

    inputs = keras.Input((height, width, channels), name="image")
    x = inputs if channels == 3 else layers.Concatenate(name="gray_to_rgb")([inputs] * 3)
    x = BackbonePreprocess(key, name="preprocess")(x)
    if is_pretrained(source):
        # Keras 3's fit overrides training=False of a nested call (keras-team/keras#20285);
        # a BatchNormalization layer with trainable=False runs in inference mode for sure.
        freeze_batch_norm(base)
        x = base(x, training=False)
    else:
        x = base(x)  # random weights: batch normalization has to learn its statistics
    features = layers.GlobalAveragePooling2D(name="pooling")(x)
    if isinstance(head, keras.Model):
        head_model = head
    else:
        head_model = build_head(head, features.shape[-1], num_classes, **(head_options or {}))
    _check_head(head_model, features.shape[-1], num_classes)
    outputs = head_model(features)
    head_kind = head if isinstance(head, str) else "head"
    model = keras.Model(inputs, outputs, name=f"{key}_{head_kind}")
    model.weights_source = source
    model.build_settings = {"builder": "build_transfer", "backbone": key,
                            "input_shape": (height, width, channels), "weights": weights,
                            "require_pretrained": require_pretrained,
                            "remove_blocks": remove_blocks, "head": head_model.build_settings}
    return model


def build_head(kind: str, feature_dim: int, num_classes: int, **options) -> keras.Model:
    """A head named "head" from a feature vector of size ``feature_dim`` to probabilities.

    "dense": ``sizes`` (default (256,)) Dense layers (GlorotNormal), each followed by
    Dropout(``dropout``, 0.5), BatchNormalization (``batch_norm``, True) and ReLU, then the
    softmax; ``l2`` weight decay (0).

    "quasi_svm": feature standardisation (``normalize``, True: a BatchNormalization without
    scale and offset, so the default kernel scale suits any backbone), then
    :class:`RandomFourierFeatures` (``output_dim`` 4096, ``kernel`` "gaussian", ``scale`` None,
    ``trainable_scale`` False), optional ``dropout`` (0), a linear layer with L2 regularisation
    (``l2``, 1e-4) and a softmax. Train it with ``categorical_hinge`` (a quasi-SVM) or
    ``categorical_crossentropy``; see the module docstring.
    """
    builders = {"dense": _dense_head, "quasi_svm": _quasi_svm_head}
    if kind not in builders:
        raise ValueError(f"unknown head {kind!r}: choose one of {', '.join(HEADS)}")
    _require_positive(feature_dim=feature_dim)
    _check_num_classes(num_classes)
    builder = builders[kind]
    valid = [p for p in inspect.signature(builder).parameters if p not in
             ("feature_dim", "num_classes")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for the {kind} head: "
                         f"valid ones are {', '.join(valid)}")
    head = builder(int(feature_dim), int(num_classes), **options)
    defaults = {name: p.default for name, p in inspect.signature(builder).parameters.items()
                if name in valid}
    head.build_settings = {"kind": kind, **defaults, **options}
    return head


def _dense_head(feature_dim, num_classes, *, sizes=(256,), dropout=0.5, batch_norm=True,
                l2=0.0):
    regularizer = keras.regularizers.L2(l2) if l2 else None
    rates = list(dropout) if isinstance(dropout, list | tuple) else [dropout] * len(sizes)
    if len(rates) != len(sizes):
        raise ValueError(f"dense head: {len(rates)} dropout rates for {len(sizes)} sizes")
    inputs = keras.Input((feature_dim,), name="features")
    x = inputs
    for i, (units, rate) in enumerate(zip(sizes, rates, strict=True), start=1):
        x = layers.Dense(units, kernel_initializer=keras.initializers.GlorotNormal(),
                         kernel_regularizer=regularizer, name=f"dense{i}")(x)
        if rate:
            x = layers.Dropout(rate, name=f"dropout{i}")(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
    outputs = _output_layer(num_classes, regularizer)(x)
    return keras.Model(inputs, outputs, name="head")


def _quasi_svm_head(feature_dim, num_classes, *, output_dim=4096, kernel="gaussian", scale=None,
                    trainable_scale=False, dropout=0.0, l2=1e-4, normalize=True):
    inputs = keras.Input((feature_dim,), name="features")
    x = inputs
    if normalize:
        x = layers.BatchNormalization(center=False, scale=False, name="standardize")(x)
    x = RandomFourierFeatures(output_dim, kernel_initializer=kernel, scale=scale,
                              trainable=trainable_scale, dtype="float32",
                              name="random_fourier_features")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    scores = layers.Dense(num_classes, kernel_regularizer=keras.regularizers.L2(l2) if l2 else None,
                          dtype="float32", name="scores")(x)
    outputs = layers.Softmax(dtype="float32", name="probabilities")(scores)
    return keras.Model(inputs, outputs, name="head")


def replace_head(model: keras.Model, head: keras.Model) -> keras.Model:
    """A model with the same layers as the transfer model ``model`` up to the pooled features
    (the very same objects, so fine-tuned weights are kept) and ``head`` on top.

    Used by notebook 03: fine-tune with a dense head, then freeze the backbone and train a
    quasi-SVM head on its features.
    """
    features = model.get_layer("pooling").output
    num_classes = model.output.shape[-1]
    _check_head(head, features.shape[-1], num_classes)
    new = keras.Model(model.input, head(features),
                      name=model.name.rsplit("_", 1)[0] + "_" + _head_kind(head))
    new.weights_source = getattr(model, "weights_source", "unknown")
    new.build_settings = {**getattr(model, "build_settings", {}),
                          "head": getattr(head, "build_settings", {"kind": _head_kind(head)})}
    new.recipes = dict(getattr(model, "recipes", {}))
    new.phase_summary = dict(getattr(model, "phase_summary", None) or {})
    return new


def _head_kind(head: keras.Model) -> str:
    names = {layer.name for layer in head.layers}
    return "quasi_svm" if "random_fourier_features" in names else "dense"


def _check_head(head, feature_dim: int, num_classes: int) -> None:
    if not isinstance(head, keras.Model):
        raise ValueError(f"a head must be a keras.Model from build_head, not {type(head).__name__}")
    if head.name != "head":
        raise ValueError(f"the head model must be named 'head' (as build_head names it), "
                         f"not {head.name!r}")
    got_in, got_out = head.input.shape[-1], head.output.shape[-1]
    if got_in != feature_dim:
        raise ValueError(f"the head takes {got_in} features but the backbone gives {feature_dim}")
    if got_out != num_classes:
        raise ValueError(f"the head has {got_out} outputs but there are {num_classes} classes")


def _output_layer(num_classes: int, regularizer=None) -> layers.Dense:
    # float32 also under mixed precision: softmax in float16 saturates.
    return layers.Dense(num_classes, activation="softmax", kernel_regularizer=regularizer,
                        kernel_initializer=keras.initializers.GlorotNormal(), dtype="float32",
                        name="probabilities")


def _image_shape(input_shape) -> tuple[int, int, int]:
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"input_shape must be (height, width, channels), not {input_shape!r}")
    return shape


def _check_num_classes(num_classes) -> None:
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, not {num_classes!r}")


def _require_positive(**values) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, not {value!r}")


# --------------------------------------------------------------------------------------------
# Random Fourier features and the hinge loss


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
        _require_positive(output_dim=output_dim)
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


def feature_dim(model: keras.Model) -> int:
    """Length of the pooled feature vector a transfer model's head takes."""
    return int(model.get_layer("pooling").output.shape[-1])
