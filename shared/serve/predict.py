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
probabilities are averaged over them, before the temperature (which keeps the predicted class) or
the ensemble's vote. Still one row per image. ``--tta-views N`` asks for N views instead.

Every image file under ``--images`` (sub-folders included, hidden files ignored) gets one row:
``file`` (relative to the folder), ``predicted``, and ``p_<class>`` per class. Images are checked,
decoded and resized by ``shared.data`` exactly as for training. Files that are not images or
cannot be decoded are printed and listed in ``<out stem>.skipped.csv`` (columns file, reason;
always written, so an old list never survives a new run), not fatal. A folder with no images is
an error that names it; the command then exits with status 1 and a one-line message instead of
a traceback, as does a damaged or incomplete model folder (a truncated metrics.json or
model.keras, a metrics.json without image_size or class_names): the message names the file and
says to run that experiment again. Both CSV files are written whole (write then rename).

The folder given to ``--model`` is found, checked and loaded by :mod:`shared.serve.loading`.

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
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from shared import data
from shared.evaluation import calibrate
from shared.evaluation import tta as _tta
from shared.evaluation.evaluate import output_kind, to_probabilities
from shared.evaluation.voting import combine
from shared.files import atomic_path, write_csv
from shared.results import PREFIX
from shared.serve.loading import (
    PredictError,
    ensemble_plan,
    load_model,
    read_metrics,
    resolve_model_dir,
    temperature,
    tta_views,
)

BATCH_SIZE = 32
CHUNK = 1024      # images checked, decoded and predicted at a time


@dataclasses.dataclass(frozen=True)
class Prediction:
    """What :func:`predict_folder` wrote: the two CSV files and their row counts."""

    out_csv: Path
    skipped_csv: Path
    predicted: int
    skipped: int


# --------------------------------------------------------------------------- inputs


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


class _Member:
    """One experiment's model, loaded once, with its image size and class names; with
    ``tta``, the views it predicts (:func:`shared.serve.loading.tta_views`)."""

    def __init__(self, experiment_dir: Path, tta: bool = False, views: int | None = None):
        metrics = read_metrics(experiment_dir, "image_size", "class_names")
        self.name = experiment_dir.name
        self.size, self.class_names = metrics["image_size"], list(metrics["class_names"])
        self.temperature = temperature(metrics, experiment_dir)
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


# --------------------------------------------------------------------------- predicting


def predict_folder(model_dir: str | Path, images_folder: str | Path, out_csv: str | Path,
                   batch_size: int = BATCH_SIZE, tta: bool = False,
                   views: int | None = None) -> Prediction:
    """Predict every image under ``images_folder`` with an experiment's model or a run's
    ensemble (``model_dir``), write ``out_csv`` (file, predicted, p_<class>...) and
    ``<out stem>.skipped.csv`` (file, reason), :data:`CHUNK` images at a time. With ``tta``,
    every model averages its probabilities over its views
    (:func:`shared.serve.loading.tta_views`; ``views`` of them where given)."""
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
    members, method, weights = ensemble_plan(ensemble_dir)
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
