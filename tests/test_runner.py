"""The batch runner: order, failures that do not stop a run, HTML, index pages, reruns."""

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from shared.run import kernel, order, runner

pytestmark = pytest.mark.kernel  # not in `make check`


def _notebook(path, *cells):
    """A notebook with a tagged parameters cell followed by ``cells`` (code)."""
    params = new_code_cell("profile = None\ndataset = None\nrun_dir = None")
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[new_markdown_cell(f"# {path.stem}"), params,
                             *[new_code_cell(c) for c in cells]])
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module", autouse=True)
def no_fresh_from_the_shell():
    """The notebooks print $SHARED_FRESH: a developer's exported one must not leak in."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SHARED_FRESH", raising=False)
        yield


@pytest.fixture(scope="module")
def notebooks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("notebooks")
    write = ("import pandas as pd, pathlib\n"
             "from shared.results import write_results\n"
             "out = pathlib.Path(run_dir) / '{name}'\n"
             "out.mkdir(exist_ok=True)\n"
             "rows = pd.DataFrame({{'split': ['test'], 'path': ['a.png'], 'label': ['x'], "
             "'predicted': ['x'], 'p_x': [1.0]}})\n"
             "write_results(out, rows, {{'experiment': '{name}', 'accuracy': {acc}, "
             "'macro_f1': {acc}, 'profile': profile, 'seed': 7, 'status': 'complete', "
             "'images': {{'test': 1}}}})\n"
             "import os\n"
             "print('ran', '{name}', profile, dataset, 'fresh', os.environ.get('SHARED_FRESH'))")
    _notebook(folder / "01_first.ipynb", write.format(name="first", acc=0.5))
    _notebook(folder / "02_broken.ipynb", "raise RuntimeError('deliberately broken')")
    _notebook(folder / "03_third.ipynb", write.format(name="third", acc=0.75))
    reader = _notebook(folder / "04_reader.ipynb",
                       "import pathlib\nprint('reader saw', sorted(p.parent.name for p in "
                       "pathlib.Path(run_dir).glob('*/metrics.json')))")
    nb = nbformat.read(reader, as_version=4)
    nb.metadata["shared"] = {"reads_run_results": True}      # as the ensemble's
    nbformat.write(nb, reader)
    return folder


def test_kernel_is_this_environment(tmp_path):
    from jupyter_client.kernelspec import KernelSpecManager

    name = kernel.ensure_kernel()
    spec = KernelSpecManager().get_kernel_spec(name)
    assert spec.argv[0] == sys.executable


def test_notebooks_are_found_in_name_order_and_by_prefix(notebooks):
    assert [p.stem for p in order.list_notebooks(notebooks)] == \
        ["01_first", "02_broken", "03_third", "04_reader"]
    assert order.find_notebook("03", notebooks).stem == "03_third"
    assert order.find_notebook("02_broken.ipynb", notebooks).stem == "02_broken"
    with pytest.raises(ValueError, match="01_first, 02_broken, 03_third"):
        order.find_notebook("05", notebooks)


def test_run_all_runs_the_notebooks_that_read_the_results_last(notebooks, tmp_path):
    late = _notebook(tmp_path / "05_late_study.ipynb", "print('study')")
    found = [*order.list_notebooks(notebooks), late]
    assert [p.stem for p in order.run_order(found)] == \
        ["01_first", "02_broken", "03_third", "05_late_study", "04_reader"]


@pytest.fixture(scope="module")
def first_run(notebooks, tmp_path_factory):
    """The four notebooks run once into reports/x: (run directory, exit code, output). Tests
    that run again work on a copy (``copy_run``): each notebook execution costs seconds."""
    run_dir = tmp_path_factory.mktemp("first") / "reports" / "x"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = runner.run_notebooks(order.list_notebooks(notebooks), profile="smoke",
                                    dataset="fashion-mnist", run=str(run_dir))
    return run_dir, code, out.getvalue()


def copy_run(first_run, tmp_path, name: str):
    copy = tmp_path / "reports" / name
    shutil.copytree(first_run[0], copy)
    return copy


def read_state(run_dir):
    return json.loads((run_dir / "runner.json").read_text())["notebooks"]


def test_a_broken_notebook_is_reported_and_the_others_still_run(first_run):
    run_dir, code, out = first_run
    assert code == 1
    assert "FAILED: 02_broken" in out and "[3/4] 03_third: ok" in out

    state = read_state(run_dir)
    statuses = {k: v["status"] for k, v in state.items()}
    assert statuses == {"01_first": "ok", "02_broken": "failed", "03_third": "ok",
                        "04_reader": "ok"}
    assert "reader saw ['first', 'third']" in (run_dir / "04_reader.html").read_text()
    assert "deliberately broken" in state["02_broken"]["error"]
    assert state["01_first"]["peak_memory_mb"] > 10  # a kernel's real RSS

    # every executed copy is kept (the broken one with its error) and rendered
    for stem in ("01_first", "02_broken", "03_third", "04_reader"):
        assert (run_dir / f"{stem}.ipynb").exists() and (run_dir / f"{stem}.html").exists()
    broken = nbformat.read(run_dir / "02_broken.ipynb", as_version=4)
    assert any(o.get("ename") == "RuntimeError" for c in broken.cells
               for o in c.get("outputs", []))
    # the parameters reached the notebooks
    assert "ran first smoke fashion-mnist fresh None" in (run_dir / "01_first.html").read_text()

    index = (run_dir / "index.html").read_text()
    assert "failed" in index and 'href="02_broken.html"' in index
    assert index.index(">third<") < index.index(">first<")  # ranked by test accuracy
    assert "http://" not in index and "https://" not in index  # no external assets
    runs = (run_dir.parent / "index.html").read_text()
    assert 'href="x/index.html"' in runs and "1 failed" in runs


def test_a_rerun_skips_what_completed_and_retries_what_failed(first_run, notebooks, tmp_path,
                                                             capsys):
    run_dir = copy_run(first_run, tmp_path, "y")
    nbs = order.list_notebooks(notebooks)
    before = read_state(run_dir)
    assert runner.run_notebooks(nbs, profile="smoke", dataset="fashion-mnist",
                                run=str(run_dir)) == 1
    out = capsys.readouterr().out
    assert "01_first: already complete in this run, skipped" in out
    assert "[2/4] 02_broken: started" in out
    # 02 ran again, so the reader of the run's results is stale and runs again too
    assert "04_reader read the results of this run before 02_broken ran again" in out
    assert "[4/4] 04_reader: started" in out
    after = read_state(run_dir)
    assert after["01_first"] == before["01_first"] and after["03_third"] == before["03_third"]
    assert after["02_broken"]["status"] == "failed" and after["04_reader"]["status"] == "ok"

    with pytest.raises(SystemExit, match="FRESH=1"):
        runner.run_notebooks(nbs, profile="cpu", dataset="fashion-mnist", run=str(run_dir))


def test_fresh_starts_over(first_run, notebooks, tmp_path):
    run_dir = copy_run(first_run, tmp_path, "z")
    only_first = order.list_notebooks(notebooks)[:1]
    assert runner.run_notebooks(only_first, profile="smoke", dataset="fashion-mnist",
                                run=str(run_dir), fresh=True) == 0
    assert set(read_state(run_dir)) == {"01_first"}          # the other results are gone
    assert not (run_dir / "third").exists() and not (run_dir / "02_broken.ipynb").exists()


def test_fresh_for_one_notebook_runs_it_again_and_keeps_the_rest(first_run, notebooks,
                                                                 tmp_path, capsys):
    run_dir = copy_run(first_run, tmp_path, "w")
    before = read_state(run_dir)
    args = ["run", "--nb", "03", "--notebooks", str(notebooks), "--profile", "smoke",
            "--data", "fashion-mnist", "--run", str(run_dir)]
    assert runner.main(args) == 1                    # 02_broken still failed in this run
    assert "03_third: already complete in this run, skipped" in capsys.readouterr().out
    assert runner.main([*args, "--fresh"]) == 1
    out = capsys.readouterr().out
    assert "[1/1] 03_third: started" in out and "STALE: 04_reader" in out
    assert "ran third smoke fashion-mnist fresh 1" in (run_dir / "03_third.html").read_text()
    after = read_state(run_dir)
    assert after["01_first"] == before["01_first"]
    assert after["03_third"]["status"] == "ok"    # ran again: its page says fresh 1 (above)
    assert after["04_reader"]["status"] == "stale"
    assert '<span class="stale">stale</span>' in (run_dir / "index.html").read_text()
    assert "1 stale" in (run_dir.parent / "index.html").read_text()
    assert (run_dir / "first" / "metrics.json").is_file()
    # a stale notebook is not complete: running it (without FRESH) executes it
    assert runner.main([*args[:2], "04", *args[3:]]) == 1
    assert "[1/1] 04_reader: started" in capsys.readouterr().out
    assert read_state(run_dir)["04_reader"]["status"] == "ok"


def test_the_command_line_names_an_unknown_notebook(notebooks, capsys):
    code = runner.main(["run", "--nb", "99", "--notebooks", str(notebooks), "--profile",
                        "smoke"])
    assert code == 2 and "01_first, 02_broken, 03_third" in capsys.readouterr().err


def test_set_items_reach_the_notebooks_that_have_the_parameter():
    """Catches SET reaching a notebook without the parameter, an NB. prefix ignored, values
    left as text, a misspelt parameter accepted (papermill would inject it unused), or a dict
    whose quotes the shell ate passed on as text."""
    notebooks = order.run_order(order.list_notebooks())
    given = order.settings_from("augment=dihedral 01.epochs=80 '01.architecture="
                                   "{\"blocks\": 3}' 02.tta=None", notebooks)
    assert given["01_baseline_cnn"] == {"augment": "dihedral", "epochs": 80,
                                        "architecture": {"blocks": 3}}
    assert given["02_vgg19_transfer"] == {"augment": "dihedral", "tta": None}
    assert "00_data" not in given and "04_ensemble" not in given   # no such parameter
    assert order.settings_from("  ", notebooks) == {}
    for item, named in [("01.epoch=3", "has no parameter 'epoch'"), ("zzz=1", "'zzz'"),
                        ("run_dir=x", "set by the run itself"), ("epochs", "name=value"),
                        ("01.architecture={'blocks':3}", "not a Python literal")]:
        with pytest.raises(ValueError, match=named):
            order.settings_from(item, notebooks)


def test_set_parameters_are_given_recorded_and_a_change_runs_the_notebook_again(tmp_path,
                                                                                 capsys):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for name in ("01_a", "02_b"):
        path = _notebook(folder / f"{name}.ipynb",
                         "import json, pathlib\n"
                         f"pathlib.Path(run_dir, '{name}.json').write_text(json.dumps("
                         "{'epochs': epochs, 'augment': augment}))")
        nb = nbformat.read(path, as_version=4)
        nb.cells[1].source += "\nepochs = None\naugment = None"
        nbformat.write(nb, path)
    run_dir = tmp_path / "reports" / "r"

    def run(spec):
        return runner.main(["run-all", "--notebooks", str(folder), "--profile", "smoke",
                            "--data", "fashion-mnist", "--run", str(run_dir), "--set", spec])

    def seen(name):
        return json.loads((run_dir / f"{name}.json").read_text())

    assert run("augment=dihedral 01.epochs=80") == 0
    assert seen("01_a") == {"epochs": 80, "augment": "dihedral"}
    assert seen("02_b") == {"epochs": None, "augment": "dihedral"}
    state = json.loads((run_dir / "runner.json").read_text())["notebooks"]
    assert state["01_a"]["settings"] == {"augment": "dihedral", "epochs": 80}
    capsys.readouterr()
    assert run("augment=dihedral 01.epochs=80") == 0          # the same: nothing runs again
    assert capsys.readouterr().out.count("already complete") == 2
    assert run("augment=flip 01.epochs=80") == 0              # changed: both run again
    assert seen("01_a")["augment"] == seen("02_b")["augment"] == "flip"
    assert run("01.epoch=3") == 2
    assert "01_a has no parameter 'epoch'" in capsys.readouterr().err


def test_each_notebook_s_whole_output_is_in_its_log_and_not_on_the_terminal(first_run):
    """Catches a notebook's output flooding the terminal, or a log that misses it."""
    run_dir, _, out = first_run
    log = (run_dir / "logs" / "01_first.log").read_text()
    assert "ran first smoke fashion-mnist" in log and "Executing Cell" in log
    own = "\n".join(line for line in out.splitlines() if not line.startswith("  | "))
    assert "ran first" not in own and "Executing Cell" not in own     # (a failure's last lines)
    # without a terminal: one line when each notebook starts and one when it ends
    assert "[1/4] 01_first: started" in out and "[1/4] 01_first: ok in" in out
    assert not list((run_dir / "logs").glob(".*.json")), "progress files left behind"


def test_a_failed_notebook_names_its_log_and_shows_its_last_lines(first_run):
    run_dir, _, out = first_run
    failed = out[out.index("[2/4] 02_broken: failed"):]
    assert f"its whole output: {run_dir / 'logs' / '02_broken.log'}" in failed
    assert "RuntimeError" in failed.split("[3/4]")[0]


def test_verbose_streams_every_line_as_well(notebooks, tmp_path, capfd):
    one = _notebook(tmp_path / "01_say.ipynb", "print('said by the notebook')")
    code = runner.run_notebooks([one], profile="smoke", dataset="fashion-mnist",
                                run=str(tmp_path / "reports" / "v"), verbose=True)
    assert code == 0 and "said by the notebook" in capfd.readouterr().out
    assert "said by the notebook" in (tmp_path / "reports/v/logs/01_say.log").read_text()


def test_the_runner_keeps_tensorflow_s_start_up_lines_off_the_terminal(tmp_path):
    """Catches TensorFlow's C++ lines (printed when PROFILE=auto looks for a GPU, and when the
    run records its machine) reaching the terminal instead of the run's logs/runner.log."""
    one = _notebook(tmp_path / "01_quiet.ipynb", "print('quiet')")
    run_dir = tmp_path / "reports" / "q"
    shown = subprocess.run(
        [sys.executable, "-m", "shared.run.runner", "run-all", "--notebooks", str(tmp_path),
         "--profile", "auto", "--data", "fashion-mnist", "--run", str(run_dir)],
        capture_output=True, text=True, check=True, env=os.environ | {"CI": "true"})
    terminal = shown.stdout + shown.stderr
    assert "profile auto -> " in terminal and f"[1/1] {one.stem}: ok" in terminal
    assert not re.search(r"cpu_feature_guard|oneDNN|cudart_stub|absl::", terminal), terminal
    assert re.search(r"oneDNN|cudart_stub|absl::", (run_dir / "logs/runner.log").read_text())
