"""shared.studies.search: KerasTuner's trials become rows of the study's trials.csv, a killed search
resumes without training its finished trials again, the best trial is written as the study's
experiment, and an unknown tuner is named."""

from __future__ import annotations

import pandas as pd
import pytest

from shared import config
from shared.files import read_json
from shared.reporting import study_plots
from shared.studies import baseline, search, study
from tests.conftest import make_class_folder

pytestmark = pytest.mark.trains  # not in `make check`


def search_cfg(tmp_path, **overrides):
    folder = tmp_path / "images"
    if not folder.exists():      # written once: the run's split belongs to these images
        make_class_folder(folder, per_class=12, size=(16, 16))
    return config.experiment("search", "smoke", str(folder), tmp_path / "run", image_size=16,
                             **({"epochs": 2, "max_trials": 3} | overrides))


@pytest.fixture
def counted(monkeypatch):
    """The names of the trials trained, through baseline.train_trial."""
    trained = []
    real = baseline.train_trial

    def train_trial(trial, tcfg, split):
        trained.append(trial.name)
        return real(trial, tcfg, split)

    monkeypatch.setattr(baseline, "train_trial", train_trial)
    return trained


def test_killed_search_resumes_and_promotes_the_best_trial(tmp_path, counted, monkeypatch):
    cfg = search_cfg(tmp_path)
    split = search.start(cfg)
    counting = baseline.train_trial

    def killed_at_the_second(trial, tcfg, split):
        if counted:
            raise KeyboardInterrupt
        return counting(trial, tcfg, split)

    monkeypatch.setattr(baseline, "train_trial", killed_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        search.search(split, cfg)
    table = study.read_trials(cfg["out_dir"])
    # the baseline's default first, under the search's budget, then the tuner's trials
    assert table.set_index("trial")["status"].to_dict() == {"baseline-default": study.DONE,
                                                            "trial-0": study.RUNNING}
    assert (cfg["out_dir"] / "tuner").is_dir()

    monkeypatch.setattr(baseline, "train_trial", counting)
    asked = []      # the trials the search hands out (the tuner's: reloaded from its oracle)
    run_one = search.run_one
    monkeypatch.setattr(search, "run_one", lambda trial, *a: asked.append(trial.name)
                        or run_one(trial, *a))
    cfg = search_cfg(tmp_path)
    table = search.search(search.start(cfg), cfg)
    assert asked == ["baseline-default", "trial-0", "trial-1"]
    assert counted == ["baseline-default", "trial-0", "trial-1"]   # the default not again
    assert table["status"].tolist() == [study.DONE] * 3
    # every hyperparameter is a column, with Hyperband's epochs, then the study's results
    space = [p.name for p in search.hyperparameters(cfg).space]
    assert list(table.columns[:2]) == ["trial", "status"]
    assert set(space) | {"epochs"} <= set(table.columns)
    assert table[["val_accuracy", "test_accuracy", "parameters"]].notna().all().all()
    default = table.set_index("trial").loc["baseline-default"]
    assert {k: default[k] for k in [*space, "epochs"]} == search.default_settings(cfg)
    assert default["epochs"] == cfg["epochs"] and default["augment"] == cfg["augment"]
    # as notebook 07 draws it, with the default's row among the tuner's
    assert study_plots.accuracy_by_setting(table, [*space, "epochs"], tmp_path) is not None

    metrics = read_json(cfg["out_dir"] / "metrics.json")
    best = study.best_trial(table)
    assert metrics["study"] == "search" and metrics["trial"] == best
    assert metrics["trial_settings"] == search.best_settings(table)
    assert (cfg["out_dir"] / "model.keras").is_file()
    text = search.conclusion(table, cfg)
    assert text.startswith(f"The best setting by validation accuracy is {best}")
    assert ("the default trial is the best" in text if best == "baseline-default" else
            "Against the baseline's default setting trained within the same budget (2 epochs"
            in text and "exact McNemar test" in text)

    table = search.search(search.start(cfg), cfg)   # finished: nothing trains again
    assert counted == ["baseline-default", "trial-0", "trial-1"]


def test_the_conclusion_compares_the_best_trial_with_the_default(tmp_path, monkeypatch):
    """Catches a conclusion that leaves the default out (07's best sat far below 01's figure
    with no word on why)."""
    table = pd.DataFrame({"trial": ["baseline-default", "trial-0"], "status": study.DONE,
                          "val_accuracy": [0.5, 0.9]})
    predictions = {"baseline-default": [1] * 50 + [0] * 50, "trial-0": [1] * 90 + [0] * 10}
    monkeypatch.setattr(study, "trial_predictions", lambda folder, name: pd.DataFrame({
        "split": "test", "path": [f"{i}.png" for i in range(100)], "label": 1,
        "predicted": predictions[name]}))
    text = search.against_default(table, {"out_dir": tmp_path, "epochs": 9})
    assert "within the same budget (9 epochs on the search's images): On the same 100 images" \
        in text and "trial-0 (90.0%) is 40.0 points more accurate than baseline-default" in text
    assert "No setting the search tried beats" in search.against_default(
        table.assign(val_accuracy=[0.9, 0.5]), {"out_dir": tmp_path, "epochs": 9})


def test_space_table_lists_every_hyperparameter(tmp_path):
    cfg = search_cfg(tmp_path)
    table = search.space_table(search.hyperparameters(cfg | {"image_size": 64}))
    assert table["hyperparameter"].tolist() == ["blocks", "filters", "dropout", "l2",
                                                "learning_rate", "optimizer", "augment"]
    rows = table.set_index("hyperparameter")
    assert rows.loc["blocks", "values"] == "2 to 4 step 1"     # around 64 px's three blocks
    assert rows.loc["learning_rate", "sampling"] == "log"
    assert rows.loc["optimizer", "values"] == ", ".join(search.OPTIMIZERS)
    # the defaults are the baseline's: build_baseline's own at 28 px, the architecture's above
    small = search.space_table(search.hyperparameters(cfg | {"image_size": 28}))
    defaults = small.set_index("hyperparameter")["default"]
    assert (defaults["blocks"], defaults["filters"], defaults["dropout"]) == (2, 32, 0.3)
    assert (rows.loc["blocks", "default"], rows.loc["dropout", "default"]) == (3, 0.0)


def test_an_unknown_tuner_is_named(tmp_path):
    cfg = search_cfg(tmp_path, tuner="grid")
    with pytest.raises(ValueError, match="unknown tuner 'grid': the parameter tuner must be one "
                                         "of hyperband, bayesian"):
        search.search(search.start(cfg), cfg)


def test_accuracy_by_setting_draws_a_panel_per_hyperparameter(tmp_path):
    table = pd.DataFrame({"trial": ["a", "b", "c", "d"], "status": [study.DONE] * 3 + ["failed"],
                          "learning_rate": [1e-4, 1e-3, 1e-2, None],
                          "optimizer": ["adam", "sgd", "adam", None],
                          "val_accuracy": [0.5, 0.7, 0.6, None]})
    fig = study_plots.accuracy_by_setting(table, ["learning_rate", "optimizer", "absent"], tmp_path)
    assert (tmp_path / "figures" / "accuracy_by_hyperparameter.png").is_file()
    rate, optimizer = [ax for ax in fig.axes if ax.axison]
    assert rate.get_xscale() == "log" and rate.get_xlabel() == "learning_rate"
    assert [t.get_text() for t in optimizer.get_xticklabels()] == ["adam", "sgd"]
    best = rate.collections[1].get_offsets()      # the star: trial b
    assert best.tolist() == [[1e-3, 0.7]]
