"""What a person sees of a run: in a terminal, one live line per running notebook (tqdm);
elsewhere (CI, a pipe), one line when each starts and ends.

A live line says which notebook (i of N), how far it is (cell, trial, epoch: what the notebook
reports through :mod:`shared.progress`), the time spent, and the time left where there is a
basis for an estimate: the same notebook's time in the last run of the same profile and dataset.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from shared import progress
from shared.files import read_json
from shared.reporting.pages import duration
from shared.results import STATE_FILE

REFRESH_SECONDS = 1.0


def earlier_seconds(run_dir: Path, profile: str, dataset: str) -> dict[str, float]:
    """{notebook: seconds} of the most recent other run of ``profile`` on ``dataset`` in which
    each notebook completed: the basis of the time-left estimate."""
    found: dict[str, tuple[str, float]] = {}
    for state_file in run_dir.parent.glob(f"*/{STATE_FILE}"):
        if state_file.parent == run_dir:
            continue
        try:
            state = read_json(state_file)
        except (OSError, ValueError):
            continue
        if (state.get("profile"), state.get("dataset")) != (profile, dataset):
            continue
        when = state.get("finished") or state.get("started") or ""
        for name, record in (state.get("notebooks") or {}).items():
            if record.get("status") == "ok" and record.get("seconds") \
                    and when > found.get(name, ("", 0))[0]:
                found[name] = (when, float(record["seconds"]))
    return {name: seconds for name, (_, seconds) in found.items()}


class Display:
    """The run's terminal: live lines when ``live`` (a terminal and not VERBOSE), else plain
    lines. Every message of the runner goes through :meth:`say` so it does not tear a line."""

    def __init__(self, live: bool, expected: dict[str, float] | None = None):
        self.live = live
        self.expected = expected or {}
        self.lines: dict[str, tqdm] = {}
        self.started: dict[str, float] = {}
        self.prefixes: dict[str, Path] = {}
        self.labels: dict[str, str] = {}
        self.rows: dict[str, int] = {}       # the terminal row of each live line
        self.refreshed = 0.0

    @staticmethod
    def wanted(verbose: bool) -> bool:
        """Live lines: on a terminal, unless everything is streamed (VERBOSE=1) or CI is set."""
        return (sys.stdout.isatty() and not verbose
                and os.environ.get("CI", "").strip().lower() not in ("1", "true", "yes"))

    def say(self, text: str) -> None:
        """Print a line of the runner's own above the live lines."""
        if self.live and self.lines:
            tqdm.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def start(self, name: str, label: str, prefix: Path, where: str | None = None) -> None:
        """A notebook started: its live line, or one plain line."""
        self.started[name], self.prefixes[name] = time.monotonic(), prefix
        if not self.live:
            self.say(f"{label}: started" + (f" on {where}" if where else ""))
            return
        self.labels[name] = label + (f" on {where}" if where else "")
        taken = set(self.rows.values())
        self.rows[name] = next(row for row in range(len(taken) + 1) if row not in taken)
        self.lines[name] = tqdm(total=0, desc=label, bar_format="{desc}", file=sys.stdout,
                                position=self.rows[name], leave=False, dynamic_ncols=True)
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        """Redraw the live lines (at most once a second)."""
        now = time.monotonic()
        if not self.live or (not force and now - self.refreshed < REFRESH_SECONDS):
            return
        self.refreshed = now
        for name, line in self.lines.items():
            line.set_description_str(f"{self.labels[name]}: {self.status(name, now)}")

    def status(self, name: str, now: float) -> str:
        """"cell 7/15 · epoch 3/5 · 1m20s · about 2m00s left"."""
        spent = now - self.started[name]
        parts = [progress.describe(self.prefixes[name]) or "starting", duration(spent)]
        expected = self.expected.get(name)
        if expected:
            left = expected - spent
            parts.append(f"about {duration(left)} left" if left > 0 else
                         f"longer than the last run's {duration(expected)}")
        return " · ".join(parts)

    def end(self, name: str, text: str) -> None:
        """A notebook ended: its live line gives way to ``text``."""
        line = self.lines.pop(name, None)
        self.rows.pop(name, None)
        if line is not None:
            line.close()
        self.say(text)
