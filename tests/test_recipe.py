"""The baseline's recipe options (schedule, EMA, AdamW, label smoothing, random erasing) and the
learning-rate range test."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from shared.data import augment
from shared.models import networks
from shared.training import experiment, recipes
from shared.training.fitting import fit

pytestmark = pytest.mark.trains  # not in `make check`

CLASSES, SIZE, BATCH = 4, 16, 8


def tiny_data(count: int = 32, policy: str = "none", seed: int = 0):
    """``count`` images whose class is a bright quadrant, in batches of BATCH."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % CLASSES
    images = rng.uniform(0, 60, (count, SIZE, SIZE, 3)).astype("float32")
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 2)
        images[i, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8] += 180
    ds = tf.data.Dataset.from_tensor_slices(
        (images, tf.one_hot(labels, CLASSES))).batch(BATCH)
    if policy != "none":
        ds = ds.map(augment.build(policy, CLASSES, seed))
    return ds


def tiny_model():
    experiment.set_seed(0)
    return networks.build_baseline((SIZE, SIZE, 3), CLASSES, filters=4, dense=(8,))


def test_cosine_schedule_warms_up_then_decays_to_zero():
    recipe = recipes.Recipe(learning_rate=0.1, epochs=4, schedule="cosine", warmup_epochs=1)
    lr = recipes.learning_rate_schedule(recipe, steps_per_epoch=10)   # 40 steps, 10 warm-up
    at = {step: float(lr(step)) for step in (0, 5, 10, 25, 40)}
    assert at[0] == pytest.approx(0.0)
    assert at[5] == pytest.approx(0.05)          # halfway up the warm-up
    assert at[10] == pytest.approx(0.1)          # the peak
    assert at[25] == pytest.approx(0.05)         # halfway down the cosine
    assert at[40] == pytest.approx(0.0, abs=1e-9)
    assert recipes.learning_rate_schedule(recipes.Recipe(learning_rate=0.1)) == 0.1
    with pytest.raises(ValueError, match="number of batches per epoch"):
        recipes.learning_rate_schedule(recipe, None)
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        recipes.Recipe(schedule="step")


@pytest.mark.parametrize("options,policy", [
    (dict(schedule="cosine", warmup_epochs=1), "none"),
    (dict(label_smoothing=0.1), "none"),
    (dict(optimizer="adamw", weight_decay=0.01), "none"),
    (dict(ema=0.9), "none"),
    ({}, "flip+erase"),
])
def test_each_recipe_option_trains(options, policy, tmp_path):
    model = tiny_model()
    before = [w.copy() for w in model.get_weights()]
    recipe = recipes.Recipe(learning_rate=1e-2, epochs=2, patience=None, restore_best=False,
                            **options)
    history = fit(model, tiny_data(policy=policy), tiny_data(seed=1), recipe, tmp_path)
    assert len(history) == 2 and np.isfinite(history["loss"]).all()
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    recorded = model.recipes["train"]
    assert all(recorded[k] == v for k, v in options.items())


def test_ema_leaves_the_averaged_weights_in_the_model(tmp_path):
    """With a slow average (momentum 0.999) the averaged weights stay near those after the
    first step (where Keras starts the average): eight steps move them much less."""
    moved = {}
    for ema in (None, 0.999):
        model = tiny_model()
        start = [np.array(w) for w in model.trainable_weights]
        recipe = recipes.Recipe(learning_rate=5e-2, epochs=2, patience=None, restore_best=False,
                                ema=ema)
        fit(model, tiny_data(), None, recipe, tmp_path / str(ema))
        moved[ema] = sum(float(np.abs(np.asarray(w) - s).sum())
                         for w, s in zip(model.trainable_weights, start, strict=True))
    assert moved[0.999] < 0.5 * moved[None]


def test_baseline_recipe_and_architecture():
    recipe = recipes.baseline_recipe({"learning_rate": 2e-3, "epochs": 6})
    assert (recipe.schedule, recipe.warmup_epochs, recipe.epochs) == ("cosine", 1, 6)
    assert recipes.baseline_recipe({"learning_rate": 2e-3, "epochs": 6}, epochs=2).epochs == 2
    assert recipes.baseline_architecture(28) == {}
    big = recipes.baseline_architecture(96)
    assert big["pooling"] == "gap" and big["blocks"] == 4 and big["dropout"] == 0.0
    assert big["strided_stem"] is True
    assert networks.build_baseline((96, 96, 3), 8, **big).count_params() < 140_000


def test_lr_suggestion_is_not_the_noise_of_the_first_batches():
    # a loss that falls fastest near 1e-3 and rises after 1e-2, whose first two smoothed values
    # (barely averaged) drop by more in one step than the real descent does
    rates = np.geomspace(1e-5, 1.0, 100)
    log = np.log10(rates)
    smoothed = 2.3 - 0.65 / (1 + np.exp(-3 * (log + 3))) + 0.5 * np.clip(log + 2, 0, None) ** 2
    smoothed[0] += 0.15
    suggestion = recipes._suggest(rates, smoothed)
    assert 3e-4 < suggestion < 3e-3


def test_lr_finder_returns_increasing_rates_and_a_suggestion_inside_them():
    model = tiny_model()
    before = [w.copy() for w in model.get_weights()]
    found = recipes.find_learning_rate(model, tiny_data(), start_lr=1e-4, end_lr=10.0, steps=40)
    rates = found.learning_rates
    assert len(rates) >= 10 and np.all(np.diff(rates) > 0)
    assert rates[0] == pytest.approx(1e-4)
    assert rates[0] <= found.suggestion <= rates[-1]
    assert len(found.losses) == len(rates) == len(found.smoothed)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    # the suggestion lies where the loss falls, not beyond its minimum
    assert found.suggestion <= rates[int(np.argmin(found.smoothed))]
    with pytest.raises(ValueError, match="start_lr < end_lr"):
        recipes.find_learning_rate(model, tiny_data(), start_lr=1.0, end_lr=0.1)


def test_lr_finder_plot(tmp_path):
    from shared.reporting import plots

    found = recipes.LearningRateFinding(np.geomspace(1e-4, 1, 20), np.linspace(2, 1, 20),
                                      np.linspace(2, 1, 20), 1e-2)
    plots.lr_finder(found, tmp_path)
    assert (tmp_path / "figures" / "lr_finder.png").stat().st_size > 0


def test_recipe_benchmark_scores_each_variant(tmp_path):
    """benchmarks/recipe.py still runs (tiny settings) and writes one figure per variant."""
    import json
    import sys
    from pathlib import Path

    from conftest import make_class_folder

    folder = make_class_folder(tmp_path / "photos", per_class=8, size=(24, 24))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    try:
        import recipe as benchmark
    finally:
        sys.path.pop(0)
    out = tmp_path / "recipe.json"
    assert benchmark.main(["--dataset", str(folder), "--profile", "smoke", "--epochs", "1",
                           "--variants", "today,ema,recipe", "--run-dir",
                           str(tmp_path / "run"), "--json", str(out),
                           "--recipe", '{"optimizer": "adamw", "weight_decay": 0.05}']) == 0
    figures = json.loads(out.read_text())["figures"]
    assert figures["image_size"] == 24 and figures["epochs"] == 1
    assert set(figures["variants"]) == {"today", "ema", "recipe"}
    assert figures["variants"]["ema"]["recipe"]["ema"] == 0.998
    assert figures["variants"]["ema"]["augment"] == "flip+erase"
    shipped = figures["variants"]["recipe"]["recipe"]
    assert (shipped["optimizer"], shipped["weight_decay"], shipped["schedule"]) == (
        "adamw", 0.05, "cosine")
    assert figures["variants"]["today"]["recipe"]["optimizer"] == "adam"
    assert all(0 <= v["test_accuracy"] <= 1 for v in figures["variants"].values())
