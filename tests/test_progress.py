"""How far a run is: what notebooks report (shared.progress), the epoch lines a report keeps
(EpochLog), and the runner's line per notebook with its time-left estimate (shared.run.display)."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from shared import progress
from shared.run.display import Display, earlier_seconds
from shared.training.callbacks import EpochLog


def test_nothing_is_written_outside_the_runner(tmp_path, monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    progress.report("train", epoch=1, epochs=3)
    assert list(tmp_path.iterdir()) == []


def test_reports_merge_and_describe_how_far_a_notebook_is(tmp_path, monkeypatch):
    prefix = tmp_path / ".01_baseline_cnn"
    monkeypatch.setenv(progress.ENV, str(prefix))
    progress.report("cell", cell=7, cells=15)
    progress.report("train", trial=2, trials=4, name="vgg16")
    progress.report("train", epoch=3, epochs=5)
    assert progress.describe(prefix) == "cell 7/15 · trial 2/4 vgg16 · epoch 3/5"
    progress.report("train", epoch=None, epochs=None)       # the fit ended
    assert progress.describe(prefix) == "cell 7/15 · trial 2/4 vgg16"
    with pytest.raises(ValueError, match="progress kind"):
        progress.path_of(prefix, "epochs")


@pytest.mark.trains
def test_a_fit_prints_its_first_and_last_epochs_and_reports_each(tmp_path, monkeypatch, capsys):
    prefix = tmp_path / ".nb"
    monkeypatch.setenv(progress.ENV, str(prefix))
    seen = []
    watch = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(progress.describe(prefix)))
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = np.random.default_rng(0).normal(size=(16, 3)), np.arange(16) % 2
    model.fit(x, y, epochs=5, verbose=0, validation_data=(x, y),
              callbacks=[EpochLog("head", 5), watch])

    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0].strip() for line in lines] == \
        ["epoch 1/5", "(3 more in history.csv) epoch 5/5"]
    assert "val_accuracy" in lines[0] and "s for the phase" in lines[1]
    assert seen == [f"epoch {e}/5" for e in range(1, 6)]
    assert progress.describe(prefix) == ""                  # cleared when the fit ended


def _runner_json(folder, profile, finished, notebooks):
    folder.mkdir(parents=True)
    (folder / "runner.json").write_text(json.dumps(
        {"profile": profile, "dataset": "fashion-mnist", "finished": finished,
         "notebooks": {name: {"status": status, "seconds": seconds}
                       for name, (status, seconds) in notebooks.items()}}))


def test_the_time_left_comes_from_the_latest_earlier_run_of_the_same_profile(tmp_path):
    reports = tmp_path / "reports"
    _runner_json(reports / "old", "cpu", "2026-01-01T10:00:00", {"01": ("ok", 100.0)})
    _runner_json(reports / "new", "cpu", "2026-02-01T10:00:00",
                 {"01": ("ok", 80.0), "02": ("failed", 5.0)})
    _runner_json(reports / "smoke", "smoke", "2026-03-01T10:00:00", {"01": ("ok", 9.0)})
    assert earlier_seconds(reports / "this", "cpu", "fashion-mnist") == {"01": 80.0}

    display = Display(live=False, expected={"01": 80.0})
    display.started["01"], display.prefixes["01"] = 0.0, tmp_path / ".01"
    assert display.status("01", 20.0) == "starting · 20s · about 1m00s left"
    assert display.status("01", 95.0).endswith("longer than the last run's 1m20s")


def test_live_lines_of_notebooks_side_by_side_never_share_a_row(tmp_path, capsys):
    display = Display(live=True)
    for name in ("a", "b", "c"):
        display.start(name, f"[?] {name}", tmp_path / f".{name}")
    display.end("a", "a: ok")
    display.start("d", "[?] d", tmp_path / ".d", where="GPU 1")
    assert sorted(display.rows.values()) == [0, 1, 2] and display.rows["d"] == 0
    assert display.labels["d"] == "[?] d on GPU 1"
    for name in list(display.lines):
        display.end(name, f"{name}: ok")
    assert "a: ok" in capsys.readouterr().out
