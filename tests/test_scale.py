"""Scale: mixed precision in the gpu profile, and every kind of model built and trained inside a
MirroredStrategy's scope (two logical CPU devices stand in for two GPUs)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from shared import config, data
from shared.models import networks
from shared.training import experiment, recipes
from shared.training.fitting import fit

pytestmark = pytest.mark.trains  # not in `make check`


@pytest.fixture
def a_gpu_is_seen(monkeypatch):
    """TensorFlow reports one GPU; the global dtype policy is restored afterwards."""
    real = tf.config.list_physical_devices
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: ["/physical_device:GPU:0"] if kind == "GPU"
                        else real(kind))
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_only_the_gpu_profile_asks_for_mixed_precision():
    assert all(config.settings("gpu", e)["mixed_precision"] for e in config.EXPERIMENTS)
    assert not config.settings("cpu", "baseline")["mixed_precision"]
    assert config.settings("cpu", "baseline", mixed_precision=True)["mixed_precision"]


def test_start_turns_mixed_precision_on_with_float32_outputs_and_a_loss_scale(
        a_gpu_is_seen, monkeypatch, tmp_path):
    """Catches a gpu profile that never turns mixed precision on (docs/gpus.md says it does)."""
    monkeypatch.setattr(data, "prepare", lambda *args: "split")
    monkeypatch.setattr(data, "training_data", lambda split, cfg: ("train", "val", None))
    monkeypatch.setattr(experiment, "derive_settings", lambda cfg, split: {})   # no real split
    cfg = config.settings("gpu", "baseline") | {"out_dir": tmp_path, "run_dir": tmp_path,
                                                 "dataset": "x", "fresh": False}
    assert experiment.start(cfg) == ("split", "train", "val", None)
    assert keras.mixed_precision.global_policy().name == "mixed_float16"
    model = networks.build_baseline((16, 16, 3), 3, blocks=1, dense=())
    assert model.layers[1].compute_dtype == "float16" and model.output.dtype == "float32"
    x = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, keras.utils.to_categorical(np.arange(8) % 3,
                                                                            3))).batch(4)
    fit(model, ds, None, recipes.Recipe(epochs=1, patience=None), tmp_path / "fit")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.predict(x[:2], verbose=0).dtype == np.float32


MIRRORED = textwrap.dedent("""
    import numpy as np, tensorflow as tf, keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    from shared.training import distribute
    from shared.models import networks
    from shared import training as train
    from shared.training import recipes
    strategy = distribute.strategy(["/cpu:0", "/cpu:1"])
    x = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(16) % 3, 3)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    recipe = recipes.Recipe(epochs=1, patience=None, reduce_lr_factor=None)
    with strategy.scope():
        baseline = networks.build_baseline((32, 32, 3), 3, blocks=1)
        transfer = networks.build_transfer("vgg16", (32, 32, 3), 3, weights=None)
    history = train.fit(baseline, ds, ds, recipes.Recipe(epochs=2, patience=None,
                                                         reduce_lr_factor=None), "OUT/baseline")
    print("EPOCHS", history.epoch.tolist(), history.loss.notna().all())
    train.fit_transfer(transfer, ds, ds, recipe, recipe, "OUT/transfer", unfreeze=2,
                       feature_cache=False)
    with strategy.scope():
        svm = networks.replace_head(transfer, networks.build_head(
            "quasi_svm", networks.feature_dim(transfer), 3, output_dim=64))
    train.fit_head(svm, ds, ds, recipe, "OUT/transfer", phase="quasi_svm")
    for model in (baseline, transfer, svm, svm.get_layer("head")):
        assert model.distribute_strategy is strategy, model.name
    print("REPLICAS", strategy.num_replicas_in_sync)
""")


@pytest.mark.slow
def test_every_kind_of_model_trains_under_a_mirrored_strategy(tmp_path):
    """Catches a model built outside the strategy's scope (it would not be mirrored), and a
    fit under a strategy that loses its history."""
    run = subprocess.run([sys.executable, "-c", MIRRORED.replace("OUT", str(tmp_path))],
                         capture_output=True, text=True, timeout=300, cwd=config.REPO_ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "REPLICAS 2" in run.stdout
    assert "EPOCHS [1, 2] True" in run.stdout      # the baseline's history, epoch by epoch
