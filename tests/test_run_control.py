"""Commands on a run from outside: a second command on a run in use, Ctrl-C, and kernels that
only this user can reach."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import nbformat
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from test_reliability import TRAIN

from shared import config
from shared.run import runner

pytestmark = pytest.mark.kernel  # not in `make check`


def _notebook(path, code):
    params = new_code_cell("profile = None\ndataset = None\nrun_dir = None")
    params.metadata["tags"] = ["parameters"]
    nbformat.write(new_notebook(cells=[new_markdown_cell("# x"), params, new_code_cell(code)]),
                   path)
    return path


def _runner(notebooks, run, *extra):
    return subprocess.Popen([sys.executable, "-m", "shared.run.runner", "run-all", "--profile",
                             "smoke", "--data", str(notebooks), "--run", str(run),
                             "--notebooks", str(notebooks), *extra],
                            start_new_session=True, cwd=config.REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _hold(run):
    """A process that holds the run's lock until killed."""
    code = ("import sys, time\nfrom pathlib import Path\nfrom shared.run import lock\n"
            f"with lock.run_lock(Path({str(run)!r})):\n"
            "    print('held', flush=True)\n    time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              cwd=config.REPO_ROOT)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_command_on_a_run_in_use_refuses_at_once_naming_the_holder(tmp_path, capsys):
    """Catches two commands writing into one run folder."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    marker = tmp_path / "executed"
    _notebook(notebooks / "01_x.ipynb", f"open({str(marker)!r}, 'w').close()")
    run = tmp_path / "reports" / "busy"
    args = ["run-all", "--notebooks", str(notebooks), "--profile", "smoke", "--data",
            str(notebooks), "--run", str(run)]

    holder = _hold(run)
    try:
        started = time.monotonic()
        assert runner.main(args) == 1
        assert time.monotonic() - started < 10                       # at once, no waiting
        err = capsys.readouterr().err
        assert f"run busy is in use by process {holder.pid}" in err and "-c" in err
        assert not marker.exists()
    finally:
        holder.kill()
        holder.wait()

    # the holder died without letting go: its lock is recognised and taken over
    assert runner.main(args) == 0
    assert f"the lock of process {holder.pid}" in capsys.readouterr().out
    assert marker.exists()


@pytest.mark.end_to_end
def test_ctrl_c_stops_the_notebook_marks_it_and_the_next_run_resumes(tmp_path):
    """Catches a traceback on Ctrl-C, a notebook left "running", or training restarted."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _notebook(notebooks / "01_tiny.ipynb", TRAIN)
    run = tmp_path / "reports" / "stopped"
    history = run / "tiny" / "history.csv"

    first = _runner(notebooks, run)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        if history.exists() and len(pd.read_csv(history)) >= 2:
            break
        time.sleep(0.2)
    assert first.poll() is None, first.communicate()[0]
    os.kill(first.pid, signal.SIGINT)                   # what Ctrl-C sends the runner
    out = first.communicate(timeout=60)[0]
    assert first.returncode == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    assert "INTERRUPTED: 01_tiny" in out
    state = json.loads((run / "runner.json").read_text())["notebooks"]
    assert state["01_tiny"]["status"] == "interrupted"
    assert '<span class="interrupted">interrupted</span>' in (run / "index.html").read_text()
    done_before = len(pd.read_csv(history))
    assert 2 <= done_before < 6

    second = _runner(notebooks, run)
    out = second.communicate(timeout=300)[0]
    assert second.returncode == 0, out
    assert list(pd.read_csv(history)["epoch"]) == [1, 2, 3, 4, 5, 6]   # resumed, not redone
    # the kernels listened on Unix sockets, not on TCP ports: no warning about it either
    assert "TCP" not in out


def test_a_damaged_runner_json_gets_one_line_naming_it(tmp_path, capsys):
    """Catches a JSON traceback from a truncated runner.json (run, run-all, index pages)."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _notebook(notebooks / "01_x.ipynb", "pass")
    run = tmp_path / "reports" / "damaged"
    run.mkdir(parents=True)
    (run / "runner.json").write_text('{"run": "damaged", "notebo')
    for args in (["run-all", "--notebooks", str(notebooks), "--profile", "smoke", "--data",
                  str(notebooks), "--run", str(run)], ["index", "--run", str(run)]):
        assert runner.main(args) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "runner.json is damaged" in err
        assert "FRESH=1" in err and "Traceback" not in err
    other = tmp_path / "reports" / "fine"
    assert runner.main(["run-all", "--notebooks", str(notebooks), "--profile", "smoke",
                        "--data", str(notebooks), "--run", str(other)]) == 0
    assert "runner.json is damaged" in (tmp_path / "reports" / "index.html").read_text()
