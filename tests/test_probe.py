"""Settings chosen from evidence: ``augment="auto"``'s probe (shared.training.probe) and the
epochs of a training budget (shared.training.budget)."""

from __future__ import annotations

import pandas as pd
import pytest

from shared import config, data, files
from shared.models import networks
from shared.training import budget, experiment, probe, recipes
from tests.conftest import make_class_folder

pytestmark = pytest.mark.trains  # not in `make check`


def row(policy, accuracy, images=400):
    return {"policy": policy, "held_out_accuracy": accuracy, "held_out_images": images}


def test_the_best_policy_wins_unless_a_simpler_one_ties_with_it():
    # one standard error at 80% of 400 images: 2.0 points
    rows = [row("none", 0.70), row("flip", 0.79), row("dihedral", 0.80), row("basic", 0.60)]
    assert probe.choose(rows)[0] == "flip"
    choice, why = probe.choose([row("none", 0.70), row("flip", 0.75), row("dihedral", 0.80),
                                row("basic", 0.60)])
    assert choice == "dihedral" and why.startswith("best held-out accuracy")


def test_fashion_mnist_keeps_its_policy_without_a_probe(tmp_path, monkeypatch):
    monkeypatch.setattr(probe, "run_probe", lambda *a: pytest.fail("probed Fashion-MNIST"))
    split = data.Split(tmp_path, ["a"], pd.DataFrame(columns=["path", "label", "split"]),
                       pd.DataFrame(), {"spec": data.FASHION_MNIST})
    cfg = {"augment": "auto", "run_dir": tmp_path}
    assert probe.resolve_augment(split, cfg)["value"] == cfg["augment"] == "flip"


@pytest.fixture
def probe_cfg(tmp_path):
    folder = make_class_folder(tmp_path / "images", per_class=16, size=(16, 16))
    cfg = config.experiment("baseline", "smoke", str(folder), tmp_path / "run", image_size=16,
                            augment="auto")
    return cfg


def test_auto_probes_once_per_run_on_held_out_images_never_test(probe_cfg, monkeypatch):
    cfg = probe_cfg
    split = experiment.begin(cfg)
    derived = cfg["derived_settings"]["augment"]
    assert cfg["augment"] == derived["value"] in probe.CANDIDATES
    assert [r["policy"] for r in derived["probe"]] == list(probe.CANDIDATES)
    held = probe.held_out_split(split, cfg)
    assert not set(held.frame["path"]) & set(split.part("test")["path"])
    assert not set(held.part("train")["path"]) & set(held.part("val")["path"])
    assert derived["probe"][0]["held_out_images"] == len(held.part("val"))
    assert files.read_json(cfg["run_dir"] / probe.PROBE_FILE)["choice"] == cfg["augment"]

    def no_second_probe(*args):
        raise AssertionError("the run's probe was run again")

    monkeypatch.setattr(probe, "run_probe", no_second_probe)
    again = config.experiment("baseline", "smoke", cfg["dataset"], cfg["run_dir"],
                              image_size=16, augment="auto")
    experiment.begin(again)
    assert again["augment"] == cfg["augment"]
    given = config.experiment("baseline", "smoke", cfg["dataset"], cfg["run_dir"],
                              image_size=16, augment="basic")
    experiment.begin(given)
    assert given["augment"] == "basic" and "augment" not in given["derived_settings"]
    assert probe.choice_sentence(given) == "augment 'basic': given, no probe"


def test_epochs_fit_the_budget_from_the_first_epoch_and_a_rerun_keeps_them(probe_cfg):
    assert budget.epochs_within(60, 7) == 8 and budget.epochs_within(60, 7.2) == 7
    assert budget.epochs_within(60, 100) == budget.EPOCH_RANGE[0]
    cfg = probe_cfg | {"augment": "flip", "train_minutes": 0.05, "epochs": None}
    split = experiment.begin(cfg)
    assert cfg["epochs_from_budget"]
    train_ds, val_ds, weights = data.training_data(split, cfg)
    model = networks.build_baseline((16, 16, 3), 3, blocks=1, filters=4, dense=(8,))
    history = budget.fit_within_budget(model, train_ds, val_ds, recipes.baseline_recipe(cfg),
                                       cfg, class_weight=weights)
    chosen = files.read_json(cfg["out_dir"] / budget.BUDGET_FILE)
    assert chosen["epochs"] == budget.epochs_within(3, chosen["epoch_seconds"])
    assert cfg["epochs"] == chosen["epochs"] == len(history)
    assert list(history["phase"].unique()) == ["first", "train"]
    assert "fit train_minutes" not in cfg["derived_settings"]["epochs"]["why"]
    # a resumed run (both phases finished) trains nothing and keeps the recorded choice
    files.write_json(cfg["out_dir"] / budget.BUDGET_FILE, chosen | {"epochs": 99})
    resumed = cfg | {"epochs": None}
    again = budget.fit_within_budget(model, train_ds, val_ds, recipes.baseline_recipe(cfg),
                                     resumed, class_weight=weights)
    pd.testing.assert_frame_equal(again, history)
    assert resumed["epochs"] == 99


def test_the_clock_leaves_out_the_slow_first_batches():
    clock = budget.EpochClock()
    clock.batches = [5.0, 1.0, 0.1, 0.1, 0.1, 0.1]
    clock.validation = 0.5
    assert clock.steady_seconds() == pytest.approx(0.1 * 6 + 0.5)


def test_the_caches_are_filled_before_the_first_epoch_is_timed():
    """Catches a partial read: a cache read to its end only keeps what it read."""
    import numpy as np
    import tensorflow as tf
    decoded = []

    def decode(x):
        decoded.append(int(x))
        return x

    ds = (tf.data.Dataset.range(5).map(lambda x: tf.numpy_function(decode, [x], tf.int64))
          .cache().batch(2))
    budget.fill_caches(ds, None)
    assert sorted(decoded) == list(range(5))
    assert np.concatenate(list(ds.as_numpy_iterator())).tolist() == list(range(5))
    assert len(decoded) == 5        # the second read came from the cache


def test_a_reproduction_trains_the_epochs_the_budget_chose(tmp_path):
    """Catches `make reproduce` measuring the budget again (on a busier machine, other epochs)."""
    from shared.run import reproduce

    original, target = tmp_path / "run", tmp_path / "run-reproduced-1"
    files.write_json(original / "baseline" / budget.BUDGET_FILE, {"epochs": 66})
    files.write_json(original / "vgg19" / "metrics.json", {})
    reproduce.keep_budgeted_epochs(original, target)
    assert files.read_json(target / "baseline" / budget.BUDGET_FILE) == {"epochs": 66}
    assert not (target / "vgg19").exists()
