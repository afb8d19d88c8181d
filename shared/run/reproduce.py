"""``make reproduce RUN=<run> [NB=<notebook>] [FORCE=1]``: run a finished run's notebooks again,
each with the profile, data and settings its runner.json recorded, into
``reports/<run>-reproduced-<n>/``, and compare every experiment's headline figures and test
predictions with the original's (``reproduction.json`` and a section of the new run's page).
With ``--nb`` the new run starts as a copy of the original, so the notebook finds what it reads
of the others' results, and only the experiments it writes are compared.

    python -m shared.run.reproduce --run <run> [--nb 01_baseline_cnn] [--force]

It refuses, in one line that says why, when the data's digest (dataset.json) or the library
versions (runner.json) differ from the recorded ones; ``--force`` goes on and says so in the
verdict. Each experiment's verdict: ``identical`` (every figure equal and no test prediction
changed), ``within the interval`` (test accuracy and macro-F1 inside the original's 95%
intervals), or ``different``. Both code versions are named; a difference is warned about."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from shared import config, environment, results
from shared.data import load
from shared.data.splits import data_digest
from shared.files import read_json, write_json
from shared.reporting import pages
from shared.run import runner
from shared.run.order import find_notebook, run_order
from shared.training import budget

FILE = "reproduction.json"
IDENTICAL, WITHIN, DIFFERENT, MISSING = ("identical", "within the interval", "different",
                                         "missing in the rerun")


def problems(run_dir: Path, state: dict) -> list[str]:
    """Why the run cannot be expected to come out the same here: the data changed since (its
    digest in dataset.json), or the library versions differ from runner.json's."""
    found = []
    recorded = (state.get("environment") or {}).get("versions")
    versions = environment.library_versions()
    changed = [f"{k} {recorded.get(k)} then, {versions.get(k)} now" for k in versions
               if recorded and k != "platform" and recorded.get(k) != versions.get(k)]
    if not recorded:
        found.append("the run did not record its library versions (it never finished)")
    elif changed:
        found.append("library versions differ (" + "; ".join(changed) + ")")
    info_file = run_dir / "dataset.json"
    if info_file.is_file():
        digest = read_json(info_file).get("data_digest")
        if digest is None:
            found.append("the run did not record its data's digest (made before it was)")
            return found
        try:
            current = data_digest(load(state["dataset"]).files)
        except (OSError, ValueError) as err:
            return [*found, f"the data of {state['dataset']} cannot be read now ({err})"]
        if digest != current:
            found.append(f"the data of {state['dataset']} changed since the run (digest)")
    return found


def next_run(run_dir: Path) -> Path:
    """``<run>-reproduced-<n>`` beside the run, with the first free n."""
    n = 1
    while (run_dir.parent / f"{run_dir.name}-reproduced-{n}").exists():
        n += 1
    return run_dir.parent / f"{run_dir.name}-reproduced-{n}"


def figures(metrics: dict) -> dict:
    """The headline figures of an experiment's metrics.json (ECE: the test split's, before
    the temperature)."""
    ece = ((metrics.get("calibration") or {}).get("ece_before") or {}).get("test")
    return {"accuracy": metrics.get("accuracy"), "macro_f1": metrics.get("macro_f1"),
            "val_accuracy": metrics.get("val_accuracy"), "ece": ece}


def changed_predictions(original: Path, rerun: Path) -> int:
    """Test images predicted differently by the two runs' experiments (an image scored by only
    one of them counts as changed)."""
    a, b = (results.read_predictions(d / "predictions.csv") for d in (original, rerun))
    a, b = (f.loc[f["split"] == "test"].set_index("path")["predicted"] for f in (a, b))
    both = a.index.intersection(b.index)
    return int((a.loc[both] != b.loc[both]).sum() + len(a.index.symmetric_difference(b.index)))


def verdict(old: dict, new: dict, changed: int) -> str:
    """identical, within the interval (accuracy and macro-F1 in the original's 95% intervals),
    or different."""
    if changed == 0 and figures(old) == figures(new):
        return IDENTICAL
    for key in ("accuracy", "macro_f1"):
        bounds, value = old.get(f"{key}_ci95"), new.get(key)
        if not bounds or value is None or not bounds[0] <= value <= bounds[1]:
            return DIFFERENT
    return WITHIN


def compare_runs(original: Path, rerun: Path, forced: list[str] | None = None,
                 only: set[str] | None = None) -> dict:
    """The comparison ``reproduction.json`` holds: per experiment of the original (those named
    in ``only``, where one notebook was reproduced), the figures side by side, the changed test
    predictions and the verdict; the two code versions; what ``--force`` overrode."""
    made = {m["dir"]: m for m in results.read_results(rerun)}
    rows = []
    for old in results.read_results(original):
        name = old["dir"]
        if only is not None and name not in only:
            continue
        new = made.get(name)
        row = {"experiment": name, "original": figures(old),
               "rerun": None if new is None else figures(new)}
        if new is None:
            rows.append(row | {"changed_predictions": None, "verdict": MISSING})
            continue
        changed = changed_predictions(original / name, rerun / name)
        rows.append(row | {"changed_predictions": changed,
                           "verdict": verdict(old, new, changed)})
    codes = {"original": _code(original), "rerun": environment.code_version()}
    overall = _overall(rows) + (f" (forced despite: {'; '.join(forced)})" if forced else "")
    return {"original_run": original.name, "rerun": rerun.name, "experiments": rows,
            "verdict": overall, "forced": forced or [], "code": codes,
            "same_code": same_code(codes["original"], codes["rerun"])}


def same_code(original: dict, rerun: dict) -> bool:
    """Both commits known and equal, and neither tree had uncommitted changes."""
    return bool(original.get("commit")) and original.get("commit") == rerun.get("commit") \
        and not original.get("dirty") and not rerun.get("dirty")


def summary_lines(comparison: dict) -> list[str]:
    """What the terminal shows: one line per experiment, then the verdict and its caveats."""
    lines = [f"  {r['experiment']}: {r['verdict']}"
             + ("" if r["changed_predictions"] is None
                else f" ({r['changed_predictions']} test predictions changed)")
             for r in comparison["experiments"]]
    lines.append(f"reproduction of {comparison['original_run']}: {comparison['verdict']}")
    codes = comparison["code"]
    if not comparison["same_code"]:
        lines.append(f"warning: the code differs: {environment.code_text(codes['original'])} "
                     f"then, {environment.code_text(codes['rerun'])} now")
    return lines


def reproduce(run: str, nb: str | None = None, force: bool = False,
              notebooks_dir: Path = config.NOTEBOOKS_DIR) -> int:
    """Rerun ``run`` (or its notebook ``nb``) and compare; the exit status (0: every experiment
    identical or within its interval; 1: some differ or a notebook failed; 2: refused)."""
    original = runner.run_path(run)
    state = results.load_state(original)
    if not state.get("notebooks"):
        print(f"error: {original} has no runner.json with notebooks: nothing to reproduce",
              file=sys.stderr)
        return 2
    found = problems(original, state)
    if found and not force:
        print(f"error: run {original.name} cannot be reproduced here: {'; '.join(found)} "
              "(FORCE=1 reruns it anyway and says so in the verdict)", file=sys.stderr)
        return 2
    # every notebook the run executed: one that failed may still have written results
    names = [nb] if nb else list(state["notebooks"])
    notebooks = run_order([find_notebook(n, notebooks_dir) for n in names])
    target = next_run(original)
    settings = {n: r["settings"] for n, r in state["notebooks"].items() if r.get("settings")}
    print(f"reproducing {original.name} into {target.name}: {len(notebooks)} notebooks, "
          f"profile {state['profile']}, data {state['dataset']}", flush=True)
    if nb:      # the one notebook beside a copy of the run: what it reads of the others is there
        shutil.copytree(original, target, ignore=shutil.ignore_patterns(FILE, "*.lock"))
    keep_budgeted_epochs(original, target)
    before = _written(target)
    status = runner.run_notebooks(notebooks, profile=state["profile"], dataset=state["dataset"],
                                  run=str(target), settings=settings, redo=bool(nb))
    made = {name for name, stamp in _written(target).items() if before.get(name) != stamp}
    comparison = compare_runs(original, target, forced=found, only=made if nb else None)
    write_json(target / FILE, comparison)
    pages.write_index(target)
    print("\n".join(summary_lines(comparison)))
    return 1 if status or comparison["verdict"].startswith((DIFFERENT, MISSING)) else 0


def _written(run_dir: Path) -> dict[str, int]:
    """When each experiment of a run last wrote its metrics.json (ns; none yet: {})."""
    return {d.name: (d / "metrics.json").stat().st_mtime_ns
            for d in results.experiment_dirs(run_dir) if (d / "metrics.json").is_file()}


def _code(run_dir: Path) -> dict:
    """The original's code version: runner.json's, else its first experiment's."""
    state = results.load_state(run_dir)
    code = (state.get("environment") or {}).get("code")
    if code:
        return code
    return next((m["code"] for m in results.read_results(run_dir) if m.get("code")),
                {"commit": None, "dirty": None})


def _overall(rows: list[dict]) -> str:
    verdicts = {r["verdict"] for r in rows}
    if not rows:
        return "nothing to compare"
    for worst in (DIFFERENT, MISSING, WITHIN):
        if worst in verdicts:
            return worst
    return IDENTICAL


def keep_budgeted_epochs(original: Path, target: Path) -> list[Path]:
    """Copy the epochs a training budget chose (each experiment's budget.json,
    shared.training.budget) into the rerun, which then trains the same number whatever its
    speed."""
    copied = []
    for path in original.glob(f"*/{budget.BUDGET_FILE}"):
        to = target / path.parent.name / path.name
        to.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, to)
        copied.append(to)
    return copied


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shared.run.reproduce",
                                description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="the run to reproduce (reports/<run>)")
    p.add_argument("--nb", default=None, help="only this notebook, e.g. 01_baseline_cnn")
    p.add_argument("--force", action="store_true",
                   help="rerun even where the data or the library versions differ")
    p.add_argument("--notebooks", default=str(config.NOTEBOOKS_DIR), type=Path)
    args = p.parse_args(argv)
    try:
        return reproduce(args.run, args.nb, args.force, args.notebooks)
    except (ValueError, results.DamagedRunError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
