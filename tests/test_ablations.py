"""shared.studies.ablations: one change at a time from the reference, each over train seeds; the
summary per change (mean, spread, Welch's verdict), the conclusion, and a tiny real study."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest

from shared import config
from shared.reporting import study_plots
from shared.studies import ablations, baseline, study
from tests.conftest import make_class_folder

pytestmark = pytest.mark.trains  # not in `make check`


@pytest.fixture
def study_cfg(tmp_path):
    folder = make_class_folder(tmp_path / "images", per_class=10, size=(16, 16))
    cfg = config.experiment("ablations", "smoke", str(folder), tmp_path / "run", image_size=16)
    return cfg, study.start(cfg)


def test_trials_change_one_setting_at_a_time_over_seeds(study_cfg):
    cfg, split = study_cfg
    cfg = cfg | {"changes": ["augment=mixup", "class_weight=off", "train_per_class=3"],
                 "seeds": 2}
    chosen = ablations.trials(cfg, split)
    assert [t.name for t in chosen] == [
        "reference@seed1", "reference@seed2", "augment=mixup@seed1", "augment=mixup@seed2",
        "class_weight=off@seed1", "class_weight=off@seed2", "train_per_class=3@seed1",
        "train_per_class=3@seed2"]
    assert chosen[0].settings == {"train_seed": 1}
    assert chosen[3].settings == {"augment": "mixup", "train_seed": 2}
    assert chosen[4].settings == {"class_weight": False, "train_seed": 1}
    assert chosen[7].settings == {"train_per_class": 3, "train_seed": 2}
    assert ablations.change_of("augment=mixup@seed2") == "augment=mixup"
    with pytest.raises(ValueError, match="colour=on"):
        ablations.parse_change("colour=on")
    with pytest.raises(ValueError, match="unknown augmentation policy"):
        ablations.parse_change("augment=sepia")


def test_default_changes_cover_every_policy_class_weights_plain_epochs_and_the_curve(
        study_cfg):
    cfg, split = study_cfg
    cfg = cfg | {"epochs": 12, "augment": "flip", "class_weight": True}
    changes = ablations.default_changes(cfg | {"train_per_class": None}, split)
    policies = [c.partition("=")[2] for c in changes if c.startswith("augment=")]
    assert policies == ["none", "basic", "color", "randaugment", "cutmix", "mixup", "gridmask"]
    assert "class_weight=off" in changes and "plain_epochs=5" in changes
    # 10 images per class leave about 6 to train on: no point of the curve is below it
    assert not [c for c in changes if c.startswith("train_per_class=")]
    many = ablations.default_changes(cfg, split_with(split, per_class=260))
    assert [c for c in many if c.startswith("train_per_class=")] == [
        "train_per_class=50", "train_per_class=100", "train_per_class=200"]
    assert "plain_epochs=0" not in ablations.default_changes(cfg | {"epochs": 1}, split)


def split_with(split, per_class: int):
    """``split`` whose train part has ``per_class`` (made-up) images of each class."""
    rows = [{"path": f"{c}/{i}.png", "label": c, "split": "train"}
            for c in split.class_names for i in range(per_class)]
    frame = pd.DataFrame(rows).reindex(columns=split.frame.columns)
    return dataclasses.replace(split, frame=frame)


def table_of(results: dict[str, list[float]]) -> pd.DataFrame:
    """A trials.csv of finished trials: per change, its test accuracy per seed."""
    rows = [{"trial": f"{change}@seed{i + 1}", "status": study.DONE, "train_seed": i + 1,
             "test_accuracy": accuracy, "val_accuracy": accuracy - 0.01}
            for change, accuracies in results.items() for i, accuracy in enumerate(accuracies)]
    return pd.DataFrame(rows)


TABLE = table_of({"reference": [0.80, 0.81, 0.82],
                  "augment=mixup": [0.90, 0.91, 0.92],      # helps, far beyond the spread
                  "augment=none": [0.60, 0.62, 0.61],       # hurts
                  "class_weight=off": [0.78, 0.83, 0.81],   # within the spread
                  "train_per_class=50": [0.70],              # one seed only
                  "train_per_class=100": [0.75, 0.77]})


def test_summary_gives_mean_spread_and_verdict_per_change():
    summed = ablations.summary(TABLE).set_index("change")
    assert summed.index.tolist()[0] == "reference"
    reference = summed.loc["reference"]
    assert reference["seeds"] == 3
    assert reference["test_mean"] == pytest.approx(0.81)
    assert reference["test_std"] == pytest.approx(0.01)          # sample std over seeds
    assert reference["val_mean"] == pytest.approx(0.80)
    mixup = summed.loc["augment=mixup"]
    assert mixup["points"] == pytest.approx(10.0)
    assert mixup["p_value"] < 0.001 and mixup["verdict"] == ablations.HELPS
    assert summed.loc["augment=none", "verdict"] == ablations.HURTS
    assert summed.loc["class_weight=off", "verdict"] == ablations.UNCLEAR
    assert summed.loc["class_weight=off", "p_value"] > 0.5
    assert summed.loc["train_per_class=50", "verdict"] == ablations.FEW
    assert math.isnan(summed.loc["train_per_class=50", "test_std"])


def test_a_change_beyond_noise_alone_is_judged_after_holm_s_correction():
    """Catches verdicts on raw p-values when many changes are tested: a p of 0.03 is
    significant alone and not among four changes."""
    table = table_of({"reference": [0.80, 0.81, 0.82],
                      "augment=mixup": [0.90, 0.91, 0.92],
                      "lr": [0.825, 0.835, 0.845],
                      "a": [0.80, 0.81, 0.82], "b": [0.80, 0.81, 0.82]})
    summed = ablations.summary(table).set_index("change")
    assert 0.0125 < summed.loc["lr", "p_value"] < 0.05
    assert summed.loc["lr", "p_holm"] >= 0.05 and summed.loc["lr", "verdict"] == ablations.UNCLEAR
    alone = ablations.summary(table[table["trial"].str.match("reference|lr")]).set_index("change")
    assert alone.loc["lr", "verdict"] == ablations.HELPS
    assert "Holm's correction over 4 comparisons, corrected p < 0.05" in \
        ablations.conclusion(table, ablations.summary(table))


def test_conclusion_names_what_helps_hurts_and_cannot_be_told_apart():
    table = pd.concat([TABLE, pd.DataFrame([{"trial": "augment=color@seed1",
                                             "status": study.SKIPPED}])], ignore_index=True)
    text = ablations.conclusion(table, ablations.summary(table), reference=540)
    assert ("The reference reaches 81.0% ± 1.0 test accuracy (mean ± standard deviation over 3 "
            "seeds).") in text
    assert "augment=mixup (+10.0 points) helps" in text
    assert "augment=none (-20.0 points) hurts" in text
    assert "class_weight=off and train_per_class=100 cannot be told apart" in text
    assert "Too few seeds finished to judge train_per_class=50." in text
    assert ("Learning curve (test accuracy): 50 images per class 70.0%; 100 images per class "
            "76.0% ± 1.4; the reference's 540 per class 81.0% ± 1.0.") in text
    assert "Skipped for the time budget: augment=color@seed1" in text
    curve = ablations.learning_curve(TABLE, 540)
    assert curve["per_class"].tolist() == [50, 100, 100, 540, 540, 540]
    assert study_plots.learning_curve(curve) is not None
    assert "No reference trial finished" in ablations.conclusion(
        TABLE.iloc[3:], ablations.summary(TABLE.iloc[3:]))


def test_a_tiny_ablation_study_runs_every_trial_and_promotes_the_best(study_cfg):
    cfg, split = study_cfg
    cfg = cfg | {"changes": ["augment=none"], "seeds": 2, "epochs": 1,
                 "architecture": {"blocks": 1, "filters": 4, "dense": (8,)}}
    table = study.run(ablations.trials(cfg, split), baseline.train_trial, split, cfg)
    assert table["status"].tolist() == [study.DONE] * 4
    assert table["train_seed"].tolist() == [1, 2, 1, 2]
    summed = ablations.summary(table)
    assert summed["change"].tolist() == ["reference", "augment=none"]
    assert summed["seeds"].tolist() == [2, 2]
    assert (cfg["out_dir"] / "metrics.json").is_file()
    figure = study_plots.ablation_accuracy(ablations.per_seed(table), summed, cfg["out_dir"])
    assert figure is not None and (cfg["out_dir"] / "figures/ablation_accuracy.png").is_file()
