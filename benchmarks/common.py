"""What every benchmark shares: the machine's description, repeated timing, the JSON file."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from shared import config
from shared.environment import describe
from shared.files import write_json

BENCH_DIR = config.REPORTS_DIR / "bench"


def machine() -> dict:
    """Cores, memory, GPU and library versions of this machine."""
    import psutil

    env = describe()
    return {"cpu_count": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30,
                                                              1),
            "device": env["device"], "platform": platform.platform(), "versions": env["versions"],
            # other work on the machine slows every figure: the 1, 5 and 15 min load averages
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def median_seconds(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    """Run ``fn`` ``repeats`` times; return the median and every time, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def epoch_timer():
    """A Keras callback whose ``seconds`` lists the wall-clock seconds of every epoch."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    return EpochTimer()


def positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def parser(description: str, default_json: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", type=Path, default=BENCH_DIR / default_json,
                   help=f"where to write the figures (default reports/bench/{default_json})")
    p.add_argument("--repeats", type=positive, default=3,
                   help="repetitions; the median is reported")
    return p


def report(path: Path, name: str, figures: dict, ratios: dict, targets: dict | None = None) -> dict:
    """Print the table of ``figures`` and ``ratios`` and write them with the machine to ``path``.

    ``targets`` maps a ratio's key to its minimum; each is printed as met or missed.
    """
    targets = targets or {}
    print(f"\n{name}")
    width = max(len(k) for k in [*figures, *ratios]) + 2
    for key, value in figures.items():
        print(f"  {key:<{width}} {value}")
    for key, value in ratios.items():
        goal = targets.get(key)
        verdict = ("" if goal is None
                   else f"   target >= {goal}: {'met' if value >= goal else 'MISSED'}")
        print(f"  {key:<{width}} {value:.2f}x{verdict}")
    result = {"benchmark": name, "machine": machine(), "figures": figures, "ratios": ratios,
              "targets": targets,
              "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    write_json(path, result)
    print(f"  written to {path}")
    return result


def dump(obj) -> str:
    return json.dumps(obj, indent=2)
