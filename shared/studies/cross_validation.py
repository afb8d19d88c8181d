"""Stratified k-fold cross-validation of one baseline CNN setting (notebook 09).

The folds are drawn from the run's train and val images together (at most ``pool_per_class``
per class, a seeded choice); the test split is never used for any choice. Each fold is a
trial of a study (``<run_dir>/cross_validation/trials/fold-<i>/``, a row of trials.csv): the
setting trained on the other k-1 folds, its accuracy measured on the held-out fold. Then:

* the **final model**: the same setting retrained on all the pooled images (train and val
  together) for the same number of epochs (the baseline's recipe has no early stopping: its
  cosine schedule ends at ``epochs``, the number the folds validated), scored once on test and
  written as the study's experiment (metrics.json ``cross_validation`` holds the fold
  accuracies, their mean, standard deviation and 95% t-interval);
* the **fold ensemble**: the k fold models' test probabilities averaged, compared with the
  final model on the same test images (exact McNemar).

The setting (``setting``): "baseline" (notebook 01's, as the profile sets it), "search" (the
best trial of the run's hyperparameter search; an error when the run has none) or "auto"
(the search's where the run has one, else the baseline's).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.model_selection import StratifiedKFold

from shared import data, results
from shared.evaluation import conclusions, evaluate
from shared.files import read_json
from shared.studies import baseline, study

SETTINGS = ("auto", "baseline", "search")
TRIAL_KEYS = ("fold",)


def chosen_setting(cfg: dict) -> tuple[str, dict]:
    """The setting to cross-validate and where it comes from: ("baseline", {}) or
    ("search: <trial>", the search's best trial_settings)."""
    which = cfg.get("setting") or "auto"
    if which not in SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)}, not {which!r}")
    search = Path(cfg["run_dir"]) / "search"
    found = results.is_complete(search)
    if which == "search" and not found:
        raise ValueError(f"setting='search': the run has no finished search ({search}); run "
                         "07_search first or use setting='baseline'")
    if which == "baseline" or not found:
        return "baseline", {}
    best = read_json(search / "metrics.json")
    settings = {k: v for k, v in (best.get("trial_settings") or {}).items()
                if k not in ("train_seed",)}
    return f"search: {best.get('trial')}", settings


def pool(split: data.Split, per_class: int | None, seed: int) -> pd.DataFrame:
    """The images the folds are drawn from: train and val together, at most ``per_class``
    per class."""
    rows = pd.concat([split.part("train"), split.part("val")], ignore_index=True)
    rows = data.Split(split.root, split.class_names, rows.assign(split="train"),
                      split.skipped, split.info).part("train", per_class, seed)
    return rows


def assign_folds(rows: pd.DataFrame, folds: int, seed: int) -> np.ndarray:
    """Fold number (1..``folds``) of each row: stratified by label, shuffled with ``seed``."""
    if not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an integer of at least 2, not {folds!r}")
    counts = rows["label"].value_counts()
    few = counts[counts < folds]
    if len(few):
        raise ValueError(f"folds={folds}: class(es) {', '.join(map(repr, few.index))} have "
                         f"fewer images than folds ({', '.join(map(str, few))}); lower folds "
                         "or raise pool_per_class")
    number = np.zeros(len(rows), dtype=int)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for i, (_, held_out) in enumerate(splitter.split(rows["path"], rows["label"]), start=1):
        number[held_out] = i
    return number


def fold_split(split: data.Split, rows: pd.DataFrame, number: np.ndarray,
               fold: int | None) -> data.Split:
    """``split`` with its train and val parts replaced: the pooled ``rows`` of fold ``fold``
    as val, the others as train (``fold`` None: all of them as train, no val). Test stays."""
    part = np.where(number == fold, "val", "train") if fold else "train"
    frame = pd.concat([rows.assign(split=part), split.part("test")], ignore_index=True)
    return dataclasses.replace(split, frame=frame)


def fold_trials(folds: int, settings: dict) -> list[study.Trial]:
    return [study.Trial(f"fold-{i}", {"fold": i, **settings}) for i in range(1, folds + 1)]


def run(split: data.Split, cfg: dict) -> dict:
    """Cross-validate the chosen setting (see the module docstring); returns what
    metrics.json records as ``cross_validation`` (the final model's folder is ``out_dir``)."""
    source, settings = chosen_setting(cfg)
    rows = pool(split, cfg.get("pool_per_class"), cfg["seed"])
    number = assign_folds(rows, cfg["folds"], cfg["seed"])
    print(f"{cfg['folds']}-fold cross-validation of the {source} setting on {len(rows):,} "
          f"train and val images" + (f" ({settings})" if settings else ""))

    def split_for(trial, scored):
        own = fold_split(split, rows, number, trial.settings["fold"])
        return dataclasses.replace(own, frame=pd.concat(
            [own.frame[own.frame["split"] != "test"], scored.part("test")], ignore_index=True))

    table = study.run(fold_trials(cfg["folds"], settings), baseline.train_trial, split,
                      cfg, split_for=split_for, promote=False)
    for name in table["trial"]:   # the folds' test predictions are all the ensemble needs
        (study.trial_dir(cfg["out_dir"], name) / "model.keras").unlink(missing_ok=True)
    summary = summarise(table)
    summary.update(setting=source, settings=settings, pool_images=len(rows),
                   epochs=(cfg | settings)["epochs"])
    return summary


def summarise(table: pd.DataFrame) -> dict:
    """Accuracy on each held-out fold (the trials' val_accuracy), their mean, standard
    deviation and 95% t-interval of the mean, within [0, 1] (None with fewer than two
    finished folds)."""
    done = table[table["status"] == study.DONE]
    accuracies = [float(a) for a in done["val_accuracy"]]
    summary = {"folds": len(table), "finished": len(done),
               "fold_accuracy": dict(zip(done["trial"], accuracies, strict=True)),
               "mean": None, "std": None, "ci95": None}
    if accuracies:
        summary["mean"] = float(np.mean(accuracies))
    if len(accuracies) >= 2:
        std = float(np.std(accuracies, ddof=1))
        half = stats.t.ppf(0.975, len(accuracies) - 1) * std / math.sqrt(len(accuracies))
        summary.update(std=std, ci95=[max(0.0, summary["mean"] - half),
                                      min(1.0, summary["mean"] + half)])
    return summary


def final_model(split: data.Split, cfg: dict, summary: dict) -> tuple[dict, pd.DataFrame]:
    """The setting retrained on all the pooled images (train and val together) and scored on
    test, written as the study's experiment (``cfg["out_dir"]``); read back when it already is
    (for these folds and this setting). Returns its metrics and predictions."""
    out_dir = Path(cfg["out_dir"])
    recorded = read_json(out_dir / "metrics.json") if results.is_complete(out_dir) else {}
    earlier = recorded.get("cross_validation") or {}
    if earlier.get("settings") == summary["settings"] and earlier.get("folds") == summary["folds"]:
        print("the final model was retrained earlier; read back")
        return recorded, results.read_predictions(out_dir / "predictions.csv")
    rows = pool(split, cfg.get("pool_per_class"), cfg["seed"])
    whole = fold_split(split, rows, np.zeros(len(rows), dtype=int), None)
    tcfg = cfg | summary["settings"]
    print(f"final model: the {summary['setting']} setting retrained on {len(rows):,} train "
          f"and val images for {tcfg['epochs']} epochs, then scored once on test")
    model, history = baseline.train_trial(study.Trial("final", summary["settings"]),
                                                 tcfg, whole)
    return evaluate.finish(model, whole, tcfg, history, info={
        "study": cfg["experiment"], "trial": "final (train and val)",
        "trial_settings": summary["settings"],
        "cross_validation": summary | {"final_train_images": len(rows)}})


def fold_ensemble(folder, table: pd.DataFrame, final: pd.DataFrame) -> dict | None:
    """The fold models' averaged test probabilities against the final model, on the test
    images both were scored on (exact McNemar); None without two finished folds."""
    frames = [study.trial_predictions(folder, name)
              for name in table.loc[table["status"] == study.DONE, "trial"]]
    frames = [f[f["split"] == "test"].set_index("path") for f in frames if f is not None]
    if len(frames) < 2:
        return None
    common = frames[0].index
    for frame in frames[1:]:
        common = common.intersection(frame.index)
    columns = [c for c in frames[0].columns if c.startswith(results.PREFIX)]
    mean = sum(frame.loc[common, columns].to_numpy() for frame in frames) / len(frames)
    names = [c[len(results.PREFIX):] for c in columns]
    labels = frames[0].loc[common, "label"]
    ensemble = pd.DataFrame({"split": "test", "path": common, "label": labels.to_numpy(),
                             "predicted": np.asarray(names, dtype=object)[mean.argmax(1)]})
    single = final[(final["split"] == "test") & final["path"].isin(common)]
    result = conclusions.compare(ensemble, single, "test")
    return {"members": len(frames), **result,
            "sentence": conclusions.comparison_sentence(
                result, f"the ensemble of the {len(frames)} fold models",
                "the final model retrained on train and val")}


def ensemble_table(ensemble: dict | None) -> pd.DataFrame:
    """:func:`fold_ensemble`'s figures as a one-row table (empty without an ensemble)."""
    names = {"members": "fold models", "images": "test images", "accuracy": "ensemble",
             "reference_accuracy": "final model", "only_candidate": "only the ensemble right",
             "only_reference": "only the final model right", "p_value": "McNemar p"}
    if not ensemble:
        return pd.DataFrame(columns=list(names.values()))
    return pd.DataFrame([{label: ensemble[key] for key, label in names.items()}])


def conclusion(summary: dict, ensemble: dict | None, metrics: dict) -> str:
    """The computed conclusion of notebook 09."""
    sentences = []
    if summary["ci95"]:
        low, high = summary["ci95"]
        sentences.append(
            f"Over {summary['finished']} folds, the {summary['setting']} setting scores "
            f"{100 * summary['mean']:.1f}% on the held-out folds (standard deviation "
            f"{100 * summary['std']:.1f} points; 95% interval of the mean {100 * low:.1f}–"
            f"{100 * high:.1f}%).")
    else:
        sentences.append(f"Only {summary['finished']} of {summary['folds']} folds finished: "
                         "no interval can be given.")
    sentences.append(f"Retrained on train and val together, it scores "
                     f"{100 * metrics['accuracy']:.1f}% on the test split, measured once.")
    if ensemble:
        sentences.append(ensemble["sentence"])
    return "\n\n".join(sentences)
