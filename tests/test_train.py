"""Tests of shared.training (experiment, fit, transfer): recipes, fit and its files, resumption,
NaN, transfer phases, the feature cache, class weights, the distribution strategy and seeds.

The datasets are small in-memory tf.data pipelines (float32 images in [0, 255], one-hot labels)
and the transfer model has a tiny stand-in backbone with the same layer names as a real one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from shared import files
from shared.models import backbones, layers, networks
from shared.training import callbacks, distribute, experiment, recipes, transfer
from shared.training.fitting import DamagedCheckpointError, fit

pytestmark = pytest.mark.trains  # not in `make check`

TESTS_DIR = Path(__file__).resolve().parent
SUBPROCESS_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                  "PYTHONPATH": os.pathsep.join([str(TESTS_DIR.parent), str(TESTS_DIR)])}
FAST = dict(patience=None, reduce_lr_factor=None)  # no early stopping or LR changes


def arrays(n=48, size=16, classes=3, seed=0):
    """Images whose brightness depends on the class, so that a little training helps."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    x = rng.random((n, size, size, 3)) * 120 + labels[:, None, None, None] * 60
    return x.astype("float32"), np.eye(classes, dtype="float32")[labels]


def dataset(n=48, classes=3, batch=16, seed=0, nan=False, shuffle=False):
    x, y = arrays(n, classes=classes, seed=seed)
    if nan:
        x[0, 0, 0, 0] = np.nan
    data = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        data = data.shuffle(n, seed=seed)
    return data.batch(batch)


def tiny_baseline(classes=3, **options):
    options = {"blocks": 1, "filters": 4, "dense": (8,), **options}
    return networks.build_baseline((16, 16, 3), classes, **options)


def tiny_transfer(classes=3):
    """The structure of networks.build_transfer (backbone, pooling, head) with a small backbone
    whose weights count as trained."""
    image = keras.Input((16, 16, 3))
    h = image
    for i, filters in enumerate((4, 8), start=1):
        h = keras.layers.Conv2D(filters, 3, name=f"conv{i}")(h)
        h = keras.layers.BatchNormalization(name=f"bn{i}")(h)
        h = keras.layers.ReLU(name=f"relu{i}")(h)
    backbone = keras.Model(image, h, name="backbone")
    backbones.freeze_batch_norm(backbone)
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    features = keras.layers.GlobalAveragePooling2D(name="pooling")(backbone(x, training=False))
    head = networks.build_head("dense", 8, classes, sizes=(8,))
    model = keras.Model(inputs, head(features), name="tiny_transfer")
    model.weights_source = "test weights"
    return model


def values(layer_or_model):
    return [np.asarray(w).copy() for w in layer_or_model.weights]


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------------------------------------
# Recipes


def test_recipe_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'.*adam, nadam, adamax, sgd"):
        recipes.Recipe(optimizer="rmsprop")
    with pytest.raises(ValueError, match="unknown loss 'mse'.*categorical_crossentropy, categ"):
        recipes.Recipe(loss="mse")


def test_make_optimizer_and_loss():
    kinds = {"adam": keras.optimizers.Adam, "nadam": keras.optimizers.Nadam,
             "adamax": keras.optimizers.Adamax, "sgd": keras.optimizers.SGD,
             "adamw": keras.optimizers.AdamW}
    for name, kind in kinds.items():
        optimizer = recipes.make_optimizer(recipes.Recipe(optimizer=name.upper(),
                                                          learning_rate=0.01))
        assert type(optimizer) is kind
        assert float(np.asarray(optimizer.learning_rate)) == pytest.approx(0.01)
    assert recipes.make_optimizer(recipes.Recipe(optimizer="sgd", momentum=0.8)).momentum == 0.8
    assert recipes.make_optimizer(recipes.Recipe(optimizer="adamw", weight_decay=0.05)) \
        .weight_decay == 0.05
    assert recipes.make_loss(recipes.Recipe(loss="categorical_hinge")) is layers.multiclass_hinge
    assert recipes.make_loss(recipes.Recipe(label_smoothing=0.1)).label_smoothing == 0.1


# ---------------------------------------------------------------------------------------------
# fit


def test_fit_writes_history_checkpoints_and_logs(tmp_path, capsys, monkeypatch):
    model = tiny_baseline()
    recipe = recipes.Recipe(epochs=2, learning_rate=1e-2, **FAST)
    history = fit(model, dataset(), dataset(seed=1), recipe, tmp_path)

    assert list(history.columns) == callbacks.HISTORY_COLUMNS
    assert history.epoch.tolist() == [1, 2] and set(history.phase) == {"train"}
    assert history[["loss", "accuracy", "val_loss", "val_accuracy"]].notna().all().all()
    assert history.learning_rate.tolist() == pytest.approx([1e-2, 1e-2])
    assert (history.seconds > 0).all()
    pd.testing.assert_frame_equal(history, pd.read_csv(tmp_path / "history.csv"))
    best = keras.saving.load_model(tmp_path / "checkpoints" / "train-best.keras")
    assert best.count_params() == model.count_params()
    assert (tmp_path / "checkpoints" / "train-final.weights.h5").is_file()
    assert len(pd.read_csv(tmp_path / "logs" / "train.csv")) == 2
    assert not (tmp_path / "backup" / "train").exists()  # removed once the phase finished
    try:
        import tensorboard  # noqa: F401
        assert list((tmp_path / "logs" / "train").rglob("events.out.tfevents.*"))
    except ImportError:
        assert "TensorBoard logs skipped" in capsys.readouterr().out

    # A finished phase is loaded, not trained again, unless asked.
    trained = values(model)
    again = tiny_baseline()
    rerun = fit(again, dataset(), dataset(seed=1), recipe, tmp_path)
    assert "already trained" in capsys.readouterr().out
    assert same(values(again), trained)
    pd.testing.assert_frame_equal(rerun, history)
    fresh = fit(tiny_baseline(), dataset(), None, recipes.Recipe(epochs=1, **FAST), tmp_path,
                  fresh=True)
    assert fresh.epoch.tolist() == [1] and fresh.val_loss.isna().all()
    # the earlier attempt's epoch log and TensorBoard events went with it
    assert len(pd.read_csv(tmp_path / "logs" / "train.csv")) == 1
    assert len(list((tmp_path / "logs" / "train").rglob("events.out.tfevents.*"))) <= 1
    # $SHARED_FRESH is decided once, by config.experiment: fit does not read it
    monkeypatch.setenv("SHARED_FRESH", "1")
    fit(tiny_baseline(), dataset(), dataset(seed=1), recipe, tmp_path)
    assert "already trained" in capsys.readouterr().out


def test_a_fresh_start_sets_results_and_training_state_aside_so_every_phase_trains_again(
        tmp_path, capsys):
    recipe = recipes.Recipe(epochs=1, **FAST)
    fit(tiny_baseline(), dataset(), None, recipe, tmp_path)
    (tmp_path / "metrics.json").write_text("old")
    (tmp_path / "figures").mkdir()
    moved = experiment.set_aside_results(tmp_path)
    assert [m for m in moved if m != "backup"] == ["metrics.json", "history.csv", "checkpoints",
                                                   "logs"]
    assert (tmp_path / "previous" / "metrics.json").read_text() == "old"
    assert (tmp_path / "previous" / "checkpoints" / "train-final.weights.h5").is_file()
    assert (tmp_path / "figures").is_dir() and not (tmp_path / "checkpoints").exists()
    assert "are in" in capsys.readouterr().out
    again = fit(tiny_baseline(), dataset(), None, recipe, tmp_path)
    assert "already trained" not in capsys.readouterr().out and again.epoch.tolist() == [1]


def test_fit_restores_the_best_epoch(tmp_path):
    class Scramble(keras.callbacks.Callback):
        """Keeps the weights after epoch 1, then ruins them: epoch 2 cannot be the best."""

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                self.first = values(self.model)

        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                rng = np.random.default_rng(0)
                self.model.set_weights([rng.normal(0, 30, w.shape) for w in self.model.weights])

    scramble = Scramble()
    model = tiny_baseline(batch_norm=False)
    recipe = recipes.Recipe(epochs=2, learning_rate=1e-2, **FAST)
    history = fit(model, dataset(), dataset(seed=1), recipe, tmp_path,
                  callbacks=[scramble])
    assert history.val_loss[1] > history.val_loss[0]
    assert same(values(model), scramble.first)


def test_fit_rejects_labels_and_class_weights_that_do_not_fit(tmp_path):
    with pytest.raises(ValueError, match="labels have 4 classes but .* has 3 outputs"):
        fit(tiny_baseline(), dataset(classes=4), None, recipes.Recipe(epochs=1), tmp_path)
    with pytest.raises(ValueError, match=r"class indices 0..2, got \[3\]"):
        fit(tiny_baseline(), dataset(), None, recipes.Recipe(epochs=1), tmp_path,
              class_weight={0: 1.0, 3: 2.0})


def test_class_weight_weights_the_loss(tmp_path):
    keras.utils.set_random_seed(1)
    model = tiny_baseline(batch_norm=False, dropout=0.0)
    x, y = arrays()
    per_image = np.asarray(keras.losses.categorical_crossentropy(y, model.predict(x, verbose=0)))
    weights = {0: 0.25, 1: 0.5, 2: 0.0}
    expected = float(np.mean(per_image * np.array([weights[c] for c in y.argmax(1)])))
    recipe = recipes.Recipe(optimizer="sgd", learning_rate=1e-9, momentum=0.0, epochs=1, **FAST)
    history = fit(model, dataset(), None, recipe, tmp_path, class_weight=weights)
    assert history.loss[0] == pytest.approx(expected, rel=1e-3)
    assert expected < 0.5 * per_image.mean()  # so an unweighted loss would not pass


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    recipe = recipes.Recipe(epochs=3, learning_rate=1e-3, **FAST)
    with pytest.raises(recipes.TrainingDivergedError,
                       match=r"the loss became NaN at epoch 1; lower the learning rate"):
        fit(tiny_baseline(), dataset(nan=True), None, recipe, tmp_path)
    assert not (tmp_path / "checkpoints" / "train-final.weights.h5").exists()


def run_until_killed(out_dir: str) -> None:
    """Run in a subprocess: 4 epochs, SIGKILLed at the end of epoch 2 (after its backup)."""

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                os.kill(os.getpid(), signal.SIGKILL)

    experiment.set_seed(3)
    fit(tiny_baseline(), dataset(shuffle=True), dataset(seed=1),
        recipes.Recipe(epochs=4, **FAST), out_dir, callbacks=[Kill()])


def test_fit_resumes_after_sigkill(tmp_path):
    script = f"import test_train; test_train.run_until_killed({str(tmp_path)!r})"
    run = subprocess.run([sys.executable, "-c", script], env=SUBPROCESS_ENV, text=True,
                         capture_output=True, timeout=300)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    assert pd.read_csv(tmp_path / "history.csv").epoch.tolist() == [1, 2]
    assert (tmp_path / "backup" / "train" / "training_metadata.json").is_file()

    class Count(keras.callbacks.Callback):
        epochs = []

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append(epoch)

    experiment.set_seed(3)
    history = fit(tiny_baseline(), dataset(shuffle=True), dataset(seed=1),
                  recipes.Recipe(epochs=4, **FAST), tmp_path, callbacks=[Count()])
    assert Count.epochs == [2, 3]  # zero-based: it went on with epochs 3 and 4
    assert history.epoch.tolist() == [1, 2, 3, 4]
    assert history.loss.notna().all()
    assert not (tmp_path / "backup" / "train").exists()


# ---------------------------------------------------------------------------------------------
# Transfer learning


def test_two_phase_transfer(tmp_path):
    model = tiny_transfer()
    backbone = model.get_layer("backbone")
    batch_norms = [layer for layer in backbone.layers
                   if isinstance(layer, keras.layers.BatchNormalization)]
    stats = [values(layer) for layer in batch_norms]
    start = values(backbone)
    recipe = recipes.Recipe(epochs=2, learning_rate=1e-2, **FAST)
    fine_tune = recipes.Recipe(epochs=1, learning_rate=1e-3, **FAST)

    history = transfer.fit_transfer(model, dataset(), dataset(seed=1), recipe, fine_tune, tmp_path,
                                    unfreeze="all", feature_cache=False)
    assert history.phase.tolist() == ["head", "head", "fine_tune"]
    assert history.epoch.tolist() == [1, 2, 3]
    summary = model.phase_summary
    assert summary["fine_tune"]["trainable_params"] > summary["head"]["trainable_params"]
    assert summary["head"]["backbone_trainable_layers"] == 0
    assert summary["fine_tune"]["backbone_trainable_layers"] == 2  # the two convolutions
    assert (summary["head"]["epochs"], summary["fine_tune"]["epochs"]) == (2, 1)
    assert summary["head"]["seconds"] > 0 and summary["fine_tune"]["seconds"] > 0
    assert files.read_json(tmp_path / "phases.json") == summary
    assert not any(layer.trainable for layer in batch_norms)
    for layer, before in zip(batch_norms, stats, strict=True):
        assert same(values(layer), before)  # statistics, scale and offset untouched
    assert not np.array_equal(np.asarray(backbone.get_layer("conv1").kernel), start[0])


def test_set_trainable_unfreezes_the_top_layers_but_not_batch_norm():
    backbone = tiny_transfer().get_layer("backbone")  # input, conv1, bn1, relu1, conv2, bn2, relu2
    transfer.set_trainable(backbone, 3)
    assert [layer.name for layer in backbone.layers if layer.trainable] == ["conv2", "relu2"]
    transfer.set_trainable(backbone, 3, freeze_batch_norm=False)
    assert [layer.name for layer in backbone.layers if layer.trainable] == ["conv2", "bn2",
                                                                           "relu2"]
    with pytest.raises(ValueError, match="unfreeze must be an integer >= 0 or 'all'"):
        transfer.set_trainable(backbone, "top")


def test_feature_cache_trains_the_head_of_the_same_model(tmp_path, capsys):
    model = tiny_transfer()
    head, backbone = model.get_layer("head"), model.get_layer("backbone")
    head_before, backbone_before = values(head), values(backbone)
    train_data = dataset(shuffle=True)
    train_data.augment = "none"  # what "auto" reads
    recipe = recipes.Recipe(epochs=2, learning_rate=1e-2, **FAST)

    history = transfer.fit_transfer(model, train_data, dataset(seed=1), recipe, None, tmp_path,
                                    unfreeze=0, class_weight={0: 1.0, 1: 1.0, 2: 2.0})
    assert "feature cache: on (augment='none')" in capsys.readouterr().out
    assert history.phase.tolist() == ["head", "head"]
    assert not same(values(head), head_before)
    assert same(values(backbone), backbone_before)

    x, y = arrays()
    features, labels = transfer.extract_features(model, dataset())
    np.testing.assert_array_equal(labels, y)
    np.testing.assert_allclose(model.predict(x, verbose=0), head.predict(features, verbose=0),
                               rtol=1e-5, atol=1e-6)

    # Notebook 03: a quasi-SVM head on the same frozen backbone, trained with the hinge loss.
    svm = networks.replace_head(model, networks.build_head("quasi_svm", 8, 3, output_dim=64))
    svm_history = transfer.fit_head(svm, train_data, dataset(seed=1),
                                    recipes.Recipe(epochs=2, loss="categorical_hinge", **FAST),
                                    tmp_path, phase="svm", initial_epoch=2)
    assert svm_history.phase.tolist() == ["head", "head", "svm", "svm"]
    assert svm_history.epoch.tolist() == [1, 2, 3, 4]
    assert same(values(backbone), backbone_before)


def test_feature_cache_auto_needs_to_know_about_augmentation(capsys):
    data = dataset()
    assert transfer._use_feature_cache("auto", data) is False
    assert "does not say whether it is augmented" in capsys.readouterr().out
    data.augment = "flip"
    assert transfer._use_feature_cache("auto", data) is False
    assert transfer._use_feature_cache(True, data) is True
    with pytest.raises(ValueError, match="True, False or 'auto'"):
        transfer._use_feature_cache("yes", data)


# ---------------------------------------------------------------------------------------------
# Scale and seeds


def test_default_strategy_without_several_gpus():
    if len(tf.config.list_logical_devices("GPU")) > 1:
        pytest.skip("several GPUs: strategy() mirrors")
    assert distribute.strategy() is tf.distribute.get_strategy()


def test_mixed_precision_only_with_a_gpu():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible")
    assert distribute.enable_mixed_precision() is False
    assert keras.mixed_precision.global_policy().name == "float32"


def test_set_seed_gives_the_same_weights_and_another_seed_others():
    """The seed's half of a repeatable training. Its other half, two trainings with op
    determinism in two processes ending with identical weights, is checked by
    tests/test_benchmarks.py (benchmarks/determinism.py exits 1 otherwise)."""
    def weights(seed):
        experiment.set_seed(seed)
        return [np.asarray(w) for w in tiny_baseline().weights]

    first, again, other = weights(7), weights(7), weights(8)
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(first, other, strict=True))


def test_a_second_fresh_start_after_a_killed_one_keeps_the_last_finished_results(tmp_path):
    """Catches previous/ mixing the finished results with what a killed attempt left."""
    (tmp_path / "metrics.json").write_text("finished")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "train-final.weights.h5").write_text("finished weights")
    experiment.set_aside_results(tmp_path)
    (tmp_path / "history.csv").write_text("killed attempt")       # no metrics.json: unfinished
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "train-best.keras").write_text("killed attempt")
    assert set(experiment.set_aside_results(tmp_path)) == {"history.csv", "checkpoints"}
    previous = tmp_path / "previous"
    assert sorted(p.name for p in previous.iterdir()) == ["checkpoints", "metrics.json"]
    assert [p.name for p in (previous / "checkpoints").iterdir()] == ["train-final.weights.h5"]
    assert not (tmp_path / "history.csv").exists() and not (tmp_path / "checkpoints").exists()



def test_a_damaged_checkpoint_gets_one_message_naming_it(tmp_path):
    recipe = recipes.Recipe(epochs=1, **FAST)
    fit(tiny_baseline(), dataset(), None, recipe, tmp_path)
    final = tmp_path / "checkpoints" / "train-final.weights.h5"
    final.write_bytes(final.read_bytes()[:100])                     # truncated
    with pytest.raises(DamagedCheckpointError, match="train-final.weights.h5.*FRESH=1"):
        fit(tiny_baseline(), dataset(), None, recipe, tmp_path)
