"""A finished experiment or ensemble folder, found and checked for predicting with it.

Its ``metrics.json`` (image size, class names, temperature, test-time augmentation views), its
``model.keras`` (with the project's own layers) and, for an ensemble, which members vote with
which weights. A missing, freed or damaged folder raises :class:`PredictError` with a message
that names the file and says what to do (run that experiment again).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from shared import config
from shared.evaluation import tta as _tta
from shared.files import read_json
from shared.models import layers


class PredictError(ValueError):
    """Bad input to the command: a missing model or folder, no images, a damaged model folder."""


def resolve_model_dir(model: str | Path) -> Path:
    """An experiment or ensemble folder, given absolute, relative to reports/ or to the
    current directory."""
    model = Path(model).expanduser()
    tried = [model] if model.is_absolute() else [config.REPORTS_DIR / model, Path.cwd() / model]
    for candidate in tried:
        if (candidate / "metrics.json").is_file():
            return candidate
    for candidate in tried:
        if candidate.is_dir():
            raise PredictError(f"{candidate} holds no metrics.json: it is not a finished "
                               "experiment (or ensemble) folder")
    raise PredictError(f"no model folder {model} (looked at {', '.join(map(str, tried))})")


def read_metrics(folder: Path, *keys: str) -> dict:
    """``<folder>/metrics.json``, checked to be whole JSON with ``keys``; a
    :class:`PredictError` that names it and says what to do otherwise."""
    path = folder / "metrics.json"
    try:
        metrics = read_json(path)
    except (ValueError, UnicodeDecodeError) as err:   # JSONDecodeError is a ValueError
        raise PredictError(f"{path} is damaged (not complete JSON: {_first_line(err)}): "
                           f"{_remedy(folder)}") from err
    if not isinstance(metrics, dict):
        raise PredictError(f"{path} is damaged (not a JSON object): {_remedy(folder)}")
    missing = [k for k in keys if k not in metrics]
    if "image_size" in keys and "image_size" not in missing and \
            not isinstance(metrics["image_size"], int):
        missing.append("image_size")
    if "class_names" in keys and "class_names" not in missing and \
            not (isinstance(metrics["class_names"], list) and metrics["class_names"]):
        missing.append("class_names")
    if missing:
        raise PredictError(f"{path} lacks {' and '.join(missing)} (or they are not valid): "
                           f"{_remedy(folder)}")
    return metrics


def load_model(experiment_dir: Path):
    """``<experiment>/model.keras``, with the project's custom layers registered."""
    import keras

    path = experiment_dir / "model.keras"
    if not path.is_file():
        raise PredictError(_freed(experiment_dir) or
                           f"{experiment_dir} holds no model.keras: {_remedy(experiment_dir)}")
    if not zipfile.is_zipfile(path):    # Keras would say "File not found"
        raise PredictError(f"{path} is damaged (not a complete .keras file, perhaps cut short "
                           f"while it was written): {_remedy(experiment_dir)}")
    try:
        return keras.saving.load_model(path, compile=False,
                                       custom_objects=layers.CUSTOM_OBJECTS)
    except Exception as err:   # a truncated zip, a missing layer, bad weights...
        raise PredictError(f"{path} cannot be loaded ({type(err).__name__}: "
                           f"{_first_line(err)}): {_remedy(experiment_dir)}") from err


def _freed(folder: Path) -> str | None:
    """Why ``folder`` has no model when `make prune-models` freed it, else None."""
    note = Path(folder) / config.MODEL_FREED
    if not note.is_file():
        return None
    try:
        when = f" on {read_json(note)['freed_at']}"
    except (OSError, ValueError, KeyError, TypeError):
        when = ""
    return (f"the model of {folder} was freed by `make prune-models`{when} (its results and "
            f"reports are kept); to have a model again, {_remedy(folder, delete=False)}")


def _remedy(folder: Path, delete: bool = True) -> str:
    """What to do about a damaged experiment folder (``delete``: or delete it)."""
    folder = Path(folder)
    notebooks = sorted(config.NOTEBOOKS_DIR.glob(f"[0-9]*_{folder.name}*.ipynb"))
    notebook = notebooks[0].stem if notebooks else "<its notebook>"
    run = folder.parent
    run = run.name if run.parent.resolve() == config.REPORTS_DIR.resolve() else run
    return (f"run that experiment again: make run NB={notebook} RUN={run} FRESH=1"
            + (f", or delete {folder}" if delete else ""))


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else type(err).__name__


def tta_views(metrics: dict, views: int | None = None) -> list[_tta.View]:
    """The views of test-time augmentation for an experiment: ``views`` of them, else as many
    as its metrics.json's ``tta`` records (else :data:`shared.evaluation.tta.DEFAULT_VIEWS`), drawn
    with the seed and for the training policy it records, at its image size: the views it was
    scored with."""
    recorded = metrics.get("tta") if isinstance(metrics.get("tta"), dict) else {}
    seed = recorded.get("seed", metrics.get("seed")) or 0
    try:
        return _tta.views(views or recorded.get("views") or _tta.DEFAULT_VIEWS,
                          metrics["image_size"], seed, recorded.get("policy"))
    except ValueError as err:
        raise PredictError(str(err)) from err


def temperature(metrics: dict, experiment_dir: Path) -> float | None:
    """``calibration.temperature`` of a metrics.json, None where it records none."""
    recorded = metrics.get("calibration")
    if not isinstance(recorded, dict) or recorded.get("temperature") is None:
        return None
    temperature = recorded["temperature"]
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or \
            not np.isfinite(temperature) or temperature <= 0:
        raise PredictError(f"{experiment_dir / 'metrics.json'} has calibration.temperature "
                           f"{temperature!r}, not a positive number: {_remedy(experiment_dir)}")
    return float(temperature)


def ensemble_plan(ensemble_dir: Path) -> tuple[list[str], str, list[float]]:
    """The members that take part, the method and their weights, from the ensemble's
    metrics.json."""
    metrics = read_metrics(ensemble_dir, "members")
    method, weights = metrics.get("method", "soft"), metrics.get("weights", {})
    members = metrics["members"]
    if method == "best":                   # the weighted vote of one member
        if metrics.get("best_member") not in members:
            raise PredictError(f"{ensemble_dir / 'metrics.json'} has method 'best' but no "
                               f"best_member among its members")
        method, members = "weighted", [metrics["best_member"]]
        weights = {members[0]: 1.0}
    elif method == "weighted":
        members = [m for m in members if weights.get(m, 1.0) > 0]   # weight 0: not needed
    run_dir = ensemble_dir.parent
    missing = [m for m in members if not (run_dir / m / "model.keras").is_file()]
    for member in missing:
        if _freed(run_dir / member):
            raise PredictError(f"ensemble member {member}: {_freed(run_dir / member)}")
    if missing:
        raise PredictError(f"ensemble member(s) {', '.join(missing)} have no model.keras in "
                           f"{run_dir}")
    return members, method, [weights.get(m, 1.0) for m in members]
