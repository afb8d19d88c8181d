"""The batch runner: order, failures that do not stop a run, HTML, index pages, reruns."""

import json
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from shared import runner


def _notebook(path, *cells):
    """A notebook with a tagged parameters cell followed by ``cells`` (code)."""
    params = new_code_cell("profile = None\ndataset = None\nrun_dir = None")
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[new_markdown_cell(f"# {path.stem}"), params,
                             *[new_code_cell(c) for c in cells]])
    nbformat.write(nb, path)
    return path


@pytest.fixture
def notebooks(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    write = ("import pandas as pd, pathlib\n"
             "from shared.evaluate import write_results\n"
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
    return folder


def test_kernel_is_this_environment(tmp_path):
    from jupyter_client.kernelspec import KernelSpecManager

    name = runner.ensure_kernel()
    spec = KernelSpecManager().get_kernel_spec(name)
    assert spec.argv[0] == sys.executable


def test_notebooks_are_found_in_name_order_and_by_prefix(notebooks):
    assert [p.stem for p in runner.list_notebooks(notebooks)] == \
        ["01_first", "02_broken", "03_third"]
    assert runner.find_notebook("03", notebooks).stem == "03_third"
    assert runner.find_notebook("02_broken.ipynb", notebooks).stem == "02_broken"
    with pytest.raises(ValueError, match="01_first, 02_broken, 03_third"):
        runner.find_notebook("04", notebooks)


def test_a_broken_notebook_is_reported_and_the_others_still_run(notebooks, tmp_path, capsys):
    run_dir = tmp_path / "reports" / "x"
    code = runner.run_notebooks(runner.list_notebooks(notebooks), profile="smoke",
                                dataset="fashion-mnist", run=str(run_dir))
    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED: 02_broken" in out and "[3/3] 03_third: ok" in out

    state = json.loads((run_dir / "runner.json").read_text())
    statuses = {k: v["status"] for k, v in state["notebooks"].items()}
    assert statuses == {"01_first": "ok", "02_broken": "failed", "03_third": "ok"}
    assert "deliberately broken" in state["notebooks"]["02_broken"]["error"]
    assert state["notebooks"]["01_first"]["peak_memory_mb"] > 10  # a kernel's real RSS

    # every executed copy is kept (the broken one with its error) and rendered
    for stem in ("01_first", "02_broken", "03_third"):
        assert (run_dir / f"{stem}.ipynb").exists() and (run_dir / f"{stem}.html").exists()
    broken = nbformat.read(run_dir / "02_broken.ipynb", as_version=4)
    assert any(o.get("ename") == "RuntimeError" for c in broken.cells
               for o in c.get("outputs", []))
    # the parameters reached the notebooks
    assert "ran first smoke fashion-mnist" in (run_dir / "01_first.html").read_text()

    index = (run_dir / "index.html").read_text()
    assert "failed" in index and 'href="02_broken.html"' in index
    assert index.index(">third<") < index.index(">first<")  # ranked by test accuracy
    assert "http://" not in index and "https://" not in index  # no external assets
    runs = (run_dir.parent / "index.html").read_text()
    assert 'href="x/index.html"' in runs and "1 failed" in runs


def test_a_rerun_skips_what_completed_and_retries_what_failed(notebooks, tmp_path, capsys):
    run = str(tmp_path / "reports" / "y")
    nbs = runner.list_notebooks(notebooks)
    runner.run_notebooks(nbs, profile="smoke", dataset="d", run=run)
    first = json.loads((tmp_path / "reports/y/runner.json").read_text())
    capsys.readouterr()
    assert runner.run_notebooks(nbs, profile="smoke", dataset="d", run=run) == 1
    out = capsys.readouterr().out
    assert "01_first: already complete in this run, skipped" in out
    assert "[2/3] 02_broken: started" in out
    again = json.loads((tmp_path / "reports/y/runner.json").read_text())
    assert again["notebooks"]["01_first"] == first["notebooks"]["01_first"]

    with pytest.raises(SystemExit, match="FRESH=1"):
        runner.run_notebooks(nbs, profile="cpu", dataset="d", run=run)


def test_fresh_starts_over(notebooks, tmp_path):
    run = str(tmp_path / "reports" / "z")
    only_first = runner.list_notebooks(notebooks)[:1]
    assert runner.run_notebooks(only_first, profile="smoke", dataset="d", run=run) == 0
    (tmp_path / "reports/z/stale.txt").write_text("old")
    assert runner.run_notebooks(only_first, profile="smoke", dataset="d", run=run,
                                fresh=True) == 0
    assert not (tmp_path / "reports/z/stale.txt").exists()


def test_fresh_for_one_notebook_runs_it_again_and_keeps_the_rest(notebooks, tmp_path, capsys):
    run = str(tmp_path / "reports" / "w")
    nbs = runner.list_notebooks(notebooks)
    runner.run_notebooks(nbs, profile="smoke", dataset="d", run=run)
    before = json.loads((tmp_path / "reports/w/runner.json").read_text())["notebooks"]
    capsys.readouterr()
    args = ["run", "--nb", "03", "--notebooks", str(notebooks), "--profile", "smoke",
            "--data", "d", "--run", run]
    assert runner.main(args) == 1                    # 02_broken still failed in this run
    assert "03_third: already complete in this run, skipped" in capsys.readouterr().out
    assert runner.main([*args, "--fresh"]) == 1
    assert "[1/1] 03_third: started" in capsys.readouterr().out
    assert "ran third smoke d fresh 1" in (tmp_path / "reports/w/03_third.html").read_text()
    after = json.loads((tmp_path / "reports/w/runner.json").read_text())["notebooks"]
    assert after["01_first"] == before["01_first"]
    assert after["03_third"]["status"] == "ok" and after["03_third"] != before["03_third"]
    assert (tmp_path / "reports/w/first/metrics.json").is_file()


def test_the_command_line_names_an_unknown_notebook(notebooks, capsys):
    code = runner.main(["run", "--nb", "99", "--notebooks", str(notebooks), "--profile",
                        "smoke"])
    assert code == 2 and "01_first, 02_broken, 03_third" in capsys.readouterr().err
