"""A whole run killed in the middle of training, then started again with the same RUN."""

import os
import signal
import subprocess
import sys
import time

import nbformat
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from shared import config

pytestmark = pytest.mark.trains  # not in `make check`

TRAIN = """
import time
import keras
import numpy as np
import tensorflow as tf
from shared.training import experiment, recipes
from shared.training.fitting import fit

experiment.set_seed(0)
x = np.random.default_rng(0).uniform(0, 255, (64, 8, 8, 3)).astype("float32")
y = keras.utils.to_categorical(np.arange(64) % 2, 2)
data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
inputs = keras.Input((8, 8, 3))
outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs))
model = keras.Model(inputs, outputs)

class Slow(keras.callbacks.Callback):  # leaves time to kill the run between two epochs
    def on_epoch_end(self, epoch, logs=None):
        time.sleep(1.5)

history = fit(model, data, data, recipes.Recipe(epochs=6, patience=None),
                f"{run_dir}/tiny", callbacks=[Slow()])
assert list(history["epoch"]) == [1, 2, 3, 4, 5, 6], list(history["epoch"])
"""


def _notebook(path):
    params = new_code_cell("profile = None\ndataset = None\nrun_dir = None")
    params.metadata["tags"] = ["parameters"]
    nbformat.write(new_notebook(cells=[new_markdown_cell("# tiny"), params,
                                       new_code_cell(TRAIN)]), path)


def _run(notebooks, run):
    return subprocess.Popen([sys.executable, "-m", "shared.run.runner", "run-all", "--profile",
                             "smoke", "--data", str(notebooks), "--run", str(run), "--notebooks",
                             str(notebooks)], start_new_session=True, cwd=config.REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.end_to_end
def test_a_run_killed_mid_training_resumes_from_its_last_epoch(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _notebook(notebooks / "01_tiny.ipynb")
    run = tmp_path / "reports" / "killed"
    history = run / "tiny" / "history.csv"

    first = _run(notebooks, run)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        if history.exists() and len(pd.read_csv(history)) >= 2:
            break
        time.sleep(0.2)
    assert first.poll() is None, "the run ended before it could be killed:\n" + \
        first.communicate()[0]
    os.killpg(first.pid, signal.SIGKILL)  # the runner, its child and the kernel
    first.wait()
    done_before = len(pd.read_csv(history))
    assert 2 <= done_before < 6

    second = _run(notebooks, run)
    out = second.communicate(timeout=300)[0]
    assert second.returncode == 0, out
    assert "[1/1] 01_tiny: started" in out
    rows = pd.read_csv(history)
    assert list(rows["epoch"]) == [1, 2, 3, 4, 5, 6]  # each epoch once: resumed, not redone
    executed = (run / "01_tiny.ipynb").read_text()
    assert "(resumed)" in executed and f"epochs {done_before + 1}-6" in executed
