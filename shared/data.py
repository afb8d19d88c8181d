"""Datasets: find the images, check them, split them reproducibly, feed them to Keras fast.

The data flow is ``load`` → ``split`` (or ``prepare``, which also writes and re-reads the run's
split files) → ``pipeline``. A *dataset spec* is one of:

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
  and decoded with Pillow before training (large JPEGs at reduced scale; non-JPEG images above
  :data:`HUGE_PIXELS` are structure-checked instead of decoded). Files that fail, and hidden
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
:data:`CHECK_CACHE_DIR` (never inside the dataset folder), so loading a dataset again is quick.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import functools
import gzip
import hashlib
import io
import json
import math
import os
import shutil
import struct
import sys
import time
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from shared import config, files

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test"}
HUGE_PIXELS = 40_000_000       # above this, non-JPEG images are structure-checked, not decoded
CHECK_CACHE_DIR = config.DATA_DIR / ".cache" / "checked"
CHECK_VERSION = 2              # bump when the check changes, to invalidate cached results
AUTO_CACHE_LIMIT = 2 * 1024**3  # cache="auto": memory below this many decoded bytes, else disk
LABEL_FILE_NAMES = ("labels.csv", "labels.json")

FASHION_MNIST = "fashion-mnist"
FASHION_CLASSES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle_boot")     # official label order 0..9
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
SYSTEM_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")   # Debian dataset-fashion-mnist
_MARKER = ".complete"

_WORKERS = min(8, os.cpu_count() or 2)   # more threads only contend (GIL, directory locks)


# --------------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------------

@dataclass
class Dataset:
    """What :func:`load` found.

    ``files`` has the columns path, label, given_split ("train"/"val"/"test", or "" where the
    dataset has no split of its own) and, from the check, width, height and digest (a hash of
    the bytes). Only usable images are in ``files``; the others are in ``skipped`` (path,
    reason). ``leakage`` lists identical files found in both train and test.
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
    labels = _read_labels(labels_file)
    cands, skipped = _scan(root, "")
    by_name = {unicodedata.normalize("NFC", rel): (rel, size, mtime)
               for rel, size, mtime in cands}
    missing = [name for name in labels if unicodedata.normalize("NFC", name) not in by_name]
    if missing:
        raise ValueError(f"labels file {labels_file.name} names {len(missing)} file(s) that are "
                         f"not images in {root}: {_some(missing)}")
    found, listed = [], set()
    for name, label in labels.items():
        rel, size, mtime = by_name[unicodedata.normalize("NFC", name)]
        found.append((rel, size, mtime, label, ""))
        listed.add(rel)
    skipped += [(rel, f"not listed in {labels_file.name}") for rel, _, _ in cands
                if rel not in listed]
    classes = _order_labels(set(labels.values()))
    ds = _finish(spec, root, found, skipped, classes, "labels file")
    ds.labels_file = labels_file.resolve()
    return ds


def _read_labels(path: Path) -> dict[str, str]:
    """File name → label (as text) from a labels CSV or JSON, with clear errors."""
    if path.suffix.lower() == ".json":
        def no_duplicates(pairs):
            seen = {}
            for key, value in pairs:
                if key in seen:
                    raise ValueError(f"labels file {path.name}: duplicate entry for {key!r}")
                seen[key] = value
            return seen
        try:
            raw = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=no_duplicates)
        except json.JSONDecodeError as err:
            raise ValueError(f"labels file {path.name} is not valid JSON: {err}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"labels file {path.name} must be a JSON object "
                             '{"file name": label, ...}')
        pairs = list(raw.items())
    elif path.suffix.lower() == ".csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True,
                            encoding="utf-8-sig")     # -sig: a BOM from Excel is no header
        header = [str(c).strip().lower() for c in frame.columns]
        if "filename" not in header or "label" not in header:
            raise ValueError(f"labels file {path.name} has the header "
                             f"{','.join(map(str, frame.columns))!r}; expected 'filename,label'")
        frame.columns = header
        names = frame["filename"].str.strip()
        dup = names[names.duplicated(keep=False)]
        if len(dup):
            rows = [str(i + 2) for i in dup.index[:6]]
            raise ValueError(f"labels file {path.name} has duplicate rows for "
                             f"{_some(sorted(set(dup)))} (lines {', '.join(rows)})")
        pairs = list(zip(names, frame["label"].str.strip(), strict=True))
    else:
        raise ValueError(f"labels file {path.name}: expected a .csv or .json file")
    return _validate_labels(pairs, path.name)


def _validate_labels(pairs, name: str) -> dict[str, str]:
    bad = []
    labels = {}
    for file, label in pairs:
        if isinstance(label, bool) or not isinstance(label, (str, int, float)):
            bad.append(f"{file!r}: {label!r}")
            continue
        if isinstance(label, float):
            if not label.is_integer():
                bad.append(f"{file!r}: {label!r}")
                continue
            label = int(label)
        text = str(label).strip()
        if not text or not str(file).strip():
            bad.append(f"{file!r}: {label!r}")
            continue
        labels[str(file).strip()] = text
    if bad:
        raise ValueError(f"labels file {name} has unknown (empty or non-scalar) labels: "
                         f"{_some(bad)}")
    if not labels:
        raise ValueError(f"labels file {name} has no rows")
    numeric = {v for v in labels.values() if _is_int(v)}
    if numeric and len(numeric) < len(set(labels.values())):
        text_labels = sorted({v for v in labels.values() if not _is_int(v)})
        files_of = [f"{f!r}: {v!r}" for f, v in labels.items() if v in text_labels]
        raise ValueError(f"labels file {name} mixes integer class labels with unknown labels "
                         f"{_some(text_labels)} (e.g. {_some(files_of)})")
    return labels


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _order_labels(labels: set[str]) -> list[str]:
    if all(_is_int(v) for v in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _finish(spec, root, found, skipped, classes, form) -> Dataset:
    """Check every candidate, drop unusable files and classes, find leakage."""
    cand = pd.DataFrame(found, columns=["path", "size", "mtime_ns", "label", "given_split"])
    checks = check_files(root, cand[["path", "size", "mtime_ns"]])
    cand = cand.merge(checks, on="path", how="left")
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
                   warnings=notes)


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


def _some(items, n: int = 5) -> str:
    items = list(items)
    shown = ", ".join(str(i) if str(i).startswith(("'", '"')) else repr(i) for i in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


# --------------------------------------------------------------------------------------------
# the check, with its cache
# --------------------------------------------------------------------------------------------

def check_image(path: str | os.PathLike) -> dict:
    """Open and decode one file with Pillow: ok, reason, width, height, mode, format, digest.

    JPEGs are decoded at reduced scale (``draft``), which still reads every byte; non-JPEG
    images above :data:`HUGE_PIXELS` are structure-checked (``verify``) instead of decoded.
    """
    out = dict(ok=False, reason="", width=0, height=0, mode="", format="", decoder="",
               digest="")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        out["reason"] = f"cannot be read: {err.strerror or err}"
        return out
    if not data:
        out["reason"] = "empty file (0 bytes)"
        return out
    out["digest"] = hashlib.blake2b(data, digest_size=16).hexdigest()
    out["decoder"] = _sniff(data[:_HEAD_BYTES])[0]
    try:
        with Image.open(io.BytesIO(data)) as im:
            out.update(width=im.width, height=im.height, mode=im.mode, format=im.format or "")
            if im.width < 1 or im.height < 1:
                out["reason"] = "image has no pixels"
                return out
            if im.format != "JPEG" and im.width * im.height > HUGE_PIXELS:
                im.verify()
            else:
                im.draft("RGB", (1, 1))   # JPEG: decode at 1/8 scale, other formats: no-op
                im.load()
                if im.mode not in _RGB_READY:
                    to_rgb(im)            # an unusual mode: make sure it converts
    except UnidentifiedImageError:
        out["reason"] = "not an image (Pillow cannot identify the format)"
        return out
    except Image.DecompressionBombError:
        out["reason"] = f"too large ({out['width']}x{out['height']} pixels)"
        return out
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        out["reason"] = f"cannot be decoded ({_short(err)})"
        return out
    out["ok"] = True
    return out


def _short(err: Exception) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:120]


def to_rgb(im: Image.Image) -> np.ndarray:
    """An 8-bit RGB array of a Pillow image of any mode (16-bit scaled, alpha dropped)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if im.mode != "F" and arr.max(initial=0) > 255:
            arr = arr / 257.0
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if im.mode in ("P", "PA"):      # via RGBA: Pillow warns on P -> RGB with transparency
        im = im.convert("RGBA")
    return np.asarray(im.convert("RGB"))


_RGB_READY = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I;16",
              "I;16B", "I;16L", "I;16N", "I", "F"}     # modes that to_rgb converts for sure
_CHECK_COLUMNS = ["path", "size", "mtime_ns", "ok", "reason", "width", "height", "mode",
                  "format", "decoder", "digest"]


def check_files(root: Path, cands: pd.DataFrame) -> pd.DataFrame:
    """Check every file of ``cands`` (path, size, mtime_ns), reusing cached results whose size
    and mtime still match. Returns path, ok, reason, width, height, mode, format, digest."""
    manifest = _manifest_path(root)
    cached = _read_manifest(manifest)
    merged = cands.merge(cached, on=["path", "size", "mtime_ns"], how="left")
    todo = merged[merged["ok"].isna()]
    if len(todo):
        fresh = _check_many(root, todo["path"].tolist(), todo["size"].mean())
        fresh.insert(1, "size", todo["size"].to_numpy())
        fresh.insert(2, "mtime_ns", todo["mtime_ns"].to_numpy())
        done = merged[merged["ok"].notna()]
        merged = pd.concat([done, fresh], ignore_index=True) if len(done) else fresh
        _write_manifest(manifest, merged, cached)
    merged["ok"] = merged["ok"].astype(bool)
    merged["reason"] = merged["reason"].fillna("").astype(str)
    return merged.drop(columns=["size", "mtime_ns"])


def _check_many(root: Path, rel_paths: list[str], mean_size: float = 0) -> pd.DataFrame:
    """check_image over many files, in chunks. Threads pay off only for large files, whose
    decoding releases the GIL; for small ones the Python around it dominates and one thread
    is fastest."""
    root = str(root)
    workers = _WORKERS if mean_size > 64 * 1024 else 1
    chunks = [rel_paths[i:i + 256] for i in range(0, len(rel_paths), 256)]

    def check_chunk(chunk):
        return [check_image(os.path.join(root, rel)) for rel in chunk]
    # Pillow's warnings (large images, odd palettes) say nothing the check does not; they are
    # silenced here, around the pool: catch_warnings is not thread-safe inside the threads.
    with warnings.catch_warnings(), cf.ThreadPoolExecutor(workers) as pool:
        warnings.simplefilter("ignore")
        rows = [row for part in pool.map(check_chunk, chunks) for row in part]
    frame = pd.DataFrame(rows, columns=_CHECK_COLUMNS[3:])
    frame.insert(0, "path", rel_paths)
    return frame


def _manifest_path(root: Path) -> Path:
    key = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:12]
    return Path(CHECK_CACHE_DIR) / f"{config.slug(str(root))}-{key}-v{CHECK_VERSION}.csv"


def _read_manifest(path: Path) -> pd.DataFrame:
    empty = pd.DataFrame({c: pd.Series(dtype="object") for c in _CHECK_COLUMNS})
    empty = empty.astype({"size": "int64", "mtime_ns": "int64"})
    if not path.is_file():
        return empty
    try:
        frame = pd.read_csv(path, dtype={"path": str, "reason": str, "mode": str,
                                         "format": str, "decoder": str, "digest": str},
                            keep_default_na=False)
        return frame[_CHECK_COLUMNS].astype({"size": "int64", "mtime_ns": "int64"})
    except (OSError, ValueError, KeyError, pd.errors.ParserError):
        return empty


def _write_manifest(path: Path, merged: pd.DataFrame, cached: pd.DataFrame) -> None:
    """Keep the cache of files not asked about this time (e.g. another split folder)."""
    keep = cached[~cached["path"].isin(merged["path"])]
    frame = pd.concat([keep, merged[_CHECK_COLUMNS]], ignore_index=True) if len(keep) else merged
    with contextlib.suppress(OSError):   # only an optimisation: unwritable costs only time
        files.write_csv(path, frame[_CHECK_COLUMNS])
        for old in path.parent.glob(path.name.rsplit("-v", 1)[0] + "-v*.csv"):
            if old != path:
                old.unlink()


def image_sizes(data, root: str | os.PathLike | None = None, *, limit: int | None = None,
                seed: int = 0) -> pd.DataFrame:
    """Width and height of the images of a :class:`Split` (or of a frame of files under
    ``root``), at most ``limit`` of them (a seeded sample), for plotting the size distribution;
    from the check cache where it has them, else from the headers. Returns path, label, width,
    height."""
    frame = data.frame if isinstance(data, Split) else data
    root = data.root if isinstance(data, Split) else root
    if root is None:
        raise ValueError("image_sizes: give a Split, or a frame and its root")
    if limit is not None and len(frame) > limit:
        frame = frame.sample(n=limit, random_state=seed).sort_values("path")
    root = Path(root)
    cached = _read_manifest(_manifest_path(root)).set_index("path")
    known = frame["path"].isin(cached.index)
    out = frame[["path", "label"]].copy()
    out["width"] = 0
    out["height"] = 0
    if known.any():
        hit = cached.loc[frame.loc[known, "path"]]
        out.loc[known, "width"] = hit["width"].astype(int).to_numpy()
        out.loc[known, "height"] = hit["height"].astype(int).to_numpy()

    def header(rel):
        try:
            with Image.open(root / rel) as im:
                return im.size
        except (OSError, ValueError):
            return (0, 0)
    unknown = frame.loc[~known, "path"].tolist()
    if unknown:
        with cf.ThreadPoolExecutor(_WORKERS) as pool:
            sizes = list(pool.map(header, unknown))
        out.loc[~known, "width"] = [w for w, _ in sizes]
        out.loc[~known, "height"] = [h for _, h in sizes]
    return out


# --------------------------------------------------------------------------------------------
# split
# --------------------------------------------------------------------------------------------

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


def prepare(dataset: str | os.PathLike, run_dir: str | os.PathLike, cfg: dict) -> Split:
    """The run's split: made (and written) by the first notebook of a run, read back by the
    others. Writes run_dir/split.csv (path, label, split), skipped.csv (path, reason) and
    dataset.json (spec, root, classes, seed, fractions, subsampling, counts, leakage).

    ``cfg`` needs seed, val_fraction, test_fraction, per_class, test_per_class (as made by
    ``config.settings``). A run directory holding a split of another dataset or with other
    split settings is an error: use a new run directory.
    """
    missing = [k for k in _SPLIT_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"prepare: cfg lacks {', '.join(missing)} (see config.settings)")
    run_dir = Path(run_dir)
    wanted = {"spec": _spec_key(dataset), **{k: cfg[k] for k in _SPLIT_KEYS}}
    if (run_dir / "split.csv").is_file() and (run_dir / "dataset.json").is_file():
        return _read_split(run_dir, wanted)
    ds = load(dataset)
    frame = split(ds, cfg["seed"], cfg["val_fraction"], cfg["test_fraction"],
                  cfg["per_class"], cfg["test_per_class"])
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
        "skipped": len(ds.skipped),
        "warnings": ds.warnings,
    }
    if len(leakage):
        warnings.warn(f"{len(leakage)} file(s) in train have identical copies in test "
                      f"(listed in {run_dir / 'dataset.json'} under leakage)", stacklevel=2)
    run_dir.mkdir(parents=True, exist_ok=True)
    files.write_csv(run_dir / "skipped.csv", ds.skipped)
    files.write_json(run_dir / "dataset.json", info)
    files.write_csv(run_dir / "split.csv", frame)   # last: its presence means all three exist
    return Split(ds.root, list(ds.class_names), frame, ds.skipped, info)


def _spec_key(dataset) -> str:
    text = str(dataset)
    return text if text == FASHION_MNIST else str(Path(text).expanduser().resolve())


def _read_split(run_dir: Path, wanted: dict) -> Split:
    info = files.read_json(run_dir / "dataset.json")
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
    read = dict(dtype=str, keep_default_na=False)
    frame = pd.read_csv(run_dir / "split.csv", **read)
    skipped_path = run_dir / "skipped.csv"
    skipped = (pd.read_csv(skipped_path, **read) if skipped_path.is_file()
               else pd.DataFrame(columns=["path", "reason"]))
    return Split(root, list(info["class_names"]), frame, skipped, info)


def _counts_by_split(frame, class_names) -> dict:
    return {s: {c: int(n) for c, n in class_counts(frame[frame["split"] == s],
                                                   class_names).items()}
            for s in SPLITS}


def summary(split: Split, sentences: bool = False) -> str:
    """What the run's split holds, as a few lines (or, with ``sentences``, as prose for a
    notebook's conclusion)."""
    info, counts = split.info, split.frame["split"].value_counts()
    parts = ", ".join(f"{counts.get(s, 0):,} {s}" for s in SPLITS)
    leaks, skipped = len(info.get("leakage", [])), len(split.skipped)
    sampling = ", ".join(f"{k}={info.get(k)}" for k in ("per_class", "test_per_class")
                         if info.get(k) is not None) or "none"
    if sentences:
        text = (f"The dataset {info.get('spec')} gives {len(split.frame):,} images in "
                f"{len(split.class_names)} classes ({parts}), split with seed {info.get('seed')}"
                f"{'' if sampling == 'none' else f' after subsampling ({sampling})'}. ")
        text += _balance_sentence(split) + " "
        text += (f"{skipped} file(s) were skipped as unreadable or not images. " if skipped
                 else "Every file was readable. ")
        text += (f"{leaks} training image(s) also appear in the test set, which flatters test "
                 "scores." if leaks else "No image appears in both train and test.")
        return text
    lines = [f"dataset    {info.get('spec')} ({info.get('form', '')}) in {split.root}",
             f"classes    {len(split.class_names)}: {_some(split.class_names, 12)}",
             f"images     {parts}",
             f"split      seed {info.get('seed')}, val_fraction {info.get('val_fraction')}, "
             f"test_fraction {info.get('test_fraction')}, subsampling: {sampling}",
             f"skipped    {skipped} file(s)",
             f"leakage    {leaks} train/test pair(s) of identical files"]
    return "\n".join(lines + [f"warning    {w}" for w in info.get("warnings", [])])


def _balance_sentence(split: Split) -> str:
    """Whether the training classes are balanced, in one sentence."""
    counts = class_counts(split.part("train"), split.class_names)
    if counts.empty or counts.min() == 0:
        empty = [str(c) for c, n in counts.items() if n == 0]
        return f"The training split has no image of {', '.join(empty)}." if empty else ""
    ratio = counts.max() / counts.min()
    if ratio < 1.5:
        return (f"The classes are balanced: {counts.min():,} to {counts.max():,} training images "
                "each.")
    return (f"The classes are imbalanced: {counts.idxmax()} has {counts.max():,} training "
            f"images and {counts.idxmin()} {counts.min():,}, {ratio:.1f} times fewer; with "
            "class_weight (on by default) the experiments weight the loss to make up for it.")


def class_counts_table(split: Split) -> pd.DataFrame:
    """Images per class (rows, in class order) and split (columns train, val, test)."""
    table = pd.crosstab(split.frame["label"], split.frame["split"])
    table = table.reindex(index=split.class_names, columns=list(SPLITS), fill_value=0)
    table.index.name, table.columns.name = "class", None
    return table.astype(int)


def imbalance_table(split: Split, per_class: int | None = None, seed: int = 0) -> pd.DataFrame:
    """For the training images of each class: count, share, the 'balanced' class weight and
    the count per epoch after oversampling (what each balancing option would do)."""
    train = split.part("train", per_class, seed)
    counts = oversampled_counts(train, split.class_names)
    weights = class_weights(train, split.class_names)
    table = pd.DataFrame({
        "images": counts["before"],
        "share": (counts["before"] / max(1, counts["before"].sum())).round(4),
        "class_weight": [round(weights[i], 4) for i in range(len(split.class_names))],
        "oversampled": counts["after"],
    })
    table.index.name = "class"
    return table


def training_data(split: Split, cfg: dict):
    """The training and validation pipelines of an experiment, and its class weights.

    Training images: ``split.part("train", cfg["train_per_class"], cfg["seed"])``, shuffled,
    augmented with ``cfg["augment"]`` and oversampled when ``cfg["oversample"]``; validation
    images: the val split as is. Both cached as ``cfg["cache"]`` says (a disk cache goes under
    ``<run_dir>/.cache``). Returns ``(train, val, class_weights)``: val is None when the split
    has no validation images, class_weights is None unless ``cfg["class_weight"]``. Prints the
    counts and the balancing applied.
    """
    missing = [k for k in ("image_size", "batch_size", "seed") if k not in cfg]
    if missing:
        raise ValueError(f"training_data: cfg lacks {', '.join(missing)}")
    seed, names = cfg["seed"], split.class_names
    cache = cfg.get("cache", "memory")
    cache_dir = Path(cfg["run_dir"]) / ".cache" if cfg.get("run_dir") else None
    common = dict(root=split.root, class_names=names, image_size=cfg["image_size"],
                  batch_size=cfg["batch_size"], cache=cache, cache_dir=cache_dir)
    train = split.part("train", cfg.get("train_per_class"), seed)
    val = split.part("val")
    if cfg.get("class_weight") and cfg.get("oversample"):
        warnings.warn("class_weight and oversample both balance the classes; together they "
                      "over-correct (the minority classes weigh twice)", stacklevel=2)
    train_ds = pipeline(train, augment=cfg.get("augment") or "none", shuffle=True, seed=seed,
                        oversample=bool(cfg.get("oversample")), **common)
    val_ds = pipeline(val, **common) if len(val) else None
    weights = class_weights(train, names) if cfg.get("class_weight") else None
    counts = class_counts(train, names)
    print(f"train: {len(train):,} images ({counts.min()}–{counts.max()} per class), "
          f"val: {len(val):,}; augment: {train_ds.augment}; "
          f"class weights: {'on' if weights else 'off'}; "
          f"oversampling: {'on' if cfg.get('oversample') else 'off'}")
    if weights:
        print("  class weights: " + ", ".join(f"{n} {weights[i]:.2f}" for i, n in
                                               enumerate(names)))
    return train_ds, val_ds, weights


def sample_images(split: Split, n: int = 8, image_size: int = 64, part: str = "train",
                  seed: int = 0) -> np.ndarray:
    """``n`` images of one split, drawn (seeded) in turn from each class, as the pipeline
    gives them: float32 (n, S, S, 3) in [0, 255]."""
    rows = split.part(part)
    if rows.empty:
        raise ValueError(f"sample_images: the {part} split has no images")
    rng = np.random.RandomState(seed)
    queues = [list(rng.permutation(group.index)) for _, group in rows.groupby("label", sort=True)]
    picked = []
    while len(picked) < min(n, len(rows)):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop())
    frame = rows.loc[picked]
    ds = pipeline(frame, split.root, split.class_names, image_size, len(frame), cache=None)
    return next(iter(ds))[0].numpy()


def class_counts(frame: pd.DataFrame, class_names: list[str]) -> pd.Series:
    """Images per class (every class of ``class_names``, zeros included), in class order."""
    return (frame["label"].value_counts().reindex(class_names, fill_value=0)
            .astype(int).rename("count"))


def class_weights(frame: pd.DataFrame, class_names: list[str]) -> dict[int, float]:
    """scikit-learn's 'balanced' class weights by class index (1.0 for absent classes)."""
    from sklearn.utils.class_weight import compute_class_weight

    index = _label_indices(frame, class_names)
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


def _label_indices(frame: pd.DataFrame, class_names: list[str]) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(class_names)}
    unknown = sorted(set(frame["label"]) - set(lookup))
    if unknown:
        raise ValueError(f"labels not among the class names: {_some(unknown)} "
                         f"(class names: {_some(class_names, 12)})")
    return frame["label"].map(lookup).to_numpy(dtype=np.int32)


# --------------------------------------------------------------------------------------------
# tf.data pipeline
# --------------------------------------------------------------------------------------------

CACHE_MODES = ("memory", "disk", "auto", "none")
SHUFFLE_BUFFER = 10_000


def pipeline(frame: pd.DataFrame, root: str | os.PathLike, class_names: list[str],
             image_size: int, batch_size: int, *, augment: str = "none", shuffle: bool = False,
             seed: int = 0, cache: str | None = "memory",
             cache_dir: str | os.PathLike | None = None, oversample: bool = False,
             autotune: bool = False):
    """A tf.data.Dataset of (images, one_hot) batches: images float32 (B, S, S, 3) in [0, 255].

    Files are read and decoded in parallel (JPEGs at a reduced DCT scale when much larger than
    ``image_size``; formats TensorFlow cannot decode, and huge non-JPEG images, through Pillow),
    resized to ``image_size`` square (area-averaged where both sides shrink 2x or more, else
    bilinear), and cached as 8-bit pixels: in memory, on disk under ``cache_dir`` ("disk"), or
    "auto" (memory unless the decoded images exceed 2 GiB); None or "none" does not cache.
    Then, in this order: oversampling (every class raised to the largest, exact counts per
    epoch, see :func:`oversampled_counts`), shuffling (seeded, a new order each epoch: without a
    cache the file names are reshuffled; with one, the files are shuffled once before decoding
    and a buffer of up to :data:`SHUFFLE_BUFFER` decoded images reshuffles every epoch),
    batching, augmentation (``shared.augment`` policy on batches, after the cache: pass it for
    training data only), prefetching. Labels are one-hot float32. tf.data's autotuner is off
    unless ``autotune``: with it, the parallel decode at times stayed on one core.
    """
    import tensorflow as tf

    if len(frame) == 0:
        raise ValueError("pipeline: the frame has no images")
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    cache = "none" if cache is None else cache
    if cache not in CACHE_MODES:
        raise ValueError(f"unknown cache {cache!r}: choose one of {', '.join(CACHE_MODES)}")
    from shared import augment as augment_module

    aug = (augment_module.build(augment, len(class_names), seed)
           if augment_module.parse(augment or "none") else None)
    if cache == "auto":
        decoded = len(frame) * image_size * image_size * 3
        cache = "memory" if decoded <= AUTO_CACHE_LIMIT else "disk"
        if cache == "disk" and cache_dir is None:
            print(f"pipeline: {decoded / 2**30:.1f} GiB of decoded images exceed the memory "
                  "cache limit and no cache_dir was given: not caching")
            cache = "none"
    if cache == "disk" and cache_dir is None:
        raise ValueError('cache="disk" needs a cache_dir (e.g. the run directory)')

    root = Path(root)
    labels = _label_indices(frame, class_names)
    paths = np.array([os.path.join(root, p) for p in frame["path"]], dtype=object)
    order = (np.random.default_rng(seed).permutation(len(paths)) if shuffle
             else np.arange(len(paths)))
    paths, labels = paths[order], labels[order]

    plans = _plans(root, list(frame["path"].iloc[order]), image_size)

    element = image_size * image_size * 3     # a disk cache's buffer is real memory: cap it
    buffer_cap = SHUFFLE_BUFFER if cache != "disk" else max(1024, min(SHUFFLE_BUFFER,
                                                                      256 * 2**20 // element))

    def decoded(sel, tag, shuffle_seed=None, repeat=False):
        """Decoded (image, label) pairs of the files ``sel``: shuffled as file names where
        nothing is cached, else as decoded images after the cache."""
        used, index = np.unique(plans[sel], return_inverse=True)
        ds = tf.data.Dataset.from_tensor_slices(
            (paths[sel].astype(str), index.astype(np.int32), labels[sel]))
        if shuffle_seed is not None and cache == "none":
            ds = ds.shuffle(len(index), seed=shuffle_seed, reshuffle_each_iteration=True)

        @tf.autograph.experimental.do_not_convert     # plain TF code: skip autograph's cost
        def load(path, i, label):
            if len(used) == 1:    # one kind of file: a straight path, no per-image switch
                return _decode(path, image_size, _PLANS[used[0]]), label
            return tf.switch_case(i, [lambda u=u: _decode(path, image_size, _PLANS[u])
                                      for u in used]), label

        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
        if cache == "memory":
            ds = ds.cache()
        elif cache == "disk":
            ds = ds.cache(_disk_cache(Path(cache_dir), paths[sel], labels[sel], image_size, tag))
        if repeat:      # right after the cache, so that the cache is always read to its end
            ds = ds.repeat()
        if shuffle_seed is not None and cache != "none":
            ds = ds.shuffle(min(len(index), buffer_cap), seed=shuffle_seed,
                            reshuffle_each_iteration=True)
        return ds

    if oversample:
        ds, n = _oversampled(decoded, labels, len(class_names), shuffle, seed)
        before = np.bincount(labels, minlength=len(class_names))
        print(f"oversampling: {int((before > 0).sum())} classes raised to {before.max()} "
              f"images each per epoch (were {before[before > 0].min()}–{before.max()}; "
              f"{len(labels)} → {n} images per epoch)")
    else:
        ds, n = decoded(slice(None), "all", seed if shuffle else None), len(paths)
    ds = ds.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.apply(tf.data.experimental.assert_cardinality(math.ceil(n / batch_size)))
    num_classes = len(class_names)
    to_float = tf.autograph.experimental.do_not_convert(
        lambda x, y: (tf.cast(x, tf.float32), tf.one_hot(y, num_classes)))
    ds = ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
    if aug is not None:     # sequential: see augment.build
        ds = ds.map(aug, num_parallel_calls=None)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    # tf.data's autotuner at times left the parallel decode on one core on a 2-core machine
    # (benchmarks/pipeline.py --autotune: 1.4 s instead of 0.8 s for the same 1,000 JPEGs in
    # 4 of 7 first epochs); without it, AUTOTUNE means "every core", in every epoch measured.
    options = tf.data.Options()
    options.autotune.enabled = autotune
    ds = ds.with_options(options)
    ds.augment = aug.policy if aug is not None else "none"   # read by train.fit_transfer
    return ds


def _oversampled(decoded, labels, num_classes, shuffle, seed):
    """Every present class raised to the size of the largest, exactly, each epoch."""
    import tensorflow as tf

    counts = np.bincount(labels, minlength=num_classes)
    present = np.flatnonzero(counts)
    streams = [decoded(labels == c, f"class{c}", seed + 1 + int(c) if shuffle else None,
                       repeat=True) for c in present]
    choice = np.tile(np.arange(len(present), dtype=np.int64), int(counts.max()))
    chooser = tf.data.Dataset.from_tensor_slices(choice)
    if shuffle:
        chooser = chooser.shuffle(len(choice), seed=seed, reshuffle_each_iteration=True)
    return tf.data.Dataset.choose_from_datasets(streams, chooser), len(choice)


def _disk_cache(cache_dir: Path, paths, labels, image_size, tag) -> str:
    """A cache file name unique to these files and size; a stale partial cache is removed."""
    digest = hashlib.sha1()
    digest.update(f"{image_size}|{CHECK_VERSION}|".encode())
    for p, y in zip(paths, labels, strict=True):
        digest.update(f"{p}\0{y}\n".encode())
    cache_dir.mkdir(parents=True, exist_ok=True)
    prefix = cache_dir / f"tfdata-{image_size}px-{tag}-{digest.hexdigest()[:16]}"
    if not Path(f"{prefix}.index").exists():
        for stale in cache_dir.glob(prefix.name + "*"):
            stale.unlink()
    return str(prefix)


# How each file is decoded and resized is planned in Python from its first bytes, so that the
# tf.data graph holds no per-image format tests (a few hundred microseconds per small image):
# a dataset of one kind of file gets one straight decode → resize path, a mixed one a switch.
JPEG_SCALES = (1, 2, 4, 8)
DECODERS = ("jpeg/1", "jpeg/2", "jpeg/4", "jpeg/8", "jpeg/auto", "tf", "pillow")
RESIZES = ("bilinear", "area", "auto")
_HEAD_BYTES = 4096


def plan_of(head: bytes, image_size: int) -> tuple[str, str]:
    """(decoder, resize) for a file whose first bytes are ``head``.

    decoder: "jpeg/<n>" (``decode_jpeg`` at DCT scale 1/n, the largest that keeps both sides
    ≥ ``image_size``; "jpeg/auto" when the size is not in ``head``), "tf" (``decode_image``:
    PNG, GIF, WebP, 24/32-bit BMP) or "pillow" (anything else: palette or 1-bit BMP, TIFF, ...,
    and non-JPEG images over :data:`HUGE_PIXELS`, which Pillow reduces first).
    resize: "area" where both decoded sides are ≥ 2x ``image_size`` (antialiased), "bilinear"
    otherwise (several times cheaper in tf.data), "auto" when the size is unknown.
    """
    return _plan(*_sniff(head), image_size)


@functools.lru_cache(maxsize=4096)
def _plan(kind: str, size: tuple[int, int] | None, image_size: int) -> tuple[str, str]:
    if kind == "jpeg":
        if size is None:
            return "jpeg/auto", "auto"
        scale = max(n for n in JPEG_SCALES if n == 1 or min(size) // n >= image_size)
        return f"jpeg/{scale}", _resize_for([-(-side // scale) for side in size], image_size)
    if kind == "tf" and size is not None and size[0] * size[1] > HUGE_PIXELS:
        kind = "pillow"
    if kind == "pillow" or size is None:
        return kind, "auto"
    return kind, _resize_for(size, image_size)


def _resize_for(size, image_size: int) -> str:
    return "area" if min(size) >= 2 * image_size else "bilinear"


def _sniff(head: bytes):
    """("jpeg" | "tf" | "pillow", (width, height) or None) from a file's first bytes."""
    head = head.ljust(40, b"\0")
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg", _jpeg_size(head)
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "tf", struct.unpack(">II", head[16:24])
    if head[:3] == b"GIF":
        return "tf", struct.unpack("<HH", head[6:10])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "tf", None
    if head[:2] == b"BM":
        width, height, _, bits, compression = struct.unpack("<iiHHI", head[18:34])
        if bits in (24, 32) and compression in (0, 3):
            return "tf", (width, abs(height))
    return "pillow", None


def _jpeg_size(head: bytes):
    """(width, height) from the first SOF marker within ``head``, or None."""
    i = 2
    while i + 9 <= len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:
            i += 1
        elif marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            i += 2
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", head[i + 5:i + 9])
            return (width, height) if width and height else None
        else:
            i += 2 + struct.unpack(">H", head[i + 2:i + 4])[0]
    return None


def _plans(root: Path, rel_paths: list[str], image_size: int) -> np.ndarray:
    """The plan of every file, as indices into :data:`_PLANS`: from the check cache where it
    is current (size and mtime unchanged), else from the file's first bytes."""
    known = _read_manifest(_manifest_path(root)).drop_duplicates("path", keep="last")
    rows = pd.DataFrame({"path": rel_paths}).merge(known, on="path", how="left")
    stats = [_stat(os.path.join(root, rel)) for rel in rel_paths]
    current = ((rows["size"].to_numpy() == [st[0] for st in stats])
               & (rows["mtime_ns"].to_numpy() == [st[1] for st in stats])
               & (rows["decoder"].fillna("").to_numpy() != ""))
    out = np.empty(len(rel_paths), np.int32)
    if current.any():
        hit = rows[current]
        out[current] = [_PLAN_INDEX[_plan(kind, (int(w), int(h)), image_size)]
                        for kind, w, h in zip(hit["decoder"], hit["width"], hit["height"],
                                              strict=True)]

    def from_head(rel):
        try:
            with open(os.path.join(root, rel), "rb") as f:
                return _PLAN_INDEX[plan_of(f.read(_HEAD_BYTES), image_size)]
        except OSError:      # read_file in the pipeline raises, naming the file
            return _PLAN_INDEX[("pillow", "auto")]
    todo = np.flatnonzero(~current)
    if len(todo):
        with cf.ThreadPoolExecutor(_WORKERS) as pool:
            out[todo] = list(pool.map(from_head, [rel_paths[i] for i in todo], chunksize=256))
    return out


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


_PLANS = [(d, r) for d in DECODERS for r in RESIZES]
_PLAN_INDEX = {plan: i for i, plan in enumerate(_PLANS)}


def read_image(path: str | os.PathLike, image_size: int) -> np.ndarray:
    """One image file as the pipeline sees it: uint8 (S, S, 3) (e.g. for figures)."""
    with open(path, "rb") as f:
        plan = plan_of(f.read(_HEAD_BYTES), image_size)
    return _decode(str(path), image_size, plan).numpy()


def load_image(path, image_size: int):
    """Read, decode and resize one image file (a string tensor, e.g. inside ``Dataset.map``) to
    uint8 (S, S, 3) as the pipeline does. The decoder is chosen per file from its first bytes
    (through ``tf.py_function``): fine for a few files; :func:`pipeline` plans ahead instead."""
    import tensorflow as tf

    data = tf.io.read_file(path)
    kinds = ("jpeg/auto", "tf", "pillow")

    def kind_of(raw):
        decoder = plan_of(raw.numpy()[:_HEAD_BYTES], image_size)[0]
        return kinds.index("jpeg/auto" if decoder.startswith("jpeg") else decoder)

    kind = tf.py_function(kind_of, [data], tf.int32)
    kind.set_shape([])
    return tf.switch_case(kind, [lambda k=k: _decode_bytes(data, image_size, (k, "auto"))
                                 for k in kinds])


def _decode(path, image_size: int, plan: tuple[str, str]):
    """Read, decode and resize one file (a string tensor) by ``plan``: uint8 (S, S, 3)."""
    import tensorflow as tf

    return _decode_bytes(tf.io.read_file(path), image_size, plan)


def _decode_bytes(data, image_size: int, plan: tuple[str, str]):
    import tensorflow as tf

    decoder, resize = plan
    if decoder == "tf":
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    elif decoder == "pillow":
        image = _decode_pillow(data, image_size)
    elif decoder == "jpeg/auto":
        image = _decode_jpeg(data, image_size)
    else:
        image = tf.io.decode_jpeg(data, channels=3, ratio=int(decoder.split("/")[1]),
                                  dct_method="INTEGER_FAST")
    image.set_shape([None, None, 3])
    size = [image_size, image_size]
    if resize == "auto":
        shape = tf.shape(image)
        far = tf.logical_and(shape[0] >= 2 * image_size, shape[1] >= 2 * image_size)
        image = tf.cond(far, lambda: tf.image.resize(image, size, method="area"),
                        lambda: tf.image.resize(image, size, method="bilinear"))
    else:
        image = tf.image.resize(image, size, method=resize)
    return tf.saturate_cast(tf.round(image), tf.uint8)


def _decode_jpeg(data, image_size: int):
    """decode_jpeg at the largest DCT scale that keeps both sides ≥ image_size."""
    import tensorflow as tf

    shape = tf.image.extract_jpeg_shape(data)
    short = tf.minimum(shape[0], shape[1])
    scale = tf.reduce_sum(tf.cast(short >= image_size * tf.constant([2, 4, 8]), tf.int32))
    return tf.switch_case(scale, [
        lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r, dct_method="INTEGER_FAST")
        for r in JPEG_SCALES])


def _decode_pillow(data, image_size: int):
    import tensorflow as tf

    def decode(raw):
        with Image.open(io.BytesIO(raw.numpy())) as im:
            im.draft("RGB", (image_size, image_size))
            factor = max(1, min(im.size) // (2 * image_size))
            im.load()
            if factor > 1 and im.mode not in ("I;16", "I;16B", "I;16L", "I;16N"):
                im = im.reduce(factor)
            return to_rgb(im)

    return tf.py_function(decode, [data], tf.uint8)


# --------------------------------------------------------------------------------------------
# Fashion-MNIST as a folder of PNGs
# --------------------------------------------------------------------------------------------

def ensure_available(spec: str | os.PathLike) -> Path:
    """Make the dataset ``spec`` ready before a run starts and return its folder: Fashion-MNIST
    is written from its first source found (:func:`fashion_mnist_folder`), a folder or labels
    file must exist. Raises FileNotFoundError saying what to do."""
    if str(spec) == FASHION_MNIST:
        return fashion_mnist_folder(verbose=True)
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset {str(spec)!r} not found: no such file or folder "
                                f"(named datasets: {FASHION_MNIST})")
    return path


_DEFAULT = object()


def fashion_mnist_folder(data_dir: str | os.PathLike | None = None, *,
                         system_dir: str | os.PathLike | None = _DEFAULT,
                         download: bool = True, verbose: bool = False) -> Path:
    """Fashion-MNIST as ``<data_dir>/fashion-mnist/{train,test}/<class>/<index>.png``.

    Written once (a marker file records completion; a half-written folder is redone) from the
    first source found: the Debian package ``dataset-fashion-mnist`` (``system_dir``), the four
    ``*-ubyte.gz`` files placed in ``<data_dir>/fashion-mnist/``, or Keras' download. Returns
    the folder. ``data_dir`` defaults to ``config.DATA_DIR``, ``system_dir`` to
    :data:`SYSTEM_FASHION_DIR` (None: skip that source), both read when called.
    """
    root = Path(config.DATA_DIR if data_dir is None else data_dir) / FASHION_MNIST
    system_dir = SYSTEM_FASHION_DIR if system_dir is _DEFAULT else system_dir
    marker = root / _MARKER
    if marker.is_file():
        if verbose:
            print(f"fashion-mnist: already in {root} (delete {marker.name} to write it again)")
        return root
    arrays, source = _fashion_arrays(root, system_dir, download)
    start = time.perf_counter()
    for part in ("train", "test"):
        shutil.rmtree(root / part, ignore_errors=True)
    jobs = []
    for part, (images, labels) in arrays.items():
        for c in FASHION_CLASSES:
            (root / part / c).mkdir(parents=True, exist_ok=True)
        names = np.array(FASHION_CLASSES)[labels]
        jobs += [(root / part / names[i] / f"{i:05d}.png", images[i]) for i in range(len(labels))]

    def write(chunk):
        for path, pixels in chunk:
            Image.fromarray(pixels, "L").save(path, format="PNG", compress_level=1)
    with cf.ThreadPoolExecutor(_WORKERS) as pool:
        list(pool.map(write, [jobs[i:i + 500] for i in range(0, len(jobs), 500)]))
    counts = {part: int(len(labels)) for part, (_, labels) in arrays.items()}
    files.write_json(marker, {"source": source, "counts": counts,
                              "classes": list(FASHION_CLASSES)})
    if verbose:
        print(f"fashion-mnist: wrote {len(jobs):,} PNG files to {root} from {source} "
              f"in {time.perf_counter() - start:.1f} s")
    return root


def _fashion_arrays(root: Path, system_dir, download: bool):
    """{"train": (images, labels), "test": (...)} and a description of the source."""
    for folder in [Path(system_dir)] if system_dir else []:
        if all((folder / f).is_file() for pair in FASHION_FILES.values() for f in pair):
            return _read_fashion_gz(folder), str(folder)
    if all((root / f).is_file() for pair in FASHION_FILES.values() for f in pair):
        return _read_fashion_gz(root), str(root)
    errors = ""
    if download:
        try:
            import keras
            (xtr, ytr), (xte, yte) = keras.datasets.fashion_mnist.load_data()
            return {"train": (xtr, ytr), "test": (xte, yte)}, "keras.datasets.fashion_mnist"
        except Exception as err:   # noqa: BLE001 - any download failure ends in the same advice
            errors = f" (Keras' download failed: {_short(err)})"
    names = ", ".join(f for pair in FASHION_FILES.values() for f in pair)
    raise FileNotFoundError(
        f"Fashion-MNIST is not on this machine{errors}. Either install the Debian package "
        f"(sudo apt-get install dataset-fashion-mnist, which puts the files in "
        f"{SYSTEM_FASHION_DIR}), "
        f"or copy the four files {names} into {root}/, or run where Keras can download it.")


def _read_fashion_gz(folder: Path) -> dict:
    out = {}
    for part, (images_name, labels_name) in FASHION_FILES.items():
        images = read_idx(folder / images_name)
        labels = read_idx(folder / labels_name)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{folder / images_name} and {labels_name} do not match: "
                             f"{images.shape} images, {labels.shape} labels")
        if labels.max(initial=0) >= len(FASHION_CLASSES):
            raise ValueError(f"{folder / labels_name} has labels above 9")
        out[part] = (images, labels)
    return out


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (gzip-compressed or not) as a uint8 array, as in the MNIST distributions."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != math.prod(dims):
        raise ValueError(f"{path} is truncated: expected {math.prod(dims)} values of shape "
                         f"{tuple(dims)}, found {len(data) - offset}")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(dims)


# --------------------------------------------------------------------------------------------
# command line: python -m shared.data fashion-mnist | <folder>
# --------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.data",
                                     description="Prepare and check a dataset.")
    parser.add_argument("dataset", nargs="?", default=FASHION_MNIST,
                        help="fashion-mnist (default), or a dataset folder / labels file")
    parser.add_argument("--labels", default=None, help="labels file (CSV or JSON)")
    args = parser.parse_args(argv)
    try:
        if args.dataset == FASHION_MNIST:
            fashion_mnist_folder(verbose=True)
        start = time.perf_counter()
        ds = load(args.dataset, args.labels)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    given = ds.files["given_split"].replace("", "all").value_counts()
    print(f"{ds.spec}: {len(ds.files):,} usable images in {ds.root} ({ds.form}), "
          f"{len(ds.class_names)} classes, checked in {seconds:.1f} s")
    print("  " + ", ".join(f"{k}: {v:,}" for k, v in given.items()))
    print(f"  classes: {', '.join(ds.class_names)}")
    print(f"  skipped: {len(ds.skipped)}" + "".join(
        f"\n    {p}: {r}" for p, r in ds.skipped.head(20).itertuples(index=False)))
    if len(ds.leakage):
        print(f"  leakage: {len(ds.leakage)} train file(s) have identical copies in test")
    return 0


if __name__ == "__main__":
    sys.exit(main())
