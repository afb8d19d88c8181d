"""What notebook 00 shows of a run's split: a summary, class counts and balance tables, sample
images as the pipeline gives them, and the sizes of the image files."""

from __future__ import annotations

import concurrent.futures as cf
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from shared.data.check import manifest_path, read_manifest
from shared.data.images import WORKERS
from shared.data.messages import some
from shared.data.pipelines import pipeline
from shared.data.sources import SPLITS
from shared.data.splits import Split, class_counts, class_weights, oversampled_counts


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
             f"classes    {len(split.class_names)}: {some(split.class_names, 12)}",
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
        spread = f"{counts.min():,}" if counts.min() == counts.max() else \
            f"{counts.min():,} to {counts.max():,}"
        return f"The classes are balanced: {spread} training images each."
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
    cached = read_manifest(manifest_path(root)).set_index("path")
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
        with cf.ThreadPoolExecutor(WORKERS) as pool:
            sizes = list(pool.map(header, unknown))
        out.loc[~known, "width"] = [w for w, _ in sizes]
        out.loc[~known, "height"] = [h for _, h in sizes]
    return out
