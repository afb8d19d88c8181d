"""What a model looks at, computed (drawn by :mod:`shared.reporting.plots`): Grad-CAM heat maps and
the activations of chosen layers, for Functional and Sequential models, with layers found inside
nested sub-models such as a keras.applications backbone."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared.evaluation.evaluate import output_kind, to_probabilities


def conv_layers(model) -> list[tuple[str, object]]:
    """Every layer with a 4-D (batch, height, width, channels) output, nested models searched,
    in order, as (path, layer) with paths like ``"backbone/block5_conv4"``."""
    found = []
    for layer in getattr(model, "layers", []):
        if hasattr(layer, "layers") and layer.layers:
            found += [(f"{layer.name}/{path}", inner) for path, inner in conv_layers(layer)]
        elif type(layer).__name__ != "InputLayer" and _rank(layer) == 4:
            found.append((layer.name, layer))
    return found


def _rank(layer) -> int | None:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError, TypeError):
        return None


def find_layer(model, name: str) -> tuple[str, object]:
    """The 4-D layer called ``name`` (a plain name or a path like "backbone/conv5")."""
    candidates = conv_layers(model)
    for path, layer in candidates:
        if name == path or name == layer.name:
            return path, layer
    raise ValueError(f"no layer with a 4-D output called {name!r}; the layers are: "
                     + ", ".join(path for path, _ in candidates))


def last_conv_layer(model) -> tuple[str, object]:
    """Grad-CAM's default layer: the last layer with a 4-D output that is not a pooling or
    dropout layer and whose feature map is larger than 1x1 (relaxed in that order when no
    layer qualifies)."""
    candidates = conv_layers(model)
    if not candidates:
        raise ValueError(f"model {model.name!r} has no layer with a 4-D output: Grad-CAM and "
                         "feature maps need a convolutional model")
    spatial = [c for c in candidates if (c[1].output.shape[1] or 2) * (c[1].output.shape[2] or 2)
               > 1]
    features = [c for c in spatial if not any(word in type(c[1]).__name__
                                               for word in ("Pooling", "Dropout"))]
    return (features or spatial or candidates)[-1]


def first_conv_layer(model) -> tuple[str, object]:
    """The first convolution (the first 4-D layer when there is none by that name)."""
    candidates = conv_layers(model)
    if not candidates:
        raise ValueError(f"model {model.name!r} has no layer with a 4-D output")
    convs = [c for c in candidates if "Conv" in type(c[1]).__name__]
    return (convs or candidates)[0]


def tap_model(model, targets: Sequence[object]):
    """A model computing ``[target outputs..., model output]`` from ``model``'s input, where
    the targets may sit inside nested sub-models (e.g. a keras.applications backbone).

    Keras 3 cannot take an inner layer's output of a nested model as an output of the outer
    model, so the outer graph is traced again on a fresh input, calling every nested model
    that holds a target through its own layers so that the target's output is reachable.
    """
    import keras

    if not isinstance(model, keras.Sequential) and not hasattr(model, "_run_through_graph"):
        raise ValueError(f"model {model.name!r} is subclassed: Grad-CAM and feature maps need "
                         "a Functional or Sequential model")
    inputs = keras.Input(tuple(model.inputs[0].shape[1:]), name="tap_input")
    found: dict[int, object] = {}
    output = _trace(model, inputs, list(targets), found)
    missing = [t.name for t in targets if id(t) not in found]
    if missing:
        raise ValueError(f"layer(s) {', '.join(missing)} are not on the path from the input to "
                         "the output")
    return keras.Model(inputs, [found[id(t)] for t in targets] + [output])


def _contains(model, target) -> bool:
    return any(layer is target or _contains(layer, target)
               for layer in getattr(model, "layers", []))


def _trace(model, x, targets, found):
    import keras

    def call(operation, *args, **kwargs):
        if hasattr(operation, "layers") and any(_contains(operation, t) for t in targets):
            out = _trace(operation, args[0], targets, found)
        else:
            out = operation(*args, **kwargs)
        if any(operation is t for t in targets):
            found[id(operation)] = out
        return out

    if isinstance(model, keras.Sequential):
        for layer in model.layers:
            x = call(layer, x)
        return x
    # Functional: run its graph symbolically with the nested models holding targets replaced
    return model._run_through_graph(
        x, operation_fn=lambda op: lambda *args, **kwargs: call(op, *args, **kwargs))


def grad_cam_heatmaps(model, images, layer: str | None = None, class_index=None):
    """Grad-CAM (Selvaraju et al. 2017) heat maps of ``images`` for ``model``.

    Returns ``(heatmaps, probabilities, layer_path)``: heat maps of shape (N, H, W) at the
    images' size, each scaled to [0, 1]; the class explained is ``class_index`` (an int or one
    per image) or else the predicted one. ``layer`` defaults to :func:`last_conv_layer`. The
    gradient is that of the class's log-probability (or of its score for a scores output), so
    a confident prediction does not saturate it.
    """
    import tensorflow as tf

    images = tf.convert_to_tensor(np.asarray(images, dtype=np.float32))
    if images.shape.rank != 4:
        raise ValueError(f"grad_cam: images must be a batch (N, H, W, 3), got {images.shape}")
    path, target = find_layer(model, layer) if layer else last_conv_layer(model)
    tap = tap_model(model, [target])
    kind = output_kind(model)
    with tf.GradientTape() as tape:
        features, outputs = tap(images, training=False)
        if class_index is None:
            chosen = tf.argmax(outputs, axis=1)
        else:
            chosen = tf.broadcast_to(tf.constant(class_index, tf.int64), [images.shape[0]])
        score = tf.gather(outputs, chosen, axis=1, batch_dims=1)
        if kind in ("probabilities", "sigmoid"):
            score = tf.math.log(score + 1e-7)
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(features * weights, axis=-1))
    cam = tf.image.resize(cam[..., None], images.shape[1:3])[..., 0]
    cam = tf.math.divide_no_nan(cam, tf.reduce_max(cam, axis=(1, 2), keepdims=True))
    heatmaps = np.clip(cam.numpy(), 0.0, 1.0)
    return heatmaps, to_probabilities(outputs.numpy(), kind), path


def feature_maps(model, image, layers: Sequence[str] | None = None):
    """Activations of one image (H, W, 3) at ``layers`` (default: the first and the last
    convolutional layer): ``(chosen, activations)``, ``chosen`` a list of (path, layer) and
    ``activations`` one (h, w, channels) array per chosen layer."""
    batch = np.asarray(image, dtype=np.float32)[None]
    chosen = ([find_layer(model, n) for n in layers] if layers
              else list(dict((id(c[1]), c) for c in (first_conv_layer(model),
                                                     last_conv_layer(model))).values()))
    tap = tap_model(model, [layer for _, layer in chosen])
    return chosen, [np.asarray(a)[0] for a in tap(batch, training=False)[:-1]]
