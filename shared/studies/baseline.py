"""Trials of the baseline CNN: how the studies of notebooks 07-09 (search, ablations,
cross-validation) train one setting of notebook 01's model.

A trial's settings may change, on top of the study's cfg:

    architecture keys   any :func:`shared.models.networks.build_baseline` argument (``blocks``,
                        ``filters``, ``dropout``, ``l2``, ``residual`` …), over
                        :func:`shared.training.recipes.baseline_architecture` of the image size
    optimizer, learning_rate, epochs     the recipe
    (:func:`shared.training.recipes.baseline_recipe`)
    augment, class_weight, oversample, train_per_class, train_seed     the training data
    plain_epochs        the first epochs trained without augmentation (then ``augment``)
"""

from __future__ import annotations

import inspect

import keras
import pandas as pd

from shared import data
from shared.models import networks
from shared.training import recipes
from shared.training.fitting import fit

_PARAMETERS = inspect.signature(networks.build_baseline).parameters
ARCHITECTURE_KEYS = tuple(name for name in _PARAMETERS
                          if name not in ("input_shape", "num_classes", "name"))
ARCHITECTURE_DEFAULTS = {name: _PARAMETERS[name].default for name in ARCHITECTURE_KEYS}


def architecture(tcfg: dict) -> dict:
    """The :func:`shared.models.networks.build_baseline` arguments of a trial: the notebook's own
    for its image size, then ``tcfg["architecture"]`` (a dict), then single keys of ``tcfg``."""
    chosen = recipes.baseline_architecture(tcfg["image_size"]) | dict(tcfg.get("architecture")
                                                                      or {})
    chosen |= {key: tcfg[key] for key in ARCHITECTURE_KEYS if key in tcfg}
    if "dense" in chosen and isinstance(chosen["dense"], int | float):
        chosen["dense"] = (int(chosen["dense"]),)
    return chosen


def build(tcfg: dict, num_classes: int) -> keras.Model:
    size = tcfg["image_size"]
    return networks.build_baseline((size, size, 3), num_classes, **architecture(tcfg))


def recipe(tcfg: dict, epochs: int | None = None) -> recipes.Recipe:
    """The baseline's recipe with the trial's optimizer, learning rate and epochs."""
    changes = {"optimizer": tcfg["optimizer"]} if tcfg.get("optimizer") else {}
    epochs = tcfg["epochs"] if epochs is None else epochs
    return recipes.baseline_recipe(tcfg | {"epochs": epochs}, **changes)


def train_trial(trial, tcfg: dict, split: data.Split) -> tuple[keras.Model, pd.DataFrame]:
    """A :data:`shared.studies.study.TrainTrial`: build the baseline with the trial's settings and
    train it on ``split`` in ``tcfg["out_dir"]`` (resuming there after an interruption)."""
    model = build(tcfg, len(split.class_names))
    plain = int(tcfg.get("plain_epochs") or 0)
    if plain < 0 or plain > tcfg["epochs"]:
        raise ValueError(f"plain_epochs must be between 0 and epochs ({tcfg['epochs']}), "
                         f"not {plain}")
    train_ds, val_ds, weights = data.training_data(split, tcfg)
    if plain:
        # the first epochs without augmentation, a phase of their own; then the rest with it
        plain_ds, _, _ = data.training_data(split, tcfg | {"augment": "none"})
        fit(model, plain_ds, val_ds, recipe(tcfg, plain), tcfg["out_dir"],
            class_weight=weights, phase="plain")
    history = fit(model, train_ds, val_ds, recipe(tcfg, tcfg["epochs"] - plain),
                  tcfg["out_dir"], class_weight=weights, initial_epoch=plain)
    return model, history
