"""shared.studies.baseline: a trial's settings reach the baseline CNN, its recipe and its data;
``plain_epochs`` trains the first epochs without augmentation; ``train_seed`` changes the
initialisation and the order of the images, never the split or the training images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shared import config, data
from shared.studies import baseline, study
from shared.training import experiment
from tests.conftest import make_class_folder

pytestmark = pytest.mark.trains  # not in `make check`


@pytest.fixture
def trial_cfg(tmp_path):
    folder = make_class_folder(tmp_path / "images", per_class=10, size=(16, 16))
    cfg = config.experiment("ablations", "smoke", str(folder), tmp_path / "run", image_size=16,
                            epochs=2)
    split = study.start(cfg)
    return cfg, split


def test_trial_settings_reach_the_model(trial_cfg):
    cfg, split = trial_cfg
    tcfg = cfg | {"blocks": 1, "filters": 4, "dense": 8, "dropout": 0.1}
    model = baseline.build(tcfg, len(split.class_names))
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert [conv.filters for conv in convs] == [4]
    assert model.get_layer(index=-1).units == 3
    assert baseline.recipe(tcfg | {"optimizer": "sgd"}).optimizer == "sgd"
    assert baseline.recipe(tcfg, 1).epochs == 1


def test_plain_epochs_train_first_without_augmentation(trial_cfg, tmp_path):
    cfg, split = trial_cfg
    tcfg = cfg | {"out_dir": tmp_path / "t", "augment": "basic", "plain_epochs": 1,
                  "blocks": 1, "filters": 4, "dense": (8,)}
    _, history = baseline.train_trial(study.Trial("t", {}), tcfg, split)
    assert history["epoch"].tolist() == [1, 2]
    assert history["phase"].tolist() == ["plain", "train"]
    with pytest.raises(ValueError, match="plain_epochs"):
        baseline.train_trial(study.Trial("t", {}), tcfg | {"plain_epochs": 3}, split)


def test_train_seed_changes_initialisation_and_order_not_the_images(trial_cfg):
    cfg, split = trial_cfg
    cfg = cfg | {"train_per_class": 5}

    def first_batch_and_weights(train_seed):
        tcfg = cfg | {"train_seed": train_seed}
        experiment.set_seed(config.train_seed(tcfg))
        weights = baseline.build(tcfg, 3).get_weights()[0]
        experiment.set_seed(0)    # the pipeline's own seeding, not the global seed, must differ
        train_ds, _, _ = data.training_data(split, tcfg)
        labels = np.concatenate([y.numpy().argmax(1) for _, y in train_ds])
        return weights, labels

    same = first_batch_and_weights(None)
    assert config.train_seed(cfg) == cfg["seed"]
    other = first_batch_and_weights(cfg["seed"] + 1)
    assert not np.allclose(same[0], other[0])              # initialisation
    assert same[1].tolist() != other[1].tolist()            # shuffling
    assert sorted(same[1]) == sorted(other[1])              # the same training images
    # and the run's split does not move: the study reads it back with another train_seed
    again = study.start(cfg | {"train_seed": 7})
    pd.testing.assert_frame_equal(again.frame, split.frame)
