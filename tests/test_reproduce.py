"""`make reproduce`: a finished run's notebooks again with the settings it recorded, compared
experiment by experiment; refused when the data or the library versions changed."""

from __future__ import annotations

import json
import shutil

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from shared import environment
from shared.files import read_json, write_json
from shared.run import reproduce, runner

pytestmark = pytest.mark.kernel  # not in `make check`

# A notebook whose experiment gets 100 - 10 * epochs of 100 test images right (epochs: a
# setting the run records), with 95% intervals of ±0.02.
WRITE = """
import pathlib
import pandas as pd
from shared.results import write_results
epochs = 1 if epochs is None else epochs
right = 100 - 10 * epochs
rows = pd.DataFrame({"split": "test", "path": [f"{i:03d}.png" for i in range(100)],
                     "label": "x", "predicted": ["x" if i < right else "y" for i in range(100)],
                     "p_x": 1.0, "p_y": 0.0})
acc = right / 100
write_results(pathlib.Path(run_dir) / "toy", rows, {
    "experiment": "toy", "status": "complete", "images": {"test": 100}, "accuracy": acc,
    "accuracy_ci95": [acc - 0.02, acc + 0.02], "macro_f1": acc,
    "macro_f1_ci95": [acc - 0.02, acc + 0.02], "val_accuracy": acc})
"""


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A run of one toy notebook with epochs=1 set: (its folder, the notebooks' folder)."""
    root = tmp_path_factory.mktemp("reproduce")
    folder = root / "notebooks"
    folder.mkdir()
    params = new_code_cell("profile = None\ndataset = None\nrun_dir = None\nepochs = None")
    params.metadata["tags"] = ["parameters"]
    nbformat.write(new_notebook(cells=[params, new_code_cell(WRITE)]), folder / "01_toy.ipynb")
    run_dir = root / "reports" / "orig"
    assert runner.run_notebooks([folder / "01_toy.ipynb"], profile="smoke",
                                dataset="fashion-mnist", run=str(run_dir),
                                settings={"01_toy": {"epochs": 1}}) == 0
    return run_dir, folder


def copy_of(original, tmp_path, name="copy"):
    run_dir, _ = original
    copy = tmp_path / "reports" / name
    shutil.copytree(run_dir, copy)
    return copy


def test_a_rerun_with_the_recorded_settings_is_identical(original, tmp_path, capsys):
    copy = copy_of(original, tmp_path)
    assert reproduce.reproduce(str(copy), notebooks_dir=original[1]) == 0
    rerun = tmp_path / "reports" / "copy-reproduced-1"
    found = read_json(rerun / reproduce.FILE)
    code = environment.code_version()      # the same code made both: same unless it is dirty
    assert found["verdict"] == "identical" and found["same_code"] is (not code["dirty"])
    assert found["experiments"] == [{
        "experiment": "toy", "original": {"accuracy": 0.9, "macro_f1": 0.9, "val_accuracy": 0.9,
                                          "ece": None},
        "rerun": {"accuracy": 0.9, "macro_f1": 0.9, "val_accuracy": 0.9, "ece": None},
        "changed_predictions": 0, "verdict": "identical"}]
    assert found["code"]["rerun"] == environment.code_version()
    assert "reproduction of copy: identical" in capsys.readouterr().out
    page = (rerun / "index.html").read_text()
    assert "Reproduction of <a href=\"../copy/index.html\">copy</a>: identical" in page
    assert reproduce.next_run(copy).name == "copy-reproduced-2"


def test_a_changed_setting_gives_the_verdict_different(original, tmp_path, capsys):
    """The copy's runner.json says epochs=3: the rerun gets 20 more images wrong than the
    results the copy holds (made with epochs=1)."""
    copy = copy_of(original, tmp_path)
    state = read_json(copy / "runner.json")
    state["notebooks"]["01_toy"]["settings"] = {"epochs": 3}
    write_json(copy / "runner.json", state)
    shutil.copytree(copy / "toy", copy / "ghost")     # results no notebook of the rerun makes
    assert reproduce.reproduce(str(copy), notebooks_dir=original[1]) == 1
    found = read_json(tmp_path / "reports" / "copy-reproduced-1" / reproduce.FILE)
    assert found["verdict"] == "different"
    rows = {r["experiment"]: r for r in found["experiments"]}
    assert rows["ghost"]["verdict"] == "missing in the rerun"
    assert rows["toy"]["changed_predictions"] == 20 and rows["toy"]["verdict"] == "different"
    assert rows["toy"]["rerun"]["accuracy"] == pytest.approx(0.7)


def test_other_library_versions_are_refused_in_one_line_unless_forced(original, tmp_path,
                                                                       capsys):
    copy = copy_of(original, tmp_path)
    state = read_json(copy / "runner.json")
    state["environment"]["versions"]["numpy"] = "1.0.0"
    write_json(copy / "runner.json", state)
    assert reproduce.main(["--run", str(copy), "--notebooks", str(original[1])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "library versions differ (numpy 1.0.0 then" in err
    assert not (tmp_path / "reports" / "copy-reproduced-1").exists()
    assert reproduce.reproduce(str(copy), force=True, notebooks_dir=original[1]) == 0
    found = read_json(tmp_path / "reports" / "copy-reproduced-1" / reproduce.FILE)
    assert found["verdict"].startswith("identical (forced despite: library versions differ")


def test_one_notebook_is_reproduced_beside_a_copy_of_the_run(original, tmp_path):
    """Catches NB= reproducing a notebook without the results it reads (09 reads 07's), or
    comparing experiments it did not make."""
    copy = copy_of(original, tmp_path)
    shutil.copytree(copy / "toy", copy / "other")     # another notebook's results
    assert reproduce.reproduce(str(copy), nb="01_toy", notebooks_dir=original[1]) == 0
    rerun = tmp_path / "reports" / "copy-reproduced-1"
    assert (rerun / "other" / "metrics.json").is_file()
    assert [r["experiment"] for r in read_json(rerun / reproduce.FILE)["experiments"]] == ["toy"]


def test_changed_data_is_refused(original, tmp_path):
    copy = copy_of(original, tmp_path)
    (copy / "dataset.json").write_text(json.dumps({"data_digest": "not the data's"}))
    state = read_json(copy / "runner.json")
    assert reproduce.problems(copy, state) == [
        "the data of fashion-mnist changed since the run (digest)"]


def test_verdicts_inside_and_outside_the_interval():
    old = {"accuracy": 0.9, "accuracy_ci95": [0.88, 0.92], "macro_f1": 0.9,
           "macro_f1_ci95": [0.88, 0.92]}
    assert reproduce.verdict(old, dict(old), 0) == "identical"
    assert reproduce.verdict(old, old | {"accuracy": 0.91}, 3) == "within the interval"
    assert reproduce.verdict(old, old | {"accuracy": 0.95}, 9) == "different"
    assert reproduce.verdict(old, dict(old), 2) == "within the interval"   # same figures,
    # other predictions
    clean = {"commit": "abc", "dirty": False}
    assert reproduce.same_code(clean, dict(clean))
    assert not reproduce.same_code({"commit": None, "dirty": None}, {"commit": None})
    assert not reproduce.same_code(clean | {"dirty": True}, clean)
