"""Epochs from a time budget (``train_minutes``): the baseline's first epoch, its warm-up, is
trained and timed as a phase of its own; then as many epochs as fit in the budget follow, with
the cosine schedule over them, so the schedule still ends at zero and within the budget.

The images are decoded into the pipelines' caches before the first epoch, which is then
measured batch by batch: its steady time (the median batch time times the batches, plus the
validation pass) leaves out what only the first epoch pays (tracing the training step; timed
with the decoding inside, it was 6.8 s against 5.8 s for each later epoch on the leaf photos).
One epoch is still a noisy estimate on a CPU: two runs on the leaves have since ended 21% under
and 12% over their budget. The choice is written to
``<out_dir>/budget.json``, so a resumed run trains the same number of epochs.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from shared import files
from shared.training.callbacks import read_history
from shared.training.fitting import fit
from shared.training.recipes import Recipe

BUDGET_FILE = "budget.json"
EPOCH_RANGE = (2, 200)
MARGIN = 0.05   # later epochs ran 3% slower than the first one's steady time on the leaf photos


class EpochClock(keras.callbacks.Callback):
    """Times each training batch and the validation pass of one epoch."""

    def __init__(self):
        super().__init__()
        self.batches: list[float] = []
        self.validation = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._batch = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append(time.perf_counter() - self._batch)

    def on_test_begin(self, logs=None):
        self._test = time.perf_counter()

    def on_test_end(self, logs=None):
        self.validation = time.perf_counter() - self._test

    def steady_seconds(self) -> float:
        """The epoch's time without its one-off costs (see the module docstring)."""
        later = self.batches[len(self.batches) // 2:] or self.batches
        return float(np.median(later)) * len(self.batches) + self.validation


def fill_caches(*datasets) -> None:
    """Read each (finite) dataset once, so that its cache holds the decoded images before an
    epoch is timed."""
    for dataset in datasets:
        if dataset is not None:
            for _ in dataset:
                pass


def epochs_within(budget_seconds: float, epoch_seconds: float) -> int:
    """How many epochs of ``epoch_seconds`` (and MARGIN more) fit in ``budget_seconds``,
    within EPOCH_RANGE."""
    low, high = EPOCH_RANGE
    per_epoch = max(epoch_seconds, 1e-6) * (1 + MARGIN)
    return max(low, min(high, math.floor(budget_seconds / per_epoch)))


def fit_within_budget(model, train, val, recipe: Recipe, cfg: dict, *,
                      class_weight=None) -> pd.DataFrame:
    """:func:`shared.training.fitting.fit` of ``recipe`` in ``cfg["out_dir"]``; where
    ``cfg["epochs_from_budget"]`` (epochs left to :func:`shared.training.experiment.derive_settings`
    with a ``train_minutes`` budget), the epochs are chosen after the first one (module
    docstring) and ``cfg["epochs"]`` and its derived setting say how many and why."""
    out_dir = Path(cfg["out_dir"])
    if not cfg.get("epochs_from_budget"):
        return fit(model, train, val, recipe, out_dir, class_weight=class_weight)
    path = out_dir / BUDGET_FILE
    if not path.is_file():
        fill_caches(train, val)
    clock = EpochClock()
    first = dataclasses.replace(recipe, epochs=1, warmup_epochs=1)
    fit(model, train, val, first, out_dir, class_weight=class_weight, phase="first",
        callbacks=[clock])
    chosen = files.read_json(path) if path.is_file() else None
    if chosen is None:      # (a resumed run reads what its first attempt chose)
        seconds = clock.steady_seconds() if clock.batches else float(
            read_history(out_dir)["seconds"].iloc[0])      # first phase loaded, not trained
        budget = 60 * float(cfg["train_minutes"])
        chosen = {"train_minutes": cfg["train_minutes"], "epoch_seconds": round(seconds, 2),
                  "epochs": epochs_within(budget, seconds)}
        files.write_json(path, chosen)
    epochs = chosen["epochs"]
    why = (f"train_minutes={chosen['train_minutes']}: the first epoch took "
           f"{chosen['epoch_seconds']:.1f} s without its one-off costs; with {MARGIN:.0%} to "
           f"spare, {epochs} epochs fit")
    print(f"epochs {epochs} ({why})")
    cfg["epochs"] = epochs
    cfg.setdefault("derived_settings", {})["epochs"] = {"value": epochs, "why": why}
    rest = dataclasses.replace(recipe, epochs=epochs - 1, warmup_epochs=0)
    return fit(model, train, val, rest, out_dir, class_weight=class_weight, phase="train",
               initial_epoch=1)
