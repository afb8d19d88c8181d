"""Calibration of a classifier's probabilities: how far its confidence is from its accuracy, and
temperature scaling to bring them together.

``expected_calibration_error``
    the standard top-label ECE: the images are put into ``bins`` equal-width bins of their
    confidence (the largest probability, bins ``(k/bins, (k+1)/bins]``, the first one closed at
    0); ECE is the average over images of ``|accuracy - mean confidence|`` of their bin.
``reliability``
    the per-bin table ECE is computed from (what the reliability diagram draws).
``fit_temperature``
    the temperature ``T > 0`` that minimises the negative log-likelihood of
    ``softmax(log p / T)`` (equivalently ``softmax(logits / T)``) on the given labels; fit it on
    the *validation* split only, never on the test split it is then judged on.
``apply_temperature``
    ``softmax(log p / T)``: rows that sum to 1, with the same most probable class as ``p``
    (dividing the log-probabilities of a row by one positive number keeps their order).

:func:`calibration` (:func:`summary` of an experiment's parts) is what
``shared.evaluation.evaluate.finish`` records as ``calibration`` in metrics.json;
``shared.serve.predict`` reads the temperature back from there and applies it to the probabilities
it writes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from shared.evaluation.metrics import label_indices

BINS = 15
LOG_T_BOUNDS = (-3.0, 3.0)    # T between about 0.05 and 20
_FLOOR = np.finfo(np.float32).tiny    # log(0) would be -inf


def _labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.size and labels.dtype.kind not in "iu":
        raise ValueError("calibration needs class indices as labels (see "
                         "shared.evaluation.metrics.label_indices)")
    return labels.astype(int)


def _log_probabilities(values) -> np.ndarray:
    """Log-probabilities (up to a constant per row) of probabilities or logits."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"expected a (images, classes) array, got shape {values.shape}")
    is_probabilities = values.size == 0 or (values.min() >= 0 and values.max() <= 1 and
                                            np.allclose(values.sum(axis=1), 1, atol=1e-3))
    return np.log(np.clip(values, _FLOOR, None)) if is_probabilities else values


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def reliability(labels, probabilities, bins: int = BINS) -> pd.DataFrame:
    """One row per confidence bin: ``low``, ``high`` (its edges), ``confidence`` (mean largest
    probability of its images), ``accuracy`` (share of them predicted right) and ``count``;
    confidence and accuracy are NaN in an empty bin."""
    labels, probabilities = _labels(labels), np.asarray(probabilities, dtype=np.float64)
    if len(labels) != len(probabilities):
        raise ValueError(f"{len(labels)} labels for {len(probabilities)} rows of probabilities")
    confidence = probabilities.max(axis=1) if len(labels) else np.zeros(0)
    correct = (probabilities.argmax(axis=1) == labels) if len(labels) else np.zeros(0, bool)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(index, weights=correct.astype(float), minlength=bins) / count
    edges = np.linspace(0, 1, bins + 1)
    return pd.DataFrame({"low": edges[:-1], "high": edges[1:], "confidence": mean_confidence,
                         "accuracy": accuracy, "count": count})


def expected_calibration_error(labels, probabilities, bins: int = BINS) -> float:
    """Top-label ECE with ``bins`` equal-width confidence bins (NaN with no images)."""
    table = reliability(labels, probabilities, bins)
    total = table["count"].sum()
    if not total:
        return float("nan")
    filled = table[table["count"] > 0]
    gaps = (filled["accuracy"] - filled["confidence"]).abs()
    return float((filled["count"] * gaps).sum() / total)


def fit_temperature(labels, logits_or_probabilities) -> float:
    """The temperature minimising the negative log-likelihood of ``softmax(log p / T)`` (or of
    ``softmax(logits / T)``) for ``labels``, searched over log T in :data:`LOG_T_BOUNDS`.
    Fit it on the validation split only."""
    labels = _labels(labels)
    logits = _log_probabilities(logits_or_probabilities)
    if len(labels) != len(logits):
        raise ValueError(f"{len(labels)} labels for {len(logits)} rows")
    if not len(labels):
        raise ValueError("fit_temperature: no images to fit on")
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        scaled = logits / math.exp(log_t)
        top = scaled.max(axis=1)
        log_norm = top + np.log(np.exp(scaled - top[:, None]).sum(axis=1))
        return float(np.mean(log_norm - scaled[rows, labels]))

    found = minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded",
                            options={"xatol": 1e-4})
    return float(math.exp(found.x))


def apply_temperature(probabilities, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row by row (float64): rows summing to 1, same argmax as ``p``."""
    if not (isinstance(temperature, int | float) and math.isfinite(temperature)
            and temperature > 0):
        raise ValueError(f"the temperature must be a positive number, not {temperature!r}")
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if not probabilities.size:
        return probabilities.copy()
    return _softmax(np.log(np.clip(probabilities, _FLOOR, None)) / temperature)


def summary(labels: Mapping[str, np.ndarray], probabilities: Mapping[str, np.ndarray],
            bins: int = BINS, fitted_on: str = "val") -> dict:
    """Fit the temperature on the ``fitted_on`` part and give ECE before and after it on every
    part: ``{"temperature", "ece_before": {part: ..}, "ece_after": {part: ..}, "bins",
    "fitted_on"}`` (what metrics.json records as ``calibration``)."""
    temperature = fit_temperature(labels[fitted_on], probabilities[fitted_on])
    before, after = {}, {}
    for part, probs in probabilities.items():
        before[part] = expected_calibration_error(labels[part], probs, bins)
        after[part] = expected_calibration_error(labels[part],
                                                 apply_temperature(probs, temperature), bins)
    return {"temperature": temperature, "ece_before": before, "ece_after": after, "bins": bins,
            "fitted_on": fitted_on}


def calibration(frames: dict[str, pd.DataFrame], probs: dict[str, np.ndarray],
                class_names: Sequence[str], fitted_on: str = "val") -> dict:
    """The temperature fitted on the ``fitted_on`` part and the ECE of every part before and
    after it (:func:`summary`) for the frames of the parts (their ``label`` column) and their
    probabilities: metrics.json's ``calibration``."""
    labels = {part: label_indices(frame["label"].astype(str), class_names)
              for part, frame in frames.items()}
    return summary(labels, probs, bins=BINS, fitted_on=fitted_on)
