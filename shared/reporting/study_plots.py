"""The figures of the studies (notebooks 05-09): the trials of a study, accuracy against cost,
depth and each hyperparameter, ablations, the learning curve and cross-validation.

Like every figure of :mod:`shared.reporting.plots`, each function builds one figure, saves it as
``<out_dir>/figures/<name>.png`` (written whole) when ``out_dir`` is given, and returns it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from shared.reporting.plots import message_figure, new_figure, save


def _of_finished_trials(draw):
    """A figure function of a study's trials.csv from ``draw(done)``, which draws the finished
    trials: a message figure while there is none; saved as ``<out_dir>/figures/<name>.png``."""

    @functools.wraps(draw)
    def figure(table: pd.DataFrame, out_dir=None, name: str = draw.__name__):
        done = _finished_trials(table)
        if done.empty:
            return message_figure("no finished trial yet", out_dir, name)
        fig = draw(done)
        save(fig, out_dir, name)
        return fig

    return figure


@_of_finished_trials
def trial_accuracy(done: pd.DataFrame):
    """Test accuracy of each finished trial of a study (its trials.csv) with its 95% bootstrap
    interval, best at the top."""
    done = done.sort_values("test_accuracy")
    fig = new_figure(7, 0.35 * len(done) + 1.5)
    ax = fig.subplots()
    rows = np.arange(len(done))
    ax.errorbar(done["test_accuracy"], rows, xerr=_interval(done), fmt="o", capsize=3)
    ax.set_yticks(rows, done["trial"])
    ax.set(xlabel="test accuracy (95% bootstrap interval)", title="trials on the test split")
    ax.grid(axis="x", alpha=0.3)
    return fig


@_of_finished_trials
def trial_costs(done: pd.DataFrame):
    """Test accuracy of each finished trial against its training time and its parameters."""
    fig = new_figure(11, 4.5)
    minutes, params = fig.subplots(1, 2, sharey=True)
    _trial_points(minutes, done, done["train_seconds"].astype(float) / 60)
    minutes.set(xlabel="training time (minutes)", ylabel="test accuracy (95% interval)")
    _trial_points(params, done, done["parameters"].astype(float))
    params.set(xlabel="parameters", xscale="log")
    fig.suptitle("accuracy against cost")
    return fig


@_of_finished_trials
def accuracy_by_depth(done: pd.DataFrame):
    """Test accuracy of each finished trial against the backbone layers it trained."""
    fig = new_figure(7, 4.5)
    ax = fig.subplots()
    _trial_points(ax, done, done["backbone_layers_trained"].astype(float))
    ax.set(xlabel="backbone layers trained (the largest of its phases)",
           ylabel="test accuracy (95% interval)", title="accuracy against fine-tuning depth")
    return fig


def ablation_accuracy(seeds: pd.DataFrame, summed: pd.DataFrame, out_dir=None,
                      name: str = "ablation_accuracy"):
    """Test accuracy per change of an ablation: one point per seed, the mean as a bar mark,
    the reference's mean as a vertical line (``seeds`` and ``summed``: shared.studies.ablations'
    per_seed and summary tables)."""
    if summed.empty:
        return message_figure("no finished trial yet", out_dir, name)
    fig = new_figure(7, 0.4 * len(summed) + 1.5)
    ax = fig.subplots()
    rows = {change: i for i, change in enumerate(summed["change"])}
    ax.scatter(seeds["test_accuracy"], seeds["change"].map(rows), s=18, alpha=0.6,
               label="one seed")
    ax.scatter(summed["test_mean"], range(len(summed)), marker="|", s=300, color="black",
               label="mean over seeds")
    reference = summed.loc[summed["change"] == "reference", "test_mean"]
    if len(reference):
        ax.axvline(float(reference.iloc[0]), color="grey", linestyle="--", linewidth=1,
                   label="reference mean")
    ax.set_yticks(range(len(summed)), summed["change"])
    ax.invert_yaxis()
    ax.set(xlabel="test accuracy", title="one change at a time, over seeds")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(fontsize=8, loc="outside lower center", ncols=3)
    save(fig, out_dir, name)
    return fig


def learning_curve(curve: pd.DataFrame, out_dir=None, name: str = "learning_curve"):
    """Test accuracy against training images per class: a point per seed and the mean over
    seeds (``curve``: shared.studies.ablations.learning_curve's table)."""
    if curve.empty:
        return message_figure("no trial of the learning curve finished", out_dir, name)
    fig = new_figure(6, 4)
    ax = fig.subplots()
    ax.scatter(curve["per_class"], curve["test_accuracy"], s=18, alpha=0.6, label="one seed")
    means = curve.groupby("per_class")["test_accuracy"].mean()
    ax.plot(means.index, means.to_numpy(), marker="o", color="black", label="mean over seeds")
    ax.set(xscale="log", xlabel="training images per class", ylabel="test accuracy",
           title="learning curve")
    ax.set_xticks(means.index, [f"{value:,.0f}" for value in means.index])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, out_dir, name)
    return fig


def fold_accuracy(summary: Mapping, final_accuracy: float | None = None, out_dir=None,
                  name: str = "fold_accuracy"):
    """Cross-validation: the accuracy on each held-out fold, their mean with its 95%
    t-interval, and the final model's test accuracy (``final_accuracy``) beside them."""
    folds = summary.get("fold_accuracy") or {}
    if not folds:
        return message_figure("no finished fold yet", out_dir, name)
    fig = new_figure(7, 4)
    ax = fig.subplots()
    ax.plot(list(folds), list(folds.values()), "o", label="held-out fold")
    if summary.get("ci95"):
        ax.axhline(summary["mean"], color="C0", label="mean of the folds")
        ax.axhspan(*summary["ci95"], color="C0", alpha=0.15, label="95% interval of the mean")
    if final_accuracy is not None:
        ax.axhline(final_accuracy, color="C3", linestyle="--",
                   label="final model on test (train+val)")
    ax.set(ylabel="accuracy", title="cross-validation")
    ax.legend(loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    save(fig, out_dir, name)
    return fig


def accuracy_by_setting(table: pd.DataFrame, settings: Sequence[str], out_dir=None,
                        name: str = "accuracy_by_hyperparameter", log: Sequence[str] = ()):
    """Validation accuracy of each finished trial against each of ``settings`` (one panel
    each; numbers on a log axis where they are in ``log`` or span two decades or more, other
    values as categories), the best trial marked."""
    done = _finished_trials(table)
    settings = [s for s in settings if s in done.columns]
    if done.empty or not settings:
        return message_figure("no finished trial yet", out_dir, name)
    columns = min(4, len(settings))
    rows = math.ceil(len(settings) / columns)
    fig = new_figure(3.2 * columns, 2.8 * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns, sharey=True)).ravel()
    accuracy = done["val_accuracy"].astype(float)
    best = accuracy.idxmax()
    for ax, setting in zip(axes, settings, strict=False):
        values = pd.to_numeric(done[setting], errors="coerce")
        if values.notna().all() and values.nunique() > 1:
            x = values
            positive = values[values > 0]
            if len(positive) and (setting in log or positive.max() / positive.min() >= 100):
                if len(positive) == len(values):
                    ax.set_xscale("log")
                else:    # zero beside small values (an L2 of 0, 1e-5 …)
                    ax.set_xscale("symlog", linthresh=positive.min())
            elif (values == values.round()).all():
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            labels = done[setting].map(lambda v: "missing" if pd.isna(v) else str(v))
            categories = sorted(labels.unique())
            x = labels.map(categories.index)
            ax.set_xticks(range(len(categories)), categories, rotation=30, fontsize=8)
        ax.scatter(x, accuracy, alpha=0.7)
        ax.scatter(x[best], accuracy[best], marker="*", s=160, color="tab:red",
                   label="best")
        ax.set(xlabel=setting)
        ax.grid(alpha=0.3)
    for ax in axes[len(settings):]:
        ax.axis("off")
    for ax in axes[::columns]:
        ax.set_ylabel("validation accuracy")
    axes[0].legend(fontsize=8)
    fig.suptitle("validation accuracy against each hyperparameter")
    save(fig, out_dir, name)
    return fig


def _finished_trials(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["status"] == "done"].copy() if len(table) else table


def _interval(done: pd.DataFrame) -> np.ndarray:
    accuracy = done["test_accuracy"].astype(float)
    return np.vstack([accuracy - done["test_accuracy_ci_low"].astype(float),
                      done["test_accuracy_ci_high"].astype(float) - accuracy]).clip(min=0)


def _trial_points(ax, done: pd.DataFrame, x) -> None:
    ax.errorbar(x, done["test_accuracy"].astype(float), yerr=_interval(done), fmt="o",
                capsize=3)
    for xi, yi, label in zip(x, done["test_accuracy"].astype(float), done["trial"],
                             strict=True):
        ax.annotate(label, (xi, yi), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.grid(alpha=0.3)
