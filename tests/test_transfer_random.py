"""shared.training.transfer.fit_transfer with a backbone whose weights are random
(networks.build_transfer(..., weights=None), the normal case offline): its batch normalization is
calibrated on training batches before the head is trained, and learns during fine-tuning; a
pretrained backbone's stays frozen. The smallest registered backbone with batch normalization at its
minimum size."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from shared.models import backbones, networks
from shared.training import callbacks, recipes
from shared.training import transfer as transfer_learning

pytestmark = pytest.mark.trains  # not in `make check`

BACKBONE = "resnet50v2"
SIZE = backbones.BACKBONES[BACKBONE].min_size              # 32
UNFREEZE = 6   # conv5_block3_2_bn, _2_relu, _3_conv, conv5_block3_out, post_bn, post_relu
FAST = dict(patience=None, reduce_lr_factor=None)


def images_and_labels(n=8, batch=4):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")
    y = np.eye(2, dtype="float32")[np.arange(n) % 2]
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def transfer(weights=None):
    return networks.build_transfer(BACKBONE, (SIZE, SIZE, 3), 2, weights=weights,
                                 head_options={"sizes": (8,)})


def batch_norms(model) -> list:
    return [layer for layer in model.get_layer("backbone").layers
            if isinstance(layer, keras.layers.BatchNormalization)]


def state(layer) -> dict:
    return {"trainable": layer.trainable,
            **{w.name: np.asarray(w).copy() for w in layer.weights}}


def spy_on_phases(monkeypatch, train_fine_tune: bool = True) -> dict:
    """Record the backbone's batch normalization layers as each phase starts (before any of
    its training): {phase: {layer name: state}}. ``train_fine_tune=False`` skips the
    fine-tuning phase's training (its set-up is what is checked)."""
    seen = {}
    real_fit, real_fit_head = transfer_learning.fit, transfer_learning.fit_head

    def record(model, phase):
        if phase not in seen:
            seen[phase] = {layer.name: state(layer) for layer in batch_norms(model)}

    def fit(model, *args, phase="train", **kwargs):
        if phase == "fine_tune":
            record(model, phase)
            if not train_fine_tune:
                return callbacks.read_history(args[3])
        return real_fit(model, *args, phase=phase, **kwargs)

    def fit_head(model, *args, phase="head", **kwargs):
        record(model, phase)
        return real_fit_head(model, *args, phase=phase, **kwargs)

    # where fit_phases finds them
    monkeypatch.setattr(transfer_learning, "fit", fit)
    monkeypatch.setattr(transfer_learning, "fit_head", fit_head)
    return seen


def first_norm_statistics(model, dataset):
    """What calibration must give the first batch normalization layer (whose input no other
    one changes): the mean over the batches of its input's batch mean and variance."""
    norm = batch_norms(model)[0]
    backbone = model.get_layer("backbone")
    upstream = keras.Model(backbone.input, norm.input)
    preprocess = model.get_layer("preprocess")
    means, variances = [], []
    for images, _ in dataset:
        x = np.asarray(upstream(preprocess(images)), np.float64)
        means.append(x.mean(axis=(0, 1, 2)))
        variances.append(x.var(axis=(0, 1, 2)))
    return np.mean(means, axis=0), np.mean(variances, axis=0)


@pytest.mark.slow
def test_random_backbone_is_calibrated_then_fine_tunes_batch_norm(tmp_path, monkeypatch):
    """Catches a random backbone whose batch normalization is not calibrated before the head
    phase (moving statistics still 0 and 1, or not the batches' statistics), and unfrozen batch
    normalization layers kept frozen in fine-tuning (as for pretrained weights)."""
    model = transfer(weights=None)
    assert not backbones.is_pretrained(model.weights_source)
    norms = batch_norms(model)
    assert len(norms) > 30 and all(
        np.array_equal(n.moving_mean, np.zeros(n.moving_mean.shape))
        and np.array_equal(n.moving_variance, np.ones(n.moving_variance.shape)) for n in norms)
    data = images_and_labels()
    mean, variance = first_norm_statistics(model, data)
    seen = spy_on_phases(monkeypatch)

    history = transfer_learning.fit_transfer(
        model, data, None, recipes.Recipe(epochs=1, **FAST),
        recipes.Recipe(epochs=1, learning_rate=1e-2, **FAST), tmp_path, unfreeze=UNFREEZE,
        feature_cache=True)
    assert history.phase.tolist() == ["head", "fine_tune"]

    head = seen["head"]                         # before the head is trained
    for name, before in head.items():
        assert not np.array_equal(before["moving_mean"], 0 * before["moving_mean"]), name
        assert not np.array_equal(before["moving_variance"], 0 * before["moving_variance"] + 1)
        assert np.isfinite(before["moving_variance"]).all() and not before["trainable"]
    first = head[norms[0].name]
    np.testing.assert_allclose(first["moving_mean"], mean, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(first["moving_variance"], variance, rtol=1e-3, atol=1e-3)

    top = {layer.name for layer in model.get_layer("backbone").layers[-UNFREEZE:]}
    tuned = {n.name for n in norms} & top
    assert tuned == {"conv5_block3_2_bn", "post_bn"}
    start = seen["fine_tune"]                   # as fine-tuning starts
    for name, before in start.items():
        after = state(model.get_layer("backbone").get_layer(name))
        assert before["trainable"] is (name in tuned), name
        changed = {k for k in ("gamma", "beta", "moving_mean", "moving_variance")
                   if not np.array_equal(before[k], after[k])}
        assert changed == ({"gamma", "beta", "moving_mean", "moving_variance"}
                           if name in tuned else set()), name
    assert model.phase_summary["fine_tune"]["backbone_trainable_layers"] == 3   # 2 BN + conv


def test_pretrained_backbone_keeps_batch_norm_frozen(tmp_path, monkeypatch):
    """Catches batch normalization calibrated or unfrozen for a pretrained weights source
    (a weights file): fine-tuning trains the unfrozen convolution, never a BN layer."""
    weights = tmp_path / "backbone.weights.h5"
    transfer(weights=None).get_layer("backbone").save_weights(str(weights))
    model = transfer(weights=str(weights))
    assert backbones.is_pretrained(model.weights_source)
    seen = spy_on_phases(monkeypatch, train_fine_tune=False)

    transfer_learning.fit_transfer(model, images_and_labels(), None,
                                   recipes.Recipe(epochs=1, **FAST),
                                   recipes.Recipe(epochs=1, **FAST), tmp_path / "out",
                                   unfreeze=UNFREEZE, feature_cache=True)
    for name, before in seen["head"].items():   # not calibrated: the file's statistics
        assert np.array_equal(before["moving_mean"], 0 * before["moving_mean"]), name
        assert np.array_equal(before["moving_variance"], 0 * before["moving_variance"] + 1)
    assert not any(before["trainable"] for before in seen["fine_tune"].values())
    backbone = model.get_layer("backbone")
    assert backbone.get_layer("conv5_block3_3_conv").trainable
    assert model.phase_summary["fine_tune"]["backbone_trainable_layers"] == 1  # the conv
