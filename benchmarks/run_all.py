"""Run every benchmark (what ``make bench`` does) and sum up their ratios against the targets.

Each benchmark runs in its own process (so that none inherits another's TensorFlow state) with
its defaults, writing ``reports/bench/<name>.json``; the summary goes to
``reports/bench/summary.json``, and docs/performance.md is written again from the JSON
(``performance_page.py``). A missed target is reported, not an error; the exit status is
non-zero only when a benchmark fails (it is named), after the others have run.

    python benchmarks/run_all.py [--only pipeline throughput] [--repeats N]
                                 [--sizes 1000,10000]    # data_size's folders (default up
                                                         # to 100,000 files)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import performance_page
from common import BENCH_DIR, machine, positive

from shared.files import write_json

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("pipeline", "feature_cache", "throughput", "data_size", "end_to_end",
              "determinism", "stem", "hashing", "near_duplicates")


def run(name: str, extra: list[str]) -> tuple[int, float, dict | None]:
    """Run ``benchmarks/<name>.py``; return its exit status, seconds and JSON (None when it
    wrote none during this run)."""
    path = BENCH_DIR / f"{name}.json"
    path.unlink(missing_ok=True)      # so that a JSON found afterwards is this run's
    print(f"\n=== {name} ===", flush=True)
    start = time.time()
    status = subprocess.run([sys.executable, str(HERE / f"{name}.py"), "--json", str(path),
                             *extra], cwd=HERE.parent, check=False).returncode
    seconds = time.time() - start
    return status, seconds, json.loads(path.read_text()) if path.is_file() else None


def summary_rows(results: dict) -> list[dict]:
    """One row per ratio of every benchmark: value, target, met."""
    rows = []
    for name, (_, _, result) in results.items():
        if not result:
            continue
        targets = result.get("targets", {})
        for key, value in result.get("ratios", {}).items():
            goal = targets.get(key)
            rows.append({"benchmark": name, "ratio": key, "value": value, "target": goal,
                         "met": None if goal is None else value >= goal})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS),
                   help="run only these benchmarks")
    p.add_argument("--repeats", type=positive,
                   help="passed to every benchmark (default: each one's)")
    p.add_argument("--sizes", help="data_size's file counts, e.g. 1000,10000 for a quick run "
                                   "(default 1000,10000,100000)")
    args = p.parse_args(argv)
    extra = ["--repeats", str(args.repeats)] if args.repeats is not None else []
    sizes = ["--sizes", args.sizes] if args.sizes else []

    start = time.time()
    results = {name: run(name, [] if name == "end_to_end" else
                         extra + sizes if name == "data_size" else extra)
               for name in args.only}
    total = time.time() - start
    rows = summary_rows(results)
    failed = [name for name, (status, _, _) in results.items() if status != 0]

    print(f"\n=== summary ({total / 60:.1f} min; machine load average "
          f"{machine()['load_average']}) ===")
    for row in rows:
        verdict = ("" if row["target"] is None else
                   f"target >= {row['target']:g}: {'met' if row['met'] else 'MISSED'}")
        print(f"  {row['benchmark']:<14} {row['ratio']:<46} {row['value']:>8.2f}x  {verdict}")
    for name, (status, seconds, result) in results.items():
        state = (f"FAILED (exit status {status})" if status != 0
                 else "no figures (nothing to measure)" if result is None else "ok")
        print(f"  {name:<14} {seconds:6.1f} s  {state}")
    write_json(BENCH_DIR / "summary.json", {
        "machine": machine(), "seconds": round(total, 1), "ratios": rows,
        "benchmarks": {name: {"exit_status": status, "seconds": round(seconds, 1),
                              "json": str(BENCH_DIR / f"{name}.json") if result else None}
                       for name, (status, seconds, result) in results.items()}})
    missed = [f"{r['benchmark']}/{r['ratio']}" for r in rows if r["met"] is False]
    performance_page.main(["--bench-dir", str(BENCH_DIR)])
    if missed:
        print(f"  missed targets (reported, not an error): {', '.join(missed)}")
    if failed:
        print(f"  FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
