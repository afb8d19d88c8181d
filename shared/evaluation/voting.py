"""How members' probabilities are combined: the hard, soft and weighted votes and the auto choice.

These work on arrays of probabilities (members, images, classes);
:mod:`shared.evaluation.ensemble` reads a run's members with them and writes the ensemble's
results.

Methods:

``hard``
    majority vote of the members' predicted classes; ties go to the tied class with the largest
    summed probability. Its "probabilities" are the vote shares.
``soft``
    mean of the members' probabilities.
``weighted``
    weighted mean of the probabilities, the weights chosen on the **validation** split only by
    greedy forward selection with replacement (Caruana et al., 2004, "Ensemble selection from
    libraries of models"): start from the best member, repeatedly add the member (again, if it
    helps) that most improves validation accuracy (ties: lower validation log-loss), and keep
    the best bag seen. A member's weight is its share of the bag, so a member that only hurts
    gets weight 0.
``best``
    the member with the best validation accuracy, alone.
``auto`` (the default of :func:`shared.evaluation.ensemble.vote`)
    a vote replaces the best member only where validation says it is better beyond chance:
    each vote's honest validation accuracy (for the weighted vote, out of fold: each fifth of
    the validation images is predicted with weights chosen on the other four) is tested against
    the best member's on the same validation images with an exact one-sided McNemar test; of
    the votes with a Holm-corrected p < 0.05 (over the three), the most accurate is chosen (ties:
    soft, weighted, hard); with none, ``best``. A weighted bag's in-sample validation accuracy
    flatters it (its weights were fitted there), and a gain of a few images is noise: either
    would let an ensemble that is worse than its best member on test through.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import KFold

from shared.evaluation.conclusions import mcnemar_p
from shared.evaluation.ranking import holm

METHODS = ("hard", "soft", "weighted")
PREFERENCE = ("soft", "weighted", "hard")  # "auto": ties on validation accuracy, in this order
ALPHA = 0.05    # "auto": the significance a vote needs to replace the best member
FOLDS = 5       # "auto": folds of the validation split for the weighted vote's honest accuracy


def combine(probabilities, method: str, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """Combine member probabilities of shape (members, images, classes) with ``method``;
    return (probabilities or vote shares, predicted class indices)."""
    check_method(method, METHODS)
    probs = np.asarray(probabilities, dtype=np.float64)
    members = probs.shape[0]
    if method == "hard":
        votes = np.zeros(probs.shape[1:])
        np.add.at(votes, (np.arange(probs.shape[1])[None, :].repeat(members, 0),
                          probs.argmax(axis=2)), 1)
        # votes dominate; the summed probability (< members + 1) only breaks ties
        predicted = (votes * (members + 1) + probs.sum(axis=0)).argmax(axis=1)
        return (votes / members).astype(np.float32), predicted
    if method == "weighted" and weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (members,) or weights.sum() <= 0:
            raise ValueError(f"weights must be {members} non-negative numbers, not all zero")
        mean = np.tensordot(weights / weights.sum(), probs, axes=1)
    else:
        mean = probs.mean(axis=0)
    return mean.astype(np.float32), mean.argmax(axis=1)


def select_weights(probabilities, labels, rounds: int = 20) -> np.ndarray:
    """Caruana et al.'s greedy ensemble selection with replacement on (validation)
    ``probabilities`` (members, images, classes) against ``labels`` (indices); returns weights
    that sum to 1. It starts from the best member and keeps a larger bag only where it raises
    the validation accuracy, so with no member to add it is the best member alone."""
    probs = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)

    def score(mean):
        accuracy = float((mean.argmax(axis=1) == labels).mean())
        log_loss = float(-np.log(np.clip(mean[np.arange(len(labels)), labels], 1e-12, 1)).mean())
        return accuracy, -log_loss

    counts = np.zeros(len(probs))
    first = max(range(len(probs)), key=lambda m: (score(probs[m]), -m))
    counts[first], total = 1, probs[first].copy()
    best, best_counts = score(total), counts.copy()
    for _ in range(rounds - 1):
        size = counts.sum() + 1
        m = max(range(len(probs)), key=lambda m: (score((total + probs[m]) / size), -m))
        counts[m] += 1
        total += probs[m]
        current = score(total / counts.sum())
        # a bag replaces the best only with a higher accuracy: log-loss alone (ties) would
        # let a weak member in on validation noise
        if current[0] > best[0]:
            best, best_counts = current, counts.copy()
    return best_counts / best_counts.sum()


def cross_fitted(probabilities, labels, rounds: int = 20, folds: int = FOLDS) -> np.ndarray:
    """Out-of-fold predicted classes of the weighted vote on (validation) ``probabilities``:
    each fold is predicted with weights selected on the other folds."""
    probs, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    if len(labels) < 2:     # no fold to choose weights on: the vote starts from the best member
        return combine(probs, "weighted", select_weights(probs, labels, rounds=1))[1]
    predicted = np.empty(len(labels), dtype=int)
    splitter = KFold(n_splits=min(folds, len(labels)), shuffle=True, random_state=0)
    for fit, held_out in splitter.split(labels):
        weights = select_weights(probs[:, fit], labels[fit], rounds)
        predicted[held_out] = combine(probs[:, held_out], "weighted", weights)[1]
    return predicted


def choose(probabilities, labels, rounds: int = 20) -> dict:
    """The ``auto`` choice on (validation) ``probabilities`` and ``labels``: the method, the best
    member's index and, for each vote, its honest validation accuracy and McNemar p-value
    against the best member, raw and Holm-corrected over the three votes (``p_holm``). A vote
    qualifies with ``p_holm`` < ALPHA; of those that qualify, the most accurate is chosen."""
    probs, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    right = probs.argmax(axis=2) == labels
    best = int(np.argmax(right.mean(axis=1)))
    honest = {m: combine(probs, m)[1] for m in ("hard", "soft")}
    honest["weighted"] = cross_fitted(probs, labels, rounds)
    votes = {m: {"honest_val_accuracy": float((honest[m] == labels).mean()),
                 "p_value": mcnemar_p(right[best], honest[m] == labels)} for m in PREFERENCE}
    for m, corrected in zip(PREFERENCE, holm([votes[m]["p_value"] for m in PREFERENCE]),
                            strict=True):
        votes[m]["p_holm"] = corrected
    # a small p means more gains than losses on the same images, so a higher accuracy too
    qualified = [m for m in PREFERENCE if votes[m]["p_holm"] < ALPHA]
    top = max(qualified, default="best",
              key=lambda m: (votes[m]["honest_val_accuracy"], -PREFERENCE.index(m)))
    return {"method": top, "best_member": best, "votes": votes, "alpha": ALPHA,
            "correction": "holm"}


def check_method(method: str, valid: Sequence[str]) -> None:
    """Raise a ValueError unless ``method`` is one of ``valid``."""
    if method not in valid:
        raise ValueError(f"unknown ensemble method {method!r}: choose one of {', '.join(valid)}")
