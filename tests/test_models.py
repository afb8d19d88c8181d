"""Tests of shared.models.networks and shared.models.layers: baseline CNN, backbones, heads,
RandomFourierFeatures, weights."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from shared.models import backbones, layers, networks

pytestmark = pytest.mark.trains  # not in `make check`


def images(n, size, channels=3, seed=0):
    return (np.random.default_rng(seed).random((n, size, size, channels)) * 255).astype("float32")


def one_hot(labels, num_classes):
    return np.eye(num_classes, dtype="float32")[labels]


# ---------------------------------------------------------------------------------------------
# Baseline CNN


@pytest.mark.parametrize("options", [{}, {"pooling": "gap", "dense": (), "residual": True,
                                          "convs_per_block": 2, "conv_dropout": 0.1, "l2": 1e-4,
                                          "strided_stem": True}])
def test_baseline_trains_and_outputs_probabilities(options):
    keras.utils.set_random_seed(0)
    model = networks.build_baseline((28, 28, 1), 4, **options)
    x, y = images(8, 28, 1), one_hot([0, 1, 2, 3] * 2, 4)
    model.compile(keras.optimizers.Adam(3e-3), "categorical_crossentropy")
    losses = [model.train_on_batch(x, y) for _ in range(10)]
    assert np.mean(losses[-3:]) < 0.8 * losses[0]
    probs = np.asarray(model(x, training=False))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert model.get_layer("probabilities").dtype_policy.compute_dtype == "float32"
    assert any("add" in layer.name for layer in model.layers) == bool(options.get("residual"))


@pytest.mark.parametrize("residual", [False, True])
def test_strided_stem_gives_the_same_maps_from_a_quarter_of_the_first_positions(residual):
    options = dict(blocks=3, filters=8, pooling="gap", residual=residual)
    pooled = networks.build_baseline((32, 32, 3), 5, **options)
    strided = networks.build_baseline((32, 32, 3), 5, strided_stem=True, **options)
    assert strided.count_params() == pooled.count_params()
    assert strided.get_layer("block1_conv1").output.shape[1:3] == (16, 16)
    assert pooled.get_layer("block1_conv1").output.shape[1:3] == (32, 32)
    assert "block1_pool" not in [layer.name for layer in strided.layers]
    assert "block2_pool" in [layer.name for layer in strided.layers]
    assert strided.get_layer("pooling").input.shape == pooled.get_layer("pooling").input.shape


def test_baseline_rejects_bad_parameters():
    with pytest.raises(ValueError, match="gap, flatten"):
        networks.build_baseline((28, 28, 1), 10, pooling="max")
    with pytest.raises(ValueError, match=r"8x8 is too small for 4 blocks"):
        networks.build_baseline((8, 8, 1), 10, blocks=4)
    with pytest.raises(ValueError, match="num_classes"):
        networks.build_baseline((28, 28, 1), 1)


# ---------------------------------------------------------------------------------------------
# Backbones


@pytest.mark.slow
@pytest.mark.parametrize("name", list(backbones.BACKBONES))
def test_backbone_builds_trains_and_reloads(name, tmp_path):
    size = backbones.BACKBONES[name].min_size
    channels = 1 if name == "vgg16" else 3  # one grayscale model covers gray_to_rgb
    head = "quasi_svm" if name in ("vgg19", "inceptionv3") else "dense"
    options = {"output_dim": 64} if head == "quasi_svm" else {"sizes": (8,)}
    model = networks.build_transfer(name, (size, size, channels), 3, weights=None, head=head,
                                  head_options=options)
    assert model.weights_source == "random"
    assert [model.get_layer(n).name for n in ("backbone", "pooling", "head")]
    counted = model.get_layer("backbone").count_params() / 1e6    # the registry's cost order
    assert counted == pytest.approx(backbones.BACKBONES[name].params, rel=0.03)
    x, y = images(4, size, channels), one_hot([0, 1, 2, 0], 3)
    # Eager: one step of a deep backbone costs seconds eagerly, tens of seconds to trace.
    model.compile(keras.optimizers.SGD(1e-3), "categorical_crossentropy", run_eagerly=True)
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    before = np.asarray(model(x, training=False))
    assert np.isfinite(before).all()
    np.testing.assert_allclose(before.sum(axis=1), 1.0, atol=1e-5)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    np.testing.assert_array_equal(np.asarray(loaded(x, training=False)), before)


def test_preprocess_layer_matches_keras_applications():
    x = images(2, 32)
    for name in ("vgg19", "inceptionv3", "densenet121", "efficientnetb0"):
        module = getattr(keras.applications, backbones.BACKBONES[name].module)
        expected = module.preprocess_input(x.copy())
        got = np.asarray(backbones.BackbonePreprocess(name)(x))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4, err_msg=name)


def test_minimum_size_error_names_both_sizes():
    with pytest.raises(ValueError, match=r"74x74.*inceptionv3, 75x75"):
        networks.build_transfer("inceptionv3", (74, 74, 3), 3, weights=None)
    with pytest.raises(ValueError, match=r"31x31.*vgg19, 32x32"):
        networks.build_transfer("vgg19", (31, 31, 3), 3, weights=None)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="unknown backbone 'resnet9'.*vgg16, vgg19, inceptionv3"):
        networks.build_transfer("resnet9", (32, 32, 3), 3, weights=None)
    with pytest.raises(ValueError, match="unknown head 'svm'.*dense, quasi_svm"):
        networks.build_head("svm", 16, 3)
    with pytest.raises(ValueError, match="unknown option.*units.*sizes, dropout"):
        networks.build_head("dense", 16, 3, units=4)
    with pytest.raises(ValueError, match="gaussian, laplacian"):
        layers.RandomFourierFeatures(8, kernel_initializer="cosine")


def test_weights_from_a_file_of_the_backbone(tmp_path):
    source = networks.build_transfer("efficientnetb0", (32, 32, 3), 3, weights=None)
    path = tmp_path / "backbone.weights.h5"
    source.get_layer("backbone").save_weights(path)
    model = networks.build_transfer("efficientnetb0", (32, 32, 3), 3, weights=path)
    assert model.weights_source == str(path)
    for a, b in zip(source.get_layer("backbone").weights, model.get_layer("backbone").weights,
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # Trained weights: batch normalization stays frozen while the other layers learn.
    backbone = model.get_layer("backbone")
    batch_norms = [layer for layer in backbone.layers
                   if isinstance(layer, keras.layers.BatchNormalization)]
    assert batch_norms and not any(layer.trainable for layer in batch_norms)
    for layer in backbone.layers:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    stats = [np.asarray(layer.moving_mean).copy() for layer in batch_norms]
    kernel = np.asarray(backbone.get_layer("top_conv").kernel).copy()
    model.compile(keras.optimizers.SGD(1e-2), "categorical_crossentropy", run_eagerly=True)
    model.train_on_batch(images(4, 32), one_hot([0, 1, 2, 0], 3))
    for layer, before in zip(batch_norms, stats, strict=True):
        np.testing.assert_array_equal(np.asarray(layer.moving_mean), before)
    assert not np.array_equal(np.asarray(backbone.get_layer("top_conv").kernel), kernel)

    with pytest.raises(FileNotFoundError, match="missing.weights.h5"):
        networks.build_transfer("vgg16", (32, 32, 3), 3, weights=tmp_path / "missing.weights.h5")


NO_NETWORK_SCRIPT = textwrap.dedent("""
    from shared.models import backbones
    from shared.models import networks
    model = networks.build_transfer("vgg16", (32, 32, 3), 3)
    print("SOURCE", model.weights_source)
    try:
        networks.build_transfer("vgg16", (32, 32, 3), 3, require_pretrained=True)
    except backbones.WeightsUnavailableError as error:
        print("RAISED", error)
    print("EXIT", backbones.main(["weights", "vgg16"]))
""")


def test_imagenet_unavailable_falls_back_to_random_or_raises(tmp_path):
    home = tmp_path / "keras_home"
    home.mkdir()
    dead_proxy = "http://127.0.0.1:9"  # refused at once: no network even where there is one
    env = {**os.environ, "KERAS_HOME": str(home), "https_proxy": dead_proxy,
           "HTTPS_PROXY": dead_proxy, "http_proxy": dead_proxy, "HTTP_PROXY": dead_proxy,
           "no_proxy": "", "NO_PROXY": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, "-c", NO_NETWORK_SCRIPT], env=env, text=True,
                         capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "SOURCE random (imagenet unavailable)" in out
    file_name = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    sentence = next(line for line in out.splitlines() if line.startswith("ImageNet weights"))
    for part in ("training continues from random initialisation", "make weights",
                 file_name, str(home / "models")):
        assert part in sentence
    assert "RAISED" in out and "require_pretrained=True" in out
    assert "EXIT 1" in out
    assert "make weights failed" in run.stderr and "Traceback" not in run.stderr


# ---------------------------------------------------------------------------------------------
# Heads


def test_dense_head_structure():
    head = networks.build_head("dense", 32, 5, sizes=(16, 8), dropout=(0.5, 0.2))
    assert head.name == "head" and head.output.shape[-1] == 5
    kinds = [type(layer).__name__ for layer in head.layers[1:]]
    assert kinds == ["Dense", "Dropout", "BatchNormalization", "ReLU"] * 2 + ["Dense"]
    assert isinstance(head.get_layer("dense1").kernel_initializer, keras.initializers.GlorotNormal)


def test_head_must_match_classes_and_features():
    with pytest.raises(ValueError, match="5 outputs but there are 3 classes"):
        networks.build_transfer("vgg16", (32, 32, 3), 3, weights=None,
                              head=networks.build_head("dense", 512, 5))
    model = networks.build_transfer("vgg16", (32, 32, 3), 3, weights=None)
    with pytest.raises(ValueError, match="takes 100 features but the backbone gives 512"):
        networks.replace_head(model, networks.build_head("quasi_svm", 100, 3))


def test_replace_head_keeps_the_backbone():
    model = networks.build_transfer("vgg16", (32, 32, 3), 3, weights=None)
    svm = networks.build_head("quasi_svm", 512, 3, output_dim=32)
    new = networks.replace_head(model, svm)
    assert new.get_layer("backbone") is model.get_layer("backbone")
    assert new.get_layer("head") is svm
    assert new.weights_source == "random" and new.name == "vgg16_quasi_svm"
    x = images(2, 32)
    features = np.asarray(keras.Model(model.input, model.get_layer("pooling").output)(x))
    np.testing.assert_allclose(np.asarray(new(x)), np.asarray(svm(features)), rtol=1e-5)


def blobs(n_per_class=40, dim=16, num_classes=3, seed=1):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2, (num_classes, dim))
    labels = np.repeat(np.arange(num_classes), n_per_class)
    x = (centres[labels] + rng.normal(0, 1, (len(labels), dim))).astype("float32")
    return x, one_hot(labels, num_classes)


@pytest.mark.parametrize("loss", [layers.multiclass_hinge, "categorical_crossentropy"])
def test_quasi_svm_head_learns(loss):
    keras.utils.set_random_seed(3)
    x, y = blobs()
    head = networks.build_head("quasi_svm", 16, 3, output_dim=512)
    head.compile(keras.optimizers.Adam(1e-2), loss, metrics=["accuracy"])
    history = head.fit(x, y, epochs=8, batch_size=30, verbose=0).history
    assert history["loss"][-1] < 0.7 * history["loss"][0]
    assert history["accuracy"][-1] > 0.9
    np.testing.assert_allclose(np.asarray(head(x)).sum(axis=1), 1.0, atol=1e-5)


def test_multiclass_hinge_is_the_svm_hinge_of_the_scores():
    rng = np.random.default_rng(0)
    scores = rng.normal(0, 2, (50, 4)).astype("float32")
    labels = rng.integers(0, 4, 50)
    probs = np.asarray(keras.ops.softmax(scores))
    got = np.asarray(layers.multiclass_hinge(one_hot(labels, 4), probs))
    true = scores[np.arange(50), labels]
    others = np.where(np.eye(4, dtype=bool)[labels], -np.inf, scores).max(axis=1)
    np.testing.assert_allclose(got, np.maximum(0, 1 + others - true), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# RandomFourierFeatures


def kernel_error(kernel, scale, output_dim=8192):
    """Mean and max absolute error of feature inner products against the exact kernel on 40
    random 8-dimensional points (780 pairs plus the diagonal)."""
    x = np.random.default_rng(0).normal(0, 0.4, (40, 8)).astype("float32")
    layer = layers.RandomFourierFeatures(output_dim, kernel_initializer=kernel, scale=scale)
    z = np.asarray(layer(x))
    diff = x[:, None] - x[None]
    exact = (np.exp(-(diff ** 2).sum(-1) / (2 * scale ** 2)) if kernel == "gaussian"
             else np.exp(-np.abs(diff).sum(-1) / scale))
    error = np.abs(z @ z.T - exact)
    return error.mean(), error.max(), exact


@pytest.mark.parametrize("kernel,scale", [("gaussian", 1.0), ("laplacian", 4.0)])
def test_random_fourier_features_approximate_the_kernel(kernel, scale):
    # Each inner product averages D terms of variance <= 3/4: standard error sqrt(0.75/D),
    # about 0.0096 for D = 8192, so the mean absolute error is near 0.008. Measured over 20
    # seeds: mean 0.007-0.012, max over the 820 pairs 0.044 at worst. Asserted: mean < 0.02,
    # max < 0.08.
    keras.utils.set_random_seed(0)
    mean, worst, exact = kernel_error(kernel, scale)
    assert exact.min() < 0.3 and exact[~np.eye(40, dtype=bool)].max() > 0.6  # a real range
    assert mean < 0.02, mean
    assert worst < 0.08, worst


def test_random_fourier_features_default_scale_and_weights():
    gaussian = layers.RandomFourierFeatures(16)
    gaussian.build((None, 50))
    assert float(np.asarray(gaussian.kernel_scale)[0]) == pytest.approx(5.0)  # sqrt(50 / 2)
    laplacian = layers.RandomFourierFeatures(16, kernel_initializer="laplacian")
    laplacian.build((None, 50))
    assert float(np.asarray(laplacian.kernel_scale)[0]) == pytest.approx(1.0)
    assert gaussian.trainable_weights == []
    assert {w.name for w in gaussian.non_trainable_weights} == {"unscaled_kernel", "bias",
                                                                "kernel_scale"}


def test_random_fourier_features_save_and_load(tmp_path):
    inputs = keras.Input((6,))
    outputs = layers.RandomFourierFeatures(64, kernel_initializer="laplacian", scale=2.0)(inputs)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    model.save(tmp_path / "rff.keras")
    loaded = keras.saving.load_model(tmp_path / "rff.keras")
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    layer = loaded.layers[-1]
    assert isinstance(layer, layers.RandomFourierFeatures)
    assert (layer.output_dim, layer.kernel_initializer, layer.scale) == (64, "laplacian", 2.0)


def test_trainable_scale_learns_and_features_stay_fixed():
    keras.utils.set_random_seed(5)
    x, y = blobs(dim=8)
    head = networks.build_head("quasi_svm", 8, 3, output_dim=256, trainable_scale=True, scale=0.5)
    rff = head.get_layer("random_fourier_features")
    assert [w.name for w in rff.trainable_weights] == ["kernel_scale"]
    kernel, bias = np.asarray(rff.unscaled_kernel).copy(), np.asarray(rff.bias).copy()
    head.compile(keras.optimizers.Adam(5e-2), layers.multiclass_hinge)
    head.fit(x, y, epochs=3, batch_size=30, verbose=0)
    assert float(np.asarray(rff.kernel_scale)[0]) != pytest.approx(0.5, abs=1e-3)
    np.testing.assert_array_equal(np.asarray(rff.unscaled_kernel), kernel)
    np.testing.assert_array_equal(np.asarray(rff.bias), bias)


def test_outputs_are_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        built = [networks.build_baseline((28, 28, 1), 3),
                 networks.build_transfer("vgg16", (32, 32, 3), 3, weights=None),
                 networks.build_transfer("vgg16", (32, 32, 3), 3, weights=None, head="quasi_svm",
                                       head_options={"output_dim": 16})]
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for model in built:
        assert model.get_layer("rescale" if "baseline" in model.name else "backbone") \
            .dtype_policy.compute_dtype == "float16"
        assert model.output.dtype == "float32", model.name


def test_calibrating_batch_norm_revives_a_random_backbone():
    keras.utils.set_random_seed(0)
    model = networks.build_transfer("inceptionv3", (75, 75, 3), 2, weights=None)
    images = np.random.default_rng(0).uniform(0, 255, (32, 75, 75, 3)).astype("float32")
    features = keras.Model(model.input, model.get_layer("pooling").output)
    spread_before = np.asarray(features(images)).std(axis=0).mean()
    data = tf.data.Dataset.from_tensor_slices((images, np.zeros((32, 2), "float32"))).batch(8)
    assert backbones.calibrate_batch_norm(model, data) == 94  # every BN layer of InceptionV3
    spread_after = np.asarray(features(images)).std(axis=0).mean()
    # moving statistics of 0 and 1 collapse the features of a random deep backbone
    assert spread_before < 1e-3 < spread_after
    assert all(layer.momentum == 0.99 for layer in model.get_layer("backbone").layers
               if isinstance(layer, keras.layers.BatchNormalization))


def test_a_difference_of_gaussians_channel_is_computed_inside_the_baseline(tmp_path):
    """Catches a DoG channel that is not zero on flat images, misses an edge, or is lost when
    the model is saved (prediction must need no extra step)."""
    dog = layers.DifferenceOfGaussians()
    flat = np.full((1, 16, 16, 3), 0.5, dtype="float32")
    assert np.abs(np.asarray(dog(flat))).max() < 1e-6
    edge = np.zeros((1, 16, 16, 3), dtype="float32")
    edge[:, :, 8:] = 1.0
    response = np.asarray(dog(edge))[0, :, :, 0]
    assert response.shape == (16, 16) and np.abs(response[:, 6:10]).max() > 0.05
    assert np.abs(response[:, :2]).max() < 1e-3       # beyond the wider blur of the edge

    model = networks.build_baseline((16, 16, 3), 3, blocks=1, dog=True)
    assert model.get_layer("with_dog").output.shape[-1] == 4
    assert model.build_settings["dog"] is True
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)
