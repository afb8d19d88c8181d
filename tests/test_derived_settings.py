"""Settings a profile leaves open come from the dataset: image size, batch size, cache."""

from __future__ import annotations

import json

import keras
import pytest
from conftest import make_class_folder

from shared import config, data
from shared.evaluation import evaluate
from shared.models import networks
from shared.training import experiment

pytestmark = pytest.mark.trains  # not in `make check`

SPLIT_CFG = dict(seed=3, val_fraction=0.2, test_fraction=0.2, per_class=None,
                 test_per_class=None)


@pytest.fixture(scope="module")
def photos_64(tmp_path_factory):
    """Three classes of ten 64x64 images, and its split in a run folder."""
    root = make_class_folder(tmp_path_factory.mktemp("photos") / "photos", per_class=10,
                             size=(64, 64))
    run_dir = tmp_path_factory.mktemp("run")
    return root, run_dir, data.prepare(root, run_dir, SPLIT_CFG)


def derived(profile, name, split, **overrides):
    overrides.setdefault("augment", "flip")     # "auto" would probe (tests/test_probe.py)
    cfg = config.settings(profile, name, **overrides)
    return cfg, experiment.derive_settings(cfg, split)


def test_image_size_follows_the_images_within_the_profile_and_backbone_bounds(photos_64):
    _, _, split = photos_64
    cfg, record = derived("cpu", "baseline", split)
    assert cfg["image_size"] == 64 and record["image_size"]["value"] == 64
    assert "64 px" in record["image_size"]["why"]
    assert cfg["batch_size"] == experiment.batch_size_for(64) == 64
    assert cfg["cache"] == "memory" and record["cache"]["value"] == "memory"
    assert cfg["epochs"] == experiment.epochs_for(len(split.part("train"))) == 40
    # capped by the profile: the smoke profile's baseline takes at most 32 px
    cfg, record = derived("smoke", "baseline", split)
    assert cfg["image_size"] == 32 and "capped at max_image_size=32" in \
        record["image_size"]["why"]
    # raised to the smallest input InceptionV3 accepts
    cfg, record = derived("cpu", "inceptionv3", split)
    assert cfg["image_size"] == 75 and "raised to 75" in record["image_size"]["why"]


def test_explicit_values_win(photos_64):
    _, _, split = photos_64
    cfg, record = derived("cpu", "baseline", split, image_size=48, batch_size=8,
                          cache="disk", epochs=3)
    assert (cfg["image_size"], cfg["batch_size"], cfg["cache"], cfg["epochs"]) == \
        (48, 8, "disk", 3)
    assert record == {} and cfg["derived_settings"] == {}


def test_batch_size_shrinks_as_images_grow_and_epochs_as_images_abound():
    sizes = [experiment.batch_size_for(s) for s in (28, 64, 96, 224)]
    assert sizes == [64, 64, 32, 16]
    assert [experiment.epochs_for(n) for n in (57_000, 2_657, 50)] == [12, 38, 40]


def test_fashion_mnist_stays_at_28_px(tmp_path):
    cfg = config.settings("smoke", "baseline")
    split = data.prepare("fashion-mnist", tmp_path, cfg)
    for profile in ("smoke", "cpu", "gpu"):
        cfg, _ = derived(profile, "baseline", split)
        assert cfg["image_size"] == 28, profile


def test_derived_settings_are_recorded_in_metrics_json(photos_64, tmp_path):
    root, run_dir, _ = photos_64
    cfg = config.experiment("baseline", "cpu", str(root), run_dir, augment="flip", **{
        k: v for k, v in SPLIT_CFG.items()})
    split, train_ds, _, _ = experiment.start(cfg)
    assert cfg["image_size"] == 64
    model = networks.build_baseline((64, 64, 3), len(split.class_names), filters=4, dense=(8,))
    model.compile(optimizer="adam", loss=keras.losses.CategoricalCrossentropy())
    evaluate.finish(model, split, cfg)
    recorded = json.loads((cfg["out_dir"] / "metrics.json").read_text())
    assert recorded["derived_settings"]["image_size"]["value"] == 64
    assert recorded["image_size"] == 64
    assert "derived_settings" not in recorded["settings"]
