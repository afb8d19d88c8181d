"""Predict, score and finish an experiment: a model's probabilities, its metrics on the
validation and test splits, and the results files of the experiment.

:func:`predict` gives the class probabilities of a model, optionally averaged over test-time
augmentation views (:mod:`shared.evaluation.tta`); :func:`evaluate` scores them
(:mod:`shared.evaluation.metrics`) and writes the experiment's results files (their contract:
:mod:`shared.results`); :func:`finish`, the last step of an experiment notebook, saves the model,
evaluates it, records the calibration (:func:`shared.evaluation.calibrate.calibration`) and, where
the settings ask for it, test-time augmentation (:func:`tta_scores`) in metrics.json.

Models that output class *scores* rather than probabilities (a linear last layer, e.g. the
quasi-SVM head trained with a hinge loss) are detected from the activation of the layer that
produces the model's output (looking inside nested head models) and their outputs go through a
softmax, so every probability written here is a row that sums to 1. A sigmoid output is
normalised by its row sum; an output whose activation cannot be read is checked numerically.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from shared import config, data, environment
from shared.evaluation import calibrate, conclusions, tta
from shared.evaluation.metrics import compute_metrics, label_indices
from shared.files import write_csv, write_with
from shared.results import predictions_frame, remove_checkpoints, write_results

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
    ``calibration`` (:func:`shared.evaluation.calibrate.calibration`); with ``tta_options``
    (:func:`tta_scores`' ``views``, ``per_class`` and ``seed``), ``tta``. predictions.csv and
    the other metrics stay those of the model's own probabilities."""
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
        results["calibration"] = calibrate.calibration(frames, probs, class_names,
                                                         calibrate_on)
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
               policy: str | None = None, make_dataset: DatasetFactory | None = None) -> dict:
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
    chosen = tta.views(views, image_size, seed, policy)
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
            "policy": policy, "part": part, "images": len(frame), "per_class": per_class,
            **{k: scores[k] for k in ("accuracy", "accuracy_ci95", "macro_f1",
                                      "macro_f1_ci95")},
            "plain_accuracy": float(plain_right.mean()) if len(frame) else None,
            "only_tta": int((tta_right & ~plain_right).sum()),
            "only_plain": int((plain_right & ~tta_right).sum()),
            "mcnemar_p": conclusions.mcnemar_p(plain_right, tta_right, alternative="two-sided"),
            "seconds": round(seconds, 3)}


def _defaults(model, split, out_dir: Path, image_size: int, history) -> dict:
    """What metrics.json records unless the caller's ``info`` says otherwise."""
    split_info = getattr(split, "info", None) or {}
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    left_out = {"excluded": split_info["excluded"]} if split_info.get("excluded") else {}
    return left_out | {
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
        "code": environment.code_version(),
        "device": environment.device_description(),
    }


def _history_seconds(history) -> float | None:
    if history is None:
        return None
    for column in ("seconds", "epoch_seconds", "time"):
        if column in history.columns:
            return round(float(pd.to_numeric(history[column], errors="coerce").sum()), 1)
    return None


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
    (:func:`shared.results.remove_checkpoints`) unless ``cfg["keep_checkpoints"]``."""
    out_dir = Path(cfg["out_dir"])
    write_with(out_dir / "model.keras", lambda path: save_model(model, path))
    (out_dir / config.MODEL_FREED).unlink(missing_ok=True)    # a model is here again
    phases = getattr(model, "phase_summary", None)
    settings = {k: v for k, v in cfg.items()
                if k not in ("run_dir", "out_dir", "derived_settings")}
    recorded = {"experiment": cfg["experiment"], "profile": cfg["profile"], "seed": cfg["seed"],
                "title": config.TITLES.get(cfg["experiment"], cfg["experiment"]),
                "dataset": cfg["dataset"], "settings": settings}
    if cfg.get("derived_settings"):   # what experiment.derive_settings took from the data, and why
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
                         make_dataset=None, calibrate_on="val", tta_options=tta.options(cfg))
    if not cfg.get("keep_checkpoints"):
        remove_checkpoints(out_dir)
    return finished


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
    return {"accuracy": metrics["accuracy"], "accuracy_ci95": metrics.get("accuracy_ci95"),
            "macro_f1": metrics["macro_f1"]}
