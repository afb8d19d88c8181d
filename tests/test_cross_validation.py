"""shared.studies.cross_validation: stratified folds of train+val only, one trial per fold scored on
its held-out fold, the mean and interval, the final model retrained on train and val and
scored once on test, the fold ensemble against it."""

from __future__ import annotations

import pandas as pd
import pytest

from shared import config, files
from shared.studies import cross_validation, study
from tests.conftest import make_class_folder

pytestmark = pytest.mark.trains  # not in `make check`


@pytest.fixture
def cv_cfg(tmp_path):
    folder = make_class_folder(tmp_path / "images", per_class=12, size=(16, 16))
    cfg = config.experiment("cross_validation", "smoke", str(folder), tmp_path / "run",
                            image_size=16, epochs=1, folds=3, pool_per_class=None)
    cfg |= {"blocks": 1, "filters": 4, "dense": (8,)}   # a tiny CNN
    return cfg, study.start(cfg)


def test_folds_are_stratified_and_never_touch_test(cv_cfg):
    cfg, split = cv_cfg
    rows = cross_validation.pool(split, None, cfg["seed"])
    assert set(rows["path"]) == set(split.part("train")["path"]) | set(split.part("val")["path"])
    number = cross_validation.assign_folds(rows, 3, cfg["seed"])
    assert sorted(set(number)) == [1, 2, 3]
    per_fold = pd.crosstab(number, rows["label"])
    assert (per_fold.max() - per_fold.min()).max() <= 1          # stratified
    one = cross_validation.fold_split(split, rows, number, 2)
    assert set(one.part("val")["path"]) == set(rows["path"][number == 2])
    assert set(one.part("train")["path"]) == set(rows["path"][number != 2])
    pd.testing.assert_frame_equal(one.part("test"), split.part("test"))
    with pytest.raises(ValueError, match="folds=20"):
        cross_validation.assign_folds(rows, 20, cfg["seed"])
    with pytest.raises(ValueError, match="folds must be"):
        cross_validation.assign_folds(rows, 1, cfg["seed"])


def test_summary_mean_std_and_t_interval():
    table = pd.DataFrame({"trial": ["fold-1", "fold-2", "fold-3", "fold-4"],
                          "status": ["done", "done", "done", "skipped (time budget)"],
                          "val_accuracy": [0.8, 0.9, 0.85, None]})
    summary = cross_validation.summarise(table)
    assert summary["finished"] == 3 and summary["folds"] == 4
    assert summary["mean"] == pytest.approx(0.85)
    assert summary["std"] == pytest.approx(0.05)
    # t(0.975, 2) = 4.303: half-width 4.303 * 0.05 / sqrt(3)
    assert summary["ci95"] == pytest.approx([0.85 - 0.12422, 0.85 + 0.12422], abs=1e-4)


def test_cross_validation_end_to_end_and_resume(cv_cfg):
    cfg, split = cv_cfg
    summary = cross_validation.run(split, cfg)
    table = study.read_trials(cfg["out_dir"])
    assert table["trial"].tolist() == ["fold-1", "fold-2", "fold-3"]
    assert (table["status"] == "done").all()
    assert summary["setting"] == "baseline" and summary["ci95"] is not None
    # each fold's val is its held-out fold: together, every pooled image once
    held_out = [files.read_json(cfg["out_dir"] / "trials" / name / "metrics.json")["images"]["val"]
                for name in table["trial"]]
    assert sum(held_out) == len(cross_validation.pool(split, None, 0))
    assert max(held_out) - min(held_out) <= 1
    metrics, predictions = cross_validation.final_model(split, cfg, summary)
    recorded = files.read_json(cfg["out_dir"] / "metrics.json")
    assert recorded["cross_validation"]["fold_accuracy"] == summary["fold_accuracy"]
    assert recorded["cross_validation"]["final_train_images"] == (len(split.part("train"))
                                                                  + len(split.part("val")))
    assert set(predictions["split"]) == {"test"}
    ensemble = cross_validation.fold_ensemble(cfg["out_dir"], table, predictions)
    assert ensemble["members"] == 3 and ensemble["images"] == len(split.part("test"))
    assert 0 <= ensemble["p_value"] <= 1
    shown = cross_validation.ensemble_table(ensemble)
    assert shown.loc[0, "final model"] == pytest.approx(metrics["accuracy"])
    # a second run reads everything back
    before = (cfg["out_dir"] / "model.keras").stat().st_mtime_ns
    again = cross_validation.run(split, cfg)
    assert again["fold_accuracy"] == summary["fold_accuracy"]
    cross_validation.final_model(split, cfg, again)
    assert (cfg["out_dir"] / "model.keras").stat().st_mtime_ns == before


def test_the_search_setting_is_taken_when_the_run_has_one(cv_cfg, tmp_path):
    cfg, _ = cv_cfg
    assert cross_validation.chosen_setting(cfg) == ("baseline", {})
    with pytest.raises(ValueError, match="no finished search"):
        cross_validation.chosen_setting(cfg | {"setting": "search"})
    with pytest.raises(ValueError, match="setting must be"):
        cross_validation.chosen_setting(cfg | {"setting": "best"})
    search = cfg["run_dir"] / "search"
    search.mkdir(parents=True)
    (search / "predictions.csv").write_text("split,path,label,predicted,p_cat\n"
                                            "test,a.png,cat,cat,1.0\n")
    files.write_json(search / "metrics.json", {
        "status": "complete", "images": {"test": 1}, "trial": "t3",
        "trial_settings": {"filters": 8, "train_seed": 3}})
    assert cross_validation.chosen_setting(cfg) == ("search: t3", {"filters": 8})
    assert cross_validation.chosen_setting(cfg | {"setting": "baseline"}) == ("baseline", {})
