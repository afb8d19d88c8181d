"""Predictions for new images: the submission file a competition asks for.

    python -m shared.predict --model <run>/<experiment> --images <folder> --out <csv>
    make predict MODEL=<run>/<experiment> IMAGES=<folder> OUT=<csv>

``--model`` is an experiment folder of a run (``model.keras`` + ``metrics.json``) or a run's
``ensemble`` folder, given relative to ``reports/`` or as any other path. The image size and
class names come from the folder's metrics.json. For an ensemble, every member model predicts
at its own image size and the probabilities are combined with the ensemble's method and
weights (from its metrics.json).

Every image file under ``--images`` (sub-folders included, hidden files ignored) gets one row:
``file`` (relative to the folder), ``predicted``, and ``p_<class>`` per class. Images are checked,
decoded and resized by ``shared.data`` exactly as for training. Files that are not images or
cannot be decoded are printed and listed in ``<out stem>.skipped.csv`` (columns file, reason;
always written, so an old list never survives a new run), not fatal. A folder with no images is
an error that names it; the command then exits with status 1 and a one-line message instead of
a traceback. Both CSV files are written whole (write then rename).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from shared import config, data, models
from shared.ensemble import combine
from shared.evaluate import PREFIX, output_kind, to_probabilities
from shared.files import read_json, write_csv

BATCH_SIZE = 32


class PredictError(ValueError):
    """Bad input to the command: a missing model or folder, or no images."""


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


def list_images(folder: str | Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files under ``folder`` (sorted) and the other visible files with the reason."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PredictError(f"no images folder {folder}")
    images, skipped = [], []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if path.suffix.lower() in data.IMAGE_EXTENSIONS:
            images.append(path)
        else:
            skipped.append((relative.as_posix(), f"not an image file ({path.suffix or 'no'} "
                                                 "extension)"))
    if not images:
        raise PredictError(f"no images in {folder} (looked for "
                           f"{', '.join(data.IMAGE_EXTENSIONS)} files, sub-folders included)")
    return images, skipped


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


def images_dataset(paths: list[Path], size: int, batch_size: int = BATCH_SIZE):
    """Batches of the images at ``paths``, in order, through the training pipeline
    (:func:`shared.data.pipeline` over unlabelled files): float32 (B, size, size, 3) in
    [0, 255], decoded and resized exactly as the model's training images were."""
    paths = [Path(p).resolve() for p in paths]
    anchor = Path(paths[0].anchor)
    frame = pd.DataFrame({"path": [p.relative_to(anchor).as_posix() for p in paths]})
    return data.pipeline(frame, anchor, [], size, batch_size, cache=None)


# --------------------------------------------------------------------------- models


def load_model(experiment_dir: Path):
    """``<experiment>/model.keras``, with the project's custom layers registered."""
    import keras

    path = experiment_dir / "model.keras"
    if not path.is_file():
        raise PredictError(f"{experiment_dir} holds no model.keras")
    return keras.saving.load_model(path, compile=False, custom_objects=models.CUSTOM_OBJECTS)


def _experiment_probabilities(experiment_dir: Path, paths: list[Path], batch_size: int):
    """(probabilities, class names, predicted indices) of one experiment's model."""
    metrics = read_json(experiment_dir / "metrics.json")
    size, class_names = metrics.get("image_size"), metrics.get("class_names")
    if not isinstance(size, int) or not class_names:
        raise PredictError(f"{experiment_dir / 'metrics.json'} lacks image_size or class_names")
    model = load_model(experiment_dir)
    outputs = model.predict(images_dataset(paths, size, batch_size), verbose=0)
    probs = to_probabilities(outputs, output_kind(model))
    return probs, list(class_names), probs.argmax(axis=1)


def predict_folder(model_dir: str | Path, images_folder: str | Path, out_csv: str | Path,
                   batch_size: int = BATCH_SIZE) -> pd.DataFrame:
    """Predict every image under ``images_folder`` with an experiment's model or a run's
    ensemble (``model_dir``), write ``out_csv`` (file, predicted, p_<class>...) and
    ``<out stem>.skipped.csv`` (file, reason), and return the predictions."""
    model_dir = resolve_model_dir(model_dir)
    folder = Path(images_folder)
    paths, skipped = list_images(folder)
    paths, unreadable = readable_images(paths, folder)
    skipped += unreadable
    if not paths:
        raise PredictError(f"no readable images in {folder}: "
                           + "; ".join(f"{f}: {r}" for f, r in unreadable[:5]))
    metrics = read_json(model_dir / "metrics.json")
    predict_with = _ensemble_probabilities if "members" in metrics else \
        _experiment_probabilities
    probs, class_names, predicted = predict_with(model_dir, paths, batch_size)
    frame = pd.DataFrame({"file": [p.relative_to(folder).as_posix() for p in paths],
                          "predicted": np.asarray(class_names, dtype=object)[predicted]})
    for i, name in enumerate(class_names):
        frame[f"{PREFIX}{name}"] = probs[:, i]
    out_csv = Path(out_csv)
    write_csv(out_csv, frame)
    skipped_csv = skipped_path(out_csv)
    write_csv(skipped_csv, pd.DataFrame(sorted(skipped), columns=["file", "reason"]))
    for file, reason in sorted(skipped):
        print(f"skipped {file}: {reason}")
    print(f"{len(frame)} image(s) predicted -> {out_csv}; {len(skipped)} skipped -> "
          f"{skipped_csv}")
    return frame


def skipped_path(out_csv: str | Path) -> Path:
    out_csv = Path(out_csv)
    return out_csv.with_name(f"{out_csv.stem}.skipped.csv")


def _ensemble_probabilities(ensemble_dir: Path, paths: list[Path], batch_size: int):
    """Each member predicts at its own size; the probabilities are combined as the ensemble
    was (its method and weights)."""
    metrics = read_json(ensemble_dir / "metrics.json")
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
    if missing:
        raise PredictError(f"ensemble member(s) {', '.join(missing)} have no model.keras in "
                           f"{run_dir}")
    class_names, member_probs = None, []
    for member in members:
        probs, names, _ = _experiment_probabilities(run_dir / member, paths, batch_size)
        if class_names is not None and names != class_names:
            raise PredictError(f"ensemble member {member} has other classes than {members[0]}")
        class_names = names
        member_probs.append(probs)
    combined, predicted = combine(np.stack(member_probs), method,
                                  [weights.get(m, 1.0) for m in members])
    return combined, class_names, predicted


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.predict",
                                     description="Predict the class of every image of a folder.")
    parser.add_argument("--model", required=True,
                        help="<run>/<experiment> or <run>/ensemble, relative to reports/")
    parser.add_argument("--images", required=True, help="folder of images")
    parser.add_argument("--out", required=True, help="CSV file to write")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    args = parser.parse_args(argv)
    try:
        predict_folder(args.model, args.images, args.out, args.batch_size)
    except (PredictError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
