"""docs/performance.md from the benchmarks' JSON: the latest figures of each benchmark, its
targets, the command that measures it, the machine and the date (``make performance``; ``make
bench`` measures and then writes it). Plain Python: it measures nothing and imports no TensorFlow.

    python benchmarks/performance_page.py [--bench-dir reports/bench] [--out docs/performance.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = ".venv/bin/python"
# script -> (start of the "benchmark" title its JSON carries, the make target that runs it)
SCRIPTS = {
    "pipeline": ("input pipeline:", "make bench"),
    "feature_cache": ("feature cache:", "make bench"),
    "throughput": ("training throughput:", "make bench"),
    "data_size": ("cost against data size:", "make bench"),
    "end_to_end": ("end to end:", "make bench"),
    "determinism": ("determinism:", "make bench"),
    "stem": ("strided stem:", "make bench"),
    "hashing": ("near-duplicate hashing:", "make bench"),
    "near_duplicates": ("near-duplicates on a real dataset:", "make bench"),
    "gpu": ("GPU training throughput", "make bench-gpu"),
    "inference": ("transfer model inference", None),
    "recipe": ("baseline recipe variants", None),
}
NESTING = 3      # dict figures are split into dotted keys down to this depth, then written inline
CELL = 90        # longer values are cut (the JSON has them whole)


def shown(path: Path) -> str:      # relative to the repository where it is inside
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def latest(bench_dir: Path) -> dict[str, tuple[Path, dict]]:
    """The newest (by file time) JSON of each benchmark in ``bench_dir``, by script name."""
    found = {}
    for path in sorted(bench_dir.glob("*.json"), key=lambda p: p.stat().st_mtime):
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(result, dict) and "benchmark" in result:    # not summary.json
            title = result["benchmark"]
            name = next((n for n, (start, _) in SCRIPTS.items() if title.startswith(start)), title)
            found[name] = (path, result)
    return found


def command(name: str, path: Path) -> str:
    if name not in SCRIPTS:
        return "not known (no script of benchmarks/ writes this title)"
    text = f"`{PY} benchmarks/{name}.py`"
    if path.name != f"{name}.json":
        text = (f"`{PY} benchmarks/{name}.py --json {shown(path)}` with options the JSON does "
                "not record (see its figures)")
    return text + (f" (also `{SCRIPTS[name][1]}`)" if SCRIPTS[name][1] else "")


def machine(m: dict) -> str:
    device = m.get("device") or "?"
    parts = [f"{m.get('cpu_count', '?')} CPU cores", f"{m.get('memory_gib', '?')} GiB",
             device if device.startswith("GPU") else "no GPU"]
    if m.get("load_average"):
        parts.append("load average {} (1, 5, 15 min, as the JSON was written)".format(
            " / ".join(map(str, m["load_average"]))))
    versions = m.get("versions") or {}
    parts += [f"{lib} {versions[lib]}" for lib in ("tensorflow", "keras") if versions.get(lib)]
    return ", ".join(parts) + (f"; {m['platform']}" if m.get("platform") else "")


def flat(figures: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and name.count(".") < NESTING - 1:
            out |= flat(value, name + ".")
        else:
            out[name] = value
    return out


def cell(value) -> str:
    text = (f"{value:,}" if isinstance(value, int) and not isinstance(value, bool)
            else f"{value:g}" if isinstance(value, float)
            else value if isinstance(value, str) else json.dumps(value))
    text = text if len(text) <= CELL else text[:CELL - 1] + "…"
    return text.replace("|", "\\|").replace("\n", " ")


def target(value, goal) -> str:
    if goal is None:
        return ""
    met = isinstance(value, int | float) and value >= goal
    return f"≥ {goal:g} ({'met' if met else 'MISSED'})"


def section(name: str, path: Path, result: dict) -> list[str]:
    stamp = result.get("measured") or (
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(path.stat().st_mtime))
        + f" (when `{shown(path)}` was written)")
    lines = [f"## {name}", "", f"*{cell(result['benchmark'])}*", "",
             f"- command: {command(name, path)}",
             f"- machine: {machine(result.get('machine') or {})}",
             f"- measured: {stamp}", "",
             "| figure | value | target |", "|---|---|---|"]
    targets = result.get("targets") or {}
    for key, value in (result.get("ratios") or {}).items():
        lines.append(f"| ratio: {cell(key)} | {cell(value)} | {target(value, targets.get(key))} |")
    for key, value in flat(result.get("figures") or {}).items():
        lines.append(f"| {cell(key)} | {cell(value)} | |")
    return [*lines, ""]


def page(bench_dir: Path) -> str:
    found = latest(bench_dir) if bench_dir.is_dir() else {}
    lines = ["# Performance", "",
             "<!-- Generated by `make performance` (benchmarks/performance_page.py); do not edit "
             "by hand. -->", "",
             f"**Generated** by `make performance` (`{PY} benchmarks/performance_page.py`) from "
             f"the newest JSON of each benchmark in `{shown(bench_dir)}`; `make bench` measures "
             "again and regenerates it. Do not edit this page by hand: change the benchmarks or "
             "the generator.", "",
             "Ratios are medians of repetitions in one process; on a shared machine they move "
             "by 10-40% from run to run, so read the load average beside them. A target is "
             "shown only where the benchmark states one. Long values are cut here; the JSON "
             "has every figure and repetition whole.", ""]
    missing = [name for name in SCRIPTS if name not in found]
    if missing:
        lines += [f"**Not measured** (no JSON in `{shown(bench_dir)}`):", "",
                  *(f"- {n}: {command(n, Path(f'{n}.json'))}" for n in missing), ""]
    order = list(SCRIPTS)
    for name in sorted(found, key=lambda n: order.index(n) if n in order else len(order)):
        lines += section(name, *found[name])
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bench-dir", type=Path, default=REPO / "reports" / "bench")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "performance.md")
    args = p.parse_args(argv)
    if not latest(args.bench_dir.resolve()):
        print(f"no benchmark JSON in {args.bench_dir}: {args.out} is left as it is "
              "(`make bench` measures)")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page(args.bench_dir.resolve()), encoding="utf-8")
    print(f"performance page written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
