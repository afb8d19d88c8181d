"""End to end: wall time and peak memory of each notebook of a `make run-all`, per profile.

Reads what the runner recorded (``reports/<run>/runner.json``); it runs nothing itself unless
asked with ``--execute PROFILE`` (which runs ``make run-all PROFILE=… RUN=bench-e2e-…``).

    python benchmarks/end_to_end.py                      # latest run of each profile and dataset
    python benchmarks/end_to_end.py --run reports/my-run  # given runs
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common import parser, report

from shared import config
from shared.results import load_state


def label(state: dict, run_dir: Path) -> str:
    """"<profile> <dataset>" of a run, e.g. "cpu fashion-mnist" or "cpu leaves"."""
    return f"{state.get('profile', '?')} {Path(state.get('dataset') or run_dir.name).name}"


def latest_runs(reports: Path, profiles=("smoke", "cpu", "gpu")) -> dict[str, Path]:
    """The most recently finished, complete run of each profile and dataset."""
    found = {}
    for state_file in sorted(reports.glob("*/runner.json"), key=lambda p: p.stat().st_mtime):
        state = load_state(state_file.parent)
        done = state.get("finished") and all(r.get("status") == "ok"
                                             for r in state.get("notebooks", {}).values())
        if state.get("profile") in profiles and done and not state_file.parent.name.startswith("."):
            found[label(state, state_file.parent)] = state_file.parent
    return found


def main() -> int:
    p = parser(__doc__.splitlines()[0], "end_to_end.json")
    p.add_argument("--run", action="append", type=Path, default=[], help="a run directory")
    p.add_argument("--execute", choices=["smoke", "cpu", "gpu"], help="make this run first")
    args = p.parse_args()
    if args.execute:
        name = f"bench-e2e-{args.execute}"
        subprocess.run(["make", "run-all", f"PROFILE={args.execute}", f"RUN={name}", "FRESH=1"],
                       cwd=config.REPO_ROOT, check=False)
        args.run.append(config.REPORTS_DIR / name)
    runs = {label(load_state(r), r): r for r in args.run} if args.run \
        else latest_runs(config.REPORTS_DIR)
    if not runs:
        print("no complete run found under reports/: make one with "
              "`make run-all PROFILE=smoke` (or pass --execute smoke); nothing to report")
        return 0
    figures = {}
    for run_label, run_dir in sorted(runs.items()):
        state = load_state(run_dir)
        total = 0.0
        for name, rec in state.get("notebooks", {}).items():
            figures[f"{run_label}/{name}"] = (f"{rec.get('seconds', 0):.0f} s, peak "
                                            f"{rec.get('peak_memory_mb') or 0:.0f} MB "
                                            f"[{rec.get('status')}]")
            total += rec.get("seconds") or 0.0
        figures[f"{run_label}/total"] = f"{total:.0f} s  (run {run_dir.name})"
    report(args.json, "end to end: make run-all per notebook", figures, {})
    return 0


if __name__ == "__main__":
    sys.exit(main())
