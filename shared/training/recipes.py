"""Recipes: how one phase of training goes (optimizer, learning rate and its schedule, loss,
early stopping), the recipes the notebooks use, and the learning-rate range test that helps
choose one. :func:`shared.training.fitting.fit` trains with a :class:`Recipe`."""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np

from shared.models import layers

OPTIMIZERS = ("adam", "nadam", "adamax", "sgd", "adamw")


LOSSES = ("categorical_crossentropy", "categorical_hinge")


SCHEDULES = ("plateau", "cosine")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


@dataclasses.dataclass
class Recipe:
    """How to train one phase.

    ``loss`` "categorical_hinge" is :func:`shared.models.layers.multiclass_hinge` (the multiclass
    SVM hinge of the scores behind the probabilities). ``patience`` None turns early stopping off,
    ``reduce_lr_factor`` None turns ReduceLROnPlateau off. ``restore_best`` loads the best
    checkpoint of the phase at its end. ``monitor`` falls back to its training counterpart ("loss")
    when there is no validation set.

    ``schedule`` "plateau" keeps the learning rate until ReduceLROnPlateau lowers it;
    "cosine" raises it linearly from 0 over ``warmup_epochs`` and then follows a cosine
    down to 0 at the phase's last epoch (ReduceLROnPlateau off). ``ema`` (e.g. 0.99) keeps an
    exponential moving average of the weights (the optimizer's ``use_ema``) with that
    momentum: validation, checkpoints and the final model use the averaged weights.
    """

    optimizer: str = "adam"
    learning_rate: float = 1e-3
    epochs: int = 10
    loss: str = "categorical_crossentropy"
    label_smoothing: float = 0.0
    patience: int | None = 5
    min_delta: float = 1e-3
    restore_best: bool = True
    reduce_lr_factor: float | None = 0.1
    reduce_lr_patience: int = 3
    min_lr: float = 1e-7
    monitor: str = "val_loss"
    weight_decay: float = 1e-4   # AdamW only
    momentum: float = 0.9        # SGD only
    schedule: str = "plateau"
    warmup_epochs: float = 0.0
    ema: float | None = None

    def __post_init__(self):
        self.optimizer = str(self.optimizer).lower()
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}: choose one of "
                             f"{', '.join(OPTIMIZERS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}: choose one of {', '.join(LOSSES)}")
        if not (isinstance(self.epochs, int) and self.epochs >= 0):
            raise ValueError(f"epochs must be an integer >= 0, not {self.epochs!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, not {self.learning_rate!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}: choose one of "
                             f"{', '.join(SCHEDULES)}")
        if not 0 <= self.warmup_epochs <= max(self.epochs, 0):
            raise ValueError(f"warmup_epochs must be between 0 and epochs ({self.epochs}), "
                             f"not {self.warmup_epochs!r}")
        if self.ema is not None and not 0 < self.ema < 1:
            raise ValueError(f"ema must be a momentum between 0 and 1 (e.g. 0.99) or None, "
                             f"not {self.ema!r}")


def learning_rate_schedule(recipe: Recipe, steps_per_epoch: int | None = None):
    """The learning rate of ``recipe``: a number, or for "cosine" a Keras schedule over the
    phase's ``recipe.epochs * steps_per_epoch`` optimizer steps (warm-up included)."""
    if recipe.schedule != "cosine":
        return recipe.learning_rate
    if not steps_per_epoch or steps_per_epoch < 1:
        raise ValueError("the cosine schedule needs the number of batches per epoch: the "
                         "training dataset has an unknown length")
    total = max(1, recipe.epochs * steps_per_epoch)
    warmup = min(total - 1, round(recipe.warmup_epochs * steps_per_epoch))
    if warmup <= 0:
        return keras.optimizers.schedules.CosineDecay(recipe.learning_rate, total)
    return keras.optimizers.schedules.CosineDecay(
        0.0, total - warmup, warmup_target=recipe.learning_rate, warmup_steps=warmup)


def make_optimizer(recipe: Recipe, steps_per_epoch: int | None = None
                   ) -> keras.optimizers.Optimizer:
    """The Keras optimizer of ``recipe`` (its schedule needs ``steps_per_epoch``)."""
    lr = learning_rate_schedule(recipe, steps_per_epoch)
    ema = dict(use_ema=True, ema_momentum=recipe.ema) if recipe.ema else {}
    return {
        "adam": lambda: keras.optimizers.Adam(lr, **ema),
        "nadam": lambda: keras.optimizers.Nadam(lr, **ema),
        "adamax": lambda: keras.optimizers.Adamax(lr, **ema),
        "sgd": lambda: keras.optimizers.SGD(lr, momentum=recipe.momentum, **ema),
        "adamw": lambda: keras.optimizers.AdamW(lr, weight_decay=recipe.weight_decay, **ema),
    }[recipe.optimizer]()


def make_loss(recipe: Recipe):
    """The loss of ``recipe`` (models output probabilities, labels are one-hot)."""
    if recipe.loss == "categorical_hinge":
        return layers.multiclass_hinge
    return keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing)


def transfer_recipes(cfg: dict, **options) -> tuple[Recipe, Recipe]:
    """The recipes of the two phases of transfer learning from an experiment's settings: the
    head's (``learning_rate``, ``epochs``) and fine-tuning's (``fine_tune_lr``,
    ``fine_tune_epochs``). ``options`` (other :class:`Recipe` fields) apply to both."""
    return (Recipe(learning_rate=cfg["learning_rate"], epochs=cfg["epochs"], **options),
            Recipe(learning_rate=cfg["fine_tune_lr"], epochs=cfg["fine_tune_epochs"],
                   **options))


def baseline_recipe(cfg: dict, **changes) -> Recipe:
    """The recipe of the baseline CNN (notebook 01), the parts benchmarks/recipe.py kept: the
    experiment's ``learning_rate`` and ``epochs``, one warm-up epoch then a cosine schedule,
    label smoothing 0.1, no early stopping (the schedule ends the training). ``changes``
    override single fields."""
    fields = dict(optimizer="adam", learning_rate=cfg["learning_rate"], epochs=cfg["epochs"],
                  schedule="cosine", warmup_epochs=min(1, cfg["epochs"]), label_smoothing=0.1,
                  patience=None)
    return Recipe(**(fields | changes))


def baseline_architecture(image_size: int) -> dict:
    """The :func:`shared.models.networks.build_baseline` arguments for ``image_size`` px images: its
    defaults (two blocks, flattened maps) up to 32 px; above, one more block per doubling of
    the side (the last maps about 6 px), global average pooling, so the parameter count
    stays near 100k; no dropout: this small network underfits larger images (on the leaf
    photos, with dropout 0.3, training accuracy stayed within 6 points of validation's after
    40 epochs); and a strided first convolution instead of the first max-pooling, whose steps
    train about 1.4 times as fast, so a time budget holds more epochs (docs/results.md has
    the comparisons)."""
    if image_size <= 32:
        return {}
    blocks = max(2, min(5, round(math.log2(image_size / 6))))
    return dict(blocks=blocks, filters=16, pooling="gap", dense=(128,), dropout=0.0,
                strided_stem=True)


@dataclasses.dataclass
class LearningRateFinding:
    """What :func:`find_learning_rate` measured: the learning rates tried (increasing), the
    loss of the batch trained at each, its exponential smoothing, and ``suggestion``."""

    learning_rates: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggestion: float

    def as_dict(self) -> dict:
        return {"learning_rates": self.learning_rates.tolist(), "losses": self.losses.tolist(),
                "smoothed": self.smoothed.tolist(), "suggestion": self.suggestion}


def find_learning_rate(model: keras.Model, train, recipe: Recipe | None = None, *,
                       start_lr: float = 1e-5, end_lr: float = 1.0, steps: int = 100,
                       smoothing: float = 0.9, stop_factor: float = 4.0) -> LearningRateFinding:
    """An LR range test (Smith 2017, fastai's ``lr_find``): train ``model`` one batch of
    ``train`` at a time (repeated as needed) while the learning rate grows geometrically from
    ``start_lr`` to ``end_lr`` over ``steps`` batches, stopping early once the smoothed loss
    exceeds ``stop_factor`` times its minimum. ``recipe`` gives the optimizer and loss
    (default: :class:`Recipe`'s); its schedule is ignored. The model's weights are restored
    afterwards; it is left compiled for the test (:func:`fit` compiles it again).

    ``suggestion`` is the learning rate of the steepest descent of the smoothed loss before
    its minimum (fastai's "steep", each slope over a few steps: :func:`_suggest`), or, where the
    loss never fell, a tenth of the one at its minimum; it always lies within the learning rates
    tried."""
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got {start_lr!r} and {end_lr!r}")
    if steps < 5:
        raise ValueError(f"steps must be at least 5, not {steps!r}")
    recipe = dataclasses.replace(recipe or Recipe(), schedule="plateau", ema=None)
    saved = [w.copy() for w in model.get_weights()]
    model.compile(optimizer=make_optimizer(dataclasses.replace(recipe, learning_rate=start_lr)),
                  loss=make_loss(recipe))
    factor = (end_lr / start_lr) ** (1 / (steps - 1))
    rates, losses, smoothed = [], [], []
    average, best = 0.0, np.inf
    try:
        for step, (x, y) in enumerate(train.repeat().take(steps)):
            lr = start_lr * factor ** step
            model.optimizer.learning_rate.assign(lr)
            loss = float(np.asarray(model.train_on_batch(x, y)).ravel()[0])
            if not np.isfinite(loss):
                break
            average = smoothing * average + (1 - smoothing) * loss
            value = average / (1 - smoothing ** (step + 1))   # bias-corrected
            rates.append(lr)
            losses.append(loss)
            smoothed.append(value)
            best = min(best, value)
            if value > stop_factor * best:
                break
    finally:
        model.set_weights(saved)
    if len(rates) < 3:
        raise TrainingDivergedError(f"the LR range test diverged after {len(rates)} steps: "
                                    f"lower start_lr (it was {start_lr:g})")
    rates, losses, smoothed = map(np.asarray, (rates, losses, smoothed))
    return LearningRateFinding(rates, losses, smoothed, _suggest(rates, smoothed))


def _suggest(rates: np.ndarray, smoothed: np.ndarray) -> float:
    """The steepest descent before the minimum, each slope taken across a twentieth of the steps
    either side: from one step to the next, the noise of the first few batches (which the
    smoothing has barely averaged yet) looked steeper than the real descent and made the first
    rate tried the suggestion."""
    lowest = int(np.argmin(smoothed))
    reach = max(1, len(rates) // 20)
    if lowest >= 2 * reach:
        log = np.log(rates)
        middle = np.arange(reach, lowest - reach + 1)
        slopes = ((smoothed[middle + reach] - smoothed[middle - reach])
                  / (log[middle + reach] - log[middle - reach]))
        if slopes.min() < 0:
            return float(rates[middle[int(np.argmin(slopes))]])
    return float(max(rates[0], rates[lowest] / 10))
