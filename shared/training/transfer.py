"""Transfer learning: phases, unfreezing, the feature cache, the head alone.

A :func:`shared.models.networks.build_transfer` model trains in phases (:class:`Phase`,
:func:`fit_phases`; the usual two: :func:`fit_transfer`), each one a
:func:`shared.training.fitting.fit`, or with the backbone frozen, :func:`fit_head` on the backbone's
features computed once. Each phase resumes or is loaded as :func:`shared.training.fitting.fit` does;
the layer and parameter counts of each phase go to ``out_dir/phases.json``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from shared import files
from shared.models import backbones
from shared.training.callbacks import read_history
from shared.training.fitting import (
    PhasePaths,
    check_labels,
    count_params,
    finished_earlier,
    fit,
    record_recipe,
)
from shared.training.recipes import Recipe


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
    numbered on from phase to phase; each phase resumes or is loaded as
    :func:`shared.training.fitting.fit` does.

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
        "trainable_params": count_params(model.trainable_weights),
        "non_trainable_params": count_params(model.non_trainable_weights),
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
    with the backbone frozen; the callbacks, resumption and history are those of
    :func:`shared.training.fitting.fit`. Batches keep the size of ``train``'s first batch and are
    reshuffled every epoch with ``seed``.
    """
    out_dir = Path(out_dir)
    record_recipe(model, phase, recipe, class_weight, features_cached=True)
    head = model.get_layer("head")
    paths = PhasePaths(out_dir, phase)
    if finished_earlier(head, paths, fresh):
        return read_history(out_dir)
    check_labels(model, train)
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
