"""The start of an experiment: seed, fresh start, the run's split and the settings from its data.

:func:`start`, the common start of the experiment notebooks, acts on ``cfg["fresh"]`` (``make
run NB=… FRESH=1``): it moves the experiment's earlier results and training state to
``previous/``, so that every phase trains again. An experiment that finished with its
checkpoints deleted (``keep_checkpoints`` False) trains again too, its earlier results set aside
the same way. :func:`derive_settings` fills in the settings :mod:`shared.config` leaves open
(None, "auto") from the run's data: the one place their formulas live (:func:`batch_size_for`,
:func:`epochs_for`).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path

import keras
import tensorflow as tf

from shared import config, data
from shared.models import backbones
from shared.training import distribute, probe


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
    if cfg.get("deterministic") and cfg.get("jit_compile"):
        # Keras compiles without XLA under op determinism: the explicit request wins
        print("jit_compile=True: op determinism stays off (Keras does not compile with XLA "
              "under it), so a rerun may differ in the last digits")
        cfg["deterministic"] = False
    set_seed(config.train_seed(cfg), deterministic=bool(cfg.get("deterministic")))
    if cfg.get("mixed_precision"):
        distribute.enable_mixed_precision()
    distribute.set_jit_compile(bool(cfg.get("jit_compile")))
    if cfg.get("fresh") or _checkpoints_deleted(cfg["out_dir"]):
        set_aside_results(cfg["out_dir"])
    split = data.prepare(cfg["dataset"], cfg["run_dir"], cfg)
    derive_settings(cfg, split)
    return split


# batch_size None: BATCH_PIXELS / image_size² rounded down to a power of two, within these
# bounds (64 at Fashion-MNIST's 28 px and up to 67 px, 32 up to 96 px, 16 above)
BATCH_PIXELS = 32 * 96 * 96
BATCH_BOUNDS = (16, 64)


# epochs None (the baseline): enough epochs to train on EPOCH_IMAGES images, within
# EPOCH_BOUNDS (12 for Fashion-MNIST's 57,000 training images, 38 for 2,657 leaf photos; 12
# rather than 10 gave 93.64% instead of 93.40% on Fashion-MNIST, in a cpu run of the baseline;
# the figures are in `git show 393d175:README.md`, "Performance")
EPOCH_IMAGES = 100_000
EPOCH_BOUNDS = (12, 40)


def epochs_for(train_images: int) -> int:
    """The epochs :func:`derive_settings` gives ``train_images`` images."""
    low, high = EPOCH_BOUNDS
    return max(low, min(high, math.ceil(EPOCH_IMAGES / max(1, train_images))))


def batch_size_for(image_size: int) -> int:
    """The batch size :func:`derive_settings` gives ``image_size`` px images."""
    low, high = BATCH_BOUNDS
    fits = max(1, BATCH_PIXELS // (image_size * image_size))
    return max(low, min(high, 1 << (fits.bit_length() - 1)))


def derive_settings(cfg: dict, split, *, sample: int = 2000) -> dict:
    """Fill in, in place, the settings ``cfg`` leaves open, from the dataset of ``split``:
    ``image_size`` None becomes the median short side of (at most ``sample``) training images,
    at most ``cfg["max_image_size"]`` and at least the smallest input of the experiment's
    backbone; ``batch_size`` None follows from it (:func:`batch_size_for`);
    ``epochs`` None from the number of training images (:func:`epochs_for`);
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
        cfg["batch_size"] = batch_size_for(cfg["image_size"])
        derived["batch_size"] = {"value": cfg["batch_size"],
                                 "why": f"batch_size_for({cfg['image_size']})"}
    training = len(split.part("train", cfg.get("train_per_class"), cfg["seed"]))
    if "epochs" in cfg and cfg["epochs"] is None:
        cfg["epochs"] = epochs_for(training)
        derived["epochs"] = {"value": cfg["epochs"],
                             "why": f"epochs_for({training}): about "
                                    f"{EPOCH_IMAGES:,} training images seen"}
        if cfg.get("train_minutes"):     # shared.training.budget decides after the first epoch
            cfg["epochs_from_budget"] = True
            derived["epochs"] = {"value": cfg["epochs"], "why": (
                f"for now; chosen after the first epoch to fit train_minutes="
                f"{cfg['train_minutes']}")}
    augment = probe.resolve_augment(split, cfg)
    if augment:
        derived["augment"] = augment
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
    """Whether ``out_dir`` holds a finished experiment that :func:`shared.training.fitting.fit`
    trained there (its logs/) whose checkpoints were deleted when it finished
    (``keep_checkpoints`` False): no phase can be loaded, so it trains again. (A study trains in
    its trials' folders.)"""
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
