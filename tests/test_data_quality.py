"""The data quality audit (shared.studies.data_quality, notebook 10) and the ``exclude`` setting:
out-of-fold scores come from models that never trained on the image and never from test,
confident learning ranks planted label flips first, the cleaning arms differ only by the
suspects, and ``exclude`` leaves out exactly the listed files and records it. The end-to-end
test plants flips and copies in a dataset a small CNN learns, and audits it."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from shared import config, data, files, results
from shared.studies import baseline, data_quality, study
from tests.conftest import make_class_folder


@pytest.fixture
def dq_cfg(tmp_path):
    folder = make_class_folder(tmp_path / "images", per_class=12, size=(16, 16))
    cfg = config.experiment("data_quality", "smoke", str(folder), tmp_path / "run",
                            image_size=16, fold_epochs=1, clean_epochs=1, folds=3)
    cfg |= {"blocks": 1, "filters": 4, "dense": (8,)}   # a tiny CNN
    return cfg, study.start(cfg)


# ----------------------------------------------------------------------------- exclude


def test_exclude_leaves_out_exactly_the_listed_files_and_records_it(tmp_path):
    folder = make_class_folder(tmp_path / "images", per_class=10)
    whole = config.experiment("data", "smoke", str(folder), tmp_path / "whole")
    split = data.prepare(whole["dataset"], whole["run_dir"], whole)
    listed = [*split.part("train")["path"][:3], *split.part("test")["path"][:1], "no/such.png"]
    files.write_csv(tmp_path / "exclude.csv", pd.DataFrame({"path": listed, "why": "x"}))

    cfg = config.experiment("data", "smoke", str(folder), tmp_path / "run",
                            exclude=str(tmp_path / "exclude.csv"))
    cut = data.prepare(cfg["dataset"], cfg["run_dir"], cfg)
    kept = {s: set(cut.part(s)["path"]) for s in data.SPLITS}
    for part in data.SPLITS:      # the same split, less the listed files
        assert kept[part] == set(split.part(part)["path"]) - set(listed)
    written = pd.read_csv(cfg["run_dir"] / "split.csv")
    assert sorted(written.loc[written["split"] == "excluded", "path"]) == sorted(listed[:4])
    info = files.read_json(cfg["run_dir"] / "dataset.json")
    assert info["excluded"] == {"listed": 5, "removed": {"train": 3, "val": 0, "test": 1},
                                "not_in_split": 1}
    assert info["exclude"]["file"] == str((tmp_path / "exclude.csv").resolve())
    # read back by a later notebook: the same; another list is refused
    assert set(data.prepare(cfg["dataset"], cfg["run_dir"], cfg).part("train")["path"]) \
        == kept["train"]
    assert set(data.prepare(cfg["dataset"], cfg["run_dir"], cfg | {"exclude": None})
               .part("test")["path"]) == kept["test"]
    files.write_csv(tmp_path / "other.csv", pd.DataFrame({"path": listed[:1]}))
    with pytest.raises(ValueError, match="exclude"):
        data.prepare(cfg["dataset"], cfg["run_dir"], cfg | {"exclude": str(tmp_path /
                                                                            "other.csv")})


def test_an_exclude_file_without_paths_is_named_in_the_error(tmp_path):
    files.write_csv(tmp_path / "bad.csv", pd.DataFrame({"file": ["a.png"]}))
    with pytest.raises(ValueError, match=r"bad\.csv has no 'path' column"):
        data.splits.read_exclude(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match=r"cannot read .*missing\.csv"):
        data.splits.read_exclude(tmp_path / "missing.csv")


def test_metrics_record_what_the_split_left_out(dq_cfg):
    cfg, split = dq_cfg
    split.info["excluded"] = {"listed": 2, "removed": {"train": 2, "val": 0, "test": 0},
                              "not_in_split": 0}
    model = baseline.build(cfg, len(split.class_names))
    from shared.evaluation import evaluate

    metrics = evaluate.evaluate(model, split, cfg["out_dir"] / "x", image_size=16,
                                batch_size=8, parts=("test",))
    assert metrics["excluded"]["removed"]["train"] == 2


# ----------------------------------------------------------------------------- out of fold


def test_every_image_is_scored_by_a_model_that_never_trained_on_it(dq_cfg):
    """Catches a fold whose training images include the images it scores (the out-of-fold
    rule broken), and any test image in the folds."""
    cfg, split = dq_cfg
    trained_on = {}

    def spy(trial, tcfg, fold_split):
        trained_on[trial.name] = set(fold_split.part("train")["path"])
        assert fold_split.part("test").empty
        return baseline.train_trial(trial, tcfg, fold_split)

    oof = data_quality.out_of_fold(split, cfg, train_trial=spy)
    questioned = data_quality.train_and_val(split)
    assert sorted(oof["path"]) == sorted(questioned["path"])       # each once
    assert not set(oof["path"]) & set(split.part("test")["path"])
    for fold, rows in oof.groupby("fold"):
        assert not set(rows["path"]) & trained_on[f"fold-{fold}"]
    probs = oof[results.probability_columns(split.class_names)].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-3)
    assert set(oof["split"]) <= {"train", "val"}
    assert (cfg["out_dir"] / data_quality.OUT_OF_FOLD_CSV).is_file()


def test_finished_cross_validation_folds_are_used_when_they_cover_every_image(dq_cfg):
    cfg, split = dq_cfg
    questioned = data_quality.train_and_val(split)
    # 09's folder as the cross-validation study writes it: each fold's held-out images as val
    folder = cfg["run_dir"] / "cross_validation"
    rows, probs = [], np.full((len(questioned), 3), 1 / 3)
    for fold in (1, 2, 3):
        held = questioned[np.arange(len(questioned)) % 3 == fold - 1]
        predictions = results.predictions_frame(held, probs[:len(held)], split.class_names,
                                                "val")
        (folder / "trials" / f"fold-{fold}").mkdir(parents=True)
        results.write_results(folder / "trials" / f"fold-{fold}", predictions,
                              {"accuracy": 0.5, "status": "complete"})
        rows.append({"trial": f"fold-{fold}", "status": study.DONE})
    files.write_csv(folder / "trials.csv", pd.DataFrame(rows))
    reused = data_quality.out_of_fold(split, cfg, train_trial=None)   # trains nothing
    assert reused.attrs["source"] == "the folds of 09_cross_validation"
    assert sorted(reused["path"]) == sorted(questioned["path"])
    files.write_csv(folder / "trials.csv", pd.DataFrame(rows[:-1]))   # a fold missing
    assert data_quality.from_cross_validation(cfg["run_dir"], questioned) is None


# ----------------------------------------------------------------------------- label issues


def test_confident_learning_ranks_the_planted_flips_first():
    """Out-of-fold probabilities of a good model: the 20 images whose given label was flipped
    get low probability for it; cleanlab finds them and suggests the true class."""
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c", "d"]
    true = rng.integers(0, 4, 800)
    logits = rng.normal(0, 1, (800, 4))
    logits[np.arange(800), true] += 4          # a model right on 99% of the images
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    given = true.copy()
    flipped = rng.choice(800, 20, replace=False)
    given[flipped] = (true[flipped] + 1) % 4
    oof = pd.DataFrame({"path": [f"{i}.png" for i in range(800)],
                        "label": np.array(classes)[given], "split": "train", "fold": 1})
    for i, c in enumerate(classes):
        oof[f"{results.PREFIX}{c}"] = probs[:, i]
    issues = data_quality.label_issues(oof, classes)
    found = set(issues["path"]) & {f"{i}.png" for i in flipped}
    assert len(found) >= 18 and len(issues) <= 30
    top = issues.head(20)
    assert top["given_probability"].is_monotonic_increasing
    truth = dict(zip(oof["path"], np.array(classes)[true], strict=True))
    assert (top["suggested"] == top["path"].map(truth)).mean() >= 0.9
    table = data_quality.issues_per_class(issues, oof, classes)
    assert table["suspects"].sum() == len(issues)


def test_the_cleaned_arm_loses_only_the_suspects_and_test_stays_whole(dq_cfg):
    cfg, split = dq_cfg
    suspects = [*split.part("train")["path"][:2], *split.part("val")["path"][:1]]
    cleaned = data_quality.without(split, [*suspects, *split.part("test")["path"][:1]])
    assert set(cleaned.part("train")["path"]) == set(split.part("train")["path"]) - set(suspects)
    assert set(cleaned.part("val")["path"]) == set(split.part("val")["path"]) - set(suspects)
    pd.testing.assert_frame_equal(cleaned.part("test"), split.part("test"))
    issues = pd.DataFrame({"path": suspects})
    result = data_quality.cleaning_comparison(split, cfg, issues)
    assert result["removed_from_train"] == 2 and result["removed_from_val"] == 1
    assert result["comparison"]["images"] == len(split.part("test"))
    assert "were not corrected" in result["sentence"]
    assert set(data_quality.cleaning_table(result)["training images"]) == \
        {len(split.part("train")), len(split.part("train")) - 2}


# ----------------------------------------------------------------------------- end to end


def shape_image(label: int, seed: int, size: int = 24) -> Image.Image:
    """An image a small CNN tells apart quickly: a class colour on a dark, smoothly varying
    background, at a random place (distinct for each seed)."""
    rng = np.random.default_rng(seed)
    background = Image.fromarray(rng.integers(0, 120, (6, 6, 3), dtype=np.uint8))
    pixels = np.array(background.resize((size, size), Image.Resampling.BICUBIC))
    x, y = rng.integers(0, size // 2, 2)
    colour = [(230, 40, 40), (40, 230, 40), (40, 40, 230), (230, 230, 40)][label]
    pixels[y:y + size // 2, x:x + size // 2] = colour
    return Image.fromarray(pixels)


@pytest.mark.end_to_end
def test_the_audit_finds_planted_flips_and_copies(tmp_path):
    """A dataset with planted faults: 12 of 240 images filed under another class, and resized,
    re-encoded copies of 4 images; the audit finds at least 80% of the flips among its
    suspects, every copy, and flags few clean images."""
    root = tmp_path / "planted"
    classes = ["c0", "c1", "c2", "c3"]
    flips, copies = set(), []
    for i in range(240):
        label = i % 4
        filed = (label + 1) % 4 if i % 20 == 7 else label
        path = root / classes[filed] / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        shape_image(label, i).save(path)
        if filed != label:
            flips.add(f"{classes[filed]}/{i:03d}.png")
    for i in (0, 1, 2, 3):
        original = root / classes[i] / f"{i:03d}.png"
        buffer = io.BytesIO()
        Image.open(original).resize((36, 36)).save(buffer, "JPEG", quality=75)
        (root / classes[i] / f"copy{i}.jpg").write_bytes(buffer.getvalue())
        copies.append((f"{classes[i]}/copy{i}.jpg", f"{classes[i]}/{i:03d}.png"))
    cfg = config.experiment("data_quality", "cpu", str(root), tmp_path / "run", image_size=24,
                            fold_epochs=12, clean_epochs=2, folds=4, learning_rate=3e-3,
                            augment="none")
    split = study.start(cfg)
    pairs = data_quality.near_duplicates(split, cfg)
    found = {tuple(sorted(p)) for p in zip(pairs["path_a"], pairs["path_b"], strict=True)}
    assert {tuple(sorted(c)) for c in copies} <= found
    assert len(found) == len(copies)

    oof = data_quality.out_of_fold(split, cfg)
    issues = data_quality.label_issues(oof, split.class_names)
    questioned = set(oof["path"])
    planted = flips & questioned                       # the flips in train and val
    assert len(planted) >= 8
    hit = planted & set(issues["path"])
    assert len(hit) >= 0.8 * len(planted), (sorted(planted), issues.head(20))
    clean_flagged = set(issues["path"]) - flips
    assert len(clean_flagged) <= 0.05 * (len(questioned) - len(planted))
