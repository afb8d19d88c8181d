"""A new user's first command: the dataset is prepared before any notebook, or the run stops
once with a message that says what to do; the Makefile passes what it is given."""

from __future__ import annotations

import subprocess

import keras
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from shared import config, data
from shared.run import kernel, runner

pytestmark = pytest.mark.kernel  # not in `make check`


@pytest.fixture
def bare_machine(tmp_path, monkeypatch):
    """No Debian package, an empty data/ folder, and no network for Keras' download."""
    monkeypatch.setattr(config, "DATA_DIR", tmp_path / "data")
    monkeypatch.setattr(data.fashion, "SYSTEM_FASHION_DIR", tmp_path / "no-debian-package")

    def offline():
        raise OSError("no network")

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    return tmp_path


def stand_in(folder, code: str):
    """``folder/01_x.ipynb``: a parameters cell, then ``code``."""
    folder.mkdir()
    params = new_code_cell("profile = None\ndataset = None\nrun_dir = None")
    params.metadata["tags"] = ["parameters"]
    nbformat.write(new_notebook(cells=[new_markdown_cell("# x"), params, new_code_cell(code)]),
                   folder / "01_x.ipynb")
    return folder


def test_a_run_without_the_dataset_stops_before_any_notebook(bare_machine, capsys):
    """Catches the runner executing every notebook into a dataset that is not there."""
    marker = bare_machine / "executed"
    folder = stand_in(bare_machine / "notebooks", f"open({str(marker)!r}, 'w').close()")
    run_dir = bare_machine / "reports" / "first"

    code = runner.main(["run-all", "--notebooks", str(folder), "--profile", "smoke",
                        "--data", "fashion-mnist", "--run", str(run_dir)])

    err = capsys.readouterr().err
    assert code != 0
    assert err.count("Fashion-MNIST is not on this machine") == 1
    assert "apt-get install dataset-fashion-mnist" in err and "No notebook was run" in err
    assert not marker.exists() and not (run_dir / "runner.json").exists()


def test_a_missing_folder_dataset_is_named_before_any_notebook(tmp_path, capsys):
    nbformat.write(new_notebook(cells=[new_markdown_cell("# x")]), tmp_path / "01_x.ipynb")
    code = runner.main(["run-all", "--notebooks", str(tmp_path), "--profile", "smoke",
                        "--data", str(tmp_path / "my-photos"), "--run", str(tmp_path / "r")])
    assert code != 0 and "my-photos" in capsys.readouterr().err


def test_a_relative_dataset_path_reaches_the_notebooks_as_a_full_path(tmp_path, monkeypatch):
    """Catches DATA=my-photos failing in every notebook (they run in notebooks/)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-photos" / "cat").mkdir(parents=True)
    seen = tmp_path / "seen.txt"
    folder = stand_in(tmp_path / "notebooks", f"open({str(seen)!r}, 'w').write(dataset)")
    code = runner.main(["run-all", "--notebooks", str(folder), "--profile", "smoke",
                        "--data", "my-photos", "--run", str(tmp_path / "reports" / "r")])
    assert code == 0 and seen.read_text() == str(tmp_path / "my-photos")


# --------------------------------------------------------------------------- the Makefile


def make_dry_run(*args: str) -> list[str]:
    """The commands `make -n <args>` would run, one per line (continued lines joined)."""
    out = subprocess.run(["make", "-n", "-C", str(config.REPO_ROOT), *args],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.replace("\\\n", " ").splitlines() if line.strip()]


def index_of(lines: list[str], text: str) -> int:
    found = [i for i, line in enumerate(lines) if text in line]
    assert found, f"no command with {text!r} in: {lines}"
    return found[0]


@pytest.mark.parametrize("target", ["run-all", "run"])
def test_run_targets_prepare_the_dataset_they_are_given_first(target):
    """Catches run-all or run starting notebooks without the data step, or on other data."""
    lines = make_dry_run(target, "NB=01", "DATA=/photos/leaves", "RUN=r", "PROFILE=smoke")
    prepare = index_of(lines, '-m shared.data "/photos/leaves"')
    start = index_of(lines, f"-m shared.run.runner {target}")
    assert prepare < start
    assert '--profile smoke --data "/photos/leaves" --run "r"' in lines[start]
    assert ('--nb "01"' in lines[start]) == (target == "run")


@pytest.mark.parametrize(("fresh", "passed"), [("", False), ("0", False), ("1", True),
                                               ("yes", True), ("true", True)])
def test_fresh_is_passed_only_when_asked(fresh, passed):
    lines = make_dry_run("run-all", f"FRESH={fresh}", "RUN=r")
    assert ("--fresh" in lines[index_of(lines, "-m shared.run.runner run-all")]) == passed


def test_without_run_the_runner_picks_the_name():
    lines = make_dry_run("run-all")
    assert "--run" not in lines[index_of(lines, "-m shared.run.runner run-all")]


def test_the_test_target_prepares_data_then_runs_pytest_and_nbval_on_smoke():
    lines = make_dry_run("test")
    pytest_line = index_of(lines, "-m pytest")
    assert index_of(lines, '-m shared.data "fashion-mnist"') < pytest_line
    commands = [line.rstrip() for line in lines if "-m pytest" in line]
    nbval = next(c for c in commands if " notebooks tests/" in c)
    units = next(c for c in commands if c.endswith(" tests"))
    assert "SHARED_PROFILE=smoke" in nbval and "--nbval-lax" in nbval
    assert f"--nbval-kernel-name {kernel.KERNEL_NAME}" in nbval
    assert "SHARED_PROFILE=smoke" in units and "-n 2" in units and '"not end_to_end"' in units
    # every test module runs once: the kernel tests beside the notebooks, not among the units
    moved = nbval.split(" notebooks ")[1].split()
    assert moved and all(f"--ignore={module}" in units for module in moved)
