"""The callbacks :func:`shared.train.fit` adds to Keras' own, and the training history they
keep in ``<out_dir>/history.csv``."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import keras
import pandas as pd

from shared import files

HISTORY_COLUMNS = ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy",
                   "learning_rate", "seconds"]


def read_history(out_dir) -> pd.DataFrame:
    """The history.csv of ``out_dir`` (an empty frame with the columns when there is none)."""
    path = Path(out_dir) / "history.csv"
    if not path.is_file():
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in HISTORY_COLUMNS})
    return pd.read_csv(path)


def tensorboard(log_dir: Path) -> list:
    try:
        import tensorboard  # noqa: F401  (tf.summary needs it)
    except ImportError:
        print("TensorBoard logs skipped: the tensorboard package is not installed")
        return []
    return [keras.callbacks.TensorBoard(str(log_dir), write_graph=False)]


class NaNGuard(keras.callbacks.TerminateOnNaN):
    """TerminateOnNaN that remembers the epoch it stopped in."""

    def __init__(self):
        super().__init__()
        self.epoch = None
        self._current = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._current = epoch

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and self.epoch is None:
            self.epoch = self._current
        super().on_batch_end(batch, logs)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose files are replaced atomically, so a SIGKILL while saving leaves
    the previous epoch's backup intact."""

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        with files.atomic_path(self._weights_path, suffix=".weights.h5") as tmp:
            self.model.save_weights(str(tmp))
        files.write_json(self._training_metadata_path,
                         {"epoch": self._current_epoch, "batch": self._last_batch_seen})


class HistoryRecorder(keras.callbacks.Callback):
    """Keeps out_dir/history.csv up to date after every epoch (also across resumptions)."""

    def __init__(self, out_dir: Path, phase: str):
        super().__init__()
        self.out_dir, self.phase = out_dir, phase
        self.rows = None
        self.learning_rate = None
        self.started = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.rows is None:  # first epoch of this run: forget rows it will redo
            old = read_history(self.out_dir)
            keep = ~((old.phase == self.phase) & (old.epoch > epoch))
            self.rows = old[keep].to_dict("records")
        self.learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.rows.append({"epoch": epoch + 1, "phase": self.phase,
                          **{k: _float(logs.get(k)) for k in HISTORY_COLUMNS[2:6]},
                          "learning_rate": self.learning_rate,
                          "seconds": round(time.perf_counter() - self.started, 2)})
        frame = pd.DataFrame(self.rows, columns=HISTORY_COLUMNS)
        files.write_csv(self.out_dir / "history.csv", frame)


def _float(value):
    return float("nan") if value is None else float(value)
