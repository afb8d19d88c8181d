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
of the CPU cores (``TF_NUM_INTRAOP_THREADS`` and co.). Each notebook's output goes to
``<run>/logs/<notebook>.log`` (and, with ``--verbose``, to the terminal, prefixed with the
notebook's name when several run at once); a terminal shows a live line per running notebook
(:mod:`shared.run.display`). A notebook that reads another one's results names it in its metadata
(``"shared": {"after": ["01_baseline_cnn"]}``) and starts once that one has ended. Without
``--jobs`` (or with 1) the notebooks run one after another, as listed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import tempfile
from pathlib import Path

from shared import config, data, environment, results
from shared.files import write_json
from shared.reporting import pages
from shared.run import lock
from shared.run.display import Display, earlier_seconds
from shared.run.jobs import Devices, Job, into_log, stop, visible_gpus, wait_any
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

RUNNER_LOG = "runner.log"      # in <run>/logs/: the runner's own TensorFlow lines

# --------------------------------------------------------------------------- a run


def _look_for_a_gpu() -> str:
    """Let TensorFlow look for a GPU (what PROFILE=auto and the run's environment record ask)
    with its C++ start-up lines kept off the terminal; returns those lines."""
    with tempfile.TemporaryDirectory() as scratch:
        lines = Path(scratch) / RUNNER_LOG
        with into_log(lines):
            config.gpu_available()
        return lines.read_text(errors="replace")


def run_path(run: str) -> Path:
    """``reports/<run>``, or ``run`` itself when it is an absolute path."""
    return (Path(run) if Path(run).is_absolute() else config.REPORTS_DIR / run).resolve()


def run_notebooks(notebooks: list[Path], *, profile: str | None, dataset: str | None,
                  run: str | None, fresh: bool = False, redo: bool = False,
                  jobs: int = 1, settings: dict[str, dict] | None = None,
                  verbose: bool = False) -> int:
    """Execute ``notebooks`` in order into ``reports/<run>/``; return the exit code.

    ``fresh`` deletes the run's results first; ``redo`` executes ``notebooks`` again even where
    they completed in the run (their results are replaced), keeping everything else. ``jobs``
    above 1 runs up to that many at the same time where they need nothing of each other
    (:func:`shared.run.order.prerequisites`), each with its share of the machine
    (:class:`shared.run.jobs.Devices`). ``settings`` ({notebook: {parameter: value}}) are
    given to the notebooks besides the run's own; a notebook that completed with other
    settings runs again. ``verbose`` prints every notebook's whole output as it comes (else it
    is only in ``<run>/logs/<notebook>.log``, and a terminal shows a live line per notebook)."""
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs (JOBS) must be a whole number of at least 1, not {jobs!r}")
    needs = prerequisites(notebooks)
    startup = _look_for_a_gpu()
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
    with lock.run_lock(run_dir):
        return _run_held(notebooks, profile, dataset, run_dir, fresh, redo, jobs, needs,
                         settings or {}, verbose, startup)


def _run_held(notebooks: list[Path], profile: str, dataset: str, run_dir: Path, fresh: bool,
              redo: bool, jobs: int, needs: dict[str, set[str]],
              settings: dict[str, dict], verbose: bool, startup: str = "") -> int:
    """:func:`run_notebooks` once the run is held by this process: the notebooks start in
    their order as soon as those they need have ended and fewer than ``jobs`` run. ``startup``
    (TensorFlow's start-up lines) goes to the run's logs/runner.log."""
    run = run_dir.name
    if fresh and run_dir.exists():
        print(f"FRESH: deleting the earlier results of run {run}")
        shutil.rmtree(run_dir)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    with open(run_dir / "logs" / RUNNER_LOG, "a", encoding="utf-8") as log:
        log.write(startup)
    state = results.load_state(run_dir)
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
        devices = Devices(max(1, min(jobs, side_by_side)), visible_gpus())
        print(f"up to {jobs} notebooks at the same time: {devices.describe()}", flush=True)
    parameters = {"profile": profile, "dataset": dataset, "run_dir": str(run_dir)}
    labels = {nb.stem: f"[{i}/{len(notebooks)}] {nb.stem}" for i, nb in enumerate(notebooks, 1)}
    display = Display(Display.wanted(verbose), earlier_seconds(run_dir, profile, dataset))
    pending, ended, running, stopped = list(notebooks), set(), [], []

    def close(job: Job, interrupted: bool = False) -> None:
        """Record, save and print the end of ``job``."""
        notebook, label = job.notebook, labels[job.notebook.stem]
        record = job.record(interrupted)
        if devices:
            devices.give_back(job.env)
        ended.add(notebook.stem)
        state["notebooks"][notebook.stem] = record | \
            ({"settings": settings[notebook.stem]} if notebook.stem in settings else {})
        stale = [] if reads_run_results(notebook) else mark_stale(state, notebook)
        write_json(run_dir / results.STATE_FILE, state)
        memory = f", peak memory {record['peak_memory_mb']:.0f} MB" \
            if record.get("peak_memory_mb") else ""
        display.end(notebook.stem,
                    f"{label}: {record['status']} in {pages.duration(record['seconds'])}{memory}"
                    + (f" -- {record['error']}" if record.get("error") else ""))
        if record["status"] == "failed":
            display.say(f"  its whole output: {job.log}; the last lines:\n"
                        + "\n".join(f"  | {line}" for line in job.last_lines()))
        if stale:
            display.say(f"  {', '.join(stale)} read the results of this run before "
                        f"{notebook.stem} ran again: marked stale")

    try:
        while pending or running:
            ready = next((nb for nb in pending if needs[nb.stem] <= ended), None) \
                if len(running) < jobs else None
            if ready is None:
                job = wait_any(running, tick=display.refresh)
                running.remove(job)
                close(job)
                continue
            pending.remove(ready)
            label = labels[ready.stem]
            if complete(ready):
                display.say(f"{label}: already complete in this run, skipped (`make run "
                            f"NB={ready.stem} FRESH=1` runs it again)")
                ended.add(ready.stem)
                continue
            env, where = devices.take() if devices else ({}, None)
            state["notebooks"][ready.stem] = {"notebook": ready.stem, "status": "running"}
            write_json(run_dir / results.STATE_FILE, state)
            given = parameters | settings.get(ready.stem, {})
            running.append(Job(ready, label, run_dir, given, fresh=redo, env=env,
                               prefix=f"  {ready.stem} | " if devices else None,
                               echo=verbose, heartbeat=not display.live))
            display.start(ready.stem, label, running[-1].progress, where)
    except KeyboardInterrupt:
        if not running:          # between two notebooks: nothing is half-written
            raise
        stop([job.proc for job in running])
        stopped = [job.notebook.stem for job in running]
        for job in running:
            close(job, interrupted=True)

    state["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    with into_log(run_dir / "logs" / RUNNER_LOG):       # TensorFlow's start-up lines
        state["environment"] = environment.describe()
    write_json(run_dir / results.STATE_FILE, state)
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


# --------------------------------------------------------------------------- command line


def _jobs(text: str) -> int:
    """--jobs: a whole number of at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"JOBS must be a whole number of at least 1, "
                                         f"not {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
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
        p.add_argument("--verbose", action="store_true",
                       help="print every notebook's whole output as it comes (VERBOSE=1)")
        if name == "run":
            p.add_argument("--nb", required=True,
                           help="notebook name, e.g. 01_baseline_cnn, or several separated by "
                                "commas (make audit: 00_data,10_data_quality)")
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
        notebooks = run_order(list_notebooks(args.notebooks) if args.command == "run-all"
                              else [find_notebook(name.strip(), args.notebooks)
                                    for name in args.nb.split(",")])
        if not notebooks:
            raise ValueError(f"no notebooks in {args.notebooks}")
        one = args.command == "run"
        return run_notebooks(notebooks, profile=args.profile, dataset=args.data, run=args.run,
                             fresh=args.fresh and not one, redo=args.fresh and one,
                             jobs=1 if one else args.jobs,
                             settings=settings_from(args.settings, notebooks),
                             verbose=args.verbose)
    except (lock.RunInUse, results.DamagedRunError) as err:
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
