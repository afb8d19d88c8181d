"""`make run-all JOBS=N`: which notebooks may start when, what each gets of the machine, and a
smoke run with two at once that writes what the sequential run writes, in a valid order."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time

import nbformat
import psutil
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from test_first_run import index_of, make_dry_run

from shared import config
from shared.run import order, runner
from shared.run.jobs import Devices, visible_gpus

pytestmark = pytest.mark.kernel  # not in `make check`


def _notebook(path, code: str = "", **shared):
    """``path``: a parameters cell, then ``code``; ``shared`` goes into its metadata."""
    params = new_code_cell("profile = None\ndataset = None\nrun_dir = None")
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[new_markdown_cell(f"# {path.stem}"), params, new_code_cell(code)])
    if shared:
        nb.metadata["shared"] = shared
    nbformat.write(nb, path)
    return path


# --------------------------------------------------------------------------- scheduling


def test_which_notebooks_may_start_when(tmp_path):
    """Catches the split, the ensemble or a notebook's declared reads racing the others."""
    for name in ("00_data", "01_a", "03_c", "05_e"):
        _notebook(tmp_path / f"{name}.ipynb")
    _notebook(tmp_path / "02_b.ipynb", after=["01"])
    _notebook(tmp_path / "04_reader.ipynb", reads_run_results=True)
    _notebook(tmp_path / "06_reader.ipynb", reads_run_results=True)
    notebooks = order.run_order(order.list_notebooks(tmp_path))
    assert [p.stem for p in notebooks] == \
        ["00_data", "01_a", "02_b", "03_c", "05_e", "04_reader", "06_reader"]

    needs = order.prerequisites(notebooks)
    experiments = {"01_a", "02_b", "03_c", "05_e"}
    assert needs["00_data"] == set()
    assert needs["01_a"] == needs["03_c"] == needs["05_e"] == {"00_data"}
    assert needs["02_b"] == {"00_data", "01_a"}
    assert needs["04_reader"] == {"00_data"} | experiments
    assert needs["06_reader"] == {"00_data", "04_reader"} | experiments

    def startable(ended):
        return {n for n, before in needs.items() if n not in ended and before <= ended}

    assert startable(set()) == {"00_data"}
    assert startable({"00_data"}) == {"01_a", "03_c", "05_e"}
    assert startable({"00_data", "01_a"}) == {"02_b", "03_c", "05_e"}
    assert startable({"00_data"} | experiments) == {"04_reader"}

    # `run --nb 02` alone waits for nothing
    assert order.prerequisites([tmp_path / "02_b.ipynb"]) == {"02_b": set()}


def test_a_rerun_makes_stale_what_read_it_directly_or_through_another(tmp_path):
    """Catches a notebook that read a rerun notebook's results (metadata "after", or through
    a notebook that did) being kept as complete, so a later run-all would not redo it."""
    for name in ("00_data", "01_a", "03_c"):
        _notebook(tmp_path / f"{name}.ipynb")
    _notebook(tmp_path / "02_b.ipynb", after=["01"])
    _notebook(tmp_path / "05_e.ipynb", after=["02_b"])
    _notebook(tmp_path / "04_reader.ipynb", reads_run_results=True)
    names = ("00_data", "01_a", "02_b", "03_c", "04_reader", "05_e")
    state = {"notebooks": {name: {"status": "ok"} for name in names}}
    stale = order.mark_stale(state, tmp_path / "01_a.ipynb")
    assert sorted(stale) == ["02_b", "04_reader", "05_e"]
    assert {n for n, r in state["notebooks"].items() if r["status"] == "ok"} == \
        {"00_data", "01_a", "03_c"}


def test_a_wrong_or_circular_after_is_named_before_anything_runs(tmp_path):
    _notebook(tmp_path / "01_a.ipynb", after=["09"])
    with pytest.raises(ValueError, match=r"01_a.ipynb: metadata \"after\": .*'09'"):
        order.prerequisites(order.list_notebooks(tmp_path))
    _notebook(tmp_path / "01_a.ipynb", after=["02"])
    _notebook(tmp_path / "02_b.ipynb", after=["01_a"])
    with pytest.raises(ValueError, match="01_a, 02_b wait for each other"):
        order.prerequisites(order.list_notebooks(tmp_path))
    _notebook(tmp_path / "02_b.ipynb", after=["03"])
    _notebook(tmp_path / "03_reader.ipynb", reads_run_results=True)
    with pytest.raises(ValueError, match="wait for each other"):  # a reader waits for 02
        order.prerequisites(order.list_notebooks(tmp_path))


def test_the_gpus_are_those_nvidia_smi_lists_or_cuda_visible_devices(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\ncat <<'EOF'\n"
                    "GPU 0: NVIDIA H100 (UUID: GPU-aaa)\n"
                    "GPU 1: NVIDIA A100 (UUID: GPU-bbb)\n"
                    "  MIG 3g.20gb     Device  0: (UUID: MIG-b0)\n"
                    "  MIG 3g.20gb     Device  1: (UUID: MIG-b1)\n"
                    "EOF\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus() == ["GPU-aaa", "MIG-b0", "MIG-b1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3,-1,4")
    assert visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert visible_gpus() == []


def test_each_notebook_gets_the_least_used_gpu_and_a_share_of_the_cores(monkeypatch):
    """Catches two notebooks on one GPU while another is idle, or every job on all cores."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    devices = Devices(2, ["g0", "g1"])
    first, _ = devices.take()
    second, where = devices.take()
    assert (first["CUDA_VISIBLE_DEVICES"], second["CUDA_VISIBLE_DEVICES"]) == ("g0", "g1")
    assert where == "GPU g1" and first["TF_NUM_INTRAOP_THREADS"] == "8"
    assert "TF_FORCE_GPU_ALLOW_GROWTH" not in first            # a GPU each: no sharing
    devices.give_back(first)
    assert devices.take()[0]["CUDA_VISIBLE_DEVICES"] == "g0"   # g1 is still busy

    crowded = Devices(3, ["g0"])
    env, _ = crowded.take()
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" and env["OMP_NUM_THREADS"] == "5"
    cpu_only, where = Devices(4, []).take()
    assert "CUDA_VISIBLE_DEVICES" not in cpu_only and cpu_only["TF_NUM_INTEROP_THREADS"] == "4"
    assert where == "4 CPU thread(s)"


def test_make_passes_jobs_only_when_given():
    for jobs, passed in (("JOBS=4", '--jobs "4"'), ("JOBS=", None)):
        lines = make_dry_run("run-all", jobs, "RUN=r")
        command = lines[index_of(lines, "-m shared.run.runner run-all")]
        assert (passed in command) if passed else ("--jobs" not in command)


def test_jobs_must_be_a_whole_number(capsys):
    with pytest.raises(SystemExit):
        runner.main(["run-all", "--jobs", "0"])
    assert "JOBS must be a whole number of at least 1, not '0'" in capsys.readouterr().err


# --------------------------------------------------------------------------- a run


LOG = ("import json, os, time, pathlib\n"
       "log = pathlib.Path(run_dir) / 'order.log'\n"
       "def note(what):\n"
       "    with open(log, 'a') as f:\n"
       "        f.write(json.dumps([NAME, what, time.time(),\n"
       "                            os.environ.get('CUDA_VISIBLE_DEVICES'),\n"
       "                            os.environ.get('TF_NUM_INTRAOP_THREADS')]) + '\\n')\n"
       "note('start')\n")

SPLIT = ("from shared import config, data\n"
         "cfg = config.experiment('data', profile, dataset, run_dir)\n"
         "data.prepare(cfg['dataset'], cfg['run_dir'], cfg)\n")

# Two notebooks meet here when they run side by side (each waits for the other's mark), so the
# run with two jobs proves they overlapped; run one after another (no thread share set) they
# do not wait.
MEET = ("if os.environ.get('TF_NUM_INTRAOP_THREADS'):\n"
        "    (pathlib.Path(run_dir) / f'.here-{NAME}').touch()\n"
        "    deadline = time.time() + 120\n"
        "    while not (pathlib.Path(run_dir) / f'.here-{OTHER}').exists():\n"
        "        assert time.time() < deadline, f'{OTHER} never ran beside {NAME}'\n"
        "        time.sleep(0.1)\n")

RESULTS = ("import pandas as pd\n"
           "from shared.results import write_results\n"
           "row = pd.read_csv(pathlib.Path(run_dir) / 'split.csv').query(\"split == 'test'\")"
           ".iloc[:1]\n"
           "label = row['label'].iloc[0]\n"
           "out = pathlib.Path(run_dir) / NAME\n"
           "out.mkdir(exist_ok=True)\n"
           "write_results(out, pd.DataFrame({'split': ['test'], 'path': row['path'], "
           "'label': [label], 'predicted': [label], f'p_{label}': [1.0]}), "
           "{'experiment': NAME, 'accuracy': 1.0, 'macro_f1': 1.0, 'profile': profile, "
           "'seed': 7, 'status': 'complete', 'images': {'test': 1}})\n")


@pytest.fixture(scope="module")
def notebooks(tmp_path_factory):
    """00 makes the real smoke split; 01 and 03 meet when run side by side (03 then fails on
    purpose); 02 reads 01's results; 04 reads every result of the run."""
    folder = tmp_path_factory.mktemp("notebooks")

    def code(name, *parts, other=None):
        return f"NAME, OTHER = {name!r}, {other!r}\n" + LOG + "".join(parts) + "note('end')\n"

    _notebook(folder / "00_data.ipynb", code("data", SPLIT))
    _notebook(folder / "01_a.ipynb", code("a", MEET, RESULTS, other="c"))
    _notebook(folder / "02_b.ipynb", code("b", RESULTS), after=["01"])
    _notebook(folder / "03_c.ipynb",
              code("c", MEET, "raise RuntimeError('deliberately broken')\n", other="a"))
    _notebook(folder / "04_reader.ipynb",
              code("reader", "print('reader saw', sorted(p.parent.name for p in "
                             "pathlib.Path(run_dir).glob('*/metrics.json')))\n"),
              reads_run_results=True)
    return folder


def _run(notebooks, run_dir, *jobs):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = runner.main(["run-all", "--notebooks", str(notebooks), "--profile", "smoke",
                            "--data", "fashion-mnist", "--run", str(run_dir), *jobs])
    return code, out.getvalue()


def _log(run_dir) -> dict:
    """{(notebook, "start"|"end"): (time, CUDA_VISIBLE_DEVICES, threads)} of order.log."""
    lines = (run_dir / "order.log").read_text().splitlines()
    return {(n, what): (t, gpu, threads) for n, what, t, gpu, threads in map(json.loads, lines)}


def _files(run_dir) -> set[str]:
    """The files of the run, without the marks of MEET."""
    return {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*")
            if p.is_file() and not p.name.startswith(".here-")}


@pytest.fixture(scope="module")
def two_runs(notebooks, tmp_path_factory):
    """The same notebooks run one after another and with JOBS=2 (two GPUs simulated; VERBOSE)."""
    reports = tmp_path_factory.mktemp("reports")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SHARED_FRESH", raising=False)
        patch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        sequential = _run(notebooks, reports / "one-by-one")
        patch.setenv("CUDA_VISIBLE_DEVICES", "7,8")     # no such devices: nothing uses them
        parallel = _run(notebooks, reports / "two-at-once", "--jobs", "2", "--verbose")
    return (reports / "one-by-one", *sequential), (reports / "two-at-once", *parallel)


@pytest.mark.end_to_end
def test_two_at_once_write_the_same_split_and_files_as_one_by_one(two_runs):
    """Catches a parallel run that loses a notebook's results, races the split, or stops at
    the failing notebook."""
    (one, one_code, one_out), (two, two_code, two_out) = two_runs
    assert one_code == two_code == 1                 # 03_c fails in both, alone
    for out in (one_out, two_out):
        assert "FAILED: 03_c" in out and "04_reader: ok" in out and "02_b: ok" in out
    assert (one / "split.csv").read_bytes() == (two / "split.csv").read_bytes()
    assert (one / "dataset.json").read_text() == (two / "dataset.json").read_text()
    assert _files(one) == _files(two)
    assert {"a/metrics.json", "b/predictions.csv", "04_reader.html", "index.html"} <= _files(two)
    assert "reader saw ['a', 'b']" in (two / "04_reader.html").read_text()
    assert 'href="03_c.html"' in (two / "index.html").read_text()

    # one by one: exactly as before, nothing set for the notebooks
    assert "[2/5] 01_a: started\n" in one_out and "at the same time" not in one_out
    assert {gpu for _, gpu, _ in _log(one).values()} == {None}


@pytest.mark.end_to_end
def test_two_at_once_overlap_on_their_own_gpu_and_respect_the_order(two_runs):
    """Catches notebooks that did not run side by side, shared a GPU, or ran before what they
    read."""
    _, (two, _, out) = two_runs
    log = _log(two)
    start = {n: t for (n, what), (t, *_) in log.items() if what == "start"}
    end = {n: t for (n, what), (t, *_) in log.items() if what == "end"}
    # 03_c fails after meeting 01_a, so it has no "end": it met 01_a, so they overlapped
    assert (two / ".here-a").exists() and (two / ".here-c").exists()
    assert end["data"] < min(start[n] for n in ("a", "b", "c", "reader"))   # the split first
    assert end["a"] < start["b"]                                           # b reads a
    assert max(end["a"], end["b"], start["c"]) < start["reader"]           # the ensemble last
    gpus = {n: log[(n, "start")][1] for n in ("a", "c")}
    assert sorted(gpus.values()) == ["7", "8"]                             # one GPU each
    threads = str(max(1, len(os.sched_getaffinity(0)) // 2))
    assert {log[(n, "start")][2] for n in start} == {threads}
    assert "up to 2 notebooks at the same time" in out and "01_a: started on GPU" in out
    assert "  01_a | " in out                  # VERBOSE: its lines carry its name
    assert "Executing Cell" in (two / "logs" / "01_a.log").read_text()     # and are in its log


@pytest.mark.end_to_end
def test_a_parallel_rerun_skips_what_completed_and_reruns_the_failed_and_the_reader(
        two_runs, notebooks):
    _, (two, _, _) = two_runs
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SHARED_FRESH", raising=False)
        patch.setenv("CUDA_VISIBLE_DEVICES", "")
        code, out = _run(notebooks, two, "--jobs", "2")
    assert code == 1
    for skipped in ("00_data", "01_a", "02_b"):
        assert f"{skipped}: already complete in this run, skipped" in out
    assert "03_c: started" in out and "04_reader: started" in out


@pytest.mark.end_to_end
def test_ctrl_c_stops_every_notebook_running_and_the_run_says_so(tmp_path):
    """Catches notebooks left running (or recorded as running) when a parallel run is stopped."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for name in ("01_x", "02_y"):
        _notebook(notebooks / f"{name}.ipynb", "import pathlib, time\n"
                  f"(pathlib.Path(run_dir) / '.here-{name}').touch()\ntime.sleep(300)")
    run = tmp_path / "reports" / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "shared.run.runner", "run-all", "--profile",
                             "smoke", "--data", str(notebooks), "--run", str(run), "--notebooks",
                             str(notebooks), "--jobs", "2"], start_new_session=True,
                            cwd=config.REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and \
            not all((run / f".here-{n}").exists() for n in ("01_x", "02_y")):
        time.sleep(0.2)
    family = psutil.Process(proc.pid).children(recursive=True)
    try:
        os.kill(proc.pid, signal.SIGINT)                # what Ctrl-C sends the runner
        out = proc.communicate(timeout=60)[0]
        assert proc.returncode == 130, out
        assert "Traceback" not in out and "INTERRUPTED: 01_x, 02_y" in out
        state = json.loads((run / "runner.json").read_text())["notebooks"]
        assert {n: r["status"] for n, r in state.items()} == \
            {"01_x": "interrupted", "02_y": "interrupted"}
        assert (run / "index.html").exists()
        assert len(family) >= 4      # the two children and their kernels, all stopped
        assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    finally:
        for member in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()


def test_a_disk_cache_being_written_by_a_notebook_beside_is_left_alone(tmp_path):
    """Catches two notebooks side by side writing one tf.data disk cache (TensorFlow fails
    both), one deleting the other's partial cache as stale, or the private cache of a
    notebook that has ended left on the disk."""
    from shared.data import pipelines

    args = (tmp_path, ["a.png", "b.png"], [0, 1], 8, "train")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
         "from shared.data import pipelines\n"
         f"p = pipelines._disk_cache(Path({str(tmp_path)!r}), *{args[1:]!r})\n"
         "open(p + '.data-00000-of-00001', 'w').close()\nprint(p, flush=True)\n"
         "time.sleep(120)"], cwd=config.REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        theirs = holder.stdout.readline().strip()
        assert theirs
        mine = pipelines._disk_cache(*args)
        assert mine == f"{theirs}-pid{os.getpid()}"
        assert os.path.exists(f"{theirs}.data-00000-of-00001")
    finally:
        holder.kill()
        holder.wait()
    # its writer gone, the partial cache is stale: the next one takes the name and cleans up
    orphan = f"{theirs}-pid{holder.pid}.data-00000-of-00001"    # a private cache, writer gone
    mine = f"{theirs}-pid{os.getpid()}.index"
    for path in (orphan, mine):
        open(path, "w").close()
    assert pipelines._disk_cache(*args) == theirs
    assert not os.path.exists(f"{theirs}.data-00000-of-00001")
    assert not os.path.exists(orphan) and os.path.exists(mine)
