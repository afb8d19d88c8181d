"""The figures of training, evaluation, the model's insides, comparisons and calibration, and
the pieces every figure module shares (new_figure, save, message_figure, thumbnail, ...).

The figures of the data are in :mod:`shared.reporting.data_plots`, those of the studies in
:mod:`shared.reporting.study_plots`.

Each function builds one figure, saves it as ``<out_dir>/figures/<name>.png`` (written whole:
write then rename) when ``out_dir`` is given, and returns it. The figures are plain
:class:`matplotlib.figure.Figure` objects, not registered with pyplot: nothing is shown or kept
behind the caller's back, no display is needed (PNG rendering uses Agg), and a figure returned
as the last value of a notebook cell is shown inline (it has a ``_repr_png_``).

Images given as arrays are float RGB in [0, 255], the pipeline's convention.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from shared.data import to_rgb
from shared.evaluation import explain
from shared.evaluation.metrics import label_indices
from shared.files import write_with
from shared.results import PREFIX, results_table

DPI = 110
THUMBNAIL = 128


class _Figure(Figure):
    """A Figure that notebooks display inline as PNG without pyplot."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
        return buffer.getvalue()


def new_figure(width: float, height: float) -> Figure:
    """A ``width`` x ``height`` inch figure, constrained layout, shown inline in notebooks."""
    return _Figure(figsize=(width, height), layout="constrained")


def save(fig: Figure, out_dir: str | Path | None, name: str) -> Path | None:
    """Save ``fig`` as ``<out_dir>/figures/<name>.png`` atomically (nothing when out_dir is
    None) and return the path."""
    if out_dir is None:
        return None
    path = Path(out_dir) / "figures" / f"{name}.png"
    return write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI,
                                                    bbox_inches="tight"))


# --------------------------------------------------------------------------- training


def training_curves(history: pd.DataFrame, out_dir=None, name: str = "training_curves"):
    """Loss and accuracy per epoch, train and validation; with a ``phase`` column of more
    than one phase, each phase boundary is a labelled vertical line."""
    if history is None or len(history) == 0:
        raise ValueError("training_curves: the history is empty")
    history = history.reset_index(drop=True)
    epochs = np.arange(1, len(history) + 1)
    fig = new_figure(10, 3.6)
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for column, label in ((metric, "train"), (f"val_{metric}", "validation")):
            if column in history.columns:
                ax.plot(epochs, pd.to_numeric(history[column], errors="coerce"), marker="o",
                        markersize=3, label=label)
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        if "phase" in history.columns and history["phase"].nunique() > 1:
            phases = history["phase"].astype(str).to_numpy()
            for i in np.flatnonzero(phases[1:] != phases[:-1]) + 1:
                ax.axvline(i + 0.5, color="grey", linestyle="--", linewidth=1)
                ax.annotate(phases[i], (i + 0.5, 1), xycoords=("data", "axes fraction"),
                            xytext=(3, -12), textcoords="offset points", fontsize=8,
                            color="grey")
        if ax.has_data():
            ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    save(fig, out_dir, name)
    return fig


def lr_finder(finding, out_dir=None, name: str = "lr_finder"):
    """The LR range test of :func:`shared.training.recipes.find_learning_rate`: the loss of each
    batch and its smoothing against the learning rate (log scale), the suggestion marked."""
    fig = new_figure(6, 3.6)
    ax = fig.subplots()
    ax.plot(finding.learning_rates, finding.losses, color="lightgrey", linewidth=1,
            label="batch loss")
    ax.plot(finding.learning_rates, finding.smoothed, label="smoothed")
    ax.axvline(finding.suggestion, color="C3", linestyle="--", linewidth=1,
               label=f"suggestion {finding.suggestion:.2g}")
    top = float(np.nanmax(finding.smoothed[: max(1, len(finding.smoothed) // 5)]))
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss",
           title="learning-rate range test",
           ylim=(float(np.nanmin(finding.losses)) * 0.9, max(top, 1e-3) * 1.5))
    ax.legend(fontsize=8)
    save(fig, out_dir, name)
    return fig


# --------------------------------------------------------------------------- evaluation


def confusion_matrix(labels, predicted, class_names: Sequence[str], out_dir=None,
                     name: str = "confusion_matrix", title: str | None = None):
    """Confusion matrix as counts and normalised by row (recall per true class), side by side.
    ``labels`` and ``predicted`` are class names or indices."""
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    class_names = list(class_names)
    counts = sk_confusion_matrix(label_indices(labels, class_names),
                                 label_indices(predicted, class_names),
                                 labels=range(len(class_names)))
    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    side = max(4.0, 0.45 * len(class_names) + 2)
    fig = new_figure(2 * side + 1, side)
    axes = fig.subplots(1, 2)
    annotate = len(class_names) <= 20
    for ax, values, fmt, subtitle in ((axes[0], counts, "d", "counts"),
                                      (axes[1], normalised, ".2f", "normalised by true class")):
        sns.heatmap(values, ax=ax, annot=annotate, fmt=fmt, cmap="Blues", square=True,
                    xticklabels=class_names, yticklabels=class_names, cbar=False,
                    annot_kws={"fontsize": 7})
        ax.set(xlabel="predicted", ylabel="true", title=subtitle)
        ax.tick_params(axis="x", labelrotation=90)
        ax.tick_params(axis="y", labelrotation=0)
    if title:
        fig.suptitle(title)
    save(fig, out_dir, name)
    return fig


def confusion_matrix_of(predictions: pd.DataFrame, class_names: Sequence[str], out_dir=None,
                        part: str = "test", name: str = "confusion_matrix"):
    """:func:`confusion_matrix` of the ``part`` rows of a predictions.csv frame."""
    rows = predictions[predictions["split"] == part]
    return confusion_matrix(rows["label"], rows["predicted"], class_names, out_dir, name,
                            title=f"{part} split")


def per_class_scores(metrics: Mapping, out_dir=None, name: str = "per_class_scores"):
    """Precision, recall and F1 per class, from a metrics dict's ``per_class``."""
    per_class = metrics.get("per_class") or {}
    if not per_class:
        raise ValueError("per_class_scores: the metrics hold no per_class scores")
    frame = pd.DataFrame(per_class).T[["precision", "recall", "f1"]]
    frame = frame.rename_axis("class").reset_index().melt(id_vars="class", var_name="score")
    fig = new_figure(max(6.0, 0.6 * len(per_class) + 2), 3.8)
    ax = fig.subplots()
    sns.barplot(frame, x="class", y="value", hue="score", ax=ax)
    ax.set(ylim=(0, 1.05), xlabel="", ylabel="score",
           title=f"per-class scores ({metrics.get('evaluated_on', 'test')} split)")
    ax.tick_params(axis="x", labelrotation=45 if len(per_class) > 6 else 0)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save(fig, out_dir, name)
    return fig


def misclassified(predictions: pd.DataFrame, root: str | Path, class_names: Sequence[str],
                  out_dir=None, n: int = 16, split: str = "test", name: str = "misclassified"):
    """The ``n`` most confidently misclassified images of ``split`` in a predictions frame
    (predictions.csv), with true class, predicted class and its probability."""
    frame = predictions
    if "split" in frame.columns and split is not None:
        frame = frame[frame["split"] == split]
    wrong = frame[frame["label"].astype(str) != frame["predicted"].astype(str)]
    if not wrong.empty:
        confidence = [row[f"{PREFIX}{row['predicted']}"] for _, row in wrong.iterrows()]
        wrong = wrong.assign(confidence=confidence).sort_values("confidence", ascending=False)
    wrong = wrong.head(n)
    if wrong.empty:
        return message_figure(f"no misclassified images in the {split} split", out_dir, name)
    cols = min(len(wrong), max(4, math.ceil(math.sqrt(len(wrong)))))
    rows = math.ceil(len(wrong) / cols)
    fig = new_figure(1.8 * cols, 2.1 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, (_, row) in zip(axes, wrong.iterrows(), strict=False):
        ax.imshow(thumbnail(Path(root) / row["path"]))
        ax.set_title(f"true {row['label']}\npred {row['predicted']} ({row['confidence']:.2f})",
                     fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"most confidently misclassified ({split} split)")
    save(fig, out_dir, name)
    return fig


# --------------------------------------------------------------------------- inside the model


def grad_cam(model, images, class_names: Sequence[str], out_dir=None, layer: str | None = None,
             labels=None, name: str = "grad_cam"):
    """Grad-CAM heat maps over a few images: the images on top, the heat maps (for the
    predicted class) overlaid below, titled with the prediction (and the true class when
    ``labels`` is given)."""
    images = np.asarray(images, dtype=np.float32)
    heatmaps, probs, path = explain.grad_cam_heatmaps(model, images, layer)
    count = len(images)
    fig = new_figure(max(2.0 * count, 4.0), 4.4)
    axes = np.asarray(fig.subplots(2, count)).reshape(2, count)
    for i in range(count):
        shown = displayable(images[i])
        predicted = int(probs[i].argmax())
        title = f"pred {class_names[predicted]} ({probs[i, predicted]:.2f})"
        if labels is not None:
            title = f"true {_name(labels[i], class_names)}\n{title}"
        axes[0, i].imshow(shown)
        axes[0, i].set_title(title, fontsize=8)
        axes[1, i].imshow(shown)
        axes[1, i].imshow(heatmaps[i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        for ax in axes[:, i]:
            ax.axis("off")
    fig.suptitle(f"Grad-CAM at {path}", fontsize=10)
    save(fig, out_dir, name)
    return fig


def feature_maps(model, image, out_dir=None, layers: Sequence[str] | None = None,
                 channels: int = 8, name: str = "feature_maps"):
    """Activations of one image at an early and a late convolutional layer (or at ``layers``):
    per layer, the ``channels`` most active channels."""
    image = np.asarray(image, dtype=np.float32)
    batch = image[None] if image.ndim == 3 else image[:1]
    chosen, activations = explain.feature_maps(model, batch[0], layers)
    fig = new_figure(1.5 * (channels + 1), 1.7 * len(chosen))
    axes = np.asarray(fig.subplots(len(chosen), channels + 1)).reshape(len(chosen), channels + 1)
    for row, ((path, _), act) in enumerate(zip(chosen, activations, strict=True)):
        axes[row, 0].imshow(displayable(batch[0]))
        axes[row, 0].set_title(f"{path}\n{act.shape[0]}x{act.shape[1]}x{act.shape[2]}",
                               fontsize=7)
        strongest = np.argsort(act.mean(axis=(0, 1)))[::-1][:channels]
        for col, channel in enumerate(strongest, start=1):
            axes[row, col].imshow(act[..., channel], cmap="viridis")
            axes[row, col].set_title(f"channel {channel}", fontsize=7)
        for ax in axes[row]:
            ax.axis("off")
    save(fig, out_dir, name)
    return fig


# --------------------------------------------------------------------------- comparisons


def leaderboard(results, out_dir=None, name: str = "leaderboard"):
    """Test accuracy and macro-F1 per experiment, best first. ``results`` is
    :func:`shared.results.read_results`'s list or a frame with experiment, accuracy,
    macro_f1."""
    table = results if isinstance(results, pd.DataFrame) else results_table(list(results))
    if "experiment" not in table and "name" in table:     # the ensemble's comparison table
        table = table.rename(columns={"name": "experiment"})
    if table.empty:
        raise ValueError("leaderboard: no results to compare")
    table = table.sort_values("accuracy", ascending=False)
    frame = table.melt(id_vars="experiment", value_vars=["accuracy", "macro_f1"],
                       var_name="score").replace({"score": {"macro_f1": "macro-F1"}})
    fig = new_figure(8, 0.6 * len(table) + 1.5)
    ax = fig.subplots()
    sns.barplot(frame, y="experiment", x="value", hue="score", ax=ax, orient="h")
    for container in ax.containers:
        ax.bar_label(container, fmt="%.3f", fontsize=7, padding=2)
    low = float(np.nanmin(frame["value"].astype(float)))
    ax.set(xlim=(max(0.0, low - 0.1), 1.04), xlabel="test score", ylabel="",
           title="experiments on the test split")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save(fig, out_dir, name)
    return fig


def disagreement(matrix: pd.DataFrame, out_dir=None, name: str = "disagreement"):
    """Pairwise disagreement of ensemble members: the share of images two members predict
    differently."""
    fig = new_figure(0.8 * len(matrix) + 3, 0.7 * len(matrix) + 2)
    ax = fig.subplots()
    sns.heatmap(matrix.astype(float), ax=ax, annot=True, fmt=".2f", cmap="Reds", vmin=0,
                square=True, cbar=False)
    ax.set(title="share of test images two members disagree on")
    save(fig, out_dir, name)
    return fig


# --------------------------------------------------------------------------- helpers


def message_figure(text: str, out_dir, name: str):
    """A figure holding only ``text`` (e.g. nothing to draw yet), saved as ``name``."""
    fig = new_figure(5, 1.2)
    ax = fig.subplots()
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.axis("off")
    save(fig, out_dir, name)
    return fig


def displayable(image) -> np.ndarray:
    """An image in [0, 255] as RGB floats in [0, 1] for imshow."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.clip(image / 255.0, 0.0, 1.0)


def thumbnail(path: Path, size: int = THUMBNAIL) -> np.ndarray:
    """An image file as a small RGB array; a grey square when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))
            small = Image.fromarray(to_rgb(img))
        small.thumbnail((size, size))
        return np.asarray(small)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError,
            Image.DecompressionBombError):
        return np.full((size, size, 3), 200, dtype=np.uint8)


def _name(label, class_names: Sequence[str]) -> str:
    if isinstance(label, int | np.integer):
        return class_names[int(label)]
    array = np.asarray(label)
    if array.ndim == 1 and array.size == len(class_names):  # one-hot
        return class_names[int(array.argmax())]
    return str(label)


# --------------------------------------------------------------------------- calibration


def reliability_diagram(predictions: pd.DataFrame, class_names: Sequence[str], out_dir=None,
                        calibration=None, part: str = "test", bins: int | None = None,
                        name: str = "reliability"):
    """Reliability diagram of the ``part`` rows of a predictions.csv frame: per confidence bin,
    the accuracy (bars, with the number of images on each) against the mean confidence (dots)
    and the diagonal of a calibrated model; ECE in the title. ``calibration`` is the
    temperature, metrics.json's ``calibration`` or the whole metrics dict; with a temperature a
    second panel shows the same images after temperature scaling."""
    from shared.evaluation import calibrate

    if isinstance(calibration, Mapping) and "calibration" in calibration:
        calibration = calibration["calibration"]
    if isinstance(calibration, Mapping):
        bins = bins or calibration.get("bins")
        calibration = calibration.get("temperature")
    bins = int(bins or calibrate.BINS)
    rows = predictions[predictions["split"] == part]
    if rows.empty:
        raise ValueError(f"reliability_diagram: no {part} rows in the predictions")
    class_names = list(class_names)
    labels = label_indices(rows["label"].astype(str), class_names)
    probs = rows[[f"{PREFIX}{c}" for c in class_names]].to_numpy(dtype=np.float64)
    panels = [("model's probabilities", probs)]
    if calibration is not None:
        panels.append((f"after temperature scaling (T = {float(calibration):.2f})",
                       calibrate.apply_temperature(probs, float(calibration))))
    fig = new_figure(4.6 * len(panels) + 0.4, 4.4)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    eces = []
    for ax, (subtitle, values) in zip(axes, panels, strict=True):
        table = calibrate.reliability(labels, values, bins)
        eces.append(calibrate.expected_calibration_error(labels, values, bins))
        centres, width = (table["low"] + table["high"]) / 2, 1 / bins
        filled = table["count"] > 0
        bars = ax.bar(centres[filled], table["accuracy"][filled], width=width * 0.95,
                      color="tab:blue", alpha=0.75, edgecolor="white", label="accuracy")
        ax.bar_label(bars, labels=[str(c) for c in table["count"][filled]], fontsize=6,
                     padding=1)
        ax.plot(table["confidence"][filled], table["accuracy"][filled], "o", color="tab:red",
                markersize=3, label="mean confidence")
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="calibrated")
        ax.set(xlim=(0, 1), ylim=(0, 1.08), xlabel="confidence (largest probability)",
               title=f"{subtitle}\nECE {eces[-1]:.3f}")
        ax.title.set_fontsize(9)
    axes[0].set_ylabel("accuracy (bars: images per bin)")
    axes[0].legend(fontsize=7, loc="upper left")
    after = f", {eces[1]:.3f} after temperature scaling" if len(eces) > 1 else ""
    fig.suptitle(f"reliability on the {part} split ({len(rows)} images, {bins} bins): "
                 f"ECE {eces[0]:.3f}{after}", fontsize=10)
    save(fig, out_dir, name)
    return fig
