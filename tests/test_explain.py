"""shared.evaluation.explain: layers found inside a nested backbone, a tap model that reproduces
the model, Grad-CAM's refusal of a model without convolutions."""

import keras
import numpy as np
import pytest
from conftest import images, nested_model

from shared.evaluation import explain

pytestmark = pytest.mark.trains  # not in `make check`


def test_conv_layers_are_found_inside_the_nested_backbone():
    model = nested_model()
    assert [p for p, _ in explain.conv_layers(model)] == [
        "backbone/scale", "backbone/conv1", "backbone/pool", "backbone/conv2"]
    assert explain.last_conv_layer(model)[0] == "backbone/conv2"
    assert explain.first_conv_layer(model)[0] == "backbone/conv1"
    with pytest.raises(ValueError, match="conv3.*backbone/conv1, .*backbone/conv2"):
        explain.find_layer(model, "conv3")


def test_tap_model_reproduces_the_model_and_exposes_inner_layers():
    model = nested_model()
    conv1, conv2 = (explain.find_layer(model, n)[1] for n in ("conv1", "backbone/conv2"))
    tap = explain.tap_model(model, [conv1, conv2])
    x = images(2)
    a1, a2, out = tap(x, training=False)
    assert a1.shape == (2, 16, 16, 6) and a2.shape == (2, 8, 8, 8)
    np.testing.assert_allclose(out, model(x, training=False), atol=1e-6)


def test_grad_cam_needs_a_convolutional_model():
    inputs = keras.Input((4,))
    dense = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    with pytest.raises(ValueError, match="no layer with a 4-D output"):
        explain.grad_cam_heatmaps(dense, np.zeros((1, 4, 4, 3)))
