"""Notebooks running side by side: each in a child process of its own, the GPUs and CPU
cores they get, their heartbeat, and stopping them."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from shared import config, progress
from shared.files import read_json
from shared.reporting import pages
from shared.run.kernel import render_html

HEARTBEAT_SECONDS = 60
POLL_SECONDS = 0.2                       # how often a run looks for a notebook that ended
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")


@contextlib.contextmanager
def into_log(path: Path):
    """Send what this process writes to its stdout and stderr at the file-descriptor level
    (TensorFlow's C++ lines, which its logging settings do not silence) to ``path`` meanwhile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = []
    try:
        saved = [os.dup(1), os.dup(2)]
        with open(path, "a", encoding="utf-8") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
    finally:
        for fd, target in zip(saved, (1, 2), strict=False):
            os.dup2(fd, target)
            os.close(fd)


class Job:
    """One notebook executing into ``run_dir`` in a child process, started at once. ``fresh``
    sets $SHARED_FRESH for it (its training retrains what finished earlier), ``env`` adds to
    its environment. Its whole output (the kernel's, TensorFlow's start-up lines included) goes
    to ``<run_dir>/logs/<notebook>.log``; ``echo`` (VERBOSE) prints it as well, each line after
    ``prefix`` (the runs of several at once). ``heartbeat`` prints every minute that it runs."""

    def __init__(self, notebook: Path, label: str, run_dir: Path, parameters: dict,
                 fresh: bool = False, env: dict | None = None, prefix: str | None = None,
                 echo: bool = False, heartbeat: bool = True):
        self.notebook, self.env = notebook, env or {}
        self.output = run_dir / notebook.name
        self.result = run_dir / f".{notebook.stem}.result.json"
        self.result.unlink(missing_ok=True)
        self.log = log_path(run_dir, notebook.stem)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.progress = progress_prefix(run_dir, notebook.stem)
        progress.clear(self.progress)
        self.started = time.monotonic()
        self.heartbeat = _Heartbeat(label).__enter__() if heartbeat else None
        # the child ignores Ctrl-C (the kernel, in a session of its own, does not see it): the
        # runner takes it and stops the child, which stops its kernel
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shared.run.kernel", str(notebook), str(self.output),
             json.dumps(parameters), str(self.result)],
            env=os.environ | ({config.ENV_FRESH: "1"} if fresh else {}) | self.env
            | {progress.ENV: str(self.progress)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.copier = threading.Thread(
            target=_copy_lines, args=(self.proc.stdout, self.log, prefix or "" if echo else None),
            daemon=True)
        self.copier.start()

    def last_lines(self, count: int = 15) -> list[str]:
        """The last ``count`` lines of the notebook's log."""
        try:
            return self.log.read_text(errors="replace").splitlines()[-count:]
        except OSError:
            return []

    def record(self, interrupted: bool = False) -> dict:
        """Once the child has ended (or been stopped: ``interrupted``), the notebook's record,
        with its executed copy rendered to HTML."""
        if self.heartbeat:
            self.heartbeat.__exit__()
        self.copier.join(timeout=10)
        progress.clear(self.progress)
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


def log_path(run_dir: Path, name: str) -> Path:
    """The file that holds the whole output of notebook ``name`` in the run."""
    return run_dir / "logs" / f"{name}.log"


def progress_prefix(run_dir: Path, name: str) -> Path:
    """The prefix of notebook ``name``'s progress files (:mod:`shared.progress`)."""
    return run_dir / "logs" / f".{name}"


def _copy_lines(stream, log: Path, prefix: str | None) -> None:
    """Write each line of a child's output to ``log`` as it comes, and print it after
    ``prefix`` too unless ``prefix`` is None."""
    with open(log, "w", encoding="utf-8") as out:
        for line in iter(stream.readline, b""):
            text = line.decode(errors="replace").rstrip("\n")
            out.write(text + "\n")
            out.flush()
            if prefix is not None:
                print(prefix + text, flush=True)
    stream.close()


def wait_any(jobs: list[Job], tick: Callable[[], None] | None = None) -> Job:
    """The first of ``jobs`` whose child has ended (waits for one, calling ``tick`` between
    looks)."""
    while True:
        for job in jobs:
            if job.proc.poll() is not None:
                return job
        if tick:
            tick()
        time.sleep(POLL_SECONDS)


def stop(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
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


class Devices:
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


# --------------------------------------------------------------------------- heartbeat


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
