"""A study's table, trials.csv, and its trials' folders: one row per trial, read, written and
cleared; a trial's folder and whether it finished."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import pandas as pd

from shared import results
from shared.files import write_csv

TRIALS_CSV = "trials.csv"
RESULT_COLUMNS = ["val_accuracy", "test_accuracy", "test_accuracy_ci_low",
                  "test_accuracy_ci_high", "macro_f1", "parameters", "backbone_layers_trained",
                  "train_seconds", "images_per_second", "seconds", "weights_source", "error"]


@dataclasses.dataclass(frozen=True)
class Trial:
    """One trial of a study: a name (its folder and its row), the settings it changes and the
    question of the study it helps answer (a study runs each question's first trial before
    any question's second: :func:`by_question`)."""

    name: str
    settings: dict
    question: str = ""


def by_question(trials: list[Trial]) -> list[Trial]:
    """``trials`` in rounds: the first trial of each question (in the order the questions first
    appear), then the second of each, and so on; within a question the given order (cheapest
    first), so a time budget cuts every question's later trials before any question's first."""
    groups: dict[str, list[Trial]] = {}
    for trial in trials:
        groups.setdefault(trial.question, []).append(trial)
    rounds = max((len(g) for g in groups.values()), default=0)
    return [g[r] for r in range(rounds) for g in groups.values() if r < len(g)]


def trial_dir(study_dir, name: str) -> Path:
    """The folder of trial ``name`` of the study in ``study_dir``."""
    return Path(study_dir) / "trials" / name


def new_row(trial: Trial, earlier: dict | None) -> dict:
    """A trial's row of trials.csv, "pending", with what ``earlier`` (its row as read back)
    already holds."""
    settings = {k: v if isinstance(v, bool | int | float | str) or v is None else str(v)
                for k, v in trial.settings.items()}
    blank = dict.fromkeys(RESULT_COLUMNS) | {"error": ""}
    asked = {"question": trial.question} if trial.question else {}
    row = {"trial": trial.name, "status": "pending", **asked, **settings, **blank}
    if earlier:
        row.update({k: v for k, v in earlier.items() if k in row and not missing(v)})
    return row


def is_finished(folder: Path, trial: Trial) -> bool:
    return results.is_complete(trial_dir(folder, trial.name))


def write_trials(folder: Path, rows: dict) -> pd.DataFrame:
    """trials.csv: trial, status, the question (where the study asks several), the settings of
    any trial, then the results."""
    settings = [k for row in rows.values() for k in row
                if k not in ("trial", "status", "question", *RESULT_COLUMNS)]
    asked = ["question"] if any("question" in row for row in rows.values()) else []
    columns = ["trial", "status", *asked, *dict.fromkeys(settings), *RESULT_COLUMNS]
    table = pd.DataFrame(list(rows.values())).reindex(columns=columns)
    write_csv(folder / TRIALS_CSV, table)
    return table


def read_trials(folder) -> pd.DataFrame:
    """A study's trials.csv (an empty table when there is none yet)."""
    path = Path(folder) / TRIALS_CSV
    if not path.is_file():
        return pd.DataFrame(columns=["trial", "status", *RESULT_COLUMNS])
    try:
        return pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise ValueError(f"{path} is unreadable ({error}): delete it and the study's "
                         f"trials/ folder to run the study again") from error


def trial_predictions(folder, name: str) -> pd.DataFrame | None:
    """A finished trial's predictions (on the study's share of val and test), else None."""
    return results.finished_predictions(trial_dir(folder, name))


def clear(folder) -> None:
    """Delete a study's trials and results (a fresh start of the study)."""
    folder = Path(folder)
    shutil.rmtree(folder / "trials", ignore_errors=True)
    (folder / TRIALS_CSV).unlink(missing_ok=True)


def summary(row: dict) -> str:
    if missing(row.get("test_accuracy")) and not missing(row.get("val_accuracy")):
        return f"held-out {pct(row.get('val_accuracy'))}"      # a fold scored on no test image
    return (f"val {pct(row.get('val_accuracy'))}, test {pct(row.get('test_accuracy'))} "
            f"[{pct(row.get('test_accuracy_ci_low'))}, {pct(row.get('test_accuracy_ci_high'))}]")


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def number(value) -> float:
    return 0.0 if missing(value) else float(value)


def pct(value) -> str:
    """A fraction as a percentage with one decimal ("n/a" when missing)."""
    return "n/a" if missing(value) else f"{100 * float(value):.1f}%"
