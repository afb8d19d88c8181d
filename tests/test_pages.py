"""The index pages: a run's leaderboard with its intervals, readable from the files alone."""

from __future__ import annotations

import pandas as pd

from shared import evaluate, pages


def test_the_leaderboard_shows_each_experiments_intervals(tmp_path):
    """Catches a leaderboard that shows an accuracy without its 95% interval."""
    run = tmp_path / "run"
    rows = pd.DataFrame({"split": ["test"], "path": ["a.png"], "label": ["x"],
                         "predicted": ["x"], "p_x": [1.0]})
    for name, accuracy, low, high in (("baseline", 0.92, 0.913, 0.928),
                                      ("vgg19", 0.715, 0.70, 0.73)):
        evaluate.write_results(run / name, rows, {
            "experiment": name, "status": "complete", "images": {"test": 1},
            "accuracy": accuracy, "accuracy_ci95": [low, high], "macro_f1": accuracy,
            "macro_f1_ci95": [low, high], "image_size": 28})
    index = pages.write_index(run).read_text()
    assert "92.00% <small class=\"muted\">(91.3%–92.8%)</small>" in index
    assert "0.7150 <small class=\"muted\">(0.700–0.730)</small>" in index
    assert index.index(">baseline<") < index.index(">vgg19<")
    assert "<td>28</td>" in index and "28.0" not in index    # an image size, not 28.0
