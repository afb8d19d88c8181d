"""shared.studies.with_without: the baseline with and without an option (the DoG channel),
trained in sub-folders of its own, read back rather than retrained, and recorded in metrics.json."""

from __future__ import annotations

import pytest
from conftest import make_class_folder

from shared import data, results
from shared.evaluation import evaluate
from shared.files import read_json
from shared.models import networks
from shared.studies import with_without
from shared.training import recipes

pytestmark = pytest.mark.trains  # not in `make check`

CLASSES = ("cat", "dog", "owl")


@pytest.fixture
def experiment(tmp_path):
    root = make_class_folder(tmp_path / "animals", CLASSES, per_class=8, size=(12, 12))
    run_dir = tmp_path / "run"
    cfg = dict(seed=1, val_fraction=0.25, test_fraction=0.25, per_class=None,
               test_per_class=None, image_size=8, batch_size=8, augment="none",
               class_weight=False, oversample=False, cache="memory", train_per_class=None,
               experiment="baseline", profile="smoke", dataset="animals", run_dir=run_dir,
               out_dir=run_dir / "baseline", fresh=False)
    cfg["out_dir"].mkdir(parents=True)
    return cfg, data.prepare(root, run_dir, cfg)


def test_dog_with_and_without_trains_both_arms_apart_and_reads_them_back(
        experiment, monkeypatch):
    cfg, split = experiment
    model = networks.build_baseline((8, 8, 3), 3, blocks=1, dense=(8,))
    evaluate.finish(model, split, cfg)
    before = read_json(cfg["out_dir"] / "metrics.json")
    # the notebook's recipe: a warm-up longer than the arms' training is cut to it
    recipe = recipes.Recipe(epochs=5, learning_rate=1e-3, schedule="cosine", warmup_epochs=2)
    architecture = {"blocks": 1, "dense": (8,)}

    result = with_without.with_and_without(cfg, split, architecture, recipe, "dog",
                                                train_per_class=2, epochs=1,
                                                label="the DoG channel")
    root = cfg["out_dir"] / "dog_comparison"
    assert result["folder"] == "baseline/dog_comparison"
    assert (result["train_per_class"], result["train_images"], result["epochs"]) == (2, 6, 1)
    for arm in ("without", "with"):
        assert results.is_complete(root / arm), arm
        assert (root / arm / "model.keras").is_file()
        assert result[arm]["epochs_run"] == 1                  # dog_epochs, not the recipe's 5
    # the arms differ by the DoG layer alone
    assert result["with"]["params"] > result["without"]["params"]
    with_dog = read_json(root / "with" / "metrics.json")
    assert with_dog["experiment"] == "baseline dog with"
    test = split.part("test")
    comparison = result["comparison"]
    assert comparison["images"] == len(test) and comparison["accuracy"] == pytest.approx(
        result["with"]["accuracy"])
    assert comparison["reference_accuracy"] == pytest.approx(result["without"]["accuracy"])
    assert "the baseline with the DoG channel" in result["sentence"]
    assert "McNemar" in result["sentence"] and "on the same 6 training images" in \
        result["sentence"]
    # the experiment's own files are untouched
    assert read_json(cfg["out_dir"] / "metrics.json") == before

    # a second time (a rerun of the notebook), nothing is trained again
    def no_training(*args, **kwargs):
        raise AssertionError("a finished arm was trained again")

    fit = with_without.fit
    monkeypatch.setattr(with_without, "fit", no_training)
    assert with_without.with_and_without(cfg, split, architecture, recipe, "dog",
                                              train_per_class=2, epochs=1,
                                              label="the DoG channel") == result
    # a fresh start (make run … FRESH=1) sets the finished arms aside and trains them again
    monkeypatch.setattr(with_without, "fit", fit)
    with_without.with_and_without(cfg | {"fresh": True}, split, architecture, recipe,
                                       "dog", train_per_class=2, epochs=1)
    for arm in ("without", "with"):
        assert (root / arm / "previous" / "metrics.json").is_file()
        assert results.is_complete(root / arm)

    recorded = results.record(cfg["out_dir"], dog_comparison=result)
    assert read_json(cfg["out_dir"] / "metrics.json")["dog_comparison"]["comparison"] == \
        comparison
    assert recorded["accuracy"] == before["accuracy"]
    assert results.is_complete(cfg["out_dir"])
