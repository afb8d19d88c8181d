"""Batch runner: execute the notebooks with papermill into one run directory, render each to
HTML with nbconvert, and write the run's index page.

    python -m shared.run.runner run-all --profile cpu --data fashion-mnist --run my-run [--jobs 4]
    python -m shared.run.runner run --nb 01_baseline_cnn --run my-run
    python -m shared.run.runner index --run my-run

Each notebook runs in a child process (so one that crashes, even hard, cannot stop the others),
on this environment's own Jupyter kernel, with the parameters ``profile``, ``dataset`` and
``run_dir``, and those that ``--set`` (``make run-all SET=...``) gives it
(:func:`shared.run.order.settings_from`). A notebook that fails is recorded, its executed copy
(with the error) is kept and linked, the run goes on, and the command exits non-zero at the
end naming what failed.

Re-running a run that exists skips the notebooks that already completed in it (an interrupted
one is executed again and its training resumes from its last finished epoch); ``run-all
--fresh`` deletes the run's results first, ``run --nb X --fresh`` executes X again. A
notebook that reads the run's results (metadata ``"shared": {"reads_run_results": true}``: the
ensemble) is marked stale when another one runs after it, one that reads a notebook's results
(``"after"``) when that one runs again (:func:`shared.run.order.mark_stale`); either runs again
at the next run-all. ``runner.json`` in the run directory records, per notebook, its status,
wall time, peak memory of its kernel and the settings given to it.

``run-all --jobs N`` runs up to N notebooks at the same time where they need nothing of each
other (:func:`shared.run.order.prerequisites`): the 00 notebook first (it makes the run's
split), the readers of the run's results last, everything else in between, each notebook on
the GPU that has the fewest notebooks at the time (``CUDA_VISIBLE_DEVICES``) and with its share
of the CPU cores (``TF_NUM_INTRAOP_THREADS`` and co.); their output lines are prefixed with
the notebook's name. A notebook that reads another one's results names it in its metadata
(``"shared": {"after": ["01_baseline_cnn"]}``) and starts once that one has ended. Without
``--jobs`` (or with 1) the notebooks run one after another, as listed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import itertools
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from shared import config, data, environment
from shared.files import read_json, write_json, write_text
from shared.reporting import pages
from shared.run.order import (
    find_notebook,
    group,
    list_notebooks,
    mark_stale,
    prerequisites,
    reads_run_results,
    run_order,
    settings_from,
)

KERNEL_NAME = "image-classification"
KERNEL_OPTIONS = ("--IPKernelApp.capture_fd_output=False",)
HEARTBEAT_SECONDS = 60
POLL_SECONDS = 0.2                       # how often a run looks for a notebook that ended
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")


# --------------------------------------------------------------------------- kernel


def ensure_kernel() -> str:
    """Install (idempotently) a kernelspec for this interpreter into its own prefix and return
    its name, so notebooks never depend on a kernel named in their metadata.

    The kernel leaves the C-level output of libraries (TensorFlow's C++ log lines, printed
    before its logging is set up and not silenced by TF_CPP_MIN_LOG_LEVEL) on the terminal
    instead of copying it into the notebook, where a reader would take it for an error.
    Python's own output, warnings and errors still go to the notebook."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        if spec.argv and Path(spec.argv[0]) == Path(sys.executable) \
                and all(arg in spec.argv for arg in KERNEL_OPTIONS):
            return KERNEL_NAME
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    folder = Path(install(kernel_name=KERNEL_NAME, display_name="Python (image-classification)",
                          prefix=sys.prefix))
    spec = read_json(folder / "kernel.json")
    spec["argv"] += [arg for arg in KERNEL_OPTIONS if arg not in spec["argv"]]
    write_json(folder / "kernel.json", spec)
    return KERNEL_NAME


def _execute_child(notebook: str, output: str, parameters: str, result: str) -> int:
    """Run inside the child process: execute one notebook, record the kernel's peak memory."""
    import logging

    import papermill

    logging.basicConfig(level=logging.INFO, format="    %(message)s", stream=sys.stdout)
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C is the runner's to handle
    outcome = {"status": "ok", "error": None}
    try:
        with private_kernel(ensure_kernel()) as km:
            papermill.execute_notebook(notebook, output, parameters=json.loads(parameters),
                                       kernel_name=km.kernel_name, language="python",
                                       progress_bar=False, log_output=True, km=km,
                                       cwd=str(Path(notebook).parent))
    except papermill.PapermillExecutionError as err:
        outcome = {"status": "failed", "error": f"{err.ename}: {err.evalue}".strip()[:500]}
    except Exception as err:  # noqa: BLE001 - any failure to start is reported, not raised
        outcome = {"status": "failed", "error": f"{type(err).__name__}: {err}"[:500]}
    # ru_maxrss of waited-for children (the kernel) is in KiB on Linux.
    outcome["peak_memory_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                                      / 1024, 1)
    write_json(result, outcome)
    return 0 if outcome["status"] == "ok" else 1


@contextlib.contextmanager
def private_kernel(kernel_name: str):
    """A kernel manager whose kernel listens on Unix sockets in a folder only this user can
    enter (IPC transport), not on TCP ports that any user of the machine could reach."""
    from jupyter_client.manager import KernelManager

    with tempfile.TemporaryDirectory(prefix="kernel-") as folder:   # created 0700
        km = KernelManager(kernel_name=kernel_name, transport="ipc",
                           ip=os.path.join(folder, "ipc"))
        # given a manager, papermill leaves its kernel running: stop and reap it (at once
        # when the notebook is being stopped: a polite request waits for the running cell)
        try:
            yield km
        except BaseException:
            if km.has_kernel:
                km.shutdown_kernel(now=True)
            raise
        if km.has_kernel:
            km.shutdown_kernel(now=False)


class _Job:
    """One notebook executing into ``run_dir`` in a child process, started at once. ``fresh``
    sets $SHARED_FRESH for it (its training retrains what finished earlier), ``env`` adds to
    its environment, and ``prefix`` (the runs of several at once) puts its output lines,
    prefixed, on this process's stdout instead of leaving them on the terminal."""

    def __init__(self, notebook: Path, label: str, run_dir: Path, parameters: dict,
                 fresh: bool = False, env: dict | None = None, prefix: str | None = None):
        self.notebook, self.env = notebook, env or {}
        self.output = run_dir / notebook.name
        self.result = run_dir / f".{notebook.stem}.result.json"
        self.result.unlink(missing_ok=True)
        self.started = time.monotonic()
        self.heartbeat = _Heartbeat(label).__enter__()
        # the child ignores Ctrl-C (the kernel, in a session of its own, does not see it): the
        # runner takes it and stops the child, which stops its kernel
        pipe = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT} if prefix else {}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shared.run.runner", "_execute", str(notebook), str(self.output),
             json.dumps(parameters), str(self.result)],
            env=os.environ | ({config.ENV_FRESH: "1"} if fresh else {}) | self.env, **pipe)
        self.copier = threading.Thread(target=_copy_lines, args=(self.proc.stdout, prefix),
                                       daemon=True) if prefix else None
        if self.copier:
            self.copier.start()

    def record(self, interrupted: bool = False) -> dict:
        """Once the child has ended (or been stopped: ``interrupted``), the notebook's record,
        with its executed copy rendered to HTML."""
        self.heartbeat.__exit__()
        if self.copier:
            self.copier.join(timeout=10)
        record = {"notebook": self.notebook.stem,
                  "seconds": round(time.monotonic() - self.started, 1)}
        if interrupted:
            record |= {"status": "interrupted", "peak_memory_mb": None,
                       "error": "interrupted (Ctrl-C); its training resumes at the next run"}
            self.result.unlink(missing_ok=True)
        elif self.result.exists():
            record |= read_json(self.result)
            self.result.unlink()
        else:
            record |= {"status": "failed", "peak_memory_mb": None,
                       "error": f"the notebook's process ended with code {self.proc.returncode}"}
        record["ipynb"] = self.output.name if self.output.exists() else None
        record["html"] = render_html(self.output) if self.output.exists() else None
        return record


def _copy_lines(stream, prefix: str) -> None:
    """Print each line of a child's output with ``prefix``, as it comes."""
    for line in iter(stream.readline, b""):
        print(prefix + line.decode(errors="replace").rstrip("\n"), flush=True)
    stream.close()


def _wait_any(jobs: list[_Job]) -> _Job:
    """The first of ``jobs`` whose child has ended (waits for one)."""
    while True:
        for job in jobs:
            if job.proc.poll() is not None:
                return job
        time.sleep(POLL_SECONDS)


def _stop(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    """Stop notebooks' processes and everything they started (each kernel runs in a session of
    its own): SIGTERM, then SIGKILL to what is left after ``grace`` seconds. The training
    state on disk is that of the last finished epoch, from which the next run resumes."""
    family = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            family += [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    _, alive = psutil.wait_procs(family, timeout=grace)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    for proc in procs:
        proc.wait()


def render_html(ipynb: Path) -> str | None:
    """Render an executed notebook to a self-contained HTML file beside it."""
    import nbformat
    from nbconvert import HTMLExporter

    try:
        body, _ = HTMLExporter(template_name="lab").from_notebook_node(
            nbformat.read(ipynb, as_version=4))
    except Exception as err:  # noqa: BLE001 - a rendering problem must not lose the run
        print(f"    could not render {ipynb.name} to HTML: {err}")
        return None
    target = ipynb.with_suffix(".html")
    write_text(target, body)
    return target.name


# --------------------------------------------------------------------------- devices


def visible_gpus() -> list[str]:
    """The GPUs the notebooks may use, as ``CUDA_VISIBLE_DEVICES`` entries: those of
    $CUDA_VISIBLE_DEVICES where it is set, else every GPU (or each MIG instance of a GPU split
    into them) that ``nvidia-smi -L`` lists, by UUID (CUDA's own numbering can differ from
    nvidia-smi's); none without either. TensorFlow is not imported: it would take GPU memory
    in this process."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:       # CUDA ignores the entries after a -1
        entries = (d.strip() for d in listed.split(","))
        return [d for d in itertools.takewhile(lambda d: d != "-1", entries) if d]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus: list[list[str]] = []
    for line in out.splitlines():
        uuid = re.search(r"\(UUID: ([^)\s]+)\)", line)
        if uuid and line.startswith("GPU "):
            gpus.append([uuid[1]])
        elif uuid and gpus and line.lstrip().startswith("MIG "):
            gpus[-1] = [d for d in gpus[-1] if d.startswith("MIG-")] + [uuid[1]]
    return [device for gpu in gpus for device in gpu]


class _Devices:
    """What each of the notebooks that run at the same time gets: ``at_once`` of them share the
    CPU cores (the thread counts of TensorFlow and OpenMP), and each goes to the GPU with the
    fewest notebooks at the time (one each where there are enough; growing its memory as it
    needs where two may share one)."""

    def __init__(self, at_once: int, gpus: list[str]):
        self.threads = max(1, len(os.sched_getaffinity(0)) // at_once)
        self.users = dict.fromkeys(gpus, 0)
        self.shared = at_once > len(gpus)

    def describe(self) -> str:
        cpu = f"{self.threads} CPU thread(s) each"
        if not self.users:
            return cpu
        return f"{cpu}, each on one of {len(self.users)} GPU(s)" + \
            (" (shared where there are fewer GPUs than notebooks)" if self.shared else "")

    def take(self) -> tuple[dict, str]:
        """The environment of a notebook about to start, and where it runs, in words."""
        env = dict.fromkeys(THREAD_VARIABLES, str(self.threads))
        if not self.users:
            return env, f"{self.threads} CPU thread(s)"
        gpu = min(self.users, key=self.users.get)      # the first of the least used
        self.users[gpu] += 1
        env["CUDA_VISIBLE_DEVICES"] = gpu
        if self.shared:
            env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
        return env, gpu if gpu.startswith(("GPU-", "MIG-")) else f"GPU {gpu}"

    def give_back(self, env: dict) -> None:
        if env.get("CUDA_VISIBLE_DEVICES") in self.users:
            self.users[env["CUDA_VISIBLE_DEVICES"]] -= 1


# --------------------------------------------------------------------------- a run


class _Heartbeat:
    """Prints, every minute, which notebook is running and for how long."""

    def __init__(self, label: str):
        self.label, self.started, self.stop = label, time.monotonic(), threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        while not self.stop.wait(HEARTBEAT_SECONDS):
            print(f"  ... {self.label} running for "
                  f"{pages.duration(time.monotonic() - self.started)}", flush=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()


def run_path(run: str) -> Path:
    """``reports/<run>``, or ``run`` itself when it is an absolute path."""
    return (Path(run) if Path(run).is_absolute() else config.REPORTS_DIR / run).resolve()


def run_notebooks(notebooks: list[Path], *, profile: str | None, dataset: str | None,
                  run: str | None, fresh: bool = False, redo: bool = False,
                  jobs: int = 1, settings: dict[str, dict] | None = None) -> int:
    """Execute ``notebooks`` in order into ``reports/<run>/``; return the exit code.

    ``fresh`` deletes the run's results first; ``redo`` executes ``notebooks`` again even where
    they completed in the run (their results are replaced), keeping everything else. ``jobs``
    above 1 runs up to that many at the same time where they need nothing of each other
    (:func:`shared.run.order.prerequisites`), each with its share of the machine
    (:class:`_Devices`). ``settings`` ({notebook: {parameter: value}}) are given to the
    notebooks besides the run's own; a notebook that completed with other settings runs
    again."""
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs (JOBS) must be a whole number of at least 1, not {jobs!r}")
    needs = prerequisites(notebooks)
    profile = config.resolve_profile(profile)
    dataset = config.resolve_dataset(dataset)
    if dataset != data.FASHION_MNIST:      # the notebooks run in notebooks/: a path from here
        dataset = str(Path(dataset).expanduser().resolve())
    run_dir = run_path(run or config.default_run_name(profile, dataset))
    run = run_dir.name
    try:
        data.ensure_available(dataset)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}\nNo notebook was run.", file=sys.stderr, flush=True)
        return 1
    with run_lock(run_dir):
        return _run_held(notebooks, profile, dataset, run_dir, fresh, redo, jobs, needs,
                         settings or {})


def _run_held(notebooks: list[Path], profile: str, dataset: str, run_dir: Path, fresh: bool,
              redo: bool, jobs: int, needs: dict[str, set[str]],
              settings: dict[str, dict]) -> int:
    """:func:`run_notebooks` once the run is held by this process: the notebooks start in
    their order as soon as those they need have ended and fewer than ``jobs`` run."""
    run = run_dir.name
    if fresh and run_dir.exists():
        print(f"FRESH: deleting the earlier results of run {run}")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = pages.load_state(run_dir)
    if state and (state.get("profile"), state.get("dataset")) != (profile, dataset):
        raise SystemExit(
            f"run {run} was made with profile {state.get('profile')} on {state.get('dataset')}; "
            f"this call asks for profile {profile} on {dataset}. Use another RUN, or delete this "
            f"one first with `make run-all RUN={run} FRESH=1`.")
    state.update(run=run, profile=profile, dataset=dataset, notebooks=state.get("notebooks", {}),
                 started=state.get("started") or dt.datetime.now().isoformat(timespec="seconds"))
    print(f"run {run}: profile {profile}, dataset {dataset}, {len(notebooks)} notebook(s)\n"
          f"results in {run_dir}", flush=True)
    for name, given in settings.items():
        print(f"  {name}: " + ", ".join(f"{k}={v!r}" for k, v in given.items()), flush=True)

    def complete(notebook: Path) -> bool:
        previous = state["notebooks"].get(notebook.stem, {})
        same = previous.get("settings", {}) == settings.get(notebook.stem, {})
        return (previous.get("status") == "ok" and (run_dir / notebook.name).exists() and same
                and not redo)

    devices = None
    if jobs > 1:
        side_by_side = sum(group(nb) == 1 and not complete(nb) for nb in notebooks)
        devices = _Devices(max(1, min(jobs, side_by_side)), visible_gpus())
        print(f"up to {jobs} notebooks at the same time: {devices.describe()}", flush=True)
    parameters = {"profile": profile, "dataset": dataset, "run_dir": str(run_dir)}
    labels = {nb.stem: f"[{i}/{len(notebooks)}] {nb.stem}" for i, nb in enumerate(notebooks, 1)}
    pending, ended, running, stopped = list(notebooks), set(), [], []

    def close(job: _Job, interrupted: bool = False) -> None:
        """Record, save and print the end of ``job``."""
        notebook, label = job.notebook, labels[job.notebook.stem]
        record = job.record(interrupted)
        if devices:
            devices.give_back(job.env)
        ended.add(notebook.stem)
        state["notebooks"][notebook.stem] = record | \
            ({"settings": settings[notebook.stem]} if notebook.stem in settings else {})
        stale = [] if reads_run_results(notebook) else mark_stale(state, notebook)
        write_json(run_dir / pages.STATE_FILE, state)
        memory = f", peak memory {record['peak_memory_mb']:.0f} MB" \
            if record.get("peak_memory_mb") else ""
        print(f"{label}: {record['status']} in {pages.duration(record['seconds'])}{memory}"
              + (f" -- {record['error']}" if record.get("error") else ""), flush=True)
        if stale:
            print(f"  {', '.join(stale)} read the results of this run before {notebook.stem} "
                  f"ran again: marked stale", flush=True)

    try:
        while pending or running:
            ready = next((nb for nb in pending if needs[nb.stem] <= ended), None) \
                if len(running) < jobs else None
            if ready is None:
                job = _wait_any(running)
                running.remove(job)
                close(job)
                continue
            pending.remove(ready)
            label = labels[ready.stem]
            if complete(ready):
                print(f"{label}: already complete in this run, skipped (`make run "
                      f"NB={ready.stem} FRESH=1` runs it again)", flush=True)
                ended.add(ready.stem)
                continue
            env, where = devices.take() if devices else ({}, None)
            print(f"{label}: started" + (f" on {where}" if where else ""), flush=True)
            state["notebooks"][ready.stem] = {"notebook": ready.stem, "status": "running"}
            write_json(run_dir / pages.STATE_FILE, state)
            given = parameters | settings.get(ready.stem, {})
            running.append(_Job(ready, label, run_dir, given, fresh=redo, env=env,
                                prefix=f"  {ready.stem} | " if devices else None))
    except KeyboardInterrupt:
        if not running:          # between two notebooks: nothing is half-written
            raise
        _stop([job.proc for job in running])
        stopped = [job.notebook.stem for job in running]
        for job in running:
            close(job, interrupted=True)

    state["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    state["environment"] = environment.describe()
    write_json(run_dir / pages.STATE_FILE, state)
    index = pages.write_index(run_dir)
    pages.write_runs_index(run_dir.parent)
    failed = [n for n, r in state["notebooks"].items() if r.get("status") not in ("ok", "stale")]
    stale = [n for n, r in state["notebooks"].items() if r.get("status") == "stale"]
    print(f"index page: {index}")
    if stopped:
        print(f"INTERRUPTED: {', '.join(stopped)} (`make run-all RUN={run}` resumes "
              f"{'it' if len(stopped) == 1 else 'them'})")
        return 130
    if stale:
        print(f"STALE: {', '.join(stale)} (`make run-all RUN={run}` brings them up to date)")
    if failed:
        print(f"FAILED: {', '.join(failed)} (executed copies with the errors are in {run_dir})")
        return 1
    if not stale:
        print(f"all {len(state['notebooks'])} notebook(s) of run {run} completed")
    return 0


# --------------------------------------------------------------------------- the run's lock


class RunInUse(RuntimeError):
    """Another live process holds the run."""


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold the run ``run_dir`` for this process, so that a second command on the same run
    refuses at once, naming the process that holds it. The lock is an ``flock`` on
    ``reports/.<run>.lock``, which the system releases when its holder dies: a lock left by a
    dead process is recognised (its note is still there) and taken over."""
    path = run_dir.parent / f".{run_dir.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 2000, 0).decode(errors="replace").strip()
            raise RunInUse(f"run {run_dir.name} is in use by {holder or 'another process'}: "
                           "wait for it to finish (or stop it), then run again") from None
        left = os.pread(fd, 2000, 0).decode(errors="replace").strip()
        if left:
            print(f"run {run_dir.name}: the lock of {left}, which is no longer running, "
                  "was taken over")
        note = (f"process {os.getpid()} ({' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}, "
                f"started {dt.datetime.now():%Y-%m-%d %H:%M:%S})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, note.encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)     # released in order: nothing left to take over
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- command line


def _jobs(text: str) -> int:
    """--jobs: a whole number of at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"JOBS must be a whole number of at least 1, "
                                         f"not {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_execute"]:
        return _execute_child(*argv[1:5])
    parser = argparse.ArgumentParser(prog="python -m shared.run.runner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run-all", "run"):
        p = sub.add_parser(name)
        p.add_argument("--profile", default=None, help="smoke, cpu, gpu or auto (default)")
        p.add_argument("--data", default=None, help="fashion-mnist (default) or a folder")
        p.add_argument("--run", default=None, help="run name (default: date-profile-dataset)")
        p.add_argument("--fresh", action="store_true",
                       help="run-all: delete the run's results first; run: execute the notebook "
                            "again even if it completed (its results are replaced)")
        p.add_argument("--notebooks", default=str(config.NOTEBOOKS_DIR), type=Path)
        p.add_argument("--set", default=None, dest="settings",
                       help='notebook parameters, e.g. "augment=dihedral 01.epochs=80"')
        if name == "run":
            p.add_argument("--nb", required=True, help="notebook name, e.g. 01_baseline_cnn")
        else:
            p.add_argument("--jobs", default=1, type=_jobs,
                           help="how many notebooks may run at the same time (default 1)")
    p = sub.add_parser("index")
    p.add_argument("--run", required=True)
    args = parser.parse_args(argv)

    try:
        if args.command == "index":
            run_dir = run_path(args.run)
            print(pages.write_index(run_dir))
            pages.write_runs_index(run_dir.parent)
            return 0
        notebooks = run_order(list_notebooks(args.notebooks)) if args.command == "run-all" \
            else [find_notebook(args.nb, args.notebooks)]
        if not notebooks:
            raise ValueError(f"no notebooks in {args.notebooks}")
        one = args.command == "run"
        return run_notebooks(notebooks, profile=args.profile, dataset=args.data, run=args.run,
                             fresh=args.fresh and not one, redo=args.fresh and one,
                             jobs=1 if one else args.jobs,
                             settings=settings_from(args.settings, notebooks))
    except (RunInUse, pages.DamagedRunError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:     # between two notebooks: nothing is half-written
        print("interrupted (Ctrl-C)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
