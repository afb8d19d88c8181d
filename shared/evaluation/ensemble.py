"""A run's ensemble: read its experiments' saved predictions, vote, write the ensemble's results.

:func:`vote` reads only ``<run>/<experiment>/predictions.csv`` and ``metrics.json`` (never a
model), so it is cheap and works on any finished run. A member is left out, and named with the
reason, when its results are missing, unreadable or not complete, when its classes differ, or
when its rows (split, path, label) are not those of the other members.

The methods (``hard``, ``soft``, ``weighted``, ``best``, and ``auto``, the default of
:func:`vote`, which keeps the best member unless a vote beats it on validation beyond chance) are
described in :mod:`shared.evaluation.voting`, which combines the members' probabilities.

Everything is then measured on the test split, which no choice has seen.
"""

from __future__ import annotations

import datetime as dt
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from shared import environment
from shared.evaluation.evaluate import VAL_KEYS
from shared.evaluation.metrics import metrics_from_predictions, top_k_accuracy
from shared.evaluation.voting import (
    ALPHA,
    FOLDS,
    METHODS,
    check_method,
    choose,
    combine,
    select_weights,
)
from shared.files import read_json
from shared.results import (
    PREFIX,
    check_complete,
    experiment_dirs,
    read_predictions,
    write_results,
)

CHOICES = ("auto", *METHODS, "best")
LABELS = {"hard": "hard vote", "soft": "soft vote", "weighted": "weighted soft vote"}
KEY = ["split", "path"]


class NotEnoughMembers(ValueError):
    """Fewer than two experiments of the run can be combined."""


# --------------------------------------------------------------------------- members


def load_members(run_dir: str | Path, members: Sequence[str] | None = None,
                 exclude: Sequence[str | Path] = ()) -> tuple[dict, dict, dict]:
    """Read and align the members' results.

    Returns ``(predictions, metrics, left_out)``: the usable members' predictions frames, all
    with the same rows in the same order, their metrics, and ``{name: reason}`` for every
    member left out. ``members=None`` takes every experiment folder of the run except
    ensembles (folders whose metrics.json lists ``members``) and ``exclude``.
    """
    run_dir = Path(run_dir)
    excluded = {Path(p).resolve() for p in exclude}
    if members is None:
        names = [d.name for d in experiment_dirs(run_dir)
                 if d.resolve() not in excluded and not _is_ensemble(d)]
    else:
        names = list(dict.fromkeys(members))
    frames, metrics, left_out = {}, {}, {}
    for name in names:
        folder = run_dir / name
        if not folder.is_dir():
            left_out[name] = f"no folder {folder}"
            continue
        reason = check_complete(folder)
        if reason is None:
            try:
                frame = read_predictions(folder / "predictions.csv")
                meta = read_json(folder / "metrics.json")
            except (OSError, ValueError) as err:
                reason = f"unreadable results ({err})"
        if reason is None and frame.duplicated(KEY).any():
            reason = "predictions.csv repeats (split, path) rows"
        if reason:
            left_out[name] = reason
            continue
        frames[name], metrics[name] = frame, meta

    # the classes and rows most members share are the reference; the others are left out
    classes = {n: tuple(c[len(PREFIX):] for c in f.columns if c.startswith(PREFIX))
               for n, f in frames.items()}
    common = Counter(classes.values()).most_common(1)
    for name in [n for n in frames if common and classes[n] != common[0][0]]:
        left_out[name] = (f"its classes ({', '.join(classes[name])}) differ from the others' "
                          f"({', '.join(common[0][0])})")
        del frames[name]
    rows = {n: frozenset(map(tuple, f[[*KEY, "label"]].to_numpy().tolist()))
            for n, f in frames.items()}
    groups = Counter(rows.values())
    if groups:
        reference_rows = max(groups, key=lambda r: (groups[r], -list(rows.values()).index(r)))
        reference = next(n for n in frames if rows[n] == reference_rows)
        for name in [n for n in frames if rows[n] != reference_rows]:
            missing, extra = len(reference_rows - rows[name]), len(rows[name] - reference_rows)
            left_out[name] = (f"its rows differ from {reference}'s ({missing} of {reference}'s "
                              f"(split, path, label) rows missing, {extra} extra): it was "
                              "evaluated on another split")
            del frames[name]
        order = frames[reference].set_index(KEY).index
        frames = {n: f.set_index(KEY).loc[order].reset_index() for n, f in frames.items()}
    metrics = {n: metrics[n] for n in frames}
    return frames, metrics, left_out


def _is_ensemble(folder: Path) -> bool:
    try:
        return "members" in read_json(folder / "metrics.json")
    except (OSError, ValueError, TypeError):
        return False


# --------------------------------------------------------------------------- vote


def vote(run_dir: str | Path, members: Sequence[str] | None = None,
         out_dir: str | Path | None = None, method: str = "auto", rounds: int = 20) -> dict:
    """Combine the run's experiments by hard, soft and weighted voting and write the
    ensemble's results (``<run>/ensemble/`` unless ``out_dir``): predictions.csv and
    metrics.json of the chosen ``method`` (same contract as an experiment, plus members,
    method, weights, left_out, the comparison table and disagreement statistics). It draws
    nothing: :mod:`shared.reporting.plots` draws from what it returns.

    Returns a dict with ``metrics``, ``table`` (each member and each ensemble on validation
    and test), ``disagreement`` (pairwise share of test images two members predict
    differently), ``predictions`` and ``left_out``. Raises
    :class:`NotEnoughMembers` when fewer than two members are usable.
    """
    check_method(method, CHOICES)
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "ensemble"
    frames, member_metrics, left_out = load_members(run_dir, members, exclude=[out_dir])
    for name, reason in left_out.items():
        print(f"ensemble: left out {name}: {reason}")
    if len(frames) < 2:
        usable = ", ".join(frames) or "none"
        raise NotEnoughMembers(
            f"an ensemble needs at least 2 finished experiments in {run_dir}; usable: {usable}"
            + "".join(f"; left out {n}: {r}" for n, r in left_out.items()))

    names = list(frames)
    reference = frames[names[0]]
    class_names = [c[len(PREFIX):] for c in reference.columns if c.startswith(PREFIX)]
    columns = [f"{PREFIX}{c}" for c in class_names]
    probs = np.stack([frames[n][columns].to_numpy(np.float64) for n in names])
    labels = _indices(reference["label"], class_names)
    is_val = (reference["split"] == "val").to_numpy()
    is_test = (reference["split"] == "test").to_numpy()
    if not is_test.any():
        raise ValueError(f"the members' predictions.csv in {run_dir} hold no test rows")

    notes, choice = [], None
    if is_val.any():
        weights = select_weights(probs[:, is_val], labels[is_val], rounds)
        choice = choose(probs[:, is_val], labels[is_val], rounds)
    elif method in ("auto", "best"):
        if method == "best":
            raise ValueError(f"method 'best' picks a member on the validation split, and the "
                             f"members' predictions.csv in {run_dir} hold no validation rows")
        weights = np.full(len(names), 1 / len(names))
        notes.append("no validation rows: the soft vote is used, not chosen on validation")
    else:
        weights = np.full(len(names), 1 / len(names))
        notes.append("no validation rows: the weighted vote uses equal weights")
    combined = {m: combine(probs, m, weights) for m in METHODS}
    best = choice["best_member"] if choice else None
    if best is not None:
        combined["best"] = combine(probs, "weighted", np.eye(len(names))[best])

    table = _table(names, probs, combined, labels, is_val, is_test, class_names, choice)
    chosen = method if method != "auto" else choice["method"] if choice else "soft"
    table["chosen"] = table["name"] == (names[best] if chosen == "best" else LABELS[chosen])

    ens_probs, ens_pred = combined[chosen]
    predictions = reference[["split", "path", "label"]].copy()
    predictions["predicted"] = np.asarray(class_names, dtype=object)[ens_pred]
    for i, column in enumerate(columns):
        predictions[column] = ens_probs[:, i]
    pairwise, any_disagree, oracle = _disagreement(names, probs[:, is_test], labels[is_test])

    test = metrics_from_predictions(labels[is_test], ens_pred[is_test], class_names)
    val = (metrics_from_predictions(labels[is_val], ens_pred[is_val], class_names)
           if is_val.any() else {})
    if len(class_names) > 5:
        for rows, target in ((is_test, test), (is_val, val)):
            if rows.any():
                target["top5_accuracy"] = top_k_accuracy(labels[rows], ens_probs[rows])
    used_weights = (weights if chosen == "weighted" else np.eye(len(names))[best]
                    if chosen == "best" else np.full(len(names), 1 / len(names)))
    used = [n for n, w in zip(names, used_weights, strict=True) if w > 0]
    metrics = _metrics(names, used, member_metrics, class_names) | test | {
        "evaluated_on": "test", **{f"val_{key}": val.get(key) for key in VAL_KEYS},
        "images": {s: int((reference["split"] == s).sum()) for s in reference["split"].unique()},
        "members": names, "method": chosen, "method_requested": method,
        "weights": dict(zip(names, used_weights.round(4).tolist(), strict=True)),
        "selected_weights": dict(zip(names, weights.round(4).tolist(), strict=True)),
        "best_member": names[best] if best is not None else None,
        "choice": None if choice is None else {
            "alpha": choice["alpha"], "correction": choice["correction"], "folds": FOLDS,
            "best_member_val_accuracy": float(table.loc[best, "val_accuracy"]),
            "votes": {LABELS[m]: v for m, v in choice["votes"].items()}},
        "left_out": left_out, "notes": notes,
        "table": table.to_dict(orient="records"),
        "disagreement": {"any_members": any_disagree, "oracle_accuracy": oracle,
                         "pairwise": pairwise.to_dict()},
        "status": "complete",
        "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    metrics = write_results(out_dir, predictions, metrics)
    return {"metrics": metrics, "table": table, "disagreement": pairwise,
            "predictions": predictions, "left_out": left_out}


def _indices(labels: pd.Series, class_names: list[str]) -> np.ndarray:
    position = {c: i for i, c in enumerate(class_names)}
    unknown = sorted(set(labels) - set(position))
    if unknown:
        raise ValueError(f"label(s) {', '.join(unknown)} are not among the probability columns")
    return labels.map(position).to_numpy(int)


def _scores(y_true, y_pred, class_names) -> tuple[float | None, float | None]:
    if not len(y_true):
        return None, None
    m = metrics_from_predictions(y_true, y_pred, class_names)
    return m["accuracy"], m["macro_f1"]


def _table(names, probs, combined, labels, is_val, is_test, class_names, choice) -> pd.DataFrame:
    """Each member and each vote on validation and test; for the votes, the honest validation
    accuracy and p-value of the ``auto`` choice."""
    rows = []
    predictions = [(n, "member", probs[i].argmax(axis=1), {}) for i, n in enumerate(names)]
    predictions += [(LABELS[m], "ensemble", combined[m][1], choice["votes"][m] if choice else {})
                    for m in METHODS]
    for name, kind, predicted, honest in predictions:
        val_acc, val_f1 = _scores(labels[is_val], predicted[is_val], class_names)
        acc, f1 = _scores(labels[is_test], predicted[is_test], class_names)
        rows.append({"name": name, "kind": kind, "val_accuracy": val_acc, "val_macro_f1": val_f1,
                     "honest_val_accuracy": honest.get("honest_val_accuracy"),
                     "p_vs_best_member": honest.get("p_value"), "accuracy": acc, "macro_f1": f1})
    return pd.DataFrame(rows)


def _disagreement(names, probs, labels) -> tuple[pd.DataFrame, float, float]:
    """Pairwise disagreement, the share of images where not all members agree, and the
    oracle accuracy (some member is right)."""
    predicted = probs.argmax(axis=2)
    pairwise = pd.DataFrame([[float((a != b).mean()) for b in predicted] for a in predicted],
                            index=names, columns=names)
    any_disagree = float((predicted != predicted[0]).any(axis=0).mean())
    oracle = float((predicted == labels).any(axis=0).mean())
    return pairwise, any_disagree, oracle


def _metrics(names, used, member_metrics, class_names) -> dict:
    """The descriptive part of the ensemble's metrics.json, from its members'. Its parameters
    are those of the members it ``used`` (a nonzero weight); its training time is that of all
    members, since choosing among them needed every one."""
    def common(key):
        values = [member_metrics[n].get(key) for n in names]
        return values[0] if all(v == values[0] for v in values) else values

    def total(key, inner=None, among=names):
        values = [member_metrics[n].get(key) for n in among]
        if inner:
            values = [v.get(inner) if isinstance(v, dict) else None for v in values]
        return sum(values) if all(isinstance(v, int | float) for v in values) else None

    return {
        "experiment": "ensemble", "title": "ensemble",
        "dataset": common("dataset"), "seed": common("seed"), "profile": common("profile"),
        "image_size": None,
        "member_image_sizes": {n: member_metrics[n].get("image_size") for n in names},
        "weights_source": "ensemble of the members' saved predictions",
        "params": {"total": total("params", "total", used),
                   "trainable": total("params", "trainable", used), "members": used},
        "train_seconds": total("train_seconds"), "inference_seconds": total("inference_seconds"),
        "epochs_run": None, "class_names": class_names,
        "versions": environment.library_versions(),
        "code": environment.code_version(),
        "device": f"CPU ({os.cpu_count()} cores; voting over saved probabilities)",
    }


def summary_sentence(result: dict) -> str:
    """The computed conclusion of :func:`vote`: the chosen ensemble against its best member."""
    metrics, table = result["metrics"], result["table"]
    members = table[table["kind"] == "member"]
    best = members.loc[members["accuracy"].idxmax()]
    delta = 100 * (metrics["accuracy"] - best["accuracy"])
    scores = (f"{100 * metrics['accuracy']:.1f}% test accuracy (macro-F1 "
              f"{metrics['macro_f1']:.3f}), {delta:+.1f} points against")
    best_on_test = f"{best['name']} ({100 * best['accuracy']:.1f}%)"
    tail = f"{scores} the best member on test, {best_on_test}"
    if metrics["method"] == "best" and metrics.get("method_requested") == "auto":
        choice = metrics["choice"]
        votes = choice["votes"]
        top = max(votes, key=lambda v: votes[v]["honest_val_accuracy"])
        text = (f"No vote of the {len(members)} members ({', '.join(metrics['members'])}) beats "
                f"the best one on validation beyond chance (the best vote, the {top}: "
                f"{100 * votes[top]['honest_val_accuracy']:.1f}% against "
                f"{100 * choice['best_member_val_accuracy']:.1f}%, p = "
                f"{votes[top]['p_value']:.2g}, {votes[top].get('p_holm', 1.0):.2g} after Holm's "
                f"correction over {len(votes)} votes, needed < {ALPHA:g}), "
                f"so the ensemble is {metrics['best_member']} alone: {tail}")
    elif metrics["method"] == "best":
        text = (f"The member best on validation, {metrics['best_member']}, alone (as asked): "
                f"{tail}")
    else:
        text = (f"The {LABELS[metrics['method']]} of {len(members)} members "
                f"({', '.join(metrics['members'])}) reaches {scores} its best member, "
                f"{best_on_test}")
    text += (f"; the members disagree on {100 * metrics['disagreement']['any_members']:.1f}% "
             f"of the test images")
    if metrics.get("left_out"):
        text += f" (left out: {', '.join(metrics['left_out'])})"
    return text + "."
