"""Studies: a list of trials, each an experiment setting, trained in turn on the run's split.

A study's folder, ``<run_dir>/<study>/``::

    trials.csv              one row per trial (settings, status, val and test accuracy with a
                            95% bootstrap interval, macro-F1, parameters, time), rewritten
                            whole after each trial: the study's progress
    trials/<trial>/         a trial's training state, history, metrics.json and predictions.csv
                            (scored on the study's share of val and test), TensorBoard logs with
                            its settings as HParams (``tensorboard --logdir <study>/trials``),
                            trial.log (what its training printed; the report keeps one line)
    metrics.json, predictions.csv, history.csv, model.keras
                            the best trial by validation accuracy, scored again on the whole
                            val and test splits: an experiment like any other (leaderboard,
                            ensemble, ``make predict``, export); metrics.json names the trial

A killed study resumes at its first unfinished trial (whose training resumes from its last
finished epoch); finished trials are never trained again. A trial that fails is recorded as
failed, with its error, and the study goes on; it runs again at the next attempt. With
``budget_minutes``, the trials that would start after the study has spent that long (the
recorded time of its finished trials) are listed as skipped. Only the best trial keeps a model.

Settings (``cfg`` from :func:`shared.config.experiment` of a study): ``score_per_class`` (val
and test images per class the trials are scored on; None: all), ``budget_minutes``, ``trials``
(the names of the trials to run; None: all), and whatever the trials' own function reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import pandas as pd

from shared import config, data, progress, results
from shared.evaluation import conclusions, evaluate, ranking
from shared.files import read_json
from shared.studies.trials import (
    Trial,
    by_question,
    clear,
    is_finished,
    new_row,
    number,
    pct,
    read_trials,
    summary,
    trial_dir,
    trial_predictions,
    write_trials,
)
from shared.training import distribute, experiment
from shared.training.callbacks import read_history

TRIAL_LOG = "trial.log"     # what a trial's training printed, in its folder
DONE, FAILED, SKIPPED, RUNNING = "done", "failed", "skipped (time budget)", "running"


# The function that builds and trains a trial's model: (trial, its cfg, the study's split)
# -> (model, history). Its cfg is the study's with the trial's settings and out_dir applied.
TrainTrial = Callable[[Trial, dict, data.Split], tuple[keras.Model, pd.DataFrame]]


def start(cfg: dict) -> data.Split:
    """The common start of a study notebook: :func:`shared.training.experiment.begin` (seed,
    devices, the run's split, settings from the data), after deleting the study's trials when
    ``cfg["fresh"]`` asks for a fresh start (its earlier best experiment goes to
    ``previous/``)."""
    if cfg.get("fresh"):
        clear(cfg["out_dir"])
    return experiment.begin(cfg)


def select(trials: Sequence[Trial], names: Sequence[str] | None) -> list[Trial]:
    """The trials named in ``names`` (None: all), in the order of ``trials``."""
    if names is None:
        return list(trials)
    known = {t.name for t in trials}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown trial(s) {', '.join(map(str, unknown))}: the trials of this "
                         f"study are {', '.join(t.name for t in trials)}")
    return [t for t in trials if t.name in set(names)]


def settings_table(trials: Sequence[Trial]) -> pd.DataFrame:
    """One row per trial: its name and the settings it changes (blank where it keeps the
    study's)."""
    return pd.DataFrame([{"trial": t.name, **t.settings} for t in trials]).fillna("")


def scoring_split(split: data.Split, per_class: int | None, seed: int) -> data.Split:
    """``split`` with its val and test parts cut to at most ``per_class`` images per class (a
    seeded, stratified choice), its train part whole: what the trials are scored on."""
    if per_class is None:
        return split
    parts = [split.part("train"), split.part("val", per_class, seed),
             split.part("test", per_class, seed)]
    return dataclasses.replace(split, frame=pd.concat(parts, ignore_index=True))


def run(trials: Sequence[Trial], train_trial: TrainTrial, split: data.Split,
        cfg: dict, *, split_for: Callable[[Trial, data.Split], data.Split] | None = None,
        promote: bool = True) -> pd.DataFrame:
    """Run the ``trials`` not finished yet, then write the best one as the study's experiment
    (see the module docstring). Returns the table of trials.csv.

    ``split_for(trial, split)`` gives a trial a split of its own (a cross-validation fold:
    other train and val parts of the same images); ``promote`` False leaves the study's
    experiment to the caller (the best trial's model is kept in its trial folder)."""
    folder = Path(cfg["out_dir"])
    trials = by_question(select(trials, cfg.get("trials")))
    names = [t.name for t in trials]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"a study needs trials with distinct names: {names}")
    scored = scoring_split(split, cfg.get("score_per_class"), cfg["seed"])
    earlier = {row["trial"]: row for row in read_trials(folder).to_dict("records")}
    rows = {t.name: new_row(t, earlier.get(t.name)) for t in trials}
    budget = cfg.get("budget_minutes")
    for index, trial in enumerate(trials, 1):
        progress.report("train", trial=index, trials=len(trials), name=trial.name)
        if rows[trial.name]["status"] == DONE and is_finished(folder, trial):
            print(f"{trial.name}: finished earlier ({summary(rows[trial.name])})")
            continue
        spent = sum(number(r.get("seconds")) for r in rows.values() if r["status"] == DONE)
        if budget is not None and spent >= 60 * budget:
            rows[trial.name] = new_row(trial, None) | {"status": SKIPPED}
            print(f"{trial.name}: skipped, the study's budget of {budget} min is spent "
                  f"({spent / 60:.1f} min)")
            write_trials(folder, rows)
            continue
        rows[trial.name] = new_row(trial, None) | {"status": RUNNING}
        write_trials(folder, rows)
        own = scored if split_for is None else split_for(trial, scored)
        rows[trial.name] = attempt(trial, train_trial, own, cfg, rows)
        write_trials(folder, rows)
    progress.report("train", trial=None, trials=None, name=None)
    write_trials(folder, rows)
    table = read_trials(folder)    # as written, so callers see what trials.csv holds
    best = best_trial(table)
    if best is not None and promote:
        promote_trial(best, split, cfg)
    return table


def attempt(trial: Trial, train_trial: TrainTrial, split: data.Split, cfg: dict,
             rows: dict) -> dict:
    """Train and score one trial; a failure is recorded, not raised. What the training prints
    goes to the trial's ``trial.log``: the report keeps a line for its start and one for its
    result."""
    print(f"=== trial {trial.name}: " + ", ".join(f"{k}={v}" for k, v in
                                                 trial.settings.items()), flush=True)
    log = trial_dir(cfg["out_dir"], trial.name) / TRIAL_LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        with open(log, "a", encoding="utf-8") as out, contextlib.redirect_stdout(out):
            metrics = _train_and_score(trial, train_trial, split, cfg)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:
        with open(log, "a", encoding="utf-8") as out:
            traceback.print_exc(file=out)
        print(f"{trial.name}: failed ({type(error).__name__}: {error}); the study goes on "
              f"(its log: {log})")
        return new_row(trial, None) | {"status": FAILED,
                                    "error": f"{type(error).__name__}: {error}"[:500],
                                    "seconds": round(time.perf_counter() - started, 1)}
    row = new_row(trial, None) | _results(metrics, split, trial_cfg(trial, cfg))
    row.update(status=DONE, seconds=round(time.perf_counter() - started, 1))
    _keep_best_model(Path(cfg["out_dir"]), trial.name, row, rows)
    print(f"{trial.name}: {summary(row)}")
    return row


def trial_cfg(trial: Trial, cfg: dict) -> dict:
    """The cfg a trial trains with: the study's, its settings applied, its own folder."""
    return {**cfg, **trial.settings, "out_dir": trial_dir(cfg["out_dir"], trial.name),
            "trial": trial.name}


@contextlib.contextmanager
def seeded_scope(cfg: dict):
    """Seed by ``cfg`` (:func:`shared.config.train_seed`), then enter the distribution
    strategy's scope: where a trial's (or a compared arm's) model is built."""
    experiment.set_seed(config.train_seed(cfg))
    with distribute.strategy().scope():
        yield


def _train_and_score(trial: Trial, train_trial: TrainTrial, split: data.Split,
                     cfg: dict) -> dict:
    tcfg = trial_cfg(trial, cfg)
    tcfg["out_dir"].mkdir(parents=True, exist_ok=True)
    with seeded_scope(tcfg):  # the same seed for every trial, unless it is a setting
        model, history = train_trial(trial, tcfg, split)
    metrics, _ = evaluate.finish(model, split, tcfg, history, info={
        "study": cfg["experiment"], "trial": trial.name, "trial_settings": trial.settings})
    _log_hparams(tcfg["out_dir"], trial, metrics)
    return metrics


def _results(metrics: dict, split: data.Split, tcfg: dict) -> dict:
    low, high = (metrics.get("accuracy_ci95") or [None, None])[:2]
    seconds = metrics.get("train_seconds")
    history = read_history(tcfg["out_dir"])
    seen = len(split.part("train", tcfg.get("train_per_class"), tcfg["seed"])) * len(history)
    if metrics.get("evaluated_on") == "val":   # a split without test (data_quality's folds)
        return {"val_accuracy": metrics["accuracy"], "test_accuracy": None,
                "test_accuracy_ci_low": None, "test_accuracy_ci_high": None,
                "macro_f1": metrics.get("macro_f1"), "train_seconds": seconds,
                "parameters": (metrics.get("params") or {}).get("total"),
                "images_per_second": round(seen / seconds, 1) if seconds else None,
                "weights_source": metrics.get("weights_source"), "error": ""}
    return {"val_accuracy": metrics.get("val_accuracy"), "test_accuracy": metrics["accuracy"],
            "test_accuracy_ci_low": low, "test_accuracy_ci_high": high,
            "macro_f1": metrics.get("macro_f1"),
            "parameters": (metrics.get("params") or {}).get("total"),
            "backbone_layers_trained": max((phase.get("backbone_trainable_layers", 0)
                                            for phase in (metrics.get("phases") or {}).values()
                                            if phase.get("epochs", 1)), default=None),
            "train_seconds": seconds,
            "images_per_second": round(seen / seconds, 1) if seconds else None,
            "weights_source": metrics.get("weights_source"), "error": ""}


def _keep_best_model(folder: Path, name: str, row: dict, rows: dict) -> None:
    """Keep the model of the best trial so far (by validation accuracy) only."""
    others = {n: r for n, r in rows.items() if n != name and r["status"] == DONE}
    best = best_trial(pd.DataFrame([*others.values(), row]))
    for other in [*others, name]:
        if other != best:
            (trial_dir(folder, other) / "model.keras").unlink(missing_ok=True)


def best_trial(table: pd.DataFrame) -> str | None:
    """The finished trial with the highest validation accuracy (test accuracy where there is
    no validation split); the first one listed among equals."""
    done = table[table["status"] == DONE] if len(table) else table
    if done.empty:
        return None
    key = "val_accuracy" if done["val_accuracy"].notna().any() else "test_accuracy"
    return str(done.loc[done[key].astype(float).idxmax(), "trial"])


def promote_trial(best: str, split: data.Split, cfg: dict) -> None:
    """Write the best trial, scored on the whole val and test splits, as the study's
    experiment (unless it already is), and keep its model there only."""
    folder = Path(cfg["out_dir"])
    source = trial_dir(folder, best)
    if results.is_complete(folder) and read_json(folder / "metrics.json").get("trial") == best:
        (source / "model.keras").unlink(missing_ok=True)
        return
    if not (source / "model.keras").is_file():
        print(f"the best trial, {best}, has no model left (trained before its results were "
              f"moved?): the study's experiment is not written; run the study with FRESH=1")
        return
    recorded = read_json(source / "metrics.json")
    model = keras.saving.load_model(source / "model.keras", compile=False)
    model.weights_source = recorded.get("weights_source", "unknown")
    tcfg = {**recorded["settings"], "out_dir": folder, "run_dir": cfg["run_dir"],
            "experiment": cfg["experiment"]}
    keep = ("architecture", "recipes", "phases", "train_seconds", "trial_settings")
    info = {key: recorded[key] for key in keep if key in recorded}
    info.update(study=cfg["experiment"], trial=best, weights_source=model.weights_source,
                title=f"{config.TITLES.get(cfg['experiment'], cfg['experiment'])}: {best}")
    print(f"best trial by validation accuracy: {best}; scored on the whole val and test splits")
    evaluate.finish(model, split, tcfg, read_history(source), info=info)
    (source / "model.keras").unlink(missing_ok=True)


def _log_hparams(out_dir: Path, trial: Trial, metrics: dict) -> None:
    """The trial's settings and scores as TensorBoard HParams in ``<out_dir>/logs/hparams``."""
    try:
        import tensorflow as tf
        from tensorboard.plugins.hparams import api as hp
    except ImportError:
        return
    values = {k: v if isinstance(v, bool | int | float | str) else str(v)
              for k, v in trial.settings.items()}
    with tf.summary.create_file_writer(str(out_dir / "logs" / "hparams")).as_default():
        hp.hparams(values, trial_id=trial.name)
        for key in ("val_accuracy", "accuracy", "macro_f1"):
            if metrics.get(key) is not None:
                tf.summary.scalar(key if key != "accuracy" else "test_accuracy",
                                  float(metrics[key]), step=0)


# --------------------------------------------------------------------------- comparisons


def against_best(folder, table: pd.DataFrame) -> pd.DataFrame:
    """Every other finished trial against the best one on the same test images: accuracies,
    the difference in points, the exact two-sided McNemar p-value, that p-value corrected for
    the number of comparisons (Holm, ``p_holm``), and whether the trial is less accurate beyond
    chance (``p_holm`` < :data:`shared.evaluation.conclusions.ALPHA`)."""
    best = best_trial(table)
    columns = ["trial", "test_accuracy", "best_accuracy", "points", "p_value", "p_holm",
               "worse_than_best"]
    reference = trial_predictions(folder, best) if best else None
    rows = []
    for name in table.loc[table["status"] == DONE, "trial"] if len(table) else []:
        candidate = trial_predictions(folder, name)
        if name == best or candidate is None or reference is None:
            continue
        result = conclusions.compare(candidate, reference)
        points = 100 * (result["accuracy"] - result["reference_accuracy"])
        rows.append([name, result["accuracy"], result["reference_accuracy"], round(points, 1),
                     result["p_value"]])
    versus = pd.DataFrame(rows, columns=columns[:-2])
    versus["p_holm"] = ranking.holm(versus["p_value"].tolist())
    versus["worse_than_best"] = (versus["p_holm"] < conclusions.ALPHA) & (versus["points"] < 0)
    return versus[columns]


def conclusion(table: pd.DataFrame, versus_best: pd.DataFrame, what: str = "trial") -> str:
    """A study's conclusion, computed from its trials.csv and :func:`against_best`: whether the
    backbones were random (first), the best trial, which trials it beats beyond chance, the
    fastest and the smallest of those it does not, and what did not run."""
    done = table[table["status"] == DONE] if len(table) else table
    sentences = []
    if done["weights_source"].astype(str).str.startswith("random").any():
        sentences.append(
            "ImageNet weights were not loaded (on this machine they could not be had), so the "
            "backbones started from random weights: this study compares randomly initialised "
            "networks and says nothing about ImageNet transfer.")
    best = best_trial(table)
    if best is None:
        sentences.append("No trial finished, so there is nothing to compare.")
        return "\n\n".join(sentences + not_run(table))
    row = done.set_index("trial").loc[best]
    sentences.append(
        f"The best {what} by validation accuracy is {best}: {pct(row['test_accuracy'])} on "
        f"the study's test images (95% interval {pct(row['test_accuracy_ci_low'])}–"
        f"{pct(row['test_accuracy_ci_high'])}), with {int(row['parameters']):,} parameters "
        f"and {float(row['train_seconds']) / 60:.1f} min of training.")
    if len(versus_best):
        worse = versus_best.loc[versus_best["worse_than_best"], "trial"].tolist()
        close = versus_best.loc[~versus_best["worse_than_best"], "trial"].tolist()
        sentences.append(
            f"On the same test images (exact McNemar, {ranking.holm_text(len(versus_best))}), "
            + (f"it is more accurate beyond chance than {names_text(worse)}" if worse else
               "it is not more accurate beyond chance than any other")
            + (f"; {names_text(close)} cannot be told apart from it." if close else "."))
        rivals = done[done["trial"].isin([best, *close])]
        fastest = rivals.loc[rivals["train_seconds"].astype(float).idxmin()]
        smallest = rivals.loc[rivals["parameters"].astype(float).idxmin()]
        if close:
            sentences.append(
                f"Among those, {fastest['trial']} trains fastest "
                f"({float(fastest['train_seconds']) / 60:.1f} min) and {smallest['trial']} is "
                f"the smallest ({int(smallest['parameters']):,} parameters).")
    return "\n\n".join(sentences + not_run(table))


def not_run(table: pd.DataFrame) -> list[str]:
    """The sentences naming the trials skipped for the time budget and those that failed, and
    the study's questions the budget left open or answered in part."""
    sentences = []
    for status, label in ((SKIPPED, "Skipped for the time budget"), (FAILED, "Failed")):
        names = table.loc[table["status"] == status, "trial"].tolist()
        if names:
            sentences.append(f"{label}: {names_text(names)} (see trials.csv).")
    return sentences + open_questions(table)


def open_questions(table: pd.DataFrame) -> list[str]:
    """Which of the study's questions (trials.csv's ``question``) no finished trial answers,
    and which the budget cut short."""
    if "question" not in table or not (table["status"] == SKIPPED).any():
        return []
    asked = table[table["question"].notna() & (table["question"] != "")]
    open_, partly = [], []
    for question, rows in asked.groupby("question", sort=False):
        done = int((rows["status"] == DONE).sum())
        if done == 0 and (rows["status"] == SKIPPED).any():
            open_.append(question)
        elif (rows["status"] == SKIPPED).any():
            partly.append(f"{question} ({done} of {len(rows)} trials)")
    sentences = []
    if open_:
        sentences.append(f"The time budget left open: {names_text(open_)}; a larger "
                         "budget_minutes answers them.")
    if partly:
        sentences.append(f"Answered in part within the budget: {names_text(partly)}.")
    return sentences


def names_text(names: Sequence[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
