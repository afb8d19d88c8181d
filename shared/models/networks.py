"""Model builders: a from-scratch CNN, keras.applications backbones with a head, the quasi-SVM head.

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

Backbones and their weights (the ImageNet policy) are in :mod:`shared.models.backbones`, the
project's own layers and the hinge loss in :mod:`shared.models.layers`.

The quasi-SVM head (``RandomFourierFeatures`` then a linear layer with L2 regularisation) also
ends in a softmax. With ``recipes.Recipe(loss="categorical_hinge")`` it is trained with
:func:`shared.models.layers.multiclass_hinge`, the Crammer-Singer multiclass SVM hinge of the
linear scores, computed from the log-probabilities (``log softmax(s)`` differs from ``s`` by one
constant per image and the hinge depends only on score differences, so the two are the same
loss); with ``categorical_crossentropy`` it is a kernel logistic regression. Either way the
evaluation code reads probabilities.
"""

from __future__ import annotations

import inspect

import keras
from keras import layers

from shared.models.backbones import (
    BackbonePreprocess,
    backbone_spec,
    build_backbone,
    cut,
    freeze_batch_norm,
    is_pretrained,
)
from shared.models.layers import DifferenceOfGaussians, RandomFourierFeatures, require_positive

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
                   residual: bool = False, strided_stem: bool = False, dog: bool = False,
                   name: str = "baseline_cnn") -> keras.Model:
    """A CNN trained from scratch (not compiled).

    ``blocks`` blocks of ``convs_per_block`` convolutions (``filters`` doubling per block), each
    convolution followed by batch normalization and ReLU, then a 2x2 max-pooling; ``residual``
    adds a 1x1-projection shortcut around each block's convolutions. ``strided_stem``: the first
    block's first convolution strides by 2 in place of the block's max-pooling (the same maps
    come out; at 96 px a training step is about 1.4 times as fast: benchmarks/stem.py;
    benchmarks/recipe.py measures the accuracy). ``conv_dropout`` drops
    feature maps after each block. Then ``pooling`` ("gap": global average pooling, "flatten")
    and one Dense-BN-ReLU-Dropout layer per entry of ``dense``, with ``dropout`` also before the
    softmax. ``l2`` is the L2 weight decay of every kernel. ``dog`` adds a fourth input channel
    inside the model, the difference of Gaussians of the image's brightness
    (:class:`shared.models.layers.DifferenceOfGaussians`), so predicting needs no extra step.

    The defaults (two single-convolution blocks, flatten, one dense layer of 128; about 420k
    parameters) are made for small images on a CPU: at 28x28 they cost about 4.6M
    multiply-adds per image, four times less than two blocks of two convolutions.
    """
    arguments = dict(locals())
    height, width, channels = _image_shape(input_shape)
    require_positive(num_classes=num_classes, blocks=blocks, convs_per_block=convs_per_block,
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
        stem = strided_stem and b == 1
        for c in range(1, convs_per_block + 1):
            x = layers.Conv2D(width_b, kernel_size, strides=2 if stem and c == 1 else 1,
                              padding="same", use_bias=not batch_norm,
                              kernel_regularizer=regularizer, name=f"block{b}_conv{c}")(x)
            if batch_norm:
                x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"block{b}_bn{c}")(x)
            if residual and c == convs_per_block:
                shortcut = layers.Conv2D(width_b, 1, strides=2 if stem else 1,
                                         use_bias=not batch_norm,
                                         kernel_regularizer=regularizer,
                                         name=f"block{b}_shortcut")(block_input)
                if batch_norm:
                    shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM,
                                                         name=f"block{b}_shortcut_bn")(shortcut)
                x = layers.Add(name=f"block{b}_add")([x, shortcut])
            x = layers.ReLU(name=f"block{b}_relu{c}")(x)
        if not stem:
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
    :class:`shared.models.layers.RandomFourierFeatures` (``output_dim`` 4096, ``kernel``
    "gaussian", ``scale`` None, ``trainable_scale`` False), optional ``dropout`` (0), a linear
    layer with L2 regularisation (``l2``, 1e-4) and a softmax. Train it with
    ``categorical_hinge`` (a quasi-SVM) or ``categorical_crossentropy``; see the module
    docstring.
    """
    builders = {"dense": _dense_head, "quasi_svm": _quasi_svm_head}
    if kind not in builders:
        raise ValueError(f"unknown head {kind!r}: choose one of {', '.join(HEADS)}")
    require_positive(feature_dim=feature_dim)
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


def feature_dim(model: keras.Model) -> int:
    """Length of the pooled feature vector a transfer model's head takes."""
    return int(model.get_layer("pooling").output.shape[-1])
