"""Disk: freeing the models of old runs while keeping their reports and results.

A finished experiment already keeps a single model file, ``model.keras``
(:func:`shared.evaluation.evaluate.finish` deletes its checkpoints). ``prune-models`` deletes that
file too, for the finished experiments of the runs it is given, with any ``checkpoints/`` and
``backup/`` left (also under ``previous/``), and leaves ``model_freed.json`` in its place
(:data:`shared.config.MODEL_FREED`), so that ``make predict`` and ``make export`` say the model was
freed. metrics.json, predictions.csv, history.csv, figures, model cards, logs, exports and the
notebooks' reports are kept, so the index pages and the ensemble's results still read. An unfinished
experiment is left alone (its checkpoints resume it), and so is a run in use.

    python -m shared.run.prune prune-models --keep 3      # all runs but the 3 newest
    python -m shared.run.prune prune-models --run NAME    # one run
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
from pathlib import Path

from shared import config, results
from shared.files import human_bytes, write_json
from shared.run import lock

# what is freed in a finished experiment's folder (and in its previous/)
MODEL_FILES = ("model.keras", *config.CHECKPOINTS)


def folder_bytes(path: str | Path) -> int:
    """Bytes of the files under ``path`` (or of the file itself)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def list_runs(reports_dir: str | Path = config.REPORTS_DIR) -> list[Path]:
    """The run folders of ``reports_dir`` (those holding runner.json or an experiment),
    newest first (by runner.json's start, else the folder's time)."""
    runs = [d for d in Path(reports_dir).iterdir()
            if d.is_dir() and not d.name.startswith(".") and d.name != "bench"
            and ((d / results.STATE_FILE).is_file() or results.experiment_dirs(d))]

    def started(run: Path) -> str:
        try:
            when = results.load_state(run).get("started")
        except results.DamagedRunError:
            when = None
        return when or dt.datetime.fromtimestamp(run.stat().st_mtime).isoformat()

    return sorted(runs, key=started, reverse=True)


def free_models(run_dir: str | Path, dry_run: bool = False) -> dict:
    """Free the models of the finished experiments of one run (see the module's docstring);
    returns ``{"run", "freed": {experiment: bytes}, "kept": {experiment: why}}``."""
    run_dir = Path(run_dir)
    freed, kept = {}, {}
    with lock.run_lock(run_dir):
        for folder in results.experiment_dirs(run_dir):
            reason = results.check_complete(folder)
            if reason:
                kept[folder.name] = f"{reason}; its checkpoints resume it"
                continue
            targets = [place / name for place in (folder, folder / "previous")
                       for name in MODEL_FILES if (place / name).exists()]
            if not targets:
                continue
            freed[folder.name] = sum(folder_bytes(t) for t in targets)
            if dry_run:
                continue
            for target in targets:
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink()
            write_json(folder / config.MODEL_FREED, {
                "freed_at": dt.datetime.now().isoformat(timespec="seconds"),
                "by": "prune-models", "bytes": freed[folder.name],
                "removed": [str(t.relative_to(folder)) for t in targets]})
    return {"run": run_dir.name, "freed": freed, "kept": kept}


def prune_models(reports_dir: str | Path = config.REPORTS_DIR, *, keep: int | None = None,
                 run: str | None = None, dry_run: bool = False) -> list[dict]:
    """Free the models of run ``run``, or of every run but the ``keep`` newest; print and
    return what each run freed (:func:`free_models`)."""
    if (keep is None) == (run is None):
        raise ValueError("give either --keep N (keep the models of the N newest runs) or "
                         "--run NAME (free the models of that run)")
    if run is not None:
        run_dir = Path(run) if Path(run).is_absolute() else Path(reports_dir) / run
        if not run_dir.is_dir():
            raise ValueError(f"no run {run!r} in {reports_dir}")
        chosen = [run_dir]
    else:
        if keep < 0:
            raise ValueError(f"--keep must be 0 or more, not {keep}")
        chosen = list_runs(reports_dir)[keep:]
    done = []
    for run_dir in chosen:
        result = free_models(run_dir, dry_run)
        total = sum(result["freed"].values())
        verb = "would free" if dry_run else "freed"
        names = ", ".join(result["freed"]) or "nothing to free"
        print(f"{result['run']}: {verb} {human_bytes(total)} ({names})")
        for name, why in result["kept"].items():
            print(f"  {name}: kept, {why}")
        done.append(result)
    if not chosen:
        print("no run to prune")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.run.prune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prune-models", help="free the models of old runs, keep their results")
    p.add_argument("--keep", type=int, help="keep the models of the N newest runs")
    p.add_argument("--run", help="free the models of this run (a name under reports/)")
    p.add_argument("--dry-run", action="store_true", help="say what would be freed")
    p.add_argument("--reports", type=Path, default=config.REPORTS_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        prune_models(args.reports, keep=args.keep, run=args.run, dry_run=args.dry_run)
    except (ValueError, lock.RunInUse) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
