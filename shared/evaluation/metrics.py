"""Metrics of predicted classes against the true ones: accuracy and macro-F1 with 95% bootstrap
intervals, macro precision and recall, top-5 accuracy, per-class scores and the confusion matrix.

Labels may be class names or indices (:func:`label_indices`); no model and no TensorFlow here:
:mod:`shared.evaluation.evaluate` predicts, the ensemble and the calibration score what was
predicted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    f1_score,
    top_k_accuracy_score,
)
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

BOOTSTRAP = 1000    # resamples of the 95% intervals


def label_indices(labels, class_names: Sequence[str]) -> np.ndarray:
    """Class indices of ``labels`` given as names (or already as indices)."""
    labels = np.asarray(labels)
    if labels.dtype.kind in "iu":
        return labels.astype(int)
    position = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({str(v) for v in labels if str(v) not in position})
    if unknown:
        raise ValueError(f"unknown label(s) {', '.join(unknown[:10])}: the classes are "
                         f"{', '.join(class_names)}")
    return np.array([position[str(v)] for v in labels], dtype=int)


def compute_metrics(labels, probabilities, class_names: Sequence[str]) -> dict:
    """Accuracy and macro-F1 with 95% bootstrap intervals, macro precision and recall, top-5
    accuracy (more than five classes), per-class precision/recall/F1/support, scikit-learn's
    classification report and the confusion matrix (rows: true class, columns: predicted
    class) of ``probabilities`` against ``labels``."""
    class_names = list(class_names)
    y_true = label_indices(labels, class_names)
    y_pred = np.asarray(probabilities).argmax(axis=1) if len(y_true) else np.zeros(0, int)
    metrics = metrics_from_predictions(y_true, y_pred, class_names)
    if len(class_names) > 5 and len(y_true):
        metrics["top5_accuracy"] = top_k_accuracy(y_true, probabilities)
    return metrics


def top_k_accuracy(y_true, probabilities, k: int = 5) -> float:
    """Share of images whose class is among the ``k`` most probable (scikit-learn's)."""
    probabilities = np.asarray(probabilities)
    return float(top_k_accuracy_score(y_true, probabilities, k=k,
                                      labels=list(range(probabilities.shape[1]))))


def metrics_from_predictions(y_true, y_pred, class_names: Sequence[str]) -> dict:
    """As :func:`compute_metrics`, from predicted class indices (no top-5 accuracy)."""
    indices = list(range(len(class_names)))
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    report = classification_report(y_true, y_pred, labels=indices, target_names=class_names,
                                   output_dict=True, zero_division=0)
    per_class = {name: {"precision": report[name]["precision"], "recall": report[name]["recall"],
                        "f1": report[name]["f1-score"], "support": int(report[name]["support"])}
                 for name in class_names}
    scored = len(y_true) > 0
    accuracy_ci, f1_ci = bootstrap_intervals(y_true, y_pred, len(class_names)) if scored \
        else (None, None)
    return {"accuracy": float(accuracy_score(y_true, y_pred)) if scored else None,
            "accuracy_ci95": accuracy_ci,
            "macro_f1": float(f1_score(y_true, y_pred, labels=indices, average="macro",
                                       zero_division=0)) if scored else None,
            "macro_f1_ci95": f1_ci,
            "macro_precision": float(report["macro avg"]["precision"]) if scored else None,
            "macro_recall": float(report["macro avg"]["recall"]) if scored else None,
            "per_class": per_class,
            "classification_report": report,
            "confusion_matrix": sk_confusion_matrix(y_true, y_pred, labels=indices).tolist()}


def bootstrap_intervals(y_true, y_pred, num_classes: int, resamples: int = BOOTSTRAP,
                        seed: int = 0) -> tuple[list[float], list[float]]:
    """95% percentile-bootstrap intervals of accuracy and macro-F1 over the images (resampled
    with replacement ``resamples`` times, seeded): ``([low, high], [low, high])``. Macro-F1
    is computed as scikit-learn's (every class, 0 where a class is neither true nor
    predicted), from confusion counts of all resamples at once."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    rng = np.random.default_rng(seed)
    n, k = len(y_true), num_classes
    accuracies, f1s = [], []
    for start in range(0, resamples, 100):           # 100 resamples at a time bound memory
        b = min(100, resamples - start)
        idx = rng.integers(0, n, (b, n))
        codes = (y_true[idx] * k + y_pred[idx]) + np.arange(b)[:, None] * k * k
        counts = np.bincount(codes.ravel(), minlength=b * k * k).reshape(b, k, k)
        tp = np.diagonal(counts, axis1=1, axis2=2)
        accuracies.append(tp.sum(axis=1) / n)
        total = counts.sum(axis=2) + counts.sum(axis=1)          # true + predicted per class
        f1 = np.divide(2 * tp, total, out=np.zeros(tp.shape), where=total > 0)
        f1s.append(f1.mean(axis=1))
    return (np.percentile(np.concatenate(accuracies), [2.5, 97.5]).round(4).tolist(),
            np.percentile(np.concatenate(f1s), [2.5, 97.5]).round(4).tolist())
