"""Model surgery (backbones.cut), block boundaries, training in any number of phases, and the
trials of the transfer studies (shared.studies.transfer)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from shared.models import backbones, networks
from shared.studies import transfer
from shared.training import recipes
from shared.training.transfer import Phase, fit_phases, set_trainable
from tests.test_train import FAST, tiny_transfer

pytestmark = pytest.mark.trains  # not in `make check`

# DenseNet121 without its top at 32 px with a plain softmax head over 8 classes, per dense
# blocks removed; the scene report's table: 7 M, 5 M, 1.5 M and 380,000 parameters.
DENSENET_PARAMETERS = {0: 7_045_704, 1: 4_851_272, 2: 1_446_984, 3: 382_792}


def densenet(remove_blocks, weights=None, sizes=()):
    return networks.build_transfer("densenet121", (32, 32, 3), 8, weights=weights,
                                 remove_blocks=remove_blocks,
                                 head_options={"sizes": list(sizes)})


@pytest.mark.parametrize("removed", sorted(DENSENET_PARAMETERS))
def test_densenet_cut_before_each_dense_block_has_the_reports_parameter_counts(removed):
    model = densenet(removed)
    assert model.count_params() == DENSENET_PARAMETERS[removed]
    assert model.build_settings["remove_blocks"] == removed
    last = model.get_layer("backbone").layers[-1].name
    assert last == ("relu", "pool4_pool", "pool3_pool", "pool2_pool")[removed]


def test_a_cut_backbone_keeps_its_loaded_weights_and_preprocessing(tmp_path):
    full, _ = backbones.build_backbone("densenet121", (32, 32, 3), weights=None)
    path = tmp_path / "densenet.weights.h5"
    full.save_weights(str(path))
    cut = densenet(2, weights=str(path))
    np.testing.assert_array_equal(cut.get_layer("backbone").get_layer("conv1_conv").kernel,
                                  full.get_layer("conv1_conv").kernel)
    assert "preprocess" in [layer.name for layer in cut.layers]
    with pytest.raises(ValueError, match="remove_blocks of densenet121 must be an integer "
                                         "from 0 to 3"):
        densenet(4)


def test_block_boundaries_unfreeze_whole_blocks():
    backbone, _ = backbones.build_backbone("vgg19", (32, 32, 3), weights=None)
    bounds = backbones.block_boundaries(backbone, "vgg19")
    assert bounds == {0: 0, 1: 5, 2: 10, 3: 15, 4: 18, 5: 22}
    set_trainable(backbone, bounds[1])
    assert [layer.name for layer in backbone.layers if layer.trainable] == \
        ["block5_conv1", "block5_conv2", "block5_conv3", "block5_conv4", "block5_pool"]
    set_trainable(backbone, bounds[1], bottom=bounds[5] - bounds[4])
    trained = [layer.name for layer in backbone.layers if layer.trainable]
    assert trained[:4] == ["input_layer", "block1_conv1", "block1_conv2", "block1_pool"] \
        or trained[1:4] == ["block1_conv1", "block1_conv2", "block1_pool"]
    assert "block3_conv1" not in trained and "block5_conv1" in trained


def test_schedules_become_phases():
    cfg = dict(learning_rate=1e-3, epochs=2, fine_tune_lr=1e-5, fine_tune_epochs=1)
    bounds = {0: 0, 1: 5, 2: 10, 3: 15, 4: 18, 5: 22}
    three = transfer.phases("three-stage", bounds, cfg)
    assert [(p.name, p.unfreeze) for p in three] == [("head", 0), ("fine_tune_top", 10),
                                                     ("fine_tune_all", "all")]
    assert [p.recipe.learning_rate for p in three] == [1e-3, 1e-5, 1e-5]
    both = transfer.phases("both-ends", bounds, cfg)[1]
    assert (both.unfreeze, both.unfreeze_bottom) == (5, 4)
    assert transfer.phases("top-2", bounds, cfg)[1].unfreeze == 10
    assert len(transfer.phases("head", bounds, cfg)) == 1
    with pytest.raises(ValueError, match="the backbone has 5 blocks"):
        transfer.phases("top-6", bounds, cfg)
    with pytest.raises(ValueError, match="unknown schedule 'sideways'"):
        transfer.phases("sideways", bounds, cfg)


def test_three_phases_train_in_turn_with_more_layers_each(tmp_path):
    model = tiny_transfer()
    data = tf.data.Dataset.from_tensor_slices((
        np.random.default_rng(0).uniform(0, 255, (24, 16, 16, 3)).astype("float32"),
        np.eye(3, dtype="float32")[np.arange(24) % 3])).batch(8)
    recipe = recipes.Recipe(epochs=1, learning_rate=1e-3, **FAST)
    phases = [Phase("head", recipe), Phase("top", recipe, 3),
              Phase("all", recipe, "all")]
    seen = []
    history = fit_phases(model, data, data, phases, tmp_path, feature_cache=False,
                         after_phase=lambda name, m: seen.append(name))
    assert history.phase.tolist() == ["head", "top", "all"]
    assert history.epoch.tolist() == [1, 2, 3]
    assert seen == ["head", "top"]
    trainable = [model.phase_summary[p.name]["backbone_trainable_layers"] for p in phases]
    assert trainable[0] == 0 < trainable[1] < trainable[2]
    with pytest.raises(ValueError, match="distinct names"):
        fit_phases(model, data, data, [phases[0], phases[0]], tmp_path)


def test_the_trials_of_the_two_studies():
    names = [t.name for t in transfer.backbone_trials()]
    assert len(names) == len(set(names)) == len(backbones.BACKBONES) + 1 + 8
    assert set(backbones.BACKBONES) <= set(names)
    sizes = [backbones.BACKBONES[n].params for n in names[:len(backbones.BACKBONES)]]
    assert sizes == sorted(sizes) and names[0] == "efficientnetb0"   # a budget cuts the big
    assert {"inceptionresnetv2-full", "densenet121-cut1", "densenet121-cut3-dense1024"} <= \
        set(names)
    vgg = [t.name for t in transfer.fine_tuning_trials("vgg19")]
    assert vgg == ["head-only", "top-1", "top-2", "all", "three-stage", "both-ends"]
    inception = [t.name for t in transfer.fine_tuning_trials("inceptionv3")]
    assert "top-5" in inception          # half of its 11 blocks


# blocks of each backbone (Xception: 12 residual additions and its last activation)
BLOCKS = {"vgg16": 5, "vgg19": 5, "inceptionv3": 11, "inceptionresnetv2": 6, "xception": 13,
          "resnet50v2": 4, "densenet121": 4, "efficientnetb0": 8}


def test_every_block_end_is_found_in_its_backbone():
    """Catches a stage name that is not a layer of its backbone, or one that depends on what
    else the session built (Keras numbers unnamed layers per session)."""
    keras.layers.Add()      # shifts the numbers of unnamed Add layers built after it
    for name, spec in backbones.BACKBONES.items():
        model = getattr(keras.applications, spec.constructor)(
            include_top=False, weights=None, input_shape=(spec.min_size,) * 2 + (3,))
        ends = backbones.stage_ends(model, name)
        assert len(ends) == BLOCKS[name] == spec.blocks, (name, ends)
        assert model.layers[-1].name == ends[-1], name
        assert len(backbones.block_boundaries(model, name)) == BLOCKS[name] + 1
