"""Predictions for new images: the submission file a competition asks for.

    python -m shared.serve.predict --model <run>/<experiment> --images <folder> --out <csv>
    make predict MODEL=<run>/<experiment> IMAGES=<folder> OUT=<csv>

``--model`` is an experiment folder of a run (``model.keras`` + ``metrics.json``) or a run's
``ensemble`` folder, given relative to ``reports/`` or as any other path. The image size and
class names come from the folder's metrics.json. For an ensemble, every member model predicts
at its own image size and the probabilities are combined with the ensemble's method and
weights (from its metrics.json).

Temperature scaling: where a model's metrics.json records ``calibration.temperature`` (fitted on
the validation split by ``shared.evaluation.evaluate.finish``, see
:mod:`shared.evaluation.calibrate`), the
probabilities written are ``softmax(log p / T)`` of the model's, not the model's own; the
predicted class is unchanged (it is the model's most probable class). An ensemble combines its
members' own probabilities, as its votes were chosen and scored on them. A metrics.json without
it (older runs) gives the model's probabilities as they are.

Test-time augmentation (``--tta``, ``make predict … TTA=1``): each model predicts the views its
experiment was scored with (metrics.json's ``tta``: their number and seed; else
:data:`shared.evaluation.tta.DEFAULT_VIEWS` views: identity, flip, small shifts) and its
probabilities are
averaged over them, before the temperature (which keeps the predicted class) or the ensemble's
vote. Still one row per image. ``--tta-views N`` asks for N views instead.

Every image file under ``--images`` (sub-folders included, hidden files ignored) gets one row:
``file`` (relative to the folder), ``predicted``, and ``p_<class>`` per class. Images are checked,
decoded and resized by ``shared.data`` exactly as for training. Files that are not images or
cannot be decoded are printed and listed in ``<out stem>.skipped.csv`` (columns file, reason;
always written, so an old list never survives a new run), not fatal. A folder with no images is
an error that names it; the command then exits with status 1 and a one-line message instead of
a traceback, as does a damaged or incomplete model folder (a truncated metrics.json or
model.keras, a metrics.json without image_size or class_names): the message names the file and
says to run that experiment again. Both CSV files are written whole (write then rename).

Memory stays flat however many images there are: the folder is walked, checked, decoded and
predicted :data:`CHUNK` images at a time and the rows are appended to a temporary CSV beside
``--out``, renamed into place at the end. An ensemble keeps one row of probabilities per image
and member (not the images) and the names of the readable images.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from shared import config, data
from shared.evaluation import calibrate
from shared.evaluation import tta as _tta
from shared.evaluation.ensemble import combine
from shared.evaluation.evaluate import PREFIX, output_kind, to_probabilities
from shared.files import atomic_path, read_json, write_csv
from shared.models import networks

BATCH_SIZE = 32
CHUNK = 1024      # images checked, decoded and predicted at a time


class PredictError(ValueError):
    """Bad input to the command: a missing model or folder, no images, a damaged model folder."""


@dataclasses.dataclass(frozen=True)
class Prediction:
    """What :func:`predict_folder` wrote: the two CSV files and their row counts."""

    out_csv: Path
    skipped_csv: Path
    predicted: int
    skipped: int


# --------------------------------------------------------------------------- inputs


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


def walk(folder: str | Path) -> Iterator[tuple[str, bool]]:
    """``(relative posix name, is an image)`` of every visible file under ``folder``, in the
    order of ``sorted(folder.rglob("*"))``, one folder's names in memory at a time."""
    folder = Path(folder)

    def visit(directory: Path, prefix: str):
        names, folders, others = [], set(), set()   # only the names: ~70 bytes a file
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                names.append(entry.name)
                if entry.is_dir(follow_symlinks=False):
                    folders.add(entry.name)
                elif not entry.is_file():
                    others.add(entry.name)
        for name in sorted(names):
            if name in folders:
                yield from visit(directory / name, f"{prefix}{name}/")
            elif name not in others:
                yield f"{prefix}{name}", Path(name).suffix.lower() in data.IMAGE_EXTENSIONS

    yield from visit(folder, "")


def readable_images(paths: list[Path], folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """The images that decode (checked as the dataset loader checks them) and the others with
    the reason."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:
        checks = list(pool.map(data.check_image, paths))
    good = [p for p, c in zip(paths, checks, strict=True) if c["ok"]]
    bad = [(p.relative_to(folder).as_posix(), c["reason"])
           for p, c in zip(paths, checks, strict=True) if not c["ok"]]
    return good, bad


def readable_chunks(folder: Path, skipped: list[tuple[str, str]]) -> Iterator[list[Path]]:
    """The readable images under ``folder`` in order, up to :data:`CHUNK` at a time; the
    other files are appended to ``skipped`` with the reason."""
    if not folder.is_dir():
        raise PredictError(f"no images folder {folder}")
    found, chunk = 0, []
    for name, is_image in walk(folder):
        if not is_image:
            skipped.append((name, _not_an_image(name)))
            continue
        found += 1
        chunk.append(folder / name)
        if len(chunk) == CHUNK:
            yield _checked(chunk, folder, skipped)
            chunk = []
    if chunk:
        yield _checked(chunk, folder, skipped)
    if not found:
        raise _no_images(folder)


def _checked(chunk: list[Path], folder: Path, skipped: list[tuple[str, str]]) -> list[Path]:
    good, bad = readable_images(chunk, folder)
    skipped += bad
    return good


def _not_an_image(name: str) -> str:
    return f"not an image file ({Path(name).suffix or 'no'} extension)"


def _no_images(folder: Path) -> PredictError:
    return PredictError(f"no images in {folder} (looked for "
                        f"{', '.join(data.IMAGE_EXTENSIONS)} files, sub-folders included)")


def images_dataset(paths: list[Path], size: int, batch_size: int = BATCH_SIZE):
    """Batches of the images at ``paths``, in order, through the training pipeline
    (:func:`shared.data.pipeline` over unlabelled files): float32 (B, size, size, 3) in
    [0, 255], decoded and resized exactly as the model's training images were."""
    paths = [Path(p).resolve() for p in paths]
    anchor = Path(paths[0].anchor)
    frame = pd.DataFrame({"path": [p.relative_to(anchor).as_posix() for p in paths]})
    return data.pipeline(frame, anchor, [], size, batch_size, cache=None)


# --------------------------------------------------------------------------- models


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
                                       custom_objects=networks.CUSTOM_OBJECTS)
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


class _Member:
    """One experiment's model, loaded once, with its image size and class names; with
    ``tta``, the views it predicts (:func:`tta_views`)."""

    def __init__(self, experiment_dir: Path, tta: bool = False, views: int | None = None):
        metrics = read_metrics(experiment_dir, "image_size", "class_names")
        self.name = experiment_dir.name
        self.size, self.class_names = metrics["image_size"], list(metrics["class_names"])
        self.temperature = _temperature(metrics, experiment_dir)
        self.views = tta_views(metrics, views) if tta else None
        self.model = load_model(experiment_dir)
        self.kind = output_kind(self.model)

    def raw_probabilities(self, paths: list[Path], batch_size: int) -> np.ndarray:
        """The model's own probabilities, averaged over its views with TTA."""
        def predict(images) -> np.ndarray:
            return to_probabilities(self.model.predict(images, verbose=0), self.kind)

        dataset = images_dataset(paths, self.size, batch_size)
        return _tta.average(predict, dataset, self.views) if self.views else predict(dataset)

    def calibrated(self, probabilities: np.ndarray) -> np.ndarray:
        """``probabilities`` with the model's temperature applied, where it has one."""
        if self.temperature is None:
            return probabilities
        return calibrate.apply_temperature(probabilities, self.temperature).astype(np.float32)

    def probabilities(self, paths: list[Path], batch_size: int) -> np.ndarray:
        """The probabilities written: the model's, temperature-scaled where it has one."""
        return self.calibrated(self.raw_probabilities(paths, batch_size))


def tta_views(metrics: dict, views: int | None = None) -> list[_tta.View]:
    """The views of test-time augmentation for an experiment: ``views`` of them, else as many
    as its metrics.json's ``tta`` records (else :data:`shared.evaluation.tta.DEFAULT_VIEWS`), drawn
    with
    the seed it records, at its image size: the views it was scored with."""
    recorded = metrics.get("tta") if isinstance(metrics.get("tta"), dict) else {}
    seed = recorded.get("seed", metrics.get("seed")) or 0
    try:
        return _tta.views(views or recorded.get("views") or _tta.DEFAULT_VIEWS,
                          metrics["image_size"], seed)
    except ValueError as err:
        raise PredictError(str(err)) from err


def _temperature(metrics: dict, experiment_dir: Path) -> float | None:
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


def _ensemble_plan(ensemble_dir: Path) -> tuple[list[str], str, list[float]]:
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


# --------------------------------------------------------------------------- predicting


def predict_folder(model_dir: str | Path, images_folder: str | Path, out_csv: str | Path,
                   batch_size: int = BATCH_SIZE, tta: bool = False,
                   views: int | None = None) -> Prediction:
    """Predict every image under ``images_folder`` with an experiment's model or a run's
    ensemble (``model_dir``), write ``out_csv`` (file, predicted, p_<class>...) and
    ``<out stem>.skipped.csv`` (file, reason), :data:`CHUNK` images at a time. With ``tta``,
    every model averages its probabilities over its views (:func:`tta_views`; ``views``
    of them where given)."""
    model_dir = resolve_model_dir(model_dir)
    folder, out_csv = Path(images_folder), Path(out_csv)
    if not folder.is_dir():
        raise PredictError(f"no images folder {folder}")
    if not any(is_image for _, is_image in walk(folder)):   # stops at the first image
        raise _no_images(folder)
    is_ensemble = "members" in read_metrics(model_dir)
    skipped: list[tuple[str, str]] = []
    with atomic_path(out_csv) as tmp, open(tmp, "w", newline="", encoding="utf-8") as out:
        if is_ensemble:
            count = _predict_with_ensemble(model_dir, folder, batch_size, skipped, out,
                                           tta, views)
        else:
            member, count = _Member(model_dir, tta, views), 0
            for paths in readable_chunks(folder, skipped):
                if paths:
                    probs = member.raw_probabilities(paths, batch_size)
                    count += _write_rows(out, folder, paths, member.calibrated(probs),
                                         probs.argmax(axis=1), member.class_names,
                                         header=count == 0)
        if not count:
            raise PredictError(f"no readable images in {folder}: "
                               + "; ".join(f"{f}: {r}" for f, r in skipped[:5]))
    skipped_csv = skipped_path(out_csv)
    write_csv(skipped_csv, pd.DataFrame(sorted(skipped), columns=["file", "reason"]))
    for file, reason in sorted(skipped):
        print(f"skipped {file}: {reason}")
    print(f"{count} image(s) predicted -> {out_csv}; {len(skipped)} skipped -> {skipped_csv}")
    return Prediction(out_csv, skipped_csv, count, len(skipped))


def _predict_with_ensemble(ensemble_dir: Path, folder: Path, batch_size: int,
                           skipped: list[tuple[str, str]], out, tta: bool = False,
                           views: int | None = None) -> int:
    """Each member predicts at its own size, one after the other, into an (images, classes)
    array of its own probabilities (not temperature-scaled: the ensemble's votes were chosen
    and scored on them); they are combined as the ensemble was (its method and weights)."""
    members, method, weights = _ensemble_plan(ensemble_dir)
    paths = [p for chunk in readable_chunks(folder, skipped) for p in chunk]
    if not paths:
        return 0
    class_names, member_probs = None, []
    for name in members:
        member = _Member(ensemble_dir.parent / name, tta, views)
        if class_names is not None and member.class_names != class_names:
            raise PredictError(f"ensemble member {name} has other classes than {members[0]}")
        class_names = member.class_names
        probs = np.empty((len(paths), len(class_names)), dtype=np.float32)
        for start in range(0, len(paths), CHUNK):
            probs[start:start + CHUNK] = member.raw_probabilities(paths[start:start + CHUNK],
                                                                  batch_size)
        member_probs.append(probs)
        del member
    combined, predicted = combine(np.stack(member_probs), method, weights)
    for start in range(0, len(paths), CHUNK):
        part = slice(start, start + CHUNK)
        _write_rows(out, folder, paths[part], combined[part], predicted[part], class_names,
                    header=start == 0)
    return len(paths)


def _write_rows(out, folder: Path, paths: list[Path], probs: np.ndarray, predicted: np.ndarray,
                class_names: list[str], header: bool) -> int:
    """Append one CSV row per image (file, predicted, p_<class>...) to the open file ``out``."""
    frame = pd.DataFrame({"file": [p.relative_to(folder).as_posix() for p in paths],
                          "predicted": np.asarray(class_names, dtype=object)[predicted]})
    for i, name in enumerate(class_names):
        frame[f"{PREFIX}{name}"] = probs[:, i]
    frame.to_csv(out, header=header, index=False)
    return len(frame)


def skipped_path(out_csv: str | Path) -> Path:
    out_csv = Path(out_csv)
    return out_csv.with_name(f"{out_csv.stem}.skipped.csv")


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.serve.predict",
                                     description="Predict the class of every image of a folder.")
    parser.add_argument("--model", required=True,
                        help="<run>/<experiment> or <run>/ensemble, relative to reports/")
    parser.add_argument("--images", required=True, help="folder of images")
    parser.add_argument("--out", required=True, help="CSV file to write")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: average over the views the model was "
                             "scored with (identity, flip, shifts)")
    parser.add_argument("--tta-views", type=int, default=None,
                        help="with --tta, this many views instead")
    args = parser.parse_args(argv)
    try:
        predict_folder(args.model, args.images, args.out, args.batch_size, tta=args.tta,
                       views=args.tta_views)
    except (PredictError, OSError) as err:   # OSError: a full disk, a file that cannot be read
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
