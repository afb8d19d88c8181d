"""Hyperparameter search over the baseline CNN with KerasTuner (notebook 07): a study
(:mod:`shared.studies.study`) whose trials KerasTuner's oracle chooses, Hyperband by default or
Bayesian optimisation (``tuner``).

Its folder, ``<run_dir>/search/``, is a study's (trials.csv, ``trials/<trial>/``, the best
trial as the experiment) plus ``tuner/``, KerasTuner's own state: a killed search reloads it
and goes on; finished trials are never trained again, the one that was running starts again
(and its training resumes from its last finished epoch). Each trial is trained by
:func:`shared.studies.baseline.train_trial`; the oracle chooses by validation accuracy only.
Hyperband's rounds train each setting anew for their number of epochs (no weights are
carried over). The search stops after ``max_trials`` trials or once its finished trials have
taken ``budget_minutes``; the best trial's model is then scored on the whole val and test
splits as the study's experiment.

Before the tuner's first trial, the search trains the baseline CNN as notebook 01 builds it
(the search's own settings, its space's defaults) as the trial ``baseline-default``, with the
search's most epochs and on its images, within its budget: the conclusion compares the best
trial with it on the same images, so the search says whether it beat the default under equal
means (notebook 01 trains longer, on every image: its accuracy is not comparable).

Distributed (KerasTuner's own mode): one process holds the oracle, the others run trials,
all on the same run folder (shared storage when they are on several machines)::

    KERASTUNER_TUNER_ID=chief KERASTUNER_ORACLE_IP=<chief's address> \\
        KERASTUNER_ORACLE_PORT=8000 python -m shared.studies.search --run <run> --profile cpu
    KERASTUNER_TUNER_ID=worker0 KERASTUNER_ORACLE_IP=<chief's address> \\
        KERASTUNER_ORACLE_PORT=8000 python -m shared.studies.search --run <run> --profile cpu

The chief runs no trial: it waits until the workers have run every one, then writes the
study's experiment. Notebook 07 run on the same run folder afterwards reloads the finished
search and trains nothing again.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import math
import os
import shutil
from pathlib import Path

import keras_tuner as kt
import pandas as pd

from shared import config, progress, results
from shared.data import augment
from shared.evaluation import conclusions
from shared.studies import baseline, study, trials
from shared.training import recipes

TUNERS = ("hyperband", "bayesian")
DEFAULT_TRIAL = "baseline-default"
OBJECTIVE = "val_accuracy"
OPTIMIZERS = ("adam", "sgd", "adamw")
AUGMENTATIONS = ("none", "flip", "basic", "color", "randaugment")


def hyperparameters(cfg: dict) -> kt.HyperParameters:
    """The search space for ``cfg["image_size"]`` px images: around the baseline's own
    architecture at that size (blocks and starting filters one step either side), dropout,
    L2, learning rate, optimizer and augmentation policy."""
    base = baseline.ARCHITECTURE_DEFAULTS | recipes.baseline_architecture(cfg["image_size"])
    blocks, filters = base["blocks"], base["filters"]
    hp = kt.HyperParameters()
    hp.Int("blocks", max(1, blocks - 1), blocks + 1, default=blocks)
    hp.Choice("filters", [filters // 2, filters, 2 * filters], default=filters)
    hp.Float("dropout", 0.0, 0.5, step=0.1, default=base["dropout"])
    hp.Choice("l2", [0.0, 1e-5, 1e-4, 1e-3], default=0.0)
    hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=1e-3)
    hp.Choice("optimizer", list(OPTIMIZERS), default="adam")
    hp.Choice("augment", [a for a in AUGMENTATIONS if a in augment.POLICIES], default="flip")
    return hp


def space_table(hp: kt.HyperParameters) -> pd.DataFrame:
    """One row per hyperparameter: its kind, the values it takes, how they are sampled and
    its default (the first trial of a Bayesian search)."""
    rows = []
    for p in hp.space:
        c = p.get_config()
        if "values" in c:
            values, sampling = ", ".join(map(str, c["values"])), "choice"
        else:
            step = f" step {c['step']}" if c.get("step") else ""
            values, sampling = f"{c['min_value']} to {c['max_value']}{step}", c["sampling"]
        rows.append({"hyperparameter": c["name"], "kind": type(p).__name__.lower(),
                     "values": values, "sampling": sampling, "default": c.get("default")})
    return pd.DataFrame(rows)


def settings_of(values: dict) -> dict:
    """A KerasTuner trial's values as study settings: Hyperband's ``tuner/epochs`` becomes
    ``epochs``, its other bookkeeping is dropped."""
    settings = {k: v for k, v in values.items() if not k.startswith("tuner/")}
    if "tuner/epochs" in values:
        settings["epochs"] = int(values["tuner/epochs"])
    return settings


# --------------------------------------------------------------------------- the oracle


class _Budget:
    """Stops creating trials once the finished trials of trials.csv have taken the search's
    ``budget_minutes``."""

    folder: Path | None = None
    budget_minutes: float | None = None

    def populate_space(self, trial_id):
        spent = spent_seconds(study.read_trials(self.folder)) if self.folder else 0.0
        if self.budget_minutes is not None and spent >= 60 * self.budget_minutes:
            print(f"the search's budget of {self.budget_minutes} min is spent "
                  f"({spent / 60:.1f} min): no new trial")
            return {"status": kt.engine.trial.TrialStatus.STOPPED, "values": None}
        return super().populate_space(trial_id)


class _Hyperband(_Budget, kt.oracles.HyperbandOracle):
    pass


class _Bayesian(_Budget, kt.oracles.BayesianOptimizationOracle):
    pass


def oracle(cfg: dict) -> kt.Oracle:
    """The oracle of ``cfg["tuner"]``, limited to ``max_trials`` trials and
    ``budget_minutes``."""
    name = cfg.get("tuner")
    if name not in TUNERS:
        raise ValueError(f"unknown tuner {name!r}: the parameter tuner must be one of "
                         f"{', '.join(TUNERS)}")
    common = dict(objective=kt.Objective(OBJECTIVE, "max"), hyperparameters=hyperparameters(cfg),
                  seed=cfg["seed"], allow_new_entries=False, tune_new_entries=False)
    if name == "hyperband":
        chosen = _Hyperband(max_epochs=cfg["epochs"], factor=cfg["hyperband_factor"], **common)
        chosen.max_trials = cfg.get("max_trials")    # Hyperband has no limit of its own
    else:
        chosen = _Bayesian(max_trials=cfg.get("max_trials") or 10, **common)
    chosen.folder, chosen.budget_minutes = Path(cfg["out_dir"]), cfg.get("budget_minutes")
    return chosen


# --------------------------------------------------------------------------- the tuner


class StudyTuner(kt.engine.base_tuner.BaseTuner):
    """A KerasTuner tuner whose trials are trials of the study in ``cfg["out_dir"]``: each one
    is trained and scored like any study trial and recorded in its trials.csv."""

    def __init__(self, cfg: dict, split):
        super().__init__(oracle(cfg), directory=str(cfg["out_dir"]), project_name="tuner",
                         overwrite=False)
        self.cfg, self.split = cfg, split

    def _populate_initial_space(self):
        # KerasTuner reloads the oracle only where this tuner id saved its own state: a search
        # that another id ran (the chief of a distributed search) is reloaded here
        if not is_worker() and os.path.isfile(os.path.join(self.project_dir, "oracle.json")):
            self.oracle.reload()

    def run_trial(self, trial, *args, **kwargs):
        row = run_one(study.Trial(f"trial-{trial.trial_id}",
                                  settings_of(trial.hyperparameters.values)),
                      self.split, self.cfg)
        if row["status"] != study.DONE:
            raise kt.errors.FailedTrialError(row["error"])
        return {OBJECTIVE: float(row["val_accuracy"])}


def run_one(trial: study.Trial, split, cfg: dict) -> dict:
    """Train and score one trial (unless trials.csv has it finished) and record its row in
    trials.csv, beside the rows other processes of a distributed search may be writing."""
    folder = Path(cfg["out_dir"])
    with _locked(folder):
        rows = _rows(folder)
        earlier = rows.get(trial.name)
        if (earlier and earlier["status"] == study.DONE
                and results.is_complete(study.trial_dir(folder, trial.name))):
            print(f"{trial.name}: finished earlier")
            return earlier
        rows[trial.name] = study.new_row(trial, None) | {"status": study.RUNNING}
        study.write_trials(folder, rows)
    progress.report("train", trial=len(rows), trials=cfg.get("max_trials"), name=trial.name)
    scored = study.scoring_split(split, cfg.get("score_per_class"), cfg["seed"])
    row = study.attempt(trial, baseline.train_trial, scored, cfg, rows)
    progress.report("train", trial=None, trials=None, name=None)
    with _locked(folder):
        rows = _rows(folder)
        rows[trial.name] = row
        study.write_trials(folder, rows)
    return row


def _rows(folder: Path) -> dict:
    return {row["trial"]: row for row in study.read_trials(folder).to_dict("records")}


@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive lock on the study's trials.csv between the processes of a search."""
    (folder / "tuner").mkdir(parents=True, exist_ok=True)
    with open(folder / "tuner" / "trials.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def spent_seconds(table: pd.DataFrame) -> float:
    done = table[table["status"] == study.DONE] if len(table) else table
    return float(pd.to_numeric(done.get("seconds", pd.Series(dtype=float))).fillna(0).sum())


# --------------------------------------------------------------------------- the search


def start(cfg: dict):
    """:func:`shared.studies.study.start`, which also deletes KerasTuner's state when the study
    starts afresh (``cfg["fresh"]``)."""
    if cfg.get("fresh"):
        shutil.rmtree(Path(cfg["out_dir"]) / "tuner", ignore_errors=True)
    return study.start(cfg)


def search(split, cfg: dict) -> pd.DataFrame:
    """Run (or resume) the search of ``cfg`` on ``split``; unless this process is a worker of
    a distributed search, write its best trial as the study's experiment. Returns the table
    of trials.csv."""
    if split.part("val").empty:
        raise ValueError("the search chooses by validation accuracy: val_fraction must be "
                         "above 0")
    if "KERASTUNER_ORACLE_IP" not in os.environ:     # a distributed search's chief runs none
        run_one(study.Trial(DEFAULT_TRIAL, default_settings(cfg)), split, cfg)
    tuner = StudyTuner(cfg, split)
    tuner.search()
    if not is_worker():
        # a chief's oracle last saved itself before its last trial left its ongoing trials
        tuner.save()
    table = study.read_trials(cfg["out_dir"])
    if is_worker():
        return table
    best = study.best_trial(table)
    if best is not None:
        study.promote_trial(best, split, cfg)
    return table


def default_settings(cfg: dict) -> dict:
    """The baseline's own setting as a trial of the search: the space's defaults (its
    architecture at this image size), the study's learning rate and augmentation, and the
    search's most epochs."""
    return (hyperparameters(cfg).values
            | {"learning_rate": cfg["learning_rate"], "augment": cfg["augment"],
               "epochs": int(cfg["epochs"])})


def is_worker() -> bool:
    """Whether this process runs trials for a chief oracle elsewhere (KERASTUNER_* set)."""
    return ("KERASTUNER_ORACLE_IP" in os.environ
            and "chief" not in os.environ.get("KERASTUNER_TUNER_ID", ""))


def best_settings(table: pd.DataFrame) -> dict:
    """The settings of the best trial by validation accuracy ({} when none finished)."""
    best = study.best_trial(table)
    if best is None:
        return {}
    row = table.set_index("trial").loc[best]
    results = set(trials.RESULT_COLUMNS) | {"status"}
    return {k: v.item() if hasattr(v, "item") else v for k, v in row.items()
            if k not in results and not _blank(v)}


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def conclusion(table: pd.DataFrame, cfg: dict) -> str:
    """The study's conclusion (:func:`shared.studies.study.conclusion`), then what the search ran:
    its trials, and whether its budget cut it short."""
    text = study.conclusion(table, study.against_best(cfg["out_dir"], table), what="setting")
    done = int((table["status"] == study.DONE).sum()) if len(table) else 0
    budget = cfg.get("budget_minutes")
    spent = spent_seconds(table) / 60
    tail = (f"The {cfg['tuner']} search finished {done} of {len(table)} trial(s) in "
            f"{spent:.1f} min (training and scoring)")
    if budget is not None and spent >= budget:
        tail += f", and stopped at its budget of {budget} min"
    best = best_settings(table)
    if best:
        tail += "; the best settings: " + ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.items())
    return f"{text}\n\n{tail}.{against_default(table, cfg)}"


def against_default(table: pd.DataFrame, cfg: dict) -> str:
    """The best trial against ``baseline-default`` on the same images (a paragraph, or
    nothing when either did not finish or the default is the best)."""
    best = study.best_trial(table)
    rows = table.set_index("trial") if len(table) else table
    if best in (None, DEFAULT_TRIAL) or DEFAULT_TRIAL not in rows.index \
            or rows.loc[DEFAULT_TRIAL, "status"] != study.DONE:
        if best == DEFAULT_TRIAL:
            return ("\n\nNo setting the search tried beats the baseline's default on "
                    "validation: the default trial is the best.")
        return ""
    folder = cfg["out_dir"]
    result = conclusions.compare(study.trial_predictions(folder, best),
                                 study.trial_predictions(folder, DEFAULT_TRIAL))
    return ("\n\nAgainst the baseline's default setting trained within the same budget "
            f"({int(cfg['epochs'])} epochs on the search's images): "
            + conclusions.comparison_sentence(result, best, DEFAULT_TRIAL)
            + " Notebook 01 trains the default longer and on every training image, so its "
            "accuracy is not comparable with the search's trials.")


def main(argv=None) -> None:
    """``python -m shared.studies.search``: run the search of a run (one process of a distributed
    search when KERASTUNER_* are set)."""
    parser = argparse.ArgumentParser(prog="python -m shared.studies.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run name (under reports/) or folder")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--data", default=None, help="dataset (default: fashion-mnist)")
    parser.add_argument("--tuner", default=None, choices=TUNERS)
    parser.add_argument("--max-trials", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    args = parser.parse_args(argv)
    run_dir = Path(args.run) if Path(args.run).is_absolute() else config.REPORTS_DIR / args.run
    cfg = config.experiment("search", args.profile, args.data, run_dir, tuner=args.tuner,
                            max_trials=args.max_trials, epochs=args.epochs,
                            image_size=args.image_size)
    if is_worker():
        cfg["fresh"] = False    # only the chief may clear the study
    table = search(start(cfg), cfg)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
