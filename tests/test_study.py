"""shared.studies.study: trials.csv, resume at the first unfinished trial, failures recorded, the
time budget, the best trial written as an ordinary experiment, HParams logs."""

from __future__ import annotations

import pandas as pd
import pytest

from shared import config, data, results
from shared.files import read_json
from shared.models import networks
from shared.studies import study
from shared.training import recipes
from shared.training.fitting import fit
from tests.conftest import make_class_folder

pytestmark = pytest.mark.trains  # not in `make check`

FAST = dict(patience=None, reduce_lr_factor=None)
TRIALS = [study.Trial("narrow", {"filters": 2}), study.Trial("wide", {"filters": 8}),
          study.Trial("broken", {"filters": -1})]


class Trainer:
    """A trial function that trains a tiny baseline CNN and counts what it trained;
    ``interrupt`` names a trial that is "killed" (KeyboardInterrupt) when it starts."""

    def __init__(self, interrupt: str | None = None):
        self.trained, self.interrupt = [], interrupt

    def __call__(self, trial, cfg, split):
        if trial.name == self.interrupt:
            raise KeyboardInterrupt
        self.trained.append(trial.name)
        if cfg["filters"] < 0:
            raise ValueError("filters must be positive")
        train_ds, val_ds, _ = data.training_data(split, cfg)
        size = cfg["image_size"]
        model = networks.build_baseline((size, size, 3), len(split.class_names), blocks=1,
                                      filters=cfg["filters"], dense=(8,))
        history = fit(model, train_ds, val_ds, recipes.Recipe(epochs=1, **FAST),
                        cfg["out_dir"])
        return model, history


@pytest.fixture
def study_cfg(tmp_path):
    folder = make_class_folder(tmp_path / "images", per_class=12, size=(16, 16))
    cfg = config.experiment("backbones", "smoke", str(folder), tmp_path / "run", image_size=16)
    cfg["trials"] = None    # all of TRIALS, not the smoke profile's choice
    return cfg, study.start(cfg)


def test_a_study_writes_its_trials_and_its_best_trial_as_an_experiment(study_cfg, capsys):
    cfg, split = study_cfg
    trainer = Trainer()
    table = study.run(TRIALS, trainer, split, cfg)
    folder = cfg["out_dir"]
    # the report: a line per trial's start and one per result; its training in trial.log
    printed = capsys.readouterr().out
    assert "epoch 1/" not in printed and "narrow: val " in printed
    assert "epoch 1/" in (folder / "trials" / "narrow" / study.TRIAL_LOG).read_text()
    assert "ValueError" in (folder / "trials" / "broken" / study.TRIAL_LOG).read_text()

    written = study.read_trials(folder)
    assert written["trial"].tolist() == ["narrow", "wide", "broken"]
    assert written["status"].tolist() == ["done", "done", "failed"]
    assert "filters must be positive" in written.loc[2, "error"]
    for column in ("val_accuracy", "test_accuracy", "test_accuracy_ci_low",
                   "test_accuracy_ci_high", "macro_f1", "parameters", "train_seconds",
                   "images_per_second", "filters"):
        assert written.loc[:1, column].notna().all(), column
    done = written.iloc[:2]
    assert (done.test_accuracy_ci_low <= done.test_accuracy).all()
    assert (done.test_accuracy <= done.test_accuracy_ci_high).all()
    assert done.parameters.iloc[1] > done.parameters.iloc[0]   # 8 filters against 2
    pd.testing.assert_frame_equal(written, table, check_dtype=False)

    best = study.best_trial(written)
    assert best == done.loc[done.val_accuracy.astype(float).idxmax(), "trial"]
    assert results.is_complete(folder)
    metrics = read_json(folder / "metrics.json")
    assert metrics["trial"] == best and metrics["study"] == "backbones"
    assert metrics["settings"]["filters"] == dict(narrow=2, wide=8)[best]
    # scored again on the whole test split: the run's other experiments' images
    assert metrics["images"]["test"] == len(split.part("test"))
    assert (folder / "model.keras").is_file()
    assert not list((folder / "trials").glob("*/model.keras"))   # one model per study
    assert [r["dir"] for r in results.read_results(cfg["run_dir"])] == ["backbones"]
    assert list((folder / "trials" / "narrow" / "logs" / "hparams").glob("events.out.*"))


def test_a_killed_study_resumes_at_its_first_unfinished_trial(study_cfg):
    cfg, split = study_cfg
    with pytest.raises(KeyboardInterrupt):
        study.run(TRIALS, Trainer(interrupt="wide"), split, cfg)
    assert study.read_trials(cfg["out_dir"])["status"].tolist() == ["done", "running",
                                                                      "pending"]
    again = Trainer()
    table = study.run(TRIALS, again, split, cfg)
    assert again.trained == ["wide", "broken"]       # narrow is never trained again
    assert table["status"].tolist() == ["done", "done", "failed"]

    third = Trainer()
    study.run(TRIALS, third, split, cfg)
    assert third.trained == ["broken"]                # a failed trial is tried again

    study.start(cfg)        # the notebook opened again: its best trial stays the experiment
    assert results.is_complete(cfg["out_dir"])
    assert not (cfg["out_dir"] / "previous").exists()


def test_trials_after_the_time_budget_are_listed_as_skipped(study_cfg):
    cfg, split = study_cfg
    cfg["budget_minutes"] = 0
    table = study.run(TRIALS[:2], Trainer(), split, cfg)
    assert table["status"].tolist() == ["skipped (time budget)"] * 2
    assert not (cfg["out_dir"] / "metrics.json").exists()
    assert "Skipped for the time budget: narrow and wide" in study.conclusion(
        table, study.against_best(cfg["out_dir"], table))


def test_each_question_gets_its_first_trial_before_any_gets_a_second(study_cfg):
    """Catches a budget that spends itself on one question's trials and leaves another question
    unanswered (05's cut DenseNet121 behind seven backbones)."""
    a1, a2, a3 = (study.Trial(f"a{i}", {"filters": 2}, "question a") for i in (1, 2, 3))
    b1, b2 = (study.Trial(f"b{i}", {"filters": 2}, "question b") for i in (1, 2))
    c1 = study.Trial("c1", {"filters": 2}, "question c")
    assert [t.name for t in study.by_question([a1, a2, a3, b1, b2, c1])] == \
        ["a1", "b1", "c1", "a2", "b2", "a3"]
    cfg, split = study_cfg
    cfg["budget_minutes"] = 0
    table = study.run([a1, a2, b1], Trainer(), split, cfg)
    assert table["trial"].tolist() == ["a1", "b1", "a2"]
    assert table["question"].tolist() == ["question a", "question b", "question a"]
    done = table.assign(status=[study.DONE, study.SKIPPED, study.SKIPPED])
    assert study.open_questions(done) == [
        "The time budget left open: question b; a larger budget_minutes answers them.",
        "Answered in part within the budget: question a (1 of 2 trials)."]
    failed = done.assign(status=[study.DONE, study.FAILED, study.SKIPPED])
    assert "left open: question b" not in " ".join(study.open_questions(failed))  # it failed


def test_selecting_trials_by_name_and_the_conclusion(study_cfg):
    cfg, split = study_cfg
    with pytest.raises(ValueError, match="unknown trial.*nope.*narrow, wide, broken"):
        study.select(TRIALS, ["nope"])
    cfg["trials"] = ["wide", "narrow"]
    table = study.run(TRIALS, Trainer(), split, cfg)
    assert table["trial"].tolist() == ["narrow", "wide"]   # the study's order
    versus = study.against_best(cfg["out_dir"], table)
    best = study.best_trial(table)
    assert versus["trial"].tolist() == [n for n in ("narrow", "wide") if n != best]
    assert 0 <= versus.loc[0, "p_value"] <= versus.loc[0, "p_holm"] <= 1
    text = study.conclusion(table, versus)
    assert text.startswith(f"The best trial by validation accuracy is {best}")
