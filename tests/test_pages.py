"""The index pages: a run's leaderboard with its intervals, readable from the files alone."""

from __future__ import annotations

import pandas as pd
import pytest

from shared import results
from shared.reporting import pages


def test_the_leaderboard_shows_each_experiments_intervals(tmp_path):
    """Catches a leaderboard that shows an accuracy without its 95% interval."""
    run = tmp_path / "run"
    rows = pd.DataFrame({"split": ["test"], "path": ["a.png"], "label": ["x"],
                         "predicted": ["x"], "p_x": [1.0]})
    for name, accuracy, low, high in (("baseline", 0.92, 0.913, 0.928),
                                      ("vgg19", 0.715, 0.70, 0.73)):
        results.write_results(run / name, rows, {
            "experiment": name, "status": "complete", "images": {"test": 1},
            "accuracy": accuracy, "accuracy_ci95": [low, high], "macro_f1": accuracy,
            "macro_f1_ci95": [low, high], "image_size": 28})
    index = pages.write_index(run).read_text()
    assert "92.00% <small class=\"muted\">(91.3%–92.8%)</small>" in index
    assert "0.7150 <small class=\"muted\">(0.700–0.730)</small>" in index
    assert index.index(">baseline<") < index.index(">vgg19<")
    assert "<td>28</td>" in index and "28.0" not in index    # an image size, not 28.0


def _run(reports, name, dataset, profile, accuracies):
    """A finished run with experiments of the given test accuracies."""
    run = reports / name
    rows = pd.DataFrame({"split": ["test"], "path": ["a.png"], "label": ["x"],
                         "predicted": ["x"], "p_x": [1.0]})
    for experiment, accuracy in accuracies.items():
        results.write_results(run / experiment, rows, {
            "experiment": experiment, "status": "complete", "images": {"test": 1},
            "accuracy": accuracy, "accuracy_ci95": [accuracy - 0.01, accuracy + 0.01],
            "macro_f1": accuracy, "profile": profile, "dataset": dataset,
            "weights_source": "random (imagenet unavailable)", "train_seconds": 12.0,
            "code": {"commit": "0123456789abcdef", "dirty": True}})
    (run / results.STATE_FILE).write_text(
        f'{{"run": "{name}", "profile": "{profile}", "dataset": "{dataset}", '
        '"started": "2026-11-30T10:00:00", "notebooks": {}, '
        '"environment": {"code": {"commit": "fedcba9876543210", "dirty": false}}}')
    pages.write_index(run)


def test_the_runs_page_compares_every_experiment_and_ranks_within_a_dataset(tmp_path):
    """Catches experiments of different datasets ranked against each other, or a page that
    needs the network."""
    _run(tmp_path, "smoke-run", "fashion-mnist", "smoke", {"baseline": 0.2, "vgg19": 0.1})
    _run(tmp_path, "cpu-run", "fashion-mnist", "cpu", {"baseline": 0.92})
    _run(tmp_path, "leaves-run", "/data/leaves", "cpu", {"baseline": 0.5})
    page = pages.write_runs_index(tmp_path).read_text()
    table = page.split('id="experiments"')[1]
    rows = [row for row in table.split("<tr")[2:]]
    keys = [[cell.split('"')[0] for cell in row.split('data-key="')[1:]] for row in rows]
    assert [(k[0], k[1], k[2], k[5]) for k in keys] == [
        ("/data/leaves", "1", "leaves-run", "baseline"),
        ("fashion-mnist", "1", "cpu-run", "baseline"),
        ("fashion-mnist", "2", "smoke-run", "baseline"),
        ("fashion-mnist", "3", "smoke-run", "vgg19")]
    assert "92.00% <small class=\"muted\">(91.0%–93.0%)</small>" in table
    assert 'href="cpu-run/baseline/model_card.html"' in table and "<script>" in page
    assert "http://" not in page and "https://" not in page


def test_every_finished_experiment_gets_a_model_card(tmp_path):
    _run(tmp_path, "r", "fashion-mnist", "smoke", {"vgg19": 0.1})
    card = (tmp_path / "r" / "vgg19" / "model_card.md").read_text()
    assert card.startswith("# Model card: vgg19")
    for heading in ("## Data and split", "## Metrics", "## Settings", "## Known limits",
                    "## How to predict with it"):
        assert heading in card
    assert "0.1000 (0.0900–0.1100)" in card
    assert "weights were random" in card and "Profile smoke" in card
    assert "make predict MODEL=r/vgg19" in card
    assert "Code: commit 0123456789ab with uncommitted changes" in card
    assert "uncommitted changes when this ran" in card
    assert "<td>code</td><td>fedcba987654</td>" in (tmp_path / "r" / "index.html").read_text()
    assert (tmp_path / "r" / "vgg19" / "model_card.html").read_text().count("<table>") >= 2


# ---------------------------------------------------------------------------------------------
# Ties for first


def _scored(run, name, right, images=1000, shift=0):
    """An experiment of ``run`` that got ``right`` of ``images`` test images right: those from
    number ``shift`` on (wrapping around)."""
    paths = [f"test/{i:05d}.png" for i in range(images)]
    predicted = ["x" if (i - shift) % images < right else "y" for i in range(images)]
    rows = pd.DataFrame({"split": "test", "path": paths, "label": "x", "predicted": predicted,
                         "p_x": 1.0, "p_y": 0.0})
    results.write_results(run / name, rows, {
        "experiment": name, "status": "complete", "images": {"test": images},
        "accuracy": right / images, "macro_f1": right / images})


def test_models_a_few_images_apart_tie_and_hundreds_apart_do_not(tmp_path):
    """Catches a leaderboard that ranks by the point estimate alone (or never ties)."""
    run = tmp_path / "run"
    _scored(run, "best", 900)
    _scored(run, "close", 894, shift=20)   # 20 only the best gets right, 14 only this: chance
    _scored(run, "far", 600)         # 300 fewer: not chance
    board = {m["dir"]: m for m in pages.leaderboard(run)}
    assert board["best"]["tie"] == "best"
    assert board["close"]["tie"] == "tied" and board["close"]["p_holm"] > 0.05
    assert board["far"]["tie"] == "apart" and board["far"]["p_holm"] < 1e-6
    # Holm: the smallest of two p-values is doubled
    assert board["far"]["p_holm"] / board["far"]["p_value"] == pytest.approx(2.0)
    index = pages.write_index(run).read_text()
    assert '<tr class="tied"><td class="num">=1</td>' in index
    assert "no: tied for first (p = " in index and "Holm&#x27;s correction over the 2 " in index


def test_models_scored_on_other_images_are_not_compared(tmp_path):
    """Catches a comparison of two models on different test images (a study's subset)."""
    run = tmp_path / "run"
    _scored(run, "best", 900)
    _scored(run, "subset", 90, images=100)
    board = {m["dir"]: m for m in pages.leaderboard(run)}
    assert board["subset"]["tie"] == "not compared" and board["subset"]["p_holm"] is None
    assert "scored on other images than the best" in pages.write_index(run).read_text()


def test_the_runs_page_ties_experiments_of_one_dataset_across_runs(tmp_path):
    for name, right in (("a", 900), ("b", 897), ("c", 700)):
        _scored(tmp_path / name, "baseline", right)
        (tmp_path / name / results.STATE_FILE).write_text(
            f'{{"run": "{name}", "dataset": "fashion-mnist", "notebooks": {{}}}}')
    table = pages.write_runs_index(tmp_path).read_text().split('id="experiments"')[1]
    tied = [row for row in table.split("<tr")[2:] if row.startswith(' class="tied"')]
    assert sorted(row.split('data-key="')[3].split('"')[0] for row in tied) == ["a", "b"]
