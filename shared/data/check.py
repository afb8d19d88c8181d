"""The check of every file of a dataset (:func:`check_files`): each one opened and decoded once
(:func:`~shared.data.images.check_image`), the results cached per file, keyed by size and
modification time, in a small CSV under :data:`CHECK_CACHE_DIR` (never inside the dataset
folder), so loading a dataset again is quick. The decode plans and image sizes read it too."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import os
import warnings
from pathlib import Path

import pandas as pd

from shared import config, files
from shared.data.images import WORKERS, check_image

CHECK_CACHE_DIR = config.DATA_DIR / ".cache" / "checked"
CHECK_VERSION = 3              # bump when the check changes, to invalidate cached results
_CHECK_COLUMNS = ["path", "size", "mtime_ns", "ok", "reason", "width", "height", "mode",
                  "format", "decoder", "digest"]


def check_files(root: Path, cands: pd.DataFrame) -> pd.DataFrame:
    """Check every file of ``cands`` (path, size, mtime_ns), reusing cached results whose size
    and mtime still match. Returns path, ok, reason, width, height, mode, format, digest."""
    manifest = manifest_path(root)
    cached = read_manifest(manifest)
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
    workers = WORKERS if mean_size > 64 * 1024 else 1
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


def manifest_path(root: Path) -> Path:
    """The check cache's manifest file of the dataset folder ``root``."""
    key = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:12]
    return Path(CHECK_CACHE_DIR) / f"{config.slug(str(root))}-{key}-v{CHECK_VERSION}.csv"


def read_manifest(path: Path) -> pd.DataFrame:
    """The rows of a check manifest (an empty frame if it is missing or unreadable)."""
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
