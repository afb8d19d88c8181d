"""The callbacks :func:`shared.training.fitting.fit` adds to Keras' own, and the training
history they keep in ``<out_dir>/history.csv``.

Every file they write goes through :mod:`shared.files`: replaced atomically, and a full disk
raises :class:`shared.files.DiskFullError` naming the file and the free space, with the earlier
version intact. An epoch's backup (written first, as Keras orders the callbacks) also holds
its history row, so a history write that fails after the backup costs no row: the next run
resumes after the backup's epoch and puts the row back.
"""

from __future__ import annotations

import math
import os
import time
import weakref
from pathlib import Path

import keras
import pandas as pd

from shared import files, progress

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
    """BackupAndRestore whose files are replaced atomically, so a SIGKILL or a full disk while
    saving leaves the previous epoch's backup intact. Its metadata also holds the epoch's row of
    the :class:`HistoryRecorder` of the same model, handed back to it on resumption."""

    def on_epoch_end(self, epoch, logs=None):
        self._history_row = next((r.row(epoch, logs) for r in _recorders(self.model)), None)
        super().on_epoch_end(epoch, logs)

    def _load_model(self):
        super()._load_model()
        if os.path.exists(self._training_metadata_path):
            row = files.read_json(self._training_metadata_path).get("history")
            for recorder in _recorders(self.model):
                recorder.recovered = row

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        with files.atomic_path(self._weights_path, suffix=".weights.h5") as tmp:
            self.model.save_weights(str(tmp))
        files.write_json(self._training_metadata_path,
                         {"epoch": self._current_epoch, "batch": self._last_batch_seen,
                          "history": getattr(self, "_history_row", None)})


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint that replaces its file atomically (Keras' own writes over the previous
    best model in place: a full disk or a kill left it truncated) and whose full disk raises
    :class:`shared.files.DiskFullError` naming the checkpoint."""

    def _save_model(self, epoch, batch, logs):
        path = self._get_file_path(epoch, batch, logs)
        if not self._should_save_model(epoch, batch, logs, path):
            return
        save = self.model.save_weights if self.save_weights_only else self.model.save
        files.write_with(path, lambda tmp: save(str(tmp), overwrite=True))
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: saved the model to {path}")


_RECORDERS: weakref.WeakSet = weakref.WeakSet()   # the HistoryRecorders of running fits


def _recorders(model) -> list:
    return [r for r in list(_RECORDERS) if r.model is model]


class HistoryRecorder(keras.callbacks.Callback):
    """Keeps out_dir/history.csv up to date after every epoch (also across resumptions)."""

    def __init__(self, out_dir: Path, phase: str):
        super().__init__()
        self.out_dir, self.phase = Path(out_dir), phase
        self.rows = None
        self.learning_rate = None
        self.started = None
        self.recovered = None    # the backup's row of its last epoch, put back if missing
        self._row = None

    def set_model(self, model):
        super().set_model(model)
        _RECORDERS.add(self)

    def on_epoch_begin(self, epoch, logs=None):
        if self.rows is None:  # first epoch of this run: forget rows it will redo
            old = read_history(self.out_dir)
            keep = ~((old.phase == self.phase) & (old.epoch > epoch))
            self.rows = old[keep].to_dict("records")
            row = self.recovered
            if row and row.get("epoch") == epoch and not (
                    (old.phase == self.phase) & (old.epoch == epoch)).any():
                self.rows.append(row)   # its history write failed after the backup
        self.learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.started = time.perf_counter()

    def row(self, epoch, logs=None) -> dict:
        """The history row of ``epoch`` (zero-based), the same however often it is asked."""
        if self._row is None or self._row["epoch"] != epoch + 1:
            logs = logs or {}
            self._row = {"epoch": epoch + 1, "phase": self.phase,
                         **{k: _float(logs.get(k)) for k in HISTORY_COLUMNS[2:6]},
                         "learning_rate": self.learning_rate,
                         "seconds": round(time.perf_counter() - self.started, 2)}
        return self._row

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append(self.row(epoch, logs))
        frame = pd.DataFrame(self.rows, columns=HISTORY_COLUMNS)
        files.write_csv(self.out_dir / "history.csv", frame)


def _float(value):
    return float("nan") if value is None else float(value)


class EpochLog(keras.callbacks.Callback):
    """What a report shows of a fit: its first epoch and its last, each on one line, and the
    progress the runner's live line reads (:func:`shared.progress.report`). Every epoch is in
    history.csv and logs/<phase>.csv; Keras' own line per epoch would bury a report's tables."""

    def __init__(self, phase: str, epochs: int):
        super().__init__()
        self.phase, self.epochs = phase, epochs
        self.first = self.last = None
        self.started = None

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        progress.report("train", epoch=epoch + 1, epochs=self.epochs, phase=self.phase)

    def on_epoch_end(self, epoch, logs=None):
        self.last = (epoch + 1, dict(logs or {}))
        if self.first is None:
            self.first = epoch + 1
            print(self.line(*self.last), flush=True)

    def on_train_end(self, logs=None):
        progress.report("train", epoch=None, epochs=None, phase=None)
        if self.last is None or self.last[0] == self.first:
            return
        skipped = self.last[0] - self.first - 1
        between = f"({skipped} more in history.csv) " if skipped else ""
        print(f"  {between}{self.line(*self.last).strip()}; "
              f"{time.perf_counter() - self.started:.0f} s for the phase", flush=True)

    def line(self, epoch: int, logs: dict) -> str:
        """"epoch 3/12: loss 0.512, accuracy 0.811, val_loss …"."""
        values = ", ".join(f"{key} {value:.4g}" for key, value in logs.items()
                           if key in HISTORY_COLUMNS[2:6] and value is not None)
        return f"  epoch {epoch}/{self.epochs}: {values}"
