"""shared.evaluation.ensemble and .voting: voting over saved predictions, weights chosen on
validation only, members with missing or misaligned results left out by name."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score

from shared.evaluation import conclusions, ensemble, voting
from shared.files import read_json, write_json
from shared.reporting import plots
from shared.results import read_predictions

CLASSES = ["a", "b"]
VAL = ["a", "b", "a", "b", "a", "b"]
TEST = ["a", "a", "b", "b", "a", "b"]


def confident(labels, wrong, right_p=0.9, wrong_p=0.55):
    """Probabilities that are right (with ``right_p``) except at the ``wrong`` positions."""
    probs = []
    for i, label in enumerate(labels):
        p = wrong_p if i in wrong else right_p
        p_true = 1 - p if i in wrong else p
        probs.append([p_true, 1 - p_true] if label == "a" else [1 - p_true, p_true])
    return np.array(probs)


def write_member(run, name, val_probs, test_probs, paths=None, status="complete", val=VAL,
                 test=TEST):
    folder = run / name
    folder.mkdir(parents=True)
    rows = [("val", f"v{i}.png", y) for i, y in enumerate(val)]
    rows += [("test", f"t{i}.png", y) for i, y in enumerate(test)]
    frame = pd.DataFrame(rows, columns=["split", "path", "label"])
    if paths is not None:
        frame["path"] = paths
    probs = np.vstack([val_probs, test_probs])
    frame["predicted"] = np.array(CLASSES)[probs.argmax(axis=1)]
    frame["p_a"], frame["p_b"] = probs[:, 0], probs[:, 1]
    frame = frame.sample(frac=1, random_state=len(name))  # members may order rows differently
    frame.to_csv(folder / "predictions.csv", index=False)
    write_json(folder / "metrics.json", {
        "experiment": name, "status": status, "images": {"val": len(val), "test": len(test)},
        "class_names": CLASSES, "params": {"total": 10, "trainable": 5}, "train_seconds": 2.0,
        "image_size": 8, "profile": "smoke", "seed": 1, "dataset": "toy"})
    return folder


@pytest.fixture
def run(tmp_path):
    """Three members each wrong (unsure) on a different third of the images."""
    run = tmp_path / "run"
    for k, name in enumerate(["m1", "m2", "m3"]):
        wrong = {2 * k, 2 * k + 1}
        write_member(run, name, confident(VAL, wrong), confident(TEST, wrong))
    return run


def test_soft_voting_beats_every_member_and_writes_the_results(run):
    result = ensemble.vote(run, method="soft")
    table = result["table"].set_index("name")
    assert table.loc[["m1", "m2", "m3"], "accuracy"].tolist() == [4 / 6] * 3
    assert table.loc["soft vote", "accuracy"] == 1.0
    assert table.loc["soft vote", "chosen"] and not table.loc["hard vote", "chosen"]

    out = run / "ensemble"
    predictions = read_predictions(out / "predictions.csv")
    assert list(predictions.columns) == ["split", "path", "label", "predicted", "p_a", "p_b"]
    assert len(predictions) == 12 and (predictions["label"] == predictions["predicted"]).all()
    metrics = read_json(out / "metrics.json")
    test = predictions[predictions["split"] == "test"]
    assert metrics["accuracy"] == accuracy_score(test["label"], test["predicted"]) == 1.0
    assert metrics["macro_f1"] == f1_score(test["label"], test["predicted"], average="macro")
    assert (metrics["method"], metrics["status"], metrics["experiment"]) == \
        ("soft", "complete", "ensemble")
    assert metrics["members"] == ["m1", "m2", "m3"] and metrics["left_out"] == {}
    assert metrics["params"]["total"] == 30 and metrics["train_seconds"] == 6.0
    assert metrics["per_class"]["a"]["support"] == 3
    assert not (out / "figures").exists()        # the ensemble computes; plots draws
    plots.leaderboard(result["table"], out)
    plots.disagreement(result["disagreement"], out)
    plots.confusion_matrix_of(result["predictions"], CLASSES, out)
    for figure in ("leaderboard", "disagreement", "confusion_matrix"):
        assert (out / "figures" / f"{figure}.png").stat().st_size > 1000

    # m1 is wrong on test images 0-1, m2 on 2-3: they disagree on 4 of 6
    assert result["disagreement"].loc["m1", "m2"] == pytest.approx(4 / 6)
    assert metrics["disagreement"]["any_members"] == 1.0
    assert metrics["disagreement"]["oracle_accuracy"] == 1.0
    assert ensemble.summary_sentence(result).startswith(
        "The soft vote of 3 members (m1, m2, m3) reaches 100.0% test accuracy (macro-F1 1.000), "
        "+33.3 points against its best member, m1 (66.7%)")

    # the ensemble's own folder is not a member of the next vote
    again = ensemble.vote(run, method="soft")
    assert again["metrics"]["members"] == ["m1", "m2", "m3"]


def test_the_parameters_of_an_ensemble_are_those_of_the_members_it_uses(run):
    """Catches the leaderboard counting every member's parameters for a one-member choice."""
    metrics = ensemble.vote(run, method="best")["metrics"]
    assert metrics["params"]["members"] == [metrics["best_member"]]
    assert metrics["params"]["total"] == 10 and metrics["train_seconds"] == 6.0


def test_hard_vote_is_a_majority_with_ties_broken_by_summed_probability():
    # image 0: one very sure member against two unsure ones; image 1: a 1-1 tie
    probs = np.array([[[0.01, 0.99], [0.6, 0.4]],
                      [[0.55, 0.45], [0.1, 0.9]],
                      [[0.55, 0.45], [0.5, 0.5]]])
    shares, hard = voting.combine(probs, "hard")
    _, soft = voting.combine(probs, "soft")
    assert hard[0] == 0 and soft[0] == 1
    assert shares[0].tolist() == pytest.approx([2 / 3, 1 / 3])
    _, tie = voting.combine(probs[:2], "hard")
    assert tie[1] == 1  # votes 1-1; summed probability 0.7 vs 1.3
    _, weighted = voting.combine(probs, "weighted", [1, 0, 0])
    assert weighted.tolist() == [1, 0]
    with pytest.raises(ValueError, match="unknown ensemble method 'median'.*hard, soft"):
        voting.combine(probs, "median")


def test_weights_are_chosen_on_the_validation_split_only(tmp_path):
    run = tmp_path / "run"
    # "val_star" is right on every validation image and wrong on every test image;
    # "test_star" the reverse. Choosing on test would weight test_star.
    write_member(run, "val_star", confident(VAL, set()), confident(TEST, set(range(6)), 0.9,
                                                                  0.9))
    write_member(run, "test_star", confident(VAL, set(range(6)), 0.9, 0.9),
                 confident(TEST, set()))
    result = ensemble.vote(run, method="weighted")
    assert result["metrics"]["weights"] == {"val_star": 1.0, "test_star": 0.0}
    table = result["table"].set_index("name")
    assert table.loc["weighted soft vote", "val_accuracy"] == 1.0
    assert table.loc["weighted soft vote", "accuracy"] == table.loc["val_star", "accuracy"] == 0
    assert table.loc["test_star", "accuracy"] == 1.0


def test_auto_keeps_the_best_member_when_no_vote_is_significantly_better(run):
    # the soft vote is right on 6 of 6 validation images, each member on 4: a gain of two
    # images is p = 0.25, chance
    result = ensemble.vote(run)
    metrics = result["metrics"]
    assert (metrics["method"], metrics["method_requested"]) == ("best", "auto")
    assert metrics["best_member"] == "m1" and metrics["weights"] == {"m1": 1, "m2": 0, "m3": 0}
    votes = metrics["choice"]["votes"]
    assert votes["soft vote"] == {"honest_val_accuracy": 1.0, "p_value": 0.25, "p_holm": 0.75}
    predictions = result["predictions"].set_index(["split", "path"]).sort_index()
    member = read_predictions(run / "m1" / "predictions.csv").set_index(["split", "path"])
    assert (predictions["predicted"] == member.loc[predictions.index, "predicted"]).all()
    table = result["table"].set_index("name")
    assert table["chosen"].sum() == 1 and table.loc["m1", "chosen"]
    assert ensemble.summary_sentence(result).startswith(
        "No vote of the 3 members (m1, m2, m3) beats the best one on validation beyond chance "
        "(the best vote, the soft vote: 100.0% against 66.7%, p = 0.25, 0.75 after Holm's "
        "correction over 3 votes, needed < 0.05), so "
        "the ensemble is m1 alone: 66.7% test accuracy")
    asked = ensemble.vote(run, method="best")
    assert ensemble.summary_sentence(asked).startswith(
        "The member best on validation, m1, alone (as asked): 66.7% test accuracy")
    with pytest.raises(ValueError, match="choose one of auto, hard, soft, weighted, best"):
        ensemble.vote(run, method="median")


def test_auto_takes_a_vote_that_is_significantly_better(tmp_path):
    run, val = tmp_path / "run", VAL * 5
    for k, name in enumerate(["m1", "m2", "m3"]):
        wrong = {i for i in range(30) if i % 3 == k}           # each wrong on its own third
        write_member(run, name, confident(val, wrong), confident(TEST, {2 * k, 2 * k + 1}),
                     val=val)
    metrics = ensemble.vote(run)["metrics"]
    assert metrics["method"] == "soft"                          # 30 of 30 against 20 of 30
    assert metrics["choice"]["votes"]["soft vote"]["p_value"] == pytest.approx(0.5 ** 10)
    assert metrics["accuracy"] == 1.0


def test_auto_needs_significance_after_testing_three_votes():
    # the soft vote fixes the best member's 5 mistakes and loses none: p = 0.5 ** 5 = 0.031,
    # below 0.05, but so do the other two votes: Holm's correction makes it 3 * 0.031 = 0.094
    labels = np.zeros(40, dtype=int)
    first = np.where(np.arange(40) < 5, 0.4, 0.9)
    others = np.where(np.arange(40) >= 35, 0.45, 0.6)
    probs = np.stack([np.stack([p, 1 - p], axis=1) for p in (first, others, others)])
    choice = voting.choose(probs, labels)
    assert choice["votes"]["soft"] == {"honest_val_accuracy": 1.0, "p_value": 0.5 ** 5,
                                       "p_holm": pytest.approx(3 * 0.5 ** 5)}
    assert (choice["method"], choice["best_member"], choice["correction"]) == \
        ("best", 0, "holm")


def test_one_validation_image_is_not_enough_to_choose_a_vote(tmp_path):
    run = tmp_path / "run"
    for k, name in enumerate(["m1", "m2"]):
        write_member(run, name, confident(["a"], {k}), confident(TEST, {k}), val=["a"])
    metrics = ensemble.vote(run)["metrics"]
    assert (metrics["method"], metrics["best_member"]) == ("best", "m2")


def test_mcnemar_counts_only_the_images_the_two_disagree_on():
    right = np.array([True] * 50 + [False] * 10)
    assert conclusions.mcnemar_p(right, right) == 1.0
    better = right.copy()
    better[50:] = True
    assert conclusions.mcnemar_p(right, better) == pytest.approx(0.5 ** 10)
    assert conclusions.mcnemar_p(better, right) == 1.0
    swapped = better.copy()
    swapped[:10] = False                                        # 10 gained, 10 lost
    assert conclusions.mcnemar_p(right, swapped) > 0.5


def test_a_weighted_bag_of_noise_does_not_replace_the_best_member():
    # one unsure member and two of pure noise: greedy selection on validation finds bags that
    # fix a few images by chance; their out-of-fold accuracy shows it
    gains, optimism = [], []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 5, 600)
        good = np.eye(5)[np.where(rng.random(600) < 0.8, labels, rng.integers(0, 5, 600))]
        good = 0.3 * good + 0.7 * rng.dirichlet(np.ones(5), 600)
        probs = np.stack([good, *rng.dirichlet(np.full(5, 20.0), (2, 600))])
        weights = voting.select_weights(probs, labels)
        in_sample = (voting.combine(probs, "weighted", weights)[1] == labels).mean()
        out_of_fold = (voting.cross_fitted(probs, labels) == labels).mean()
        gains.append(in_sample - (good.argmax(axis=1) == labels).mean())
        optimism.append(in_sample - out_of_fold)
        choice = voting.choose(probs, labels)
        assert (choice["method"], choice["best_member"]) == ("best", 0), seed
    assert np.mean(gains) > 0.005                         # in sample, noise looks useful ...
    assert np.mean(optimism) > 0.005                      # ... out of fold, much less so


def test_missing_failed_and_misaligned_members_are_named_and_left_out(run, capsys):
    (run / "crashed").mkdir()
    (run / "crashed" / "history.csv").write_text("epoch,loss\n1,0.9\n")
    write_member(run, "failed", confident(VAL, set()), confident(TEST, set()), status="failed")
    other_paths = [f"v{i}.png" for i in range(6)] + [f"other{i}.png" for i in range(6)]
    write_member(run, "other_split", confident(VAL, set()), confident(TEST, set()),
                 paths=other_paths)
    nofile = write_member(run, "no_predictions", confident(VAL, set()), confident(TEST, set()))
    (nofile / "predictions.csv").unlink()

    result = ensemble.vote(run)
    left_out = result["left_out"]
    assert result["metrics"]["members"] == ["m1", "m2", "m3"]
    assert set(left_out) == {"crashed", "failed", "other_split", "no_predictions"}
    assert "no metrics.json" in left_out["crashed"]
    assert "status 'failed'" in left_out["failed"]
    assert "rows differ" in left_out["other_split"] and "6 extra" in left_out["other_split"]
    assert "no predictions.csv" in left_out["no_predictions"]
    assert read_json(run / "ensemble" / "metrics.json")["left_out"] == left_out
    printed = capsys.readouterr().out
    assert "left out other_split: its rows differ" in printed

    chosen = ensemble.vote(run, members=["m1", "m3", "ghost"], out_dir=run / "pair")
    assert chosen["metrics"]["members"] == ["m1", "m3"]
    assert "no folder" in chosen["left_out"]["ghost"]


def test_fewer_than_two_usable_members_is_a_clear_error(tmp_path):
    run = tmp_path / "run"
    write_member(run, "only", confident(VAL, set()), confident(TEST, set()))
    write_member(run, "broken", confident(VAL, set()), confident(TEST, set()))
    (run / "broken" / "metrics.json").write_text("{")
    with pytest.raises(ensemble.NotEnoughMembers,
                       match=r"at least 2 .*usable: only; left out broken: metrics.json is "
                             "unreadable"):
        ensemble.vote(run)
    assert not (run / "ensemble").exists()


def test_greedy_selection_drops_a_member_that_only_hurts():
    labels = np.array([0, 1, 0, 1])
    good = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    bad = 1 - good
    weights = voting.select_weights(np.stack([bad, good, good]), labels)
    assert weights[0] == 0 and weights.sum() == pytest.approx(1)
