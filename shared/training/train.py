"""Training: the start of an experiment, one ``fit`` with its callbacks, transfer learning in
any number of phases, the feature cache.

Everything an experiment trains lands under its ``out_dir``::

    history.csv                  one row per finished epoch of every phase (epoch, phase, loss,
                                 accuracy, val_loss, val_accuracy, learning_rate, seconds),
                                 rewritten atomically after each epoch
    checkpoints/<phase>-best.keras        best model of the phase (by the recipe's monitor)
    checkpoints/<phase>-final.weights.h5  weights at the end of a finished phase
    backup/<phase>/              BackupAndRestore state of an unfinished phase
    logs/<phase>/, logs/<phase>.csv       TensorBoard logs and the CSVLogger file
    phases.json                  layer and parameter counts of each phase (fit_transfer)

Reruns: a phase that was interrupted (even by SIGKILL) resumes from its last finished epoch;
a phase that finished is not trained again: its final weights are loaded and its history kept
(pass ``fresh=True`` to train it again). So a killed notebook continues where it stopped.
When the experiment finishes, :func:`shared.evaluation.evaluate.finish` deletes checkpoints/ and
backup/
(setting ``keep_checkpoints``: keep them, and a rerun of its notebook only redoes the
evaluation); without them, a rerun by hand trains it again, its earlier results set aside in
``previous/`` (the runner skips finished notebooks). :func:`start`, the common
start of the experiment notebooks, acts on ``cfg["fresh"]`` (``make run NB=… FRESH=1``): it
moves the experiment's earlier results and training state to ``previous/``, so that every
phase trains again.

Recipes (how a phase trains) are in :mod:`shared.training.recipes`; where it runs (devices, several
workers, mixed precision, XLA) in :mod:`shared.training.distribute`.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from shared import config, data, files
from shared.models import backbones
from shared.training import distribute
from shared.training.callbacks import (
    AtomicBackupAndRestore,
    AtomicModelCheckpoint,
    HistoryRecorder,
    NaNGuard,
    read_history,
    tensorboard,
)
from shared.training.recipes import Recipe, TrainingDivergedError, make_loss, make_optimizer


class _NoRetracingNotice(logging.Filter):
    """Drops TensorFlow's notice that a function was traced again: a study (or a comparison)
    builds a new model per trial in one process, so the notice is expected there, and it
    would fill the reports with advice that does not apply."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


logging.getLogger("tensorflow").addFilter(_NoRetracingNotice())


def start(cfg: dict):
    """The common start of an experiment notebook: the seed set, mixed precision where
    ``cfg["mixed_precision"]`` asks for it (and there is a GPU), a fresh start where
    ``cfg["fresh"]`` asks for one (:func:`set_aside_results`), the run's split and the training
    data. ``cfg`` comes from :func:`shared.config.experiment`. Returns ``(split, train, val,
    class_weights)``, as :func:`shared.data.prepare` and :func:`shared.data.training_data`."""
    split = begin(cfg)
    return (split, *data.training_data(split, cfg))


def begin(cfg: dict):
    """:func:`start` without the training data (a study makes its own, trial by trial):
    returns the run's split, with the settings ``cfg`` leaves open derived from it."""
    set_seed(config.train_seed(cfg))
    if cfg.get("mixed_precision"):
        distribute.enable_mixed_precision()
    distribute.set_jit_compile(bool(cfg.get("jit_compile")))
    if cfg.get("fresh") or _checkpoints_deleted(cfg["out_dir"]):
        set_aside_results(cfg["out_dir"])
    split = data.prepare(cfg["dataset"], cfg["run_dir"], cfg)
    derive_settings(cfg, split)
    return split


def derive_settings(cfg: dict, split, *, sample: int = 2000) -> dict:
    """Fill in, in place, the settings ``cfg`` leaves open, from the dataset of ``split``:
    ``image_size`` None becomes the median short side of (at most ``sample``) training images,
    at most ``cfg["max_image_size"]`` and at least the smallest input of the experiment's
    backbone; ``batch_size`` None follows from it (:func:`shared.config.batch_size_for`);
    ``epochs`` None from the number of training images (:func:`shared.config.epochs_for`);
    ``cache`` "auto" becomes "memory" or "disk" by the size of the decoded training and
    validation images (:data:`shared.data.AUTO_CACHE_LIMIT`). Given values are kept. Prints
    the choices and why once, and records them as ``cfg["derived_settings"]`` ({setting:
    {"value", "why"}}), which metrics.json keeps. Returns that record."""
    if "image_size" not in cfg:
        return {}
    derived = {}
    if cfg["image_size"] is None:
        train_files = split.part("train")
        sizes = data.image_sizes(train_files, split.root, limit=sample, seed=cfg["seed"])
        sides = sizes[["width", "height"]].min(axis=1)
        sides = sides[sides > 0]
        if sides.empty:
            raise ValueError(f"image_size: no training image of {split.root} has a readable "
                             "size; give image_size explicitly")
        side = int(sides.median())
        cap = int(cfg.get("max_image_size") or side)
        name = cfg.get("experiment")
        floor = (backbones.backbone_spec(name).min_size if name in backbones.BACKBONES
                 else 2 ** 2)   # the baseline's two pooling steps
        size = max(floor, min(side, cap))
        why = f"median short side of {len(sides):,} training images: {side} px"
        if side > cap:
            why += f"; capped at max_image_size={cap}"
        if size > min(side, cap):
            why += f"; raised to {floor}, the smallest input of {name}"
        cfg["image_size"] = size
        derived["image_size"] = {"value": size, "why": why}
    if cfg.get("batch_size") is None:
        cfg["batch_size"] = config.batch_size_for(cfg["image_size"])
        derived["batch_size"] = {"value": cfg["batch_size"],
                                 "why": f"config.batch_size_for({cfg['image_size']})"}
    training = len(split.part("train", cfg.get("train_per_class"), cfg["seed"]))
    if "epochs" in cfg and cfg["epochs"] is None:
        cfg["epochs"] = config.epochs_for(training)
        derived["epochs"] = {"value": cfg["epochs"],
                             "why": f"config.epochs_for({training}): about "
                                    f"{config.EPOCH_IMAGES:,} training images seen"}
    if cfg.get("cache") == "auto":
        count = training + len(split.part("val"))
        decoded = count * cfg["image_size"] ** 2 * 3
        limit = data.AUTO_CACHE_LIMIT
        fits = decoded <= limit
        cfg["cache"] = "memory" if fits else "disk"
        derived["cache"] = {"value": cfg["cache"],
                            "why": f"{count:,} decoded training and validation images take "
                                   f"{decoded / 2**30:.2f} GiB, {'within' if fits else 'over'} "
                                   f"the {limit / 2**30:g} GiB memory limit"}
    if derived:
        print("settings from the data: " + "; ".join(
            f"{key} {entry['value']} ({entry['why']})" for key, entry in derived.items()))
    cfg["derived_settings"] = derived
    return derived


def _checkpoints_deleted(out_dir) -> bool:
    """Whether ``out_dir`` holds a finished experiment that :func:`fit` trained there (its
    logs/) whose checkpoints were deleted when it finished (``keep_checkpoints`` False): no
    phase can be loaded, so it trains again. (A study trains in its trials' folders.)"""
    out_dir = Path(out_dir)
    deleted = ((out_dir / "metrics.json").is_file() and (out_dir / "logs").is_dir()
               and not (out_dir / "checkpoints").is_dir())
    if deleted:
        print(f"{out_dir.name}: finished earlier, and its checkpoints were deleted then "
              "(keep_checkpoints=False): it trains again from scratch")
    return deleted


def set_aside_results(out_dir) -> list[str]:
    """Before an experiment runs again from scratch: move its finished results and their
    training state (:data:`shared.config.RESULT_FILES`, :data:`shared.config.TRAINING_STATE`)
    into ``<out_dir>/previous/``, replacing an older set there, so that should the new attempt
    fail, nothing takes the old results for its own, and they are still at hand. What an
    unfinished attempt left (no metrics.json) is deleted instead, so that ``previous/`` always
    holds the last finished results. Returns the names moved or deleted."""
    out_dir = Path(out_dir)
    found = [name for name in (*config.RESULT_FILES, *config.TRAINING_STATE)
             if (out_dir / name).exists()]
    if not found:
        return found
    finished = (out_dir / "metrics.json").is_file()
    previous = out_dir / "previous"
    if finished:
        shutil.rmtree(previous, ignore_errors=True)
        previous.mkdir()
    for name in found:
        if finished:
            (out_dir / name).replace(previous / name)
        elif (out_dir / name).is_dir():
            shutil.rmtree(out_dir / name)
        else:
            (out_dir / name).unlink()
    print(f"{out_dir.name}: running again from scratch; " + (
        f"its earlier {', '.join(found)} are in {previous}" if finished else
        f"what an unfinished attempt left ({', '.join(found)}) was deleted"))
    return found


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy, TensorFlow and Keras; ``deterministic`` also turns on TensorFlow op
    determinism (same results on the same machine, slower; it stays on for the process)."""
    os.environ["PYTHONHASHSEED"] = str(seed)  # for subprocesses
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


# --------------------------------------------------------------------------------------------
# fit


def fit(model: keras.Model, train, val, recipe: Recipe, out_dir, *, class_weight=None,
        phase: str = "train", initial_epoch: int = 0, callbacks: Sequence = (),
        fresh: bool = False) -> pd.DataFrame:
    """Compile ``model`` with ``recipe`` and train it on the tf.data datasets ``train`` and
    ``val`` (``val`` may be None) for ``recipe.epochs`` epochs, numbered from
    ``initial_epoch + 1``. Returns the whole history of ``out_dir`` (all phases so far).

    Resumes an interrupted phase; a finished phase is loaded, not retrained, unless ``fresh``.
    Raises :class:`TrainingDivergedError` when the loss becomes NaN. ``callbacks`` are added to
    the project's own (EarlyStopping, ReduceLROnPlateau, checkpoint, BackupAndRestore,
    CSVLogger, TensorBoard, TerminateOnNaN). A non-chief worker (:func:`is_chief`) writes
    them to a temporary folder instead of ``out_dir``.
    """
    out_dir = Path(out_dir)
    if not distribute.is_chief(model.distribute_strategy):
        out_dir = Path(tempfile.mkdtemp(prefix=f"worker-{phase}-"))
        atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
    record_recipe(model, phase, recipe, class_weight)
    paths = _PhasePaths(out_dir, phase)
    if _finished_earlier(model, paths, fresh):
        return read_history(out_dir)
    _check_labels(model, train)
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
    start = initial_epoch + 1 if resuming is None else resuming + 1
    print(f"{model.name} · {phase}: epochs {start}-{last}, {recipe.optimizer} "
          f"lr {recipe.learning_rate:g} ({_schedule_words(recipe)}), {recipe.loss}, "
          f"{_count(model.trainable_weights):,} trainable parameters"
          + (" (resumed)" if resuming is not None else ""))
    paths.csv_log.parent.mkdir(parents=True, exist_ok=True)
    paths.best.parent.mkdir(parents=True, exist_ok=True)
    model.fit(train, validation_data=val, epochs=last, initial_epoch=initial_epoch,
              class_weight=class_weight, callbacks=[*project_callbacks, *callbacks], verbose=2,
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


class _PhasePaths:
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


def _finished_earlier(model: keras.Model, paths: _PhasePaths, fresh: bool) -> bool:
    """Whether the phase finished earlier (its final weights are then loaded into ``model``);
    ``fresh`` clears what an earlier attempt left instead."""
    if fresh:
        paths.clear()
        return False
    return _load_finished(model, paths)


class DamagedCheckpointError(ValueError):
    """A finished phase's weights file cannot be loaded."""


def _load_finished(model: keras.Model, paths: _PhasePaths) -> bool:
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


def _check_labels(model: keras.Model, dataset) -> None:
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


def _count(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


# --------------------------------------------------------------------------------------------
# The baseline's recipe, and the learning-rate range test


# --------------------------------------------------------------------------------------------
# Transfer learning


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase of transfer learning: which backbone layers train, and how.

    ``unfreeze`` top layers of the backbone (an int, or "all") and ``unfreeze_bottom`` bottom
    layers are trainable; with neither, the backbone is frozen and only the head trains."""

    name: str
    recipe: Recipe
    unfreeze: int | str = 0
    unfreeze_bottom: int = 0

    @property
    def frozen(self) -> bool:
        return self.unfreeze == 0 and not self.unfreeze_bottom


def fit_transfer(model: keras.Model, train, val, recipe: Recipe, fine_tune: Recipe | None,
                 out_dir, *, unfreeze, class_weight=None, feature_cache="auto",
                 fresh: bool = False,
                 after_head: Callable[[keras.Model], None] | None = None) -> pd.DataFrame:
    """Two-phase transfer learning of a :func:`shared.models.networks.build_transfer` model:
    :func:`fit_phases` with phase "head" (the backbone frozen, ``recipe``) and phase
    "fine_tune" (the top ``unfreeze`` layers of the backbone, an int or "all", trained with
    ``fine_tune``, its lower learning rate), skipped when ``fine_tune`` is None, has 0 epochs
    or ``unfreeze`` is 0. ``after_head(model)`` is called between the phases, when there is a
    phase 2 (for example an :class:`shared.evaluation.evaluate.Snapshot`, to compare phase 2 with
    phase 1)."""
    phases = [Phase("head", recipe)]
    if fine_tune is not None and fine_tune.epochs and unfreeze != 0:
        phases.append(Phase("fine_tune", fine_tune, unfreeze))
    between = None if after_head is None else (lambda _done, m: after_head(m))
    return fit_phases(model, train, val, phases, out_dir, class_weight=class_weight,
                      feature_cache=feature_cache, fresh=fresh, after_phase=between)


def fit_phases(model: keras.Model, train, val, phases: Sequence[Phase], out_dir, *,
               class_weight=None, feature_cache="auto", fresh: bool = False,
               after_phase: Callable[[str, keras.Model], None] | None = None) -> pd.DataFrame:
    """Train a :func:`shared.models.networks.build_transfer` model in ``phases``, in turn (each a
    :class:`Phase`; for example head, then the top blocks, then everything).

    A phase with the backbone frozen trains the head on cached features when
    ``feature_cache`` allows (True; False; "auto": when the training dataset says it is not
    augmented, through an ``augment`` attribute that is "none"). In the other phases every
    BatchNormalization layer of the backbone stays frozen, unless the backbone's
    ``model.weights_source`` says its weights are random: then they learn (and before the
    first phase their moving statistics are estimated on training batches). Epochs are
    numbered on from phase to phase; each phase resumes or is loaded as :func:`fit` does.

    Returns the history (with its "phase" column). The layer and parameter counts, epochs and
    wall-clock seconds (feature extraction included) of each phase are printed, set as
    ``model.phase_summary`` and written to ``out_dir/phases.json``, e.g.
    ``{"head": {"backbone_layers": 22, "backbone_trainable_layers": 0, "trainable_params": ...,
    "non_trainable_params": ..., "epochs": 8, "seconds": 41.0},
    "fine_tune": {..., "unfreeze": 4}}``. ``after_phase(name, model)`` is called after each
    phase that another follows.
    """
    out_dir = Path(out_dir)
    names = [phase.name for phase in phases]
    if not phases or len(set(names)) != len(names):
        raise ValueError(f"phases need distinct names, at least one: got {names}")
    backbone, head = model.get_layer("backbone"), model.get_layer("head")
    pretrained = backbones.is_pretrained(getattr(model, "weights_source", "imagenet"))
    if not pretrained:
        calibrated = backbones.calibrate_batch_norm(model, train)
        if calibrated:
            print(f"random backbone weights: the moving statistics of {calibrated} batch "
                  "normalization layers were estimated on training batches")
    summary, done, history = {}, 0, None
    for i, phase in enumerate(phases):
        if i and after_phase is not None:
            after_phase(phases[i - 1].name, model)
        started = time.perf_counter()
        head.trainable = True
        if phase.frozen:
            backbone.trainable = False
        else:
            set_trainable(backbone, phase.unfreeze, bottom=phase.unfreeze_bottom,
                          freeze_batch_norm=pretrained)
        summary[phase.name] = phase_summary(model)
        if not phase.frozen:
            summary[phase.name]["unfreeze"] = phase.unfreeze
            if phase.unfreeze_bottom:
                summary[phase.name]["unfreeze_bottom"] = phase.unfreeze_bottom
        if phase.frozen and _use_feature_cache(feature_cache, train):
            history = fit_head(model, train, val, phase.recipe, out_dir,
                               class_weight=class_weight, phase=phase.name,
                               initial_epoch=done, fresh=fresh)
        else:
            history = fit(model, train, val, phase.recipe, out_dir, class_weight=class_weight,
                          phase=phase.name, initial_epoch=done, fresh=fresh)
        epochs = history.loc[history.phase == phase.name, "epoch"]
        summary[phase.name]["epochs"] = int(epochs.max() - done) if len(epochs) else 0
        done = int(epochs.max()) if len(epochs) else done
        summary[phase.name]["seconds"] = round(time.perf_counter() - started, 1)

    for name, counts in summary.items():
        print(f"phase {name}: {counts['trainable_params']:,} trainable parameters, "
              f"{counts['backbone_trainable_layers']}/{counts['backbone_layers']} backbone "
              f"layers trainable, {counts['epochs']} epochs")
    model.phase_summary = summary
    files.write_json(out_dir / "phases.json", summary)
    return history


def set_trainable(backbone: keras.Model, unfreeze, *, bottom: int = 0,
                  freeze_batch_norm: bool = True) -> None:
    """Make the top ``unfreeze`` layers of ``backbone`` (an int >= 0, or "all") and its bottom
    ``bottom`` layers trainable and every other layer frozen; every BatchNormalization layer
    stays frozen (inference mode) unless ``freeze_batch_norm`` is False."""
    layers = backbone.layers
    if unfreeze == "all":
        count = len(layers)
    elif isinstance(unfreeze, int) and not isinstance(unfreeze, bool) and unfreeze >= 0:
        count = min(unfreeze, len(layers))
    else:
        raise ValueError(f"unfreeze must be an integer >= 0 or 'all', not {unfreeze!r}")
    if isinstance(bottom, bool) or not isinstance(bottom, int) or bottom < 0:
        raise ValueError(f"unfreeze_bottom must be an integer >= 0, not {bottom!r}")
    backbone.trainable = True
    for i, layer in enumerate(layers):
        chosen = i >= len(layers) - count or i < bottom
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = chosen and not (is_bn and freeze_batch_norm)


def phase_summary(model: keras.Model) -> dict:
    """Layer and parameter counts of a transfer model as it is now (trainable or not)."""
    backbone = model.get_layer("backbone")
    return {
        "backbone_layers": len(backbone.layers),
        "backbone_trainable_layers": sum(1 for layer in backbone.layers
                                         if layer.trainable_weights),
        "trainable_params": _count(model.trainable_weights),
        "non_trainable_params": _count(model.non_trainable_weights),
    }


def _use_feature_cache(feature_cache, train) -> bool:
    if isinstance(feature_cache, bool):
        return feature_cache
    if feature_cache != "auto":
        raise ValueError(f"feature_cache must be True, False or 'auto', not {feature_cache!r}")
    augment = getattr(train, "augment", None)
    if augment is None:
        print("feature cache: off (the training dataset does not say whether it is augmented; "
              "pass feature_cache=True when it is not)")
        return False
    use = str(augment) in ("", "none")
    print(f"feature cache: {'on' if use else 'off'} (augment={augment!r})")
    return use


def feature_extractor(model: keras.Model) -> keras.Model:
    """The part of a transfer model from the image to its pooled features (shared layers)."""
    return keras.Model(model.input, model.get_layer("pooling").output, name="features")


def extract_features(model: keras.Model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """The pooled backbone features and the labels of every batch of ``dataset``, in one pass
    (so a shuffling dataset stays aligned)."""
    extractor = feature_extractor(model)
    features, labels = [], []
    for batch in dataset:
        features.append(np.asarray(extractor.predict_on_batch(batch[0])))
        labels.append(np.asarray(batch[1]))
    if not features:
        raise ValueError("the dataset is empty: no features to extract")
    return np.concatenate(features), np.concatenate(labels)


def fit_head(model: keras.Model, train, val, recipe: Recipe, out_dir, *, class_weight=None,
             phase: str = "head", initial_epoch: int = 0, seed: int = 0,
             fresh: bool = False) -> pd.DataFrame:
    """Train only the head of a transfer model on its backbone's features, computed once.

    The head is the model's own "head" layer, so ``model`` is what it would be after training
    with the backbone frozen; the callbacks, resumption and history are those of :func:`fit`.
    Batches keep the size of ``train``'s first batch and are reshuffled every epoch with
    ``seed``.
    """
    out_dir = Path(out_dir)
    record_recipe(model, phase, recipe, class_weight, features_cached=True)
    head = model.get_layer("head")
    paths = _PhasePaths(out_dir, phase)
    if _finished_earlier(head, paths, fresh):
        return read_history(out_dir)
    _check_labels(model, train)
    start = time.perf_counter()
    x_train, y_train = extract_features(model, train)
    batch_size = len(next(iter(train))[0])
    train_features = (tf.data.Dataset.from_tensor_slices((x_train, y_train))
                      .shuffle(len(x_train), seed=seed).batch(batch_size))
    val_features = None
    if val is not None:
        x_val, y_val = extract_features(model, val)
        val_features = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(batch_size)
    print(f"feature cache: {len(x_train)} training images -> {x_train.shape[1]} features in "
          f"{time.perf_counter() - start:.1f} s")
    head.trainable = True
    return fit(head, train_features, val_features, recipe, out_dir, class_weight=class_weight,
               phase=phase, initial_epoch=initial_epoch, fresh=False)  # decided above
