"""One command at a time per run folder: the run's lock."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import sys
from pathlib import Path


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
