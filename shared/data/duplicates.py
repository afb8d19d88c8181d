"""Near-duplicate images: a perceptual hash of every image (``imagehash``'s pHash, 64 bits) and
the pairs whose hashes differ in at most ``threshold`` bits. The same photo resized, re-encoded
or slightly brightened keeps its pHash within a few bits; byte-identical copies are only the
extreme case that :func:`shared.data.sources.find_leakage` already catches.

pHash alone pairs too much where images are small and alike (Fashion-MNIST: 68,191 pairs
within 6 bits among 20,000 images, mostly different shoes and shirts of one cut), so a pair must
also look alike: the correlation of the two images' 32x32 grey thumbnails at least
``min_similarity``. That keeps 475 of those pairs, and every one of 300 resized, re-encoded
copies (their lowest correlation: 0.993 at 28 px, 0.996 on the leaf photos); measured with
``python benchmarks/near_duplicates.py [--data <folder>]``. The thumbnail (1 KiB) is made with
the hash.

The pair search compares no hash with every other: each hash is cut into ``threshold + 1``
bands, and two hashes within ``threshold`` bits agree on at least one band (pigeonhole), so
only the hashes that share a band value are compared. Hashing is streamed over a pool of
processes, one small image in memory per worker at a time."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image

HASH_BITS = 64
DEFAULT_THRESHOLD = 6       # bits of 64: resized and re-encoded copies stay within it
DEFAULT_SIMILARITY = 0.98   # thumbnail correlation a pair needs (copies: 0.993 and above)
THUMBNAIL = 32
PAIR_COLUMNS = ["path_a", "path_b", "distance"]


def phash(path: str | os.PathLike) -> int | None:
    """The 64-bit pHash of one image file, or None where it cannot be decoded."""
    found = fingerprint(path)
    return None if found is None else found[0]


def fingerprint(path: str | os.PathLike) -> tuple[int, bytes] | None:
    """The 64-bit pHash of one image file and its 32x32 grey thumbnail (bytes), or None where
    it cannot be decoded."""
    try:
        with Image.open(path) as image:
            image.draft("L", (64, 64))         # a JPEG is decoded small: pHash uses 32x32
            grey = image.convert("L")
            value = int(str(imagehash.phash(grey)), 16)
            small = grey.resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BILINEAR)
            return value, small.tobytes()
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def hashes(root: str | os.PathLike, paths: Sequence[str], workers: int | None = None,
           chunk: int = 256) -> pd.DataFrame:
    """``path, hash, thumbnail`` for ``paths`` (relative to ``root``), made by ``workers``
    processes (default: the cores); an undecodable file gets no row."""
    files = [str(Path(root) / p) for p in paths]
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(files) < 2 * chunk:
        values = [fingerprint(f) for f in files]
    else:
        with ProcessPoolExecutor(workers) as pool:
            values = list(pool.map(fingerprint, files, chunksize=chunk))
    rows = [(p, *v) for p, v in zip(paths, values, strict=True) if v is not None]
    return pd.DataFrame(rows, columns=["path", "hash", "thumbnail"])


def near_pairs(table: pd.DataFrame, threshold: int = DEFAULT_THRESHOLD,
               min_similarity: float | None = DEFAULT_SIMILARITY) -> pd.DataFrame:
    """Every pair of rows of ``table`` (``path, hash`` and, for ``min_similarity``,
    ``thumbnail``) whose hashes differ in at most ``threshold`` bits and whose thumbnails
    correlate at least ``min_similarity`` (None: hashes only): ``path_a, path_b, distance``
    (and ``similarity``), closest first."""
    if not 0 <= threshold < HASH_BITS // 2:
        raise ValueError(f"threshold must be between 0 and {HASH_BITS // 2 - 1} bits of "
                         f"{HASH_BITS}, not {threshold!r}")
    if min_similarity is not None and "thumbnail" not in table.columns:
        raise ValueError("near_pairs: min_similarity needs the table's thumbnail column "
                         "(made by hashes()); pass min_similarity=None to pair by hash alone")
    if min_similarity is not None and not -1 <= min_similarity <= 1:
        raise ValueError(f"min_similarity must be a correlation between -1 and 1, not "
                         f"{min_similarity!r}")
    paths = table["path"].tolist()
    values = np.array([int(v) for v in table["hash"]], dtype=np.uint64)
    found: dict[tuple[int, int], int] = {}
    for members in candidate_groups(values, threshold + 1):
        for a, b, distance in _close_within(values, members, threshold):
            found[(a, b)] = distance
    index = np.array(list(found), dtype=np.int64).reshape(-1, 2)
    pairs = pd.DataFrame({"path_a": [paths[a] for a in index[:, 0]],
                          "path_b": [paths[b] for b in index[:, 1]],
                          "distance": np.fromiter(found.values(), dtype=np.int64,
                                                  count=len(found))})
    if min_similarity is not None:
        pairs["similarity"] = similarity(table["thumbnail"].tolist(), index).round(4)
        pairs = pairs[pairs["similarity"] >= min_similarity]
    return pairs.sort_values(["distance", "path_a", "path_b"], ignore_index=True)


def similarity(thumbnails: Sequence[bytes], index: np.ndarray, block: int = 8192) -> np.ndarray:
    """The correlation of the thumbnails of each pair of row numbers in ``index`` (n x 2),
    ``block`` pairs at a time; two flat thumbnails (one grey each) count as 1."""
    out = np.empty(len(index))
    for start in range(0, len(index), block):
        pairs = index[start:start + block]
        (a, flat_a), (b, flat_b) = (_normalised([thumbnails[i] for i in pairs[:, k]])
                                    for k in (0, 1))
        out[start:start + block] = np.where(flat_a & flat_b, 1.0,
                                            np.einsum("ij,ij->i", a, b))
    return out


def _normalised(thumbnails: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Centred unit vectors of the thumbnails, and which of them are flat."""
    pixels = np.frombuffer(b"".join(thumbnails), dtype=np.uint8).reshape(len(thumbnails), -1)
    centred = pixels.astype(np.float32) - pixels.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(centred, axis=1)
    return centred / np.where(norm > 0, norm, 1)[:, None], norm == 0


def candidate_groups(values: np.ndarray, bands: int) -> Iterable[np.ndarray]:
    """Groups of row numbers whose hashes (uint64) share one band's value (groups of one left
    out): the only pairs :func:`near_pairs` compares."""
    values = np.asarray(values, dtype=np.uint64)
    edges = [round(HASH_BITS * k / bands) for k in range(bands + 1)]
    for low, high in zip(edges, edges[1:], strict=False):
        band = (values >> np.uint64(low)) & np.uint64((1 << (high - low)) - 1)
        order = np.argsort(band, kind="stable")
        starts = np.flatnonzero(np.diff(band[order], prepend=band[order][:1] + 1))
        for group in np.split(order, starts[1:]):
            if len(group) > 1:
                yield group


def _close_within(values: np.ndarray, members: np.ndarray, threshold: int,
                  block: int = 1024) -> Iterable[tuple[int, int, int]]:
    """The pairs of ``members`` (row numbers, ascending pairs) within ``threshold`` bits,
    compared a block of rows at a time (memory: ``block`` x the group's size)."""
    members = np.sort(members)
    hashes = values[members]
    for start in range(0, len(members), block):
        distance = np.bitwise_count(hashes[start:start + block, None] ^ hashes[None, :])
        rows, cols = np.nonzero(distance <= threshold)
        keep = cols > rows + start
        for r, c in zip(rows[keep], cols[keep], strict=True):
            yield int(members[r + start]), int(members[c]), int(distance[r, c])


def with_splits(pairs: pd.DataFrame, split: pd.DataFrame) -> pd.DataFrame:
    """``pairs`` with each image's split (``split``: the run's split.csv rows) and ``kind``:
    "leakage" where the two are in different parts (train and test), "duplicate" within one,
    "outside the split" where one of them is not in it (left out by subsampling)."""
    part = split.set_index("path")["split"]
    out = pairs.assign(split_a=pairs["path_a"].map(part), split_b=pairs["path_b"].map(part))
    out["kind"] = ["outside the split" if pd.isna(a) or pd.isna(b) else
                   "leakage" if a != b else "duplicate"
                   for a, b in zip(out["split_a"], out["split_b"], strict=True)]
    return out
