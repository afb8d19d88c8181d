"""XLA: the experiment setting ``jit_compile`` reaches model.compile in
shared.training.fitting.fit."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from shared import config, data
from shared.models import networks
from shared.training import distribute, experiment, recipes
from shared.training.fitting import fit

pytestmark = pytest.mark.trains  # not in `make check`


@pytest.fixture
def jit_setting():
    yield
    distribute.set_jit_compile(False)


@pytest.mark.parametrize("on", [True, False])
def test_start_passes_jit_compile_to_fit(on, jit_setting, tmp_path, monkeypatch):
    """Catches a jit_compile setting that never reaches model.compile."""
    monkeypatch.setattr(data, "prepare", lambda *args: "split")
    monkeypatch.setattr(data, "training_data", lambda split, cfg: ("train", "val", None))
    monkeypatch.setattr(experiment, "derive_settings", lambda cfg, split, **options: {})
    assert config.settings("cpu", "vgg19")["jit_compile"] is False
    cfg = config.settings("smoke", "baseline", jit_compile=on, image_size=16, batch_size=4) | {
        "out_dir": tmp_path, "run_dir": tmp_path, "dataset": "x", "fresh": False}
    experiment.start(cfg)
    model = networks.build_baseline((16, 16, 3), 3, blocks=1, dense=())
    x = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices(
        (x, keras.utils.to_categorical(np.arange(8) % 3, 3))).batch(4)
    history = fit(model, ds, None, recipes.Recipe(epochs=1, patience=None), tmp_path / "fit")
    assert model.jit_compile is on
    assert np.isfinite(history["loss"]).all()
    assert cfg["deterministic"] is not on       # XLA asked for: op determinism left off
