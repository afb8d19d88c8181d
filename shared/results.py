"""The run folder's files: runner.json, metrics.json, predictions.csv (read, write, check); no
TensorFlow.

A run's folder (``reports/<run>/``) holds ``runner.json``, the batch runner's record of its
notebooks (written by :mod:`shared.run.runner`, read by :func:`load_state`), and one folder per
experiment. An experiment's results live in ``<run>/<experiment>/`` (docs/results.md, "The run
folder"):

``predictions.csv``
    one row per evaluated image: ``split, path, label, predicted`` and one probability column
    ``p_<class>`` per class, for the validation and test splits.
``metrics.json``
    test accuracy and macro-F1 with 95% bootstrap intervals, macro precision and recall, top-5
    accuracy (over five classes), per-class precision/recall/F1/support, the classification
    report, the confusion matrix, the same for validation (``val_*``), parameters, times,
    settings, library versions,
    ``calibration`` (from :func:`shared.evaluation.evaluate.finish`: the temperature fitted on
    the validation split and the expected calibration error before and after it), ``tta``
    (from :func:`shared.evaluation.evaluate.finish` where the settings ask for it: test-time
    augmentation against the model alone, :func:`shared.evaluation.evaluate.tta_scores`)
    and ``"status": "complete"``. It is
    written last, with the digest of predictions.csv (:func:`write_results`), so a readable
    metrics.json whose digest matches marks a finished experiment (:func:`is_complete`).
``history.csv``
    the training history, when one is given.

Every file is written through :mod:`shared.files` (write then rename): a run killed mid-write
leaves the previous version or none, never half a file. The ensemble and the run's index page
read only these files (:func:`read_results`, :func:`read_predictions`).
"""

from __future__ import annotations

import hashlib
import math
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from shared import config
from shared.files import human_bytes, read_json, write_csv, write_json

PREFIX = "p_"
ID_COLUMNS = ("split", "path", "label", "predicted")
RESULT_FILES = config.RESULT_FILES
STATE_FILE = "runner.json"


# --------------------------------------------------------------------------- runner.json


class DamagedRunError(ValueError):
    """A run's runner.json cannot be read."""


def load_state(run_dir: Path) -> dict:
    """The run's ``runner.json`` ({} before the first notebook). Raises
    :class:`DamagedRunError`, naming the file and what to do, when it cannot be read."""
    path = Path(run_dir) / STATE_FILE
    if not path.exists():
        return {}
    try:
        state = read_json(path)
    except (OSError, ValueError) as err:
        state, reason = None, f"{type(err).__name__}: {err}"
    else:
        reason = "it does not hold a JSON object"
    if not isinstance(state, dict):
        raise DamagedRunError(f"{path} is damaged ({reason}): start the run over with "
                              f"`make run-all RUN={path.parent.name} FRESH=1`, or delete "
                              f"{path.parent}")
    return state


# --------------------------------------------------------------------------- predictions.csv


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


# --------------------------------------------------------------------------- metrics.json


def write_results(out_dir: Path, predictions: pd.DataFrame, metrics: dict) -> dict:
    """Write predictions.csv, then metrics.json with the digest of that predictions.csv, so
    that a pair from two different evaluations (one cut off between the two writes) is never
    taken for a finished experiment. Returns the metrics as written."""
    path = write_csv(Path(out_dir) / "predictions.csv", predictions)
    metrics = json_safe(metrics | {"predictions_digest": file_digest(path)})
    write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics


def record(out_dir: str | Path, **entries) -> dict:
    """Add ``entries`` (e.g. a comparison made after
    :func:`shared.evaluation.evaluate.finish`) to the metrics.json of a
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


def finished_predictions(out_dir: str | Path) -> pd.DataFrame | None:
    """The predictions.csv of a finished experiment (see :func:`check_complete`), else None."""
    return None if check_complete(out_dir) else read_predictions(Path(out_dir) / "predictions.csv")


# --------------------------------------------------------------------------- checkpoints


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
