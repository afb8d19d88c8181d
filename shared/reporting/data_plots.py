"""The figures of the data (notebook 00): images per class and split, sample images, image
sizes and an augmentation preview.

Like every figure of :mod:`shared.reporting.plots`, each function builds one figure, saves it as
``<out_dir>/figures/<name>.png`` (written whole) when ``out_dir`` is given, and returns it.
Images given as arrays are float RGB in [0, 255], the pipeline's convention.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns

from shared.reporting.plots import displayable, new_figure, save, thumbnail


def class_counts(counts, out_dir=None, name: str = "class_counts"):
    """Images per class and split. ``counts`` is a split frame (columns label and split), a
    long frame (label, split, count), a wide frame (classes x splits) or a nested dict."""
    frame = _long_counts(counts)
    classes = frame["label"].nunique()
    splits = list(frame["split"].unique())
    order = [s for s in ("train", "val", "test") if s in splits] + \
        [s for s in splits if s not in ("train", "val", "test")]
    fig = new_figure(max(6.0, 0.5 * classes + 2), 3.8)
    ax = fig.subplots()
    sns.barplot(frame, x="label", y="count", hue="split", hue_order=order, ax=ax)
    ax.set(xlabel="", ylabel="images", title="images per class and split")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.tick_params(axis="x", labelrotation=45 if classes > 6 else 0)
    save(fig, out_dir, name)
    return fig


_SPLITS = {"train", "val", "test", "validation", ""}


def _long_counts(counts) -> pd.DataFrame:
    if isinstance(counts, Mapping):
        counts = pd.DataFrame(counts)
    frame = counts.copy()
    if {"label", "split"} <= set(frame.columns):
        if "count" not in frame.columns:
            frame = frame.groupby(["label", "split"]).size().rename("count").reset_index()
        return frame[["label", "split", "count"]]
    if set(map(str, frame.index)) <= _SPLITS and not set(map(str, frame.columns)) <= _SPLITS:
        frame = frame.T
    frame = frame.rename_axis("label").reset_index()
    return frame.melt(id_vars="label", var_name="split", value_name="count").fillna(0)


def sample_grid(frame: pd.DataFrame, root: str | Path, class_names: Sequence[str],
                out_dir=None, per_class: int = 4, seed: int = 0, name: str = "sample_grid"):
    """A few images of each class (one row per class), drawn with ``seed``."""
    class_names = list(class_names)
    fig = new_figure(1.5 * per_class + 1, 1.5 * len(class_names))
    axes = np.asarray(fig.subplots(len(class_names), per_class)).reshape(len(class_names),
                                                                         per_class)
    for row, class_name in enumerate(class_names):
        rows = frame[frame["label"].astype(str) == class_name]
        rows = rows.sample(n=min(per_class, len(rows)), random_state=seed)
        for col in range(per_class):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col < len(rows):
                ax.imshow(thumbnail(Path(root) / rows["path"].iloc[col]))
        axes[row, 0].set_ylabel(class_name, rotation=0, ha="right", va="center", fontsize=8)
    save(fig, out_dir, name)
    return fig


def image_sizes(sizes, out_dir=None, name: str = "image_sizes"):
    """Distribution of the original image sizes: width against height, and the longer side.
    ``sizes`` is a frame with columns width and height, or (width, height) pairs."""
    frame = sizes if isinstance(sizes, pd.DataFrame) else pd.DataFrame(
        list(sizes), columns=["width", "height"])
    if frame.empty:
        raise ValueError("image_sizes: no sizes given")
    grouped = frame.groupby(["width", "height"]).size().rename("images").reset_index()
    fig = new_figure(10, 3.8)
    left, right = fig.subplots(1, 2)
    sns.scatterplot(grouped, x="width", y="height", size="images", ax=left, legend=False,
                    alpha=0.6)
    left.set(title=f"{len(frame)} images, {len(grouped)} distinct sizes")
    sns.histplot(frame[["width", "height"]].max(axis=1), ax=right, bins=30)
    right.set(xlabel="longer side (pixels)", ylabel="images", title="longer side")
    right.yaxis.get_major_locator().set_params(integer=True)
    save(fig, out_dir, name)
    return fig


def augmentation_preview(images_by_policy: Mapping[str, np.ndarray], out_dir=None,
                         name: str = "augmentation_preview"):
    """The same images under each augmentation policy, one row per policy."""
    if not images_by_policy:
        raise ValueError("augmentation_preview: no policies given")
    count = max(len(v) for v in images_by_policy.values())
    fig = new_figure(1.5 * count + 1, 1.6 * len(images_by_policy))
    axes = np.asarray(fig.subplots(len(images_by_policy), count)).reshape(
        len(images_by_policy), count)
    for row, (policy, images) in enumerate(images_by_policy.items()):
        images = np.asarray(images)
        for col in range(count):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(images):
                ax.imshow(displayable(images[col]))
        axes[row, 0].set_ylabel(policy, rotation=0, ha="right", va="center", fontsize=8)
    save(fig, out_dir, name)
    return fig
