"""Metrics, predictions and the results files of an experiment.

An experiment's results live in ``<run>/<experiment>/`` (see DESIGN, "The results of a run"):

``predictions.csv``
    one row per evaluated image: ``split, path, label, predicted`` and one probability column
    ``p_<class>`` per class, for the validation and test splits.
``metrics.json``
    test accuracy and macro-F1 with 95% bootstrap intervals, macro precision and recall, top-5
    accuracy (over five classes), per-class precision/recall/F1/support, the classification
    report, the confusion matrix, the same for validation (``val_*``), parameters, times,
    settings, library versions,
    ``calibration`` (from :func:`finish`: the temperature fitted on the validation split and
    the expected calibration error before and after it), ``tta`` (from :func:`finish` where the
    settings ask for it: test-time augmentation against the model alone, :func:`tta_scores`)
    and ``"status": "complete"``. It is
    written last, with the digest of predictions.csv, so a readable metrics.json whose digest
    matches marks a finished experiment (:func:`is_complete`).
``history.csv``
    the training history, when one is given.

Every file is written through :mod:`shared.files` (write then rename): a run killed mid-write
leaves the previous version or none, never half a file. The ensemble and the run's index page
read only these files (:func:`read_results`, :func:`read_predictions`).

Models that output class *scores* rather than probabilities (a linear last layer, e.g. the
quasi-SVM head trained with a hinge loss) are detected from the activation of the layer that
produces the model's output (looking inside nested head models) and their outputs go through a
softmax, so every probability written here is a row that sums to 1. A sigmoid output is
normalised by its row sum; an output whose activation cannot be read is checked numerically.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    f1_score,
    top_k_accuracy_score,
)
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from shared import config, data, environment
from shared.evaluation import calibrate, conclusions, tta
from shared.files import human_bytes, read_json, write_csv, write_json, write_with

PREFIX = "p_"
ID_COLUMNS = ("split", "path", "label", "predicted")
RESULT_FILES = config.RESULT_FILES
BOOTSTRAP = 1000    # resamples of the 95% intervals
# what metrics.json repeats for the validation split, as val_<key>
VAL_KEYS = ("accuracy", "accuracy_ci95", "macro_f1", "macro_f1_ci95", "macro_precision",
            "macro_recall", "top5_accuracy")

# make_dataset(frame, root, class_names, image_size, batch_size) -> tf.data.Dataset
DatasetFactory = Callable[..., object]


# --------------------------------------------------------------------------- probabilities


def output_kind(model) -> str:
    """"probabilities" (softmax), "sigmoid", "scores" (linear) or "unknown" for the layer
    that produces ``model``'s output, looking inside nested sub-models such as a "head"."""
    layer = _output_layer(model)
    if layer is None:
        return "unknown"
    if type(layer).__name__ == "Softmax":
        return "probabilities"
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", None) or (activation if isinstance(activation, str)
                                                    else None)
    if name is None:
        return "unknown"
    return {"softmax": "probabilities", "sigmoid": "sigmoid", "linear": "scores"}.get(
        name, "unknown")


def _output_layer(model):
    """The operation producing ``model.output``, descending into nested models."""
    try:
        history = model.output._keras_history
        operation = history.operation if hasattr(history, "operation") else history[0]
    except (AttributeError, ValueError, IndexError, TypeError):
        layers = getattr(model, "layers", None)
        operation = layers[-1] if layers else None
    if operation is not None and operation is not model and hasattr(operation, "layers") \
            and hasattr(operation, "output"):
        return _output_layer(operation)
    return operation


def to_probabilities(outputs, kind: str = "unknown") -> np.ndarray:
    """Rows of class probabilities (float32, summing to 1) from a model's raw outputs."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if kind == "unknown":
        looks_like_probs = (outputs.size == 0 or (outputs.min() >= 0 and outputs.max() <= 1 and
                            np.allclose(outputs.sum(axis=1), 1, atol=1e-3)))
        kind = "probabilities" if looks_like_probs else "scores"
    if kind == "scores":  # softmax
        outputs = np.exp(outputs - outputs.max(axis=1, keepdims=True))
    outputs = np.clip(outputs, 0, None)
    totals = outputs.sum(axis=1, keepdims=True)
    outputs = np.divide(outputs, totals, out=np.full_like(outputs, 1 / max(outputs.shape[1], 1)),
                        where=totals > 0)
    return outputs.astype(np.float32)


def predict(model, data, root: Path | None = None, class_names: Sequence[str] | None = None,
            image_size: int | None = None, batch_size: int = 32, *,
            make_dataset: DatasetFactory | None = None,
            views: Sequence[tta.View] | None = None) -> np.ndarray:
    """Class probabilities of ``model`` for ``data``, one row per image, in order.

    ``data`` is a frame of the split (columns path, label; ``root``, ``class_names`` and
    ``image_size`` then say how to read it, through ``make_dataset`` or by default
    ``shared.data.pipeline``), a ``tf.data.Dataset`` yielding images or (images, labels)
    batches, or an array of images. With ``views`` (:func:`shared.evaluation.tta.views`), the
    probabilities are the mean over those views of the images (test-time augmentation).
    """
    if isinstance(data, pd.DataFrame):
        missing = [n for n, v in (("root", root), ("class_names", class_names),
                                  ("image_size", image_size)) if v is None]
        if missing:
            raise ValueError(f"predict on a frame needs {', '.join(missing)}")
        if data.empty:
            return np.zeros((0, len(class_names)), dtype=np.float32)
        factory = make_dataset or _pipeline
        data = factory(data, Path(root), list(class_names), image_size, batch_size)
    kind = output_kind(model)

    def probabilities(images) -> np.ndarray:
        outputs = model.predict(images, verbose=0,
                                batch_size=batch_size if isinstance(images, np.ndarray) else None)
        return to_probabilities(outputs, kind)

    return tta.average(probabilities, data, views) if views else probabilities(data)


def _pipeline(frame, root, class_names, image_size, batch_size):
    return data.pipeline(frame, root, class_names, image_size, batch_size, shuffle=False,
                         cache=None)


# --------------------------------------------------------------------------- metrics


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


def predictions_frame(frame: pd.DataFrame, probabilities: np.ndarray,
                      class_names: Sequence[str], split: str | None = None) -> pd.DataFrame:
    """The rows of predictions.csv for one part: split, path, label, predicted, p_<class>..."""
    probabilities = np.asarray(probabilities)
    if len(probabilities) != len(frame):
        raise ValueError(f"{len(probabilities)} predictions for {len(frame)} images"
                         + (f" of the {split} split" if split else "") +
                         ": the dataset must yield every image of the frame, in order")
    names = np.asarray(class_names, dtype=object)
    out = pd.DataFrame({
        "split": split if split is not None else frame["split"].to_numpy(),
        "path": frame["path"].to_numpy(),
        "label": frame["label"].astype(str).to_numpy(),
        "predicted": names[probabilities.argmax(axis=1)] if len(frame) else [],
    })
    for i, name in enumerate(class_names):
        out[f"{PREFIX}{name}"] = probabilities[:, i] if len(frame) else []
    return out


def probability_columns(class_names: Sequence[str]) -> list[str]:
    return [f"{PREFIX}{name}" for name in class_names]


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Read a predictions.csv, keeping labels as text (a class called "NA" or "1" stays so)."""
    frame = pd.read_csv(path, dtype={c: str for c in ID_COLUMNS}, keep_default_na=False)
    missing = [c for c in ID_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    probs = [c for c in frame.columns if c.startswith(PREFIX)]
    if not probs:
        raise ValueError(f"{path}: no probability columns ({PREFIX}<class>)")
    frame[probs] = frame[probs].apply(pd.to_numeric, errors="raise")
    return frame


# --------------------------------------------------------------------------- evaluate


def evaluate(model, split, out_dir: str | Path, *, image_size: int, batch_size: int,
             info: dict | None = None, history: pd.DataFrame | None = None,
             parts: Sequence[str] = ("val", "test"),
             make_dataset: DatasetFactory | None = None) -> dict:
    """Predict each part of ``split``, write the experiment's results files, return metrics.

    ``split`` is a :class:`shared.data.Split` (``part(name)``, ``root``, ``class_names``,
    ``info``). The top-level metrics are those of the test part (or of the last part when
    there is none); the validation part adds ``val_accuracy`` and ``val_macro_f1``. ``info``
    (the settings, ``train_seconds``, ...) is merged into metrics.json; its values win over
    the defaults read from the model and the split but not over the computed metrics.
    ``history`` is written as history.csv. Files are written whole, metrics.json last.
    """
    return _evaluate(model, split, out_dir, image_size=image_size, batch_size=batch_size,
                     info=info, history=history, parts=parts, make_dataset=make_dataset)[0]


def _evaluate(model, split, out_dir, *, image_size, batch_size, info, history, parts,
              make_dataset, calibrate_on: str | None = None,
              tta_options: dict | None = None) -> tuple[dict, pd.DataFrame]:
    """:func:`evaluate`, returning the metrics and the predictions it wrote. With
    ``calibrate_on`` (a part, "val") and that part evaluated, metrics.json also records
    ``calibration`` (:func:`calibration`); with ``tta_options`` (:func:`tta_scores`'
    ``views``, ``per_class`` and ``seed``), ``tta``. predictions.csv and the other metrics stay
    those of the model's own probabilities."""
    out_dir = Path(out_dir)
    info = dict(info or {})
    class_names = list(split.class_names)
    frames, probs, seconds = {}, {}, 0.0
    for part in parts:
        frame = split.part(part)
        if frame.empty:
            print(f"evaluate: the {part} split is empty; skipped")
            continue
        start = time.perf_counter()
        probs[part] = predict(model, frame, split.root, class_names, image_size, batch_size,
                              make_dataset=make_dataset)
        seconds += time.perf_counter() - start
        frames[part] = frame
    if not frames:
        raise ValueError(f"nothing to evaluate: the parts {', '.join(parts)} are all empty")

    predictions = pd.concat([predictions_frame(frames[p], probs[p], class_names, p)
                             for p in frames], ignore_index=True)
    main = "test" if "test" in frames else list(frames)[-1]
    results = compute_metrics(frames[main]["label"], probs[main], class_names)
    results["evaluated_on"] = main
    if "val" in frames and main != "val":
        val = compute_metrics(frames["val"]["label"], probs["val"], class_names)
        results.update({f"val_{key}": val[key] for key in VAL_KEYS if key in val})
    if calibrate_on is not None and calibrate_on in frames:
        results["calibration"] = calibration(frames, probs, class_names, calibrate_on)
    if tta_options:
        results["tta"] = tta_scores(model, split, main, probs[main], image_size, batch_size,
                                    make_dataset=make_dataset, **tta_options)
    images = sum(len(f) for f in frames.values())
    results.update(images={p: len(f) for p, f in frames.items()},
                   inference_seconds=round(seconds, 3),
                   images_per_second=round(images / seconds, 1) if seconds > 0 else None)

    metrics = _defaults(model, split, out_dir, image_size, history) | info | results
    metrics.update(class_names=class_names, status="complete",
                   written_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    if history is not None:
        write_csv(out_dir / "history.csv", history)
    return write_results(out_dir, predictions, metrics), predictions


def tta_scores(model, split, part: str, plain: np.ndarray, image_size: int, batch_size: int,
               *, views: int = tta.DEFAULT_VIEWS, per_class: int | None = None, seed: int = 0,
               make_dataset: DatasetFactory | None = None) -> dict:
    """Test-time augmentation on ``part`` of the split (at most ``per_class`` images per
    class, seeded, where given), against the model alone on the same images (``plain``: its
    probabilities on the whole part, in ``split.part(part)`` order): metrics.json's ``tta``.
    Accuracy and macro-F1 with their intervals, the plain accuracy, the images only one of the
    two gets right and the exact two-sided McNemar p-value."""
    class_names = list(split.class_names)
    frame = split.part(part)
    keep = frame["path"].isin(split.part(part, per_class, seed)["path"]).to_numpy() \
        if per_class else np.ones(len(frame), bool)
    frame, plain = frame[keep].reset_index(drop=True), np.asarray(plain)[keep]
    chosen = tta.views(views, image_size, seed)
    start = time.perf_counter()
    dataset = (make_dataset or _pipeline)(frame, Path(split.root), class_names, image_size,
                                          batch_size)
    averaged = tta.average(lambda images: predict(model, images, batch_size=batch_size),
                           dataset, chosen, identity=plain)
    seconds = time.perf_counter() - start
    y_true = label_indices(frame["label"].astype(str), class_names)
    scores = compute_metrics(y_true, averaged, class_names)
    tta_right, plain_right = averaged.argmax(axis=1) == y_true, plain.argmax(axis=1) == y_true
    return {"views": len(chosen), "transforms": [v.describe() for v in chosen], "seed": seed,
            "part": part, "images": len(frame), "per_class": per_class,
            **{k: scores[k] for k in ("accuracy", "accuracy_ci95", "macro_f1",
                                      "macro_f1_ci95")},
            "plain_accuracy": float(plain_right.mean()) if len(frame) else None,
            "only_tta": int((tta_right & ~plain_right).sum()),
            "only_plain": int((plain_right & ~tta_right).sum()),
            "mcnemar_p": conclusions.mcnemar_p(plain_right, tta_right, alternative="two-sided"),
            "seconds": round(seconds, 3)}


def calibration(frames: dict[str, pd.DataFrame], probs: dict[str, np.ndarray],
                class_names: Sequence[str], fitted_on: str = "val") -> dict:
    """The temperature fitted on the ``fitted_on`` part and the ECE of every part before and
    after it (:func:`shared.evaluation.calibrate.summary`): metrics.json's ``calibration``."""
    labels = {part: label_indices(frame["label"].astype(str), class_names)
              for part, frame in frames.items()}
    return calibrate.summary(labels, probs, bins=calibrate.BINS, fitted_on=fitted_on)


def write_results(out_dir: Path, predictions: pd.DataFrame, metrics: dict) -> dict:
    """Write predictions.csv, then metrics.json with the digest of that predictions.csv, so
    that a pair from two different evaluations (one cut off between the two writes) is never
    taken for a finished experiment. Returns the metrics as written."""
    path = write_csv(Path(out_dir) / "predictions.csv", predictions)
    metrics = json_safe(metrics | {"predictions_digest": file_digest(path)})
    write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics


def record(out_dir: str | Path, **entries) -> dict:
    """Add ``entries`` (e.g. a comparison made after :func:`finish`) to the metrics.json of a
    finished experiment, rewritten whole; returns the metrics as written."""
    reason = check_complete(out_dir)
    if reason:
        raise ValueError(f"{out_dir}: cannot add {', '.join(entries)} to its metrics.json: "
                         f"{reason}")
    metrics = read_json(Path(out_dir) / "metrics.json") | json_safe(entries)
    write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _defaults(model, split, out_dir: Path, image_size: int, history) -> dict:
    """What metrics.json records unless the caller's ``info`` says otherwise."""
    split_info = getattr(split, "info", None) or {}
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    return {
        "experiment": out_dir.name,
        "dataset": split_info.get("spec"),
        "seed": split_info.get("seed"),
        "profile": None,
        "image_size": image_size,
        "weights_source": getattr(model, "weights_source", "random"),
        "params": {"total": int(model.count_params()), "trainable": trainable},
        "train_seconds": _history_seconds(history),
        "epochs_run": None if history is None else len(history),
        "versions": environment.library_versions(),
        "device": environment.device_description(),
    }


def _history_seconds(history) -> float | None:
    if history is None:
        return None
    for column in ("seconds", "epoch_seconds", "time"):
        if column in history.columns:
            return round(float(pd.to_numeric(history[column], errors="coerce").sum()), 1)
    return None


def json_safe(value):
    """NaN and infinities become None (JSON has no NaN); NumPy values become plain ones."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------- reading results


def experiment_dirs(run_dir: str | Path) -> list[Path]:
    """The sub-folders of a run that hold (or started to hold) an experiment's results."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(d for d in run_dir.iterdir() if d.is_dir() and not d.name.startswith(".")
                  and any((d / name).exists() for name in RESULT_FILES))


def check_complete(out_dir: str | Path) -> str | None:
    """None when ``out_dir`` holds a finished experiment, else the reason it does not (with
    what to do, where its files are damaged)."""
    out_dir = Path(out_dir)
    if not (out_dir / "metrics.json").exists():
        return "no metrics.json (the experiment did not finish)"
    reason = _damage(out_dir)
    return reason and (f"{reason}: run that experiment again (`make run NB=<its notebook> "
                       f"FRESH=1`) or delete {out_dir}")


def _damage(out_dir: Path) -> str | None:
    """What is wrong with an experiment's metrics.json and predictions.csv, if anything."""
    try:
        metrics = read_json(out_dir / "metrics.json")
    except (OSError, ValueError) as err:
        return f"metrics.json is unreadable ({err})"
    if not isinstance(metrics, dict):
        return "metrics.json does not hold an object"
    if metrics.get("status") != "complete":
        return f"metrics.json has status {metrics.get('status')!r}, not 'complete'"
    try:
        rows = len(read_predictions(out_dir / "predictions.csv"))
    except FileNotFoundError:
        return "no predictions.csv"
    except (OSError, ValueError, pd.errors.ParserError) as err:
        return f"predictions.csv is unreadable ({err})"
    digest = metrics.get("predictions_digest")
    if digest and digest != file_digest(out_dir / "predictions.csv"):
        return "predictions.csv is not the one metrics.json was written with"
    expected = sum((metrics.get("images") or {}).values())
    if expected and rows != expected:
        return f"predictions.csv has {rows} rows, metrics.json counts {expected} images"
    return None


def is_complete(out_dir: str | Path) -> bool:
    """Whether an experiment finished: metrics.json (status complete) and predictions.csv
    present, readable and consistent. A rerun of a finished run can skip it."""
    return check_complete(out_dir) is None


def read_results(run_dir: str | Path) -> list[dict]:
    """The metrics.json of every finished experiment of a run (the ensemble's too), in folder
    order, each with ``dir`` (the folder's name) added. Folders with unreadable, incomplete or
    missing results are named in a warning and skipped."""
    results = []
    for folder in experiment_dirs(run_dir):
        reason = check_complete(folder)
        if reason:
            warnings.warn(f"{folder.name}: skipped, {reason}", stacklevel=2)
            continue
        metrics = read_json(folder / "metrics.json")
        metrics.setdefault("experiment", folder.name)
        metrics["dir"] = folder.name
        results.append(metrics)
    return results


def results_table(results: list[dict]) -> pd.DataFrame:
    """One row per experiment, best test accuracy first: the run's leaderboard (the ensemble's
    figure and the index pages are drawn from it). ``dir`` is the experiment's folder."""
    columns = ["experiment", "accuracy", "accuracy_ci95", "macro_f1", "macro_f1_ci95",
               "val_accuracy", "params", "train_seconds", "image_size", "weights_source",
               "profile", "seed", "dir"]
    rows = [{column: m.get(column) for column in columns} | {
             "params": (m.get("params") or {}).get("total") if isinstance(m.get("params"), dict)
             else m.get("params"), "dir": m.get("dir", m.get("experiment"))} for m in results]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values("accuracy", ascending=False, na_position="last",
                             ignore_index=True)


# --------------------------------------------------------------------------- predictions to compare


def predict_parts(model, split, cfg: dict, parts: Sequence[str] = ("val", "test")
                  ) -> pd.DataFrame:
    """The rows predictions.csv would hold for ``model`` on ``parts`` of the split, without
    writing anything (to compare a model with another one on the same images)."""
    frames = []
    for part in parts:
        frame = split.part(part)
        if frame.empty:
            continue
        probs = predict(model, frame, split.root, split.class_names, cfg["image_size"],
                        cfg["batch_size"])
        frames.append(predictions_frame(frame, probs, split.class_names, part))
    return pd.concat(frames, ignore_index=True)


class Snapshot:
    """A callable that keeps the predictions of the model it is given (``predictions``):
    pass it as ``fit_transfer(..., after_head=snapshot)`` to keep the model of phase 1.
    ``reference`` is what a comparison takes: the predictions, or why there are none."""

    def __init__(self, split, cfg: dict, missing: str = "fine-tuning did not run"):
        self.split, self.cfg, self.missing, self.predictions = split, cfg, missing, None

    def __call__(self, model) -> None:
        self.predictions = predict_parts(model, self.split, self.cfg)

    @property
    def reference(self) -> pd.DataFrame | str:
        return self.missing if self.predictions is None else self.predictions


def finished_predictions(out_dir: str | Path) -> pd.DataFrame | None:
    """The predictions.csv of a finished experiment (see :func:`check_complete`), else None."""
    return None if check_complete(out_dir) else read_predictions(Path(out_dir) / "predictions.csv")


# --------------------------------------------------------------------------- end of an experiment


def finish(model, split, cfg: dict, history: pd.DataFrame | None = None,
           info: dict | None = None) -> tuple[dict, pd.DataFrame]:
    """The last step of an experiment notebook: save ``<out_dir>/model.keras``, then
    :func:`evaluate` it on the validation and test splits with the experiment's settings
    (``cfg`` from ``config.experiment``) recorded in metrics.json. Returns the metrics and the
    predictions (the rows of predictions.csv), for the figures and the conclusion.

    With a validation split, a temperature is fitted on it (:mod:`shared.evaluation.calibrate`) and
    metrics.json, beside model.keras, records it as ``calibration`` with the ECE of val and
    test before and after it (``shared.serve.predict`` applies it). predictions.csv and the
    accuracy stay those of the model itself: the temperature does not change the predicted
    class.

    With ``cfg["tta"]`` views (more than 1; 0 or 1: off), metrics.json also records ``tta``:
    test-time augmentation on the test split (:func:`tta_scores`; at most
    ``cfg["tta_per_class"]`` images per class where set) against the model alone, with the
    McNemar test between them. predictions.csv stays the model's own.

    Once the results are written, the checkpoints only a resume needs are deleted
    (:func:`remove_checkpoints`) unless ``cfg["keep_checkpoints"]``."""
    out_dir = Path(cfg["out_dir"])
    write_with(out_dir / "model.keras", lambda path: save_model(model, path))
    (out_dir / config.MODEL_FREED).unlink(missing_ok=True)    # a model is here again
    phases = getattr(model, "phase_summary", None)
    settings = {k: v for k, v in cfg.items()
                if k not in ("run_dir", "out_dir", "derived_settings")}
    recorded = {"experiment": cfg["experiment"], "profile": cfg["profile"], "seed": cfg["seed"],
                "title": config.TITLES.get(cfg["experiment"], cfg["experiment"]),
                "dataset": cfg["dataset"], "settings": settings}
    if cfg.get("derived_settings"):   # what train.derive_settings took from the data, and why
        recorded["derived_settings"] = cfg["derived_settings"]
    for key, attribute in (("architecture", "build_settings"), ("recipes", "recipes"),
                           ("phases", "phase_summary")):
        if getattr(model, attribute, None):
            recorded[key] = getattr(model, attribute)
    seconds = _phase_seconds(history, phases)
    if seconds:
        recorded["train_seconds"] = round(sum(seconds.values()), 1)
    finished = _evaluate(model, split, out_dir, image_size=cfg["image_size"],
                         batch_size=cfg["batch_size"], history=history,
                         info=recorded | dict(info or {}), parts=("val", "test"),
                         make_dataset=None, calibrate_on="val", tta_options=_tta_options(cfg))
    if not cfg.get("keep_checkpoints"):
        remove_checkpoints(out_dir)
    return finished


def _tta_options(cfg: dict) -> dict | None:
    """:func:`tta_scores`' options from an experiment's settings; None when TTA is off."""
    views = cfg.get("tta") or 0
    if views is True:
        views = tta.DEFAULT_VIEWS
    if views in (0, 1):
        return None
    tta.views(views)    # a bad setting fails here, before metrics.json is written
    return {"views": views, "per_class": cfg.get("tta_per_class"), "seed": cfg.get("seed") or 0}


def remove_checkpoints(out_dir: str | Path) -> int:
    """Delete a finished experiment's ``checkpoints/`` and ``backup/``
    (:data:`shared.config.CHECKPOINTS`): only resuming an unfinished phase reads them, and
    model.keras holds the finished model. Returns the bytes freed; an unfinished experiment
    (:func:`check_complete`) is left alone."""
    out_dir = Path(out_dir)
    if check_complete(out_dir) is not None:
        return 0
    freed = 0
    for name in config.CHECKPOINTS:
        folder = out_dir / name
        if folder.is_dir():
            freed += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            shutil.rmtree(folder)
    if freed:
        print(f"{out_dir.name}: finished; deleted its {' and '.join(config.CHECKPOINTS)} "
              f"({human_bytes(freed)}), model.keras is its model (keep_checkpoints=True "
              "keeps them)")
    return freed


def save_model(model, path) -> None:
    """``model.save(path)`` without the optimizer's state: Adam's two slots per weight, which
    double a fine-tuned model's file and which nothing reads (every reader loads the model
    uncompiled, to predict)."""
    optimizer = getattr(model, "optimizer", None)
    model.optimizer = None
    try:
        model.save(path)
    finally:
        model.optimizer = optimizer


def _phase_seconds(history: pd.DataFrame | None, phases: dict | None) -> dict:
    """Training seconds per phase: the sum of the history's epoch times, or the wall time a
    phase summary measured (feature extraction included) where that is larger; a phase loaded
    or resumed in this session measured only what it did now."""
    seconds = {}
    if history is not None and {"phase", "seconds"} <= set(history.columns):
        seconds = history.groupby("phase")["seconds"].sum().astype(float).to_dict()
    for name, summary in (phases or {}).items():
        if summary.get("seconds") is not None:
            seconds[name] = max(float(summary["seconds"]), seconds.get(name, 0.0))
    return seconds


def score(model, split, part: str, cfg: dict) -> dict:
    """Accuracy and macro-F1 of ``model`` on one part of the run's split (nothing written)."""
    frame = split.part(part)
    probs = predict(model, frame, split.root, split.class_names, cfg["image_size"],
                    cfg["batch_size"])
    metrics = compute_metrics(frame["label"], probs, split.class_names)
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
