"""The figures of the data quality audit (notebook 10): the closest near-duplicate pairs side by
side, the most suspect labels as a gallery, and the share of suspects per class.

Like every figure of :mod:`shared.reporting.plots`, each function builds one figure, saves it as
``<out_dir>/figures/<name>.png`` when ``out_dir`` is given, and returns it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns

from shared.reporting.plots import message_figure, new_figure, save, thumbnail


def closest_pairs(pairs: pd.DataFrame, root: str | Path, out_dir=None, n: int = 8,
                  name: str = "near_duplicates"):
    """The ``n`` closest near-duplicate pairs (leakage first), each as two images side by side
    titled with part, label and the distance in bits."""
    if pairs.empty:
        return message_figure("no near-duplicate pairs", out_dir, name)
    shown = (pairs.assign(first=pairs["kind"] != "leakage")
             .sort_values(["first", "distance"], kind="stable").head(n))
    cols = 2 * min(len(shown), 4)
    rows = math.ceil(len(shown) / 4)
    fig = new_figure(1.7 * cols, 2.1 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for i, (_, pair) in enumerate(shown.iterrows()):
        for side, ax in zip("ab", axes[2 * i:2 * i + 2], strict=True):
            ax.imshow(thumbnail(Path(root) / pair[f"path_{side}"]))
            title = f"{pair[f'split_{side}']}: {pair[f'label_{side}']}"
            if side == "a":
                title = f"{pair['kind']}, {pair['distance']} bits\n{title}"
            ax.set_title(title, fontsize=7)
    for ax in axes:
        ax.axis("off")
    fig.suptitle("closest near-duplicate pairs (pHash distance)")
    save(fig, out_dir, name)
    return fig


def suspects(issues: pd.DataFrame, root: str | Path, out_dir=None, n: int = 24,
             name: str = "label_issues"):
    """The ``n`` most suspect images: given label, the label the models suggest, and the
    out-of-fold probability of each."""
    shown = issues.head(n)
    if shown.empty:
        return message_figure("no suspected label errors", out_dir, name)
    cols = min(len(shown), 6)
    rows = math.ceil(len(shown) / cols)
    fig = new_figure(1.8 * cols, 2.2 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, (_, row) in zip(axes, shown.iterrows(), strict=False):
        ax.imshow(thumbnail(Path(root) / row["path"]))
        ax.set_title(f"given {row['given']} ({row['given_probability']:.2f})\n"
                     f"suggested {row['suggested']} ({row['suggested_probability']:.2f})",
                     fontsize=7)
    for ax in axes:
        ax.axis("off")
    fig.suptitle("most suspect labels (out-of-fold probabilities)")
    save(fig, out_dir, name)
    return fig


def suspects_per_class(table: pd.DataFrame, out_dir=None, name: str = "label_issues_per_class"):
    """Share of each class's scored images that are suspects (``issues_per_class``'s table)."""
    frame = table.reset_index()
    fig = new_figure(max(5.0, 0.5 * len(frame) + 2), 3.4)
    ax = fig.subplots()
    sns.barplot(frame, x="class", y="share", color="tab:red", ax=ax)
    ax.set(xlabel="given label", ylabel="share suspected", title="suspected label errors")
    ax.tick_params(axis="x", labelrotation=45 if len(frame) > 6 else 0)
    save(fig, out_dir, name)
    return fig
