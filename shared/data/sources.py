"""Dataset sources: find the images of a dataset spec, label them and check them (:func:`load`).

A *dataset spec* is one of:

1. ``"fashion-mnist"``: the default, written once as PNG files by :func:`fashion_mnist_folder`
   (``data/fashion-mnist/train/<class>/<n>.png`` and ``.../test/...``; its official test set is
   the test split), then read as form 3.
2. A folder whose sub-folders are the classes.
3. A folder with ``train/`` and optionally ``val/`` (also spelled ``valid/``, ``validation/``)
   and ``test/``, each holding class sub-folders. A given val/ or test/ is used as that split
   as is (``test_per_class`` caps both per class).
4. A folder of images with a labels file mapping file name to class: CSV with the header
   ``filename,label`` or JSON ``{"10003.jpg": 2, ...}``. The file is given as ``labels_file``,
   named as the spec itself (``data/comp/labels.csv``), or found as ``labels.csv`` /
   ``labels.json`` in the folder. Names are relative to the folder (sub-paths allowed).

Behaviour where a folder is not tidy:

* Images below a class folder at any depth belong to that class (``cat/2019/x.jpg`` is a cat).
* Image files are those ending in one of :data:`IMAGE_EXTENSIONS` (any case). Every one is opened
  and decoded with Pillow before training (large JPEGs at reduced scale; other images above
  Pillow's ``Image.MAX_IMAGE_PIXELS`` are refused as too large). Files that fail, and hidden
  files and folders (``.DS_Store``, ``.ipynb_checkpoints``, ``__MACOSX``) and other files inside
  class folders, are left out and listed in ``skipped`` with the reason; they never stop a run.
  Images directly in a folder of class folders are listed as skipped too, as are folders next
  to train/ other than val/ and test/; other files at the top (README, labels) are ignored.
* A class folder without a usable image is left out with a warning (and a ``skipped`` row);
  fewer than two usable classes is an error.
* Grayscale, RGBA (alpha dropped), palette, CMYK and 16-bit images become 8-bit RGB. EXIF
  orientation is not applied (as in Keras' own loaders).
* Files with identical bytes in train and test are reported in ``leakage`` (never removed).
* Integer class labels of a labels file are ordered numerically (``"2"`` before ``"10"``); every
  other set of class names is sorted as strings. Class index = position in ``class_names``.

Check results are cached per file, keyed by size and modification time, in a small CSV under
``shared.data.check.CHECK_CACHE_DIR`` (never inside the dataset folder), so loading a dataset
again is quick.
"""

from __future__ import annotations

import os
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from shared.data.check import check_files
from shared.data.fashion import FASHION_MNIST, fashion_mnist_folder
from shared.data.images import IMAGE_EXTENSIONS
from shared.data.labels import line_of, order_labels, read_labels
from shared.data.messages import some

SPLITS = ("train", "val", "test")
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test"}
LABEL_FILE_NAMES = ("labels.csv", "labels.json")


@dataclass
class Dataset:
    """What :func:`load` found.

    ``files`` has the columns path, label, given_split ("train"/"val"/"test", or "" where the
    dataset has no split of its own) and, from the check, width, height and digest (a hash of
    the bytes). Only usable images are in ``files``; the others are in ``skipped`` (path,
    reason). ``leakage`` lists identical files found in both train and test. ``checked`` has
    the identity of every image file checked, usable or not: path, size, mtime_ns, digest.
    """

    spec: str
    root: Path
    files: pd.DataFrame
    class_names: list[str]
    skipped: pd.DataFrame
    leakage: pd.DataFrame
    form: str = ""
    labels_file: Path | None = None
    warnings: list[str] = field(default_factory=list)
    checked: pd.DataFrame = field(default_factory=pd.DataFrame)


def load(spec: str | os.PathLike, labels_file: str | os.PathLike | None = None) -> Dataset:
    """Find, label and check every image of a dataset (see the module docstring for the forms).

    Raises FileNotFoundError for a missing path, ValueError (naming the class or file) for an
    unusable layout or labels file.
    """
    spec_str = str(spec)
    if spec_str == FASHION_MNIST:
        root = fashion_mnist_folder()
        ds = _load_split_folders(root, spec_str)
        ds.form = FASHION_MNIST
        return ds
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset {spec_str!r} not found: no such file or folder "
                                f"(named datasets: {FASHION_MNIST})")
    if path.is_file():
        if path.suffix.lower() not in (".csv", ".json"):
            raise ValueError(f"dataset {spec_str!r} is a file: give a folder, or a labels file "
                             "(.csv or .json) next to the images")
        labels_file, path = path, path.parent
    if labels_file is None:
        labels_file = next((path / n for n in LABEL_FILE_NAMES if (path / n).is_file()), None)
    if labels_file is not None:
        return _load_labels_file(path, Path(labels_file), spec_str)
    if (path / "train").is_dir():
        return _load_split_folders(path, spec_str)
    return _load_class_folders(path, spec_str)


def _load_class_folders(root: Path, spec: str) -> Dataset:
    classes = _visible_dirs(root)
    if not classes:
        raise ValueError(f"dataset folder {root} has no class sub-folders (and no train/ folder "
                         f"or {' / '.join(LABEL_FILE_NAMES)} labels file)")
    found, skipped = [], _loose_images(root)
    for name in classes:
        cands, skips = _scan(root / name, name)
        found += [(rel, size, mtime, name, "") for rel, size, mtime in cands]
        skipped += skips
    return _finish(spec, root, found, skipped, classes, "class folders")


def _load_split_folders(root: Path, spec: str) -> Dataset:
    parts = {}
    for entry in _visible_dirs(root):
        if entry in SPLIT_FOLDERS:
            split = SPLIT_FOLDERS[entry]
            if split in parts:
                raise ValueError(f"{root} has two folders for the {split} split: "
                                 f"{parts[split]}/ and {entry}/")
            parts[split] = entry
    classes = _visible_dirs(root / "train")
    if not classes:
        raise ValueError(f"{root / 'train'} has no class sub-folders")
    found = []
    skipped = [(f"{entry}/", "ignored: only train/, val/ and test/ are read next to train/")
               for entry in _visible_dirs(root) if entry not in SPLIT_FOLDERS]
    for split, folder in sorted(parts.items(), key=lambda kv: SPLITS.index(kv[0])):
        present = _visible_dirs(root / folder)
        unknown = sorted(set(present) - set(classes))
        if unknown:
            raise ValueError(f"{folder}/ has class folder(s) that train/ lacks: "
                             f"{', '.join(map(repr, unknown))} (in {root}); rename or remove "
                             f"them, or add them to train/")
        for name in present:
            cands, skips = _scan(root / folder / name, f"{folder}/{name}")
            found += [(rel, size, mtime, name, split) for rel, size, mtime in cands]
            skipped += skips
    return _finish(spec, root, found, skipped, classes, "train/val/test folders")


def _load_labels_file(root: Path, labels_file: Path, spec: str) -> Dataset:
    if not labels_file.is_file():
        raise FileNotFoundError(f"labels file {labels_file} not found")
    labels, lines = read_labels(labels_file)
    cands, skipped = _scan(root, "")
    by_name = {unicodedata.normalize("NFC", rel): (rel, size, mtime)
               for rel, size, mtime in cands}
    by_folded = {}          # a name listed in another case (IMG_1.jpg for IMG_1.JPG), if unique
    for key, cand in by_name.items():
        by_folded.setdefault(key.casefold(), []).append(cand)

    def lookup(name):
        key = unicodedata.normalize("NFC", name)
        if key in by_name:
            return by_name[key]
        same = by_folded.get(key.casefold(), [])
        return same[0] if len(same) == 1 else None

    matched = {name: lookup(name) for name in labels}
    missing = [f"{name!r}{line_of(lines, name)}" for name, cand in matched.items() if cand is None]
    if missing:
        raise ValueError(f"labels file {labels_file.name} names {len(missing)} file(s) that are "
                         f"not images in {root}: {some(missing)}")
    found, listed = [], set()
    for name, label in labels.items():
        rel, size, mtime = matched[name]
        if rel in listed:
            raise ValueError(f"labels file {labels_file.name}: {name!r}{line_of(lines, name)} "
                             f"names {rel!r} again (in another case)")
        found.append((rel, size, mtime, label, ""))
        listed.add(rel)
    skipped += [(rel, f"not listed in {labels_file.name}") for rel, _, _ in cands
                if rel not in listed]
    classes = order_labels(set(labels.values()))
    ds = _finish(spec, root, found, skipped, classes, "labels file")
    ds.labels_file = labels_file.resolve()
    return ds


def _finish(spec, root, found, skipped, classes, form) -> Dataset:
    """Check every candidate, drop unusable files and classes, find leakage."""
    cand = pd.DataFrame(found, columns=["path", "size", "mtime_ns", "label", "given_split"])
    checks = check_files(root, cand[["path", "size", "mtime_ns"]])
    cand = cand.merge(checks, on="path", how="left")
    checked = cand[["path", "size", "mtime_ns", "digest"]].sort_values("path", ignore_index=True)
    bad = cand[~cand["ok"]]
    skipped = skipped + list(zip(bad["path"], bad["reason"], strict=True))
    good = cand[cand["ok"]]
    notes = []
    train_like = good[good["given_split"].isin(["train", ""])]
    counts = train_like["label"].value_counts()
    empty = [c for c in classes if counts.get(c, 0) == 0]
    for name in empty:
        where = {"class folders": f"{name}/", "labels file": f"(class {name})"}.get(
            form, f"train/{name}/")
        note = f"class {name!r} has no usable images ({where}); it is left out"
        warnings.warn(note, stacklevel=4)
        notes.append(note)
        skipped.append((where, note))
    kept = [c for c in classes if c not in empty]
    orphans = good[good["label"].isin(empty)]
    skipped += [(p, f"class {lab!r} has no usable training images")
                for p, lab in zip(orphans["path"], orphans["label"], strict=True)]
    good = good[good["label"].isin(kept)]
    if len(kept) < 2:
        raise ValueError(f"dataset {root} needs at least 2 classes with usable images; found "
                         f"{len(kept)}{': ' + repr(kept[0]) if kept else ''} "
                         f"(see the skipped files for why the others were left out)")
    cols = ["path", "label", "given_split", "width", "height", "digest"]
    good = good[cols].sort_values("path", ignore_index=True)
    good["width"] = good["width"].astype(int)
    good["height"] = good["height"].astype(int)
    skipped_frame = (pd.DataFrame(skipped, columns=["path", "reason"])
                     .drop_duplicates("path").sort_values("path", ignore_index=True))
    return Dataset(spec=spec, root=Path(root).resolve(), files=good, class_names=kept,
                   skipped=skipped_frame, leakage=find_leakage(good, "given_split"), form=form,
                   warnings=notes, checked=checked)


def scan_files(root: str | os.PathLike, form: str,
               labels_file: str | os.PathLike | None = None) -> pd.DataFrame:
    """Every image file that :func:`load` considers in a dataset folder of ``form`` (``
    Dataset.form``), and the labels file where it lies in the folder: path (relative, POSIX),
    size, mtime_ns; nothing opened. Quick: what a run compares to see the folder changed."""
    root = Path(root)
    if form == "labels file":
        tops = [(root, "")]
    elif form == "class folders":
        tops = [(root / name, name) for name in _visible_dirs(root)]
    else:           # train/val/test folders, Fashion-MNIST
        tops = [(root / part / name, f"{part}/{name}") for part in _visible_dirs(root)
                if part in SPLIT_FOLDERS for name in _visible_dirs(root / part)]
    rows = [row for top, prefix in tops for row in _scan(top, prefix)[0]]
    if labels_file is not None and Path(labels_file).is_file():
        path = Path(labels_file).resolve()
        if path.is_relative_to(root.resolve()):
            st = path.stat()
            rows.append((path.relative_to(root.resolve()).as_posix(), st.st_size,
                         st.st_mtime_ns))
    return (pd.DataFrame(rows, columns=["path", "size", "mtime_ns"])
            .astype({"size": "int64", "mtime_ns": "int64"})
            .sort_values("path", ignore_index=True))


def find_leakage(frame: pd.DataFrame, split_column: str = "split") -> pd.DataFrame:
    """Pairs (train_path, test_path) of files with identical bytes in train and in test
    (``frame`` needs a digest column)."""
    train = frame.loc[frame[split_column] == "train", ["path", "digest"]]
    test = frame.loc[frame[split_column] == "test", ["path", "digest"]]
    pairs = train.merge(test, on="digest", suffixes=("_train", "_test"))
    pairs = pairs.rename(columns={"path_train": "train_path", "path_test": "test_path"})
    return pairs[["train_path", "test_path"]].sort_values(["train_path", "test_path"],
                                                          ignore_index=True)


def _visible_dirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder)
                  if e.is_dir() and not _hidden(e.name))


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _loose_images(root: Path) -> list[tuple[str, str]]:
    return [(e.name, "not inside a class folder") for e in os.scandir(root)
            if e.is_file() and not _hidden(e.name)
            and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS]


def _scan(top: Path, prefix: str):
    """Image files under ``top`` at any depth: (relative path, size, mtime_ns), and the
    skipped entries (relative path, reason). ``prefix`` is top's path relative to the root."""
    cands, skipped = [], []
    stack = [(str(top), prefix)]
    while stack:
        folder, rel_folder = stack.pop()
        with os.scandir(folder) as it:
            for e in it:
                rel = f"{rel_folder}/{e.name}" if rel_folder else e.name
                if _hidden(e.name):
                    kind = "folder" if e.is_dir() else "file"
                    skipped.append((rel + ("/" if kind == "folder" else ""), f"hidden {kind}"))
                elif e.is_dir():
                    stack.append((e.path, rel))
                elif not e.is_file():
                    skipped.append((rel, "not a regular file"))
                else:
                    ext = os.path.splitext(e.name)[1].lower()
                    if ext in IMAGE_EXTENSIONS:
                        st = e.stat()
                        cands.append((rel, st.st_size, st.st_mtime_ns))
                    elif prefix or rel_folder:     # stray files inside class folders
                        skipped.append((rel, f"not an image file (extension {ext or 'none'!r})"))
    return cands, skipped
