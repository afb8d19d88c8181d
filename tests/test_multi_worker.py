"""Multi-worker training: two worker processes on 127.0.0.1, each given TF_CONFIG, train the
baseline CNN for one epoch through shared.training.fitting.fit under MultiWorkerMirroredStrategy;
both finish with the same trainable weights and logs, and only the chief writes fit's files
(docs/gpus.md). Batch normalization's moving statistics are each worker's own (not compared)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from shared import config
from shared.training import distribute

pytestmark = pytest.mark.trains  # not in `make check`

WORKER = textwrap.dedent("""
    import sys
    import numpy as np
    from shared.training import distribute, experiment, recipes
    from shared.training.fitting import fit
    strategy = distribute.strategy()        # first: before any other TensorFlow work
    import keras, tensorflow as tf
    from shared.models import networks
    out_dir, weights = sys.argv[1], sys.argv[2]
    experiment.set_seed(0)
    rng = np.random.default_rng(0)     # the same images on every worker
    x = rng.uniform(0, 255, (32, 16, 16, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(32) % 3, 3)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)    # the global batch
    with strategy.scope():
        model = networks.build_baseline((16, 16, 3), 3, blocks=1, dense=())
    history = fit(model, ds, ds, recipes.Recipe(epochs=1, patience=None), out_dir)
    np.savez(weights, *[np.asarray(w) for w in model.trainable_weights])
    print("CHIEF", distribute.is_chief(strategy), "REPLICAS", strategy.num_replicas_in_sync,
          "EPOCHS", len(history))
    print("LOGS", history[["loss", "accuracy", "val_loss"]].round(6).values.tolist())
""")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_train_the_baseline_alike_and_only_the_chief_writes(tmp_path):
    """Catches a strategy() that ignores TF_CONFIG (each worker would train alone: no
    "REPLICAS 2", different weights) and a non-chief worker writing fit's files."""
    cluster = [f"127.0.0.1:{port}" for port in free_ports(2)]
    procs = []
    for index in range(2):
        env = os.environ | {"TF_CONFIG": json.dumps({"cluster": {"worker": cluster},
                                                     "task": {"type": "worker",
                                                              "index": index}}),
                            "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path / f"out{index}"),
             str(tmp_path / f"weights{index}.npz")],
            env=env, cwd=config.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=240)
            outputs.append(out)
            assert proc.returncode == 0, err[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert "CHIEF True REPLICAS 2 EPOCHS 1" in outputs[0]
    assert "CHIEF False REPLICAS 2 EPOCHS 1" in outputs[1]
    logs = [next(line for line in out.splitlines() if line.startswith("LOGS")) for out in outputs]
    assert logs[0] == logs[1]                        # the same epoch logs: callbacks agree
    first, second = (np.load(tmp_path / f"weights{i}.npz") for i in range(2))
    assert len(first.files) == len(second.files) > 0
    for name in first.files:
        np.testing.assert_allclose(first[name], second[name], rtol=1e-6, atol=1e-6)
    assert (tmp_path / "out0" / "history.csv").is_file()
    assert (tmp_path / "out0" / "checkpoints" / "train-final.weights.h5").is_file()
    assert not (tmp_path / "out1").exists()          # the other worker wrote elsewhere


def test_tf_config_is_read_and_a_bad_one_is_named(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.cluster_workers() == 0
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1"]},
                                                "task": {"type": "chief", "index": 0}}))
    assert distribute.cluster_workers() == 2
    monkeypatch.setenv("TF_CONFIG", "{cluster: oops}")
    with pytest.raises(ValueError, match='TF_CONFIG is not valid: expected JSON like {"cluster"'):
        distribute.cluster_workers()
