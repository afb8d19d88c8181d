"""The run's split: a stratified, seeded train/val/test split of a dataset (:func:`split`), made
and written once per run directory and read back by every notebook of the run (:func:`prepare`,
:class:`Split`); class counts, class weights and oversampled counts of a set of files."""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shared import files
from shared.data.fashion import FASHION_MNIST
from shared.data.images import file_digest
from shared.data.messages import some
from shared.data.sources import SPLITS, Dataset, find_leakage, load, scan_files


def split(ds: Dataset, seed: int, val_fraction: float, test_fraction: float,
          per_class: int | None = None, test_per_class: int | None = None) -> pd.DataFrame:
    """Stratified, seeded train/val/test split of a dataset: columns path, label, split.

    Files are sorted by path first, so the same files and seed give the same split on any
    machine. ``per_class`` first subsamples the pool that is split (train/, or every file) to at
    most that many images per class. A given val/ or test/ is used as is, capped per class by
    ``test_per_class``. ``val_fraction`` and ``test_fraction`` are shares of the pool.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    for name, value in (("per_class", per_class), ("test_per_class", test_per_class)):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    frame = ds.files.sort_values("path", ignore_index=True)
    given = frame["given_split"]
    pool = _cap(frame[given.isin(["train", ""])], per_class, seed)
    given_val = _cap(frame[given == "val"], test_per_class, seed)
    given_test = _cap(frame[given == "test"], test_per_class, seed)
    cut_test = len(given_test) == 0 and test_fraction > 0
    cut_val = len(given_val) == 0 and val_fraction > 0
    if cut_test and cut_val and val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction + test_fraction must be below 1, got "
                         f"{val_fraction} + {test_fraction}")
    into = ["train"] + ["val"] * cut_val + ["test"] * cut_test
    _check_splittable(pool, ds.class_names, into, val_fraction, test_fraction)
    parts = {"train": pool, "val": given_val, "test": given_test}
    n_pool, n_classes = len(pool), pool["label"].nunique()
    rest = pool
    if cut_test:
        rest, parts["test"] = _stratified(rest, max(n_classes, round(test_fraction * n_pool)),
                                          seed, "test_fraction")
    if cut_val:
        rest, parts["val"] = _stratified(rest, max(n_classes, round(val_fraction * n_pool)),
                                         seed, "val_fraction")
    parts["train"] = rest
    out = pd.concat([p[["path", "label"]].sort_values("path").assign(split=name)
                     for name, p in parts.items()], ignore_index=True)
    return out


def _cap(frame: pd.DataFrame, per_class: int | None, seed: int) -> pd.DataFrame:
    """At most ``per_class`` rows per label, a seeded sample (deterministic for sorted input)."""
    if per_class is None or frame.empty:
        return frame
    rng = np.random.RandomState(seed)
    picked = []
    for _, group in frame.groupby("label", sort=True):
        if len(group) > per_class:
            group = group.iloc[np.sort(rng.choice(len(group), per_class, replace=False))]
        picked.append(group)
    return pd.concat(picked).sort_values("path", ignore_index=True)


def _check_splittable(pool, class_names, into: list[str], val_fraction, test_fraction) -> None:
    counts = pool["label"].value_counts()
    few = [(c, int(counts.get(c, 0))) for c in class_names if counts.get(c, 0) < len(into)]
    if few:
        names = ", ".join(f"{c!r} ({n} image{'s' if n != 1 else ''})" for c, n in few)
        raise ValueError(f"too few images to split class(es) {names}: each class needs at least "
                         f"{len(into)} to split into {' + '.join(into)} (val_fraction="
                         f"{val_fraction}, test_fraction={test_fraction}); add images, remove "
                         "the class folder, or set the fraction to 0")


def _stratified(frame: pd.DataFrame, n_out: int, seed: int, name: str):
    from sklearn.model_selection import train_test_split

    if n_out > len(frame) - frame["label"].nunique():
        raise ValueError(f"{name} is too large for {len(frame)} images of "
                         f"{frame['label'].nunique()} classes: every class needs an image left "
                         f"in train")
    keep, out = train_test_split(frame, test_size=n_out, random_state=seed,
                                 stratify=frame["label"])
    return keep, out


# --------------------------------------------------------------------------------------------
# the run's split: prepare / Split
# --------------------------------------------------------------------------------------------


@dataclass
class Split:
    """The one split of a run, as every notebook of the run uses it."""

    root: Path
    class_names: list[str]
    frame: pd.DataFrame         # path, label, split
    skipped: pd.DataFrame       # path, reason
    info: dict

    def part(self, name: str, per_class: int | None = None, seed: int = 0) -> pd.DataFrame:
        """The rows of one split (train/val/test), optionally at most ``per_class`` per class
        (a seeded, stratified subsample, the same for the same seed)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}: choose one of {', '.join(SPLITS)}")
        rows = self.frame[self.frame["split"] == name].sort_values("path", ignore_index=True)
        return _cap(rows, per_class, seed).reset_index(drop=True)


_SPLIT_KEYS = ("seed", "val_fraction", "test_fraction", "per_class", "test_per_class")
FILES_CSV = "dataset_files.csv"     # the identity of every file the split was made from


class DatasetChangedError(ValueError):
    """The dataset folder of a run changed after the run wrote its split: ``added``,
    ``removed`` and ``replaced`` list the files (relative paths)."""

    def __init__(self, message: str, added: list[str], removed: list[str],
                 replaced: list[str]):
        super().__init__(message)
        self.added, self.removed, self.replaced = added, removed, replaced


def prepare(dataset: str | os.PathLike, run_dir: str | os.PathLike, cfg: dict) -> Split:
    """The run's split: made (and written) by the first notebook of a run, read back by the
    others. Writes run_dir/split.csv (path, label, split), skipped.csv (path, reason),
    dataset.json (spec, root, classes, seed, fractions, subsampling, counts, leakage) and,
    except for Fashion-MNIST (written once, never changed), dataset_files.csv: the size,
    modification time and digest of every file of the dataset folder. When files were added,
    removed or replaced there since, reading the split back raises
    :class:`DatasetChangedError` (a ValueError): a run never mixes two versions of its data.

    ``cfg`` needs seed, val_fraction, test_fraction, per_class, test_per_class (as made by
    ``config.settings``). A run directory holding a split of another dataset or with other
    split settings is an error: use a new run directory.
    """
    missing = [k for k in _SPLIT_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"prepare: cfg lacks {', '.join(missing)} (see config.settings)")
    run_dir = Path(run_dir)
    wanted = {"spec": _spec_key(dataset), **{k: cfg[k] for k in _SPLIT_KEYS}}
    listed = read_exclude(cfg.get("exclude"))
    if listed is not None:      # None: whatever the run's split left out (nothing, or a list)
        wanted["exclude"] = listed.attrs["record"]
    if (run_dir / "split.csv").is_file() and (run_dir / "dataset.json").is_file():
        return _read_split(run_dir, wanted)
    ds = load(dataset)
    frame = split(ds, cfg["seed"], cfg["val_fraction"], cfg["test_fraction"],
                  cfg["per_class"], cfg["test_per_class"])
    excluded = None
    if listed is not None:
        frame, excluded = exclude(frame, listed)
    digests = frame.merge(ds.files[["path", "digest"]], on="path", how="left")
    leakage = find_leakage(digests)
    info = {
        "spec": wanted["spec"], "root": str(ds.root), "form": ds.form,
        "labels_file": str(ds.labels_file) if ds.labels_file else None,
        "class_names": ds.class_names,
        **{k: cfg[k] for k in _SPLIT_KEYS},
        "counts": _counts_by_split(frame, ds.class_names),
        "available": {c: int(n) for c, n in
                      class_counts(ds.files, ds.class_names).items()},
        "leakage": leakage.to_dict("records"),
        "exclude": None if listed is None else listed.attrs["record"],
        "excluded": excluded,
        "data_digest": data_digest(ds.files),
        "skipped": len(ds.skipped),
        "warnings": ds.warnings,
    }
    if len(leakage):
        warnings.warn(f"{len(leakage)} file(s) in train have identical copies in test "
                      f"(listed in {run_dir / 'dataset.json'} under leakage)", stacklevel=2)
    run_dir.mkdir(parents=True, exist_ok=True)
    files.write_csv(run_dir / "skipped.csv", ds.skipped)
    files.write_json(run_dir / "dataset.json", info)
    if ds.form != FASHION_MNIST:
        files.write_csv(run_dir / FILES_CSV, _identities(ds))
    files.write_csv(run_dir / "split.csv", frame)   # last: its presence means all exist
    return Split(ds.root, list(ds.class_names), frame, ds.skipped, info)


EXCLUDED = "excluded"     # split.csv's part of the files an ``exclude`` list left out


def read_exclude(path: str | os.PathLike | None) -> pd.DataFrame | None:
    """The ``exclude`` setting's file read: a CSV with a ``path`` column (paths relative to the
    dataset folder, as in split.csv; e.g. a run's label_issues.csv). ``attrs["record"]`` is what
    dataset.json records (the file and its content digest). None: nothing to exclude."""
    if path is None or str(path).strip() == "":
        return None
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise ValueError(f"exclude: cannot read {path} as a CSV table of image paths "
                         f"({err})") from None
    if "path" not in table.columns:
        raise ValueError(f"exclude: {path} has no 'path' column (its columns: "
                         f"{some(list(table.columns))}); give a CSV with one path per row, "
                         "relative to the dataset folder, e.g. a run's label_issues.csv")
    listed = table[["path"]].drop_duplicates(ignore_index=True)
    listed.attrs["record"] = {"file": str(path.resolve()),
                              "digest": hashlib.blake2b(raw, digest_size=16).hexdigest()}
    return listed


def exclude(frame: pd.DataFrame, listed: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """``frame`` (a split: path, label, split) with the ``listed`` paths moved to the part
    "excluded", which no notebook reads; and what dataset.json records of it: how many were
    listed, left out of each part, and not found among the split's files."""
    hit = frame["path"].isin(set(listed["path"]))
    counts = frame.loc[hit, "split"].value_counts()
    out = frame.assign(split=frame["split"].where(~hit, EXCLUDED))
    record = {"listed": len(listed), "removed": {s: int(counts.get(s, 0)) for s in SPLITS},
              "not_in_split": int(len(listed) - hit.sum())}
    parts = ", ".join(f"{n} from {s}" for s, n in record["removed"].items() if n)
    print(f"exclude: {int(hit.sum()):,} of the {len(listed):,} listed images left out of the "
          "split" + (f" ({parts})" if parts else "")
          + (f"; {record['not_in_split']:,} listed images are not in it"
             if record["not_in_split"] else ""))
    return out, record


def data_digest(files: pd.DataFrame) -> str:
    """One digest of a dataset's usable images: path, label and content digest of each (a
    renamed, relabelled, added, removed or edited image changes it). Recorded in dataset.json;
    ``make reproduce`` compares it with the data as it is now."""
    lines = (files["path"].astype(str) + "\t" + files["label"].astype(str) + "\t"
             + files["digest"].astype(str)).sort_values()
    return hashlib.blake2b("\n".join(lines).encode(), digest_size=16).hexdigest()


def _spec_key(dataset) -> str:
    text = str(dataset)
    return text if text == FASHION_MNIST else str(Path(text).expanduser().resolve())


class DamagedSplitError(ValueError):
    """The run's dataset.json or split.csv cannot be read, or they disagree."""


def _damaged(path: Path, why: str) -> DamagedSplitError:
    return DamagedSplitError(f"{path} is damaged ({why}): start the run over with "
                             f"`make run-all RUN={path.parent.name} FRESH=1`")


def _read_split(run_dir: Path, wanted: dict) -> Split:
    try:
        info = files.read_json(run_dir / "dataset.json")
    except ValueError as err:
        raise _damaged(run_dir / "dataset.json", f"not JSON: {err}") from None
    if not isinstance(info, dict) or not {"root", "class_names", "counts"} <= set(info):
        raise _damaged(run_dir / "dataset.json", "root, class_names or counts missing")
    differ = [k for k, v in wanted.items() if info.get(k) != v]
    if differ:
        details = "; ".join(f"{k}: run has {info.get(k)!r}, asked for {wanted[k]!r}"
                            for k in differ)
        raise ValueError(f"run directory {run_dir} already holds a split for other settings "
                         f"({details}); use another run directory (RUN=...) or the same "
                         "dataset and settings")
    root = Path(info["root"])
    if not root.is_dir():
        raise FileNotFoundError(f"the dataset folder of this run, {root}, no longer exists")
    if info.get("form") != FASHION_MNIST and (run_dir / FILES_CSV).is_file():
        _check_unchanged(run_dir, root, info)      # (runs made before it was written: no check)
    read = dict(dtype=str, keep_default_na=False)
    frame = _read_split_csv(run_dir / "split.csv", info)
    skipped_path = run_dir / "skipped.csv"
    skipped = (pd.read_csv(skipped_path, **read) if skipped_path.is_file()
               else pd.DataFrame(columns=["path", "reason"]))
    return Split(root, list(info["class_names"]), frame, skipped, info)


def _read_split_csv(path: Path, info: dict) -> pd.DataFrame:
    """split.csv, checked against the counts dataset.json recorded when both were written."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as err:
        raise _damaged(path, f"not a CSV table: {err}") from None
    if not {"path", "label", "split"} <= set(frame.columns):
        raise _damaged(path, "its columns are not path, label, split")
    if _counts_by_split(frame, info["class_names"]) != info["counts"]:
        raise _damaged(path, f"{len(frame):,} rows, not the images per class and part that "
                             "dataset.json recorded")
    return frame


def _identities(ds: Dataset) -> pd.DataFrame:
    """path, size, mtime_ns, digest of every file of the dataset folder (:func:`scan_files`):
    digests from the check where it read the file as it is now, else from the bytes."""
    now = scan_files(ds.root, ds.form, ds.labels_file)
    known = ds.checked if len(ds.checked) else now.assign(digest="").iloc[:0]
    known = known[known["digest"].fillna("") != ""]
    frame = now.merge(known, on=["path", "size", "mtime_ns"], how="left")
    missing = frame["digest"].isna()
    frame.loc[missing, "digest"] = [_digest_of(ds.root / p) for p in frame.loc[missing, "path"]]
    return frame


def _digest_of(path: Path) -> str:
    try:
        return file_digest(path.read_bytes())
    except OSError:
        return ""


def _check_unchanged(run_dir: Path, root: Path, info: dict) -> None:
    """Raise DatasetChangedError if files were added to, removed from or replaced in the
    dataset folder since the split was written. Unchanged size and modification time mean
    unchanged; where either differs, the digest of the bytes decides (a copy or a touch is no
    change)."""
    then = pd.read_csv(run_dir / FILES_CSV, dtype={"path": str, "digest": str},
                       keep_default_na=False)
    now = scan_files(root, info.get("form", ""), info.get("labels_file"))
    both = then.merge(now, on="path", how="outer", suffixes=("", "_now"), indicator=True)
    added = both.loc[both["_merge"] == "right_only", "path"].tolist()
    removed = both.loc[both["_merge"] == "left_only", "path"].tolist()
    kept = both[both["_merge"] == "both"]
    moved = kept[(kept["size"] != kept["size_now"]) | (kept["mtime_ns"] != kept["mtime_ns_now"])]
    replaced = [p for p, d in zip(moved["path"], moved["digest"], strict=True)
                if _digest_of(root / p) != d or not d]
    if not (added or removed or replaced):
        return
    counts = ", ".join(f"{len(paths)} {what} (e.g. {some(paths, 3)})" for what, paths in
                       (("added", added), ("removed", removed), ("replaced", replaced)) if paths)
    raise DatasetChangedError(
        f"the dataset folder {root} changed after run {run_dir} wrote its split "
        f"({run_dir / 'split.csv'}): {counts}. Its notebooks must not mix splits of two "
        f"versions of the data: start the run again with `make run-all RUN={run_dir.name} "
        "FRESH=1` (or restore the folder as it was).", added, removed, replaced)


def _counts_by_split(frame, class_names) -> dict:
    return {s: {c: int(n) for c, n in class_counts(frame[frame["split"] == s],
                                                   class_names).items()}
            for s in SPLITS}


# --------------------------------------------------------------------------------------------
# class balance
# --------------------------------------------------------------------------------------------


def class_counts(frame: pd.DataFrame, class_names: list[str]) -> pd.Series:
    """Images per class (every class of ``class_names``, zeros included), in class order."""
    return (frame["label"].value_counts().reindex(class_names, fill_value=0)
            .astype(int).rename("count"))


def class_weights(frame: pd.DataFrame, class_names: list[str]) -> dict[int, float]:
    """scikit-learn's 'balanced' class weights by class index (1.0 for absent classes)."""
    from sklearn.utils.class_weight import compute_class_weight

    index = label_indices(frame, class_names)
    present = np.unique(index)
    weights = compute_class_weight("balanced", classes=present, y=index)
    out = {i: 1.0 for i in range(len(class_names))}
    out.update({int(c): float(w) for c, w in zip(present, weights, strict=True)})
    return out


def oversampled_counts(frame: pd.DataFrame, class_names: list[str]) -> pd.DataFrame:
    """Images per class in one epoch, before and after oversampling (columns before, after):
    every class present is raised to the size of the largest."""
    before = class_counts(frame, class_names)
    after = pd.Series(np.where(before > 0, before.max(), 0), index=before.index)
    return pd.DataFrame({"before": before, "after": after.astype(int)})


def label_indices(frame: pd.DataFrame, class_names: list[str]) -> np.ndarray:
    """Each row's class index in ``class_names`` (int32); unknown labels raise."""
    lookup = {c: i for i, c in enumerate(class_names)}
    unknown = sorted(set(frame["label"]) - set(lookup))
    if unknown:
        raise ValueError(f"labels not among the class names: {some(unknown)} "
                         f"(class names: {some(class_names, 12)})")
    return frame["label"].map(lookup).to_numpy(dtype=np.int32)
