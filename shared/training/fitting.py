"""One phase of training: fit with its callbacks, checkpoints and resume.

Everything an experiment trains lands under its ``out_dir``::

    history.csv                  one row per finished epoch of every phase (epoch, phase, loss,
                                 accuracy, val_loss, val_accuracy, learning_rate, seconds),
                                 rewritten atomically after each epoch
    checkpoints/<phase>-best.keras        best model of the phase (by the recipe's monitor)
    checkpoints/<phase>-final.weights.h5  weights at the end of a finished phase
    backup/<phase>/              BackupAndRestore state of an unfinished phase
    logs/<phase>/, logs/<phase>.csv       TensorBoard logs and the CSVLogger file
    phases.json                  layer and parameter counts of each phase
                                 (:func:`shared.training.transfer.fit_phases`)

Reruns: a phase that was interrupted (even by SIGKILL) resumes from its last finished epoch;
a phase that finished is not trained again: its final weights are loaded and its history kept
(pass ``fresh=True`` to train it again). So a killed notebook continues where it stopped.
When the experiment finishes, :func:`shared.evaluation.evaluate.finish` deletes checkpoints/ and
backup/ (setting ``keep_checkpoints``: keep them, and a rerun of its notebook only redoes the
evaluation); without them, a rerun by hand trains it again, its earlier results set aside in
``previous/`` (the runner skips finished notebooks). :func:`shared.training.experiment.start`, the
common start of the experiment notebooks, acts on ``cfg["fresh"]`` (``make run NB=… FRESH=1``): it
moves the experiment's earlier results and training state to ``previous/``, so that every phase
trains again.

Recipes (how a phase trains) are in :mod:`shared.training.recipes`; where it runs (devices, several
workers, mixed precision, XLA) in :mod:`shared.training.distribute`.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from shared import files
from shared.training import distribute
from shared.training.callbacks import (
    AtomicBackupAndRestore,
    AtomicModelCheckpoint,
    EpochLog,
    HistoryRecorder,
    NaNGuard,
    read_history,
    tensorboard,
)
from shared.training.recipes import Recipe, TrainingDivergedError, make_loss, make_optimizer


def fit(model: keras.Model, train, val, recipe: Recipe, out_dir, *, class_weight=None,
        phase: str = "train", initial_epoch: int = 0, callbacks: Sequence = (),
        fresh: bool = False) -> pd.DataFrame:
    """Compile ``model`` with ``recipe`` and train it on the tf.data datasets ``train`` and
    ``val`` (``val`` may be None) for ``recipe.epochs`` epochs, numbered from
    ``initial_epoch + 1``. Returns the whole history of ``out_dir`` (all phases so far).

    Resumes an interrupted phase; a finished phase is loaded, not retrained, unless ``fresh``.
    Raises :class:`TrainingDivergedError` when the loss becomes NaN. ``callbacks`` are added to
    the project's own (EarlyStopping, ReduceLROnPlateau, checkpoint, BackupAndRestore,
    CSVLogger, TensorBoard, TerminateOnNaN). A non-chief worker
    (:func:`shared.training.distribute.is_chief`) writes them to a temporary folder instead of
    ``out_dir``.
    """
    out_dir = Path(out_dir)
    if not distribute.is_chief(model.distribute_strategy):
        out_dir = Path(tempfile.mkdtemp(prefix=f"worker-{phase}-"))
        atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
    record_recipe(model, phase, recipe, class_weight)
    paths = PhasePaths(out_dir, phase)
    if finished_earlier(model, paths, fresh):
        return read_history(out_dir)
    check_labels(model, train)
    _check_class_weight(model, class_weight)
    if recipe.epochs == 0:
        return read_history(out_dir)

    monitor = recipe.monitor if val is not None else recipe.monitor.removeprefix("val_")
    mode = "max" if "acc" in monitor else "min"
    resuming = paths.backup_epoch()
    if resuming is None:
        paths.best.unlink(missing_ok=True)  # a stale best model of an earlier attempt
    threshold = _best_so_far(read_history(out_dir), phase, monitor, mode, resuming)

    with model.distribute_strategy.scope():
        model.compile(optimizer=make_optimizer(recipe, _steps_per_epoch(train)),
                      loss=make_loss(recipe), metrics=["accuracy"],
                      jit_compile=distribute.jit_compile())
    if isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
        distribute.build_for_multi_worker(model, train)
    if hasattr(model, "_initial_epoch"):
        # BackupAndRestore leaves the restored epoch on the model; a later fit must not see it.
        model._initial_epoch = None

    nan_guard = NaNGuard()
    project_callbacks = [
        nan_guard,
        AtomicBackupAndRestore(str(paths.backup)),
        HistoryRecorder(out_dir, phase),
        # the averaged weights in the model for validation and, after the backup (which
        # keeps the raw ones), for the checkpoint
        *([keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if recipe.ema else []),
        AtomicModelCheckpoint(str(paths.best), monitor=monitor, mode=mode,
                              save_best_only=True, initial_value_threshold=threshold),
        keras.callbacks.CSVLogger(str(paths.csv_log), append=True),
    ]
    if recipe.patience is not None:
        project_callbacks.append(keras.callbacks.EarlyStopping(
            monitor=monitor, mode=mode, patience=recipe.patience, min_delta=recipe.min_delta))
    if recipe.reduce_lr_factor and recipe.schedule == "plateau":
        project_callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, mode=mode, factor=recipe.reduce_lr_factor,
            patience=recipe.reduce_lr_patience, min_delta=recipe.min_delta, min_lr=recipe.min_lr))
    project_callbacks += tensorboard(paths.tensorboard)

    last = initial_epoch + recipe.epochs
    project_callbacks.append(EpochLog(phase, last))
    start = initial_epoch + 1 if resuming is None else resuming + 1
    print(f"{model.name} · {phase}: epochs {start}-{last}, {recipe.optimizer} "
          f"lr {recipe.learning_rate:g} ({_schedule_words(recipe)}), {recipe.loss}, "
          f"{count_params(model.trainable_weights):,} trainable parameters"
          + (" (resumed)" if resuming is not None else ""))
    paths.csv_log.parent.mkdir(parents=True, exist_ok=True)
    paths.best.parent.mkdir(parents=True, exist_ok=True)
    model.fit(train, validation_data=val, epochs=last, initial_epoch=initial_epoch,
              class_weight=class_weight, callbacks=[*project_callbacks, *callbacks], verbose=0,
              shuffle=False)  # tf.data pipelines shuffle themselves

    if nan_guard.epoch is not None:
        lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        raise TrainingDivergedError(
            f"training of {model.name} ({phase}) stopped: the loss became NaN at epoch "
            f"{nan_guard.epoch + 1}; lower the learning rate (it was {lr:g}) or check the "
            f"inputs for NaN or infinite values")
    if recipe.restore_best and paths.best.is_file():
        try:
            model.load_weights(str(paths.best))
            print(f"{model.name} · {phase}: restored the best weights ({monitor}) from "
                  f"{paths.best}")
        except Exception as error:  # e.g. a checkpoint cut short by a kill while it was written
            print(f"{model.name} · {phase}: could not restore the best weights from "
                  f"{paths.best} ({error}); keeping those of the last epoch")
    with files.atomic_path(paths.final, suffix=".weights.h5") as tmp:
        model.save_weights(str(tmp))
    return read_history(out_dir)


def _steps_per_epoch(dataset) -> int | None:
    count = int(dataset.cardinality()) if hasattr(dataset, "cardinality") else -1
    return count if count > 0 else None


def _schedule_words(recipe: Recipe) -> str:
    words = (f"{recipe.warmup_epochs:g} warm-up epochs, cosine" if recipe.schedule == "cosine"
             else "reduced on plateau" if recipe.reduce_lr_factor else "constant")
    if recipe.label_smoothing:
        words += f", label smoothing {recipe.label_smoothing:g}"
    return words + (f", EMA {recipe.ema:g}" if recipe.ema else "")


def record_recipe(model: keras.Model, phase: str, recipe: Recipe, class_weight=None,
                  **extra) -> None:
    """Note on ``model.recipes[phase]`` how that phase is trained (the recipe's fields,
    whether class weights apply, ``extra``): :func:`shared.evaluation.evaluate.finish` writes it to
    metrics.json."""
    recipes = dict(getattr(model, "recipes", {}))
    recipes[phase] = dataclasses.asdict(recipe) | {"class_weight": class_weight is not None} \
        | extra
    model.recipes = recipes


class PhasePaths:
    """The files of one phase of training under ``out_dir``: backup, checkpoints and logs."""

    def __init__(self, out_dir: Path, phase: str):
        if not phase or not phase.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"phase must be a short name of letters, digits, - and _: {phase!r}")
        self.out_dir, self.phase = out_dir, phase
        self.backup = out_dir / "backup" / phase
        self.best = out_dir / "checkpoints" / f"{phase}-best.keras"
        self.final = out_dir / "checkpoints" / f"{phase}-final.weights.h5"
        self.csv_log = out_dir / "logs" / f"{phase}.csv"
        self.tensorboard = out_dir / "logs" / phase

    def backup_epoch(self) -> int | None:
        """Number of finished epochs saved in an unfinished phase's backup (None: no backup)."""
        meta = self.backup / "training_metadata.json"
        return json.loads(meta.read_text())["epoch"] if meta.is_file() else None

    def clear(self) -> None:
        """Forget an earlier attempt at this phase: backup, checkpoints, logs, history rows."""
        shutil.rmtree(self.backup, ignore_errors=True)
        shutil.rmtree(self.tensorboard, ignore_errors=True)
        for path in (self.best, self.final, self.csv_log):
            path.unlink(missing_ok=True)
        history = read_history(self.out_dir)
        if len(history):
            files.write_csv(self.out_dir / "history.csv", history[history.phase != self.phase])


def finished_earlier(model: keras.Model, paths: PhasePaths, fresh: bool) -> bool:
    """Whether the phase finished earlier (its final weights are then loaded into ``model``);
    ``fresh`` clears what an earlier attempt left instead."""
    if fresh:
        paths.clear()
        return False
    return _load_finished(model, paths)


class DamagedCheckpointError(ValueError):
    """A finished phase's weights file cannot be loaded."""


def _load_finished(model: keras.Model, paths: PhasePaths) -> bool:
    if not paths.final.is_file():
        return False
    try:
        model.load_weights(str(paths.final))
    except Exception as err:  # noqa: BLE001 - h5py and Keras raise many kinds for one cause
        raise DamagedCheckpointError(
            f"{paths.final} cannot be loaded ({type(err).__name__}): run this experiment "
            "again with `make run NB=<its notebook> FRESH=1`, or delete that file") from None
    print(f"{model.name} · {paths.phase}: already trained, loaded {paths.final} "
          f"(fresh=True, or `make run NB=… FRESH=1`, trains it again)")
    return True


def _best_so_far(history: pd.DataFrame, phase: str, monitor: str, mode: str,
                 resuming: int | None) -> float | None:
    if resuming is None or monitor not in history:
        return None
    done = history[(history.phase == phase) & (history.epoch <= resuming)][monitor].dropna()
    if done.empty:
        return None
    return float(done.max() if mode == "max" else done.min())


def check_labels(model: keras.Model, dataset) -> None:
    """Raise ValueError unless ``dataset`` yields one-hot labels as wide as ``model``'s output."""
    spec = getattr(dataset, "element_spec", None)
    if not isinstance(spec, tuple) or len(spec) < 2:
        raise ValueError("the training dataset must yield (images, one-hot labels) batches")
    width, outputs = spec[1].shape[-1], model.output.shape[-1]
    if width is not None and width != outputs:
        raise ValueError(f"the labels have {width} classes but {model.name} has {outputs} "
                         f"outputs")


def _check_class_weight(model: keras.Model, class_weight) -> None:
    if class_weight is None:
        return
    outputs = model.output.shape[-1]
    bad = sorted(k for k in class_weight if k not in range(outputs))
    if bad:
        raise ValueError(f"class_weight keys must be class indices 0..{outputs - 1}, "
                         f"got {bad}")


def count_params(weights) -> int:
    """The number of parameters in ``weights`` (a list of variables)."""
    return int(sum(np.prod(w.shape) for w in weights))
