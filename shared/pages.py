"""The HTML pages of the reports: ``<run>/index.html`` (the run's leaderboard, its notebooks
and its environment) and ``reports/index.html`` (every run). Self-contained: no external
assets, readable with no network. They read only the run's files: ``runner.json`` (written by
:mod:`shared.runner`) and each experiment's results (:func:`shared.evaluate.read_results`)."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from shared import config
from shared.evaluate import read_results, results_table
from shared.files import read_json, write_text

STATE_FILE = "runner.json"

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:72em;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:.3em .6em;
text-align:left}th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
.failed{color:#b00020;font-weight:bold}.ok{color:#1b5e20}.stale,.interrupted{color:#a15c00}
.muted{color:#777}
img{max-width:100%}
"""


class DamagedRunError(ValueError):
    """A run's runner.json cannot be read."""


def load_state(run_dir: Path) -> dict:
    """The run's ``runner.json`` ({} before the first notebook). Raises
    :class:`DamagedRunError`, naming the file and what to do, when it cannot be read."""
    path = Path(run_dir) / STATE_FILE
    if not path.exists():
        return {}
    try:
        state = read_json(path)
    except (OSError, ValueError) as err:
        state, reason = None, f"{type(err).__name__}: {err}"
    else:
        reason = "it does not hold a JSON object"
    if not isinstance(state, dict):
        raise DamagedRunError(f"{path} is damaged ({reason}): start the run over with "
                              f"`make run-all RUN={path.parent.name} FRESH=1`, or delete "
                              f"{path.parent}")
    return state


def duration(seconds: float | None) -> str:
    """``75`` -> ``"1m15s"``."""
    if seconds is None:
        return ""
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def leaderboard(run_dir: Path) -> list[dict]:
    """The run's finished experiments, best test accuracy first (missing values as None)."""
    table = results_table(read_results(run_dir))
    return table.astype(object).where(pd.notna(table), None).to_dict("records")


def write_index(run_dir: Path) -> Path:
    """Write ``<run>/index.html``: leaderboard, notebooks, environment."""
    run_dir = Path(run_dir)
    state = load_state(run_dir)
    ranked = leaderboard(run_dir)
    rows = [[str(rank), f"<a href=\"{html.escape(str(m['dir']))}/\">{_text(m['experiment'])}</a>",
             _pct(m["accuracy"]) + _interval(m["accuracy_ci95"], "{:.1%}"),
             _number(m["macro_f1"], "{:.4f}") + _interval(m["macro_f1_ci95"], "{:.3f}"),
             _pct(m["val_accuracy"]),
             _number(m["params"], "{:,.0f}"), duration(m["train_seconds"]),
             _number(m["image_size"], "{:.0f}"), _text(m["weights_source"]), _text(m["profile"])]
            for rank, m in enumerate(ranked, 1)]
    board = _table(["#", "experiment", "test accuracy (95% interval)", "macro-F1 (95% interval)",
                    "val accuracy", "parameters",
                    "training time", "image size", "weights", "profile"], rows,
                   numeric={0, 2, 3, 4, 5, 6}) if rows else \
        "<p class=\"muted\">No experiment of this run has written its metrics.json yet.</p>"

    nb_rows = []
    for name, rec in state.get("notebooks", {}).items():
        status = rec.get("status", "?")
        css = status if status in ("ok", "stale", "interrupted") else "failed"
        links = " · ".join(f"<a href=\"{html.escape(rec[k])}\">{k}</a>"
                           for k in ("html", "ipynb") if rec.get(k))
        nb_rows.append([html.escape(name), f"<span class=\"{css}\">{html.escape(status)}</span>",
                        duration(rec.get("seconds")),
                        f"{rec['peak_memory_mb']:.0f} MB" if rec.get("peak_memory_mb") else "",
                        links, html.escape(rec.get("error") or "")])
    notebooks = _table(["notebook", "status", "wall time", "peak memory", "report", "error"],
                       nb_rows, numeric={2, 3}) if nb_rows else "<p class=\"muted\">none</p>"

    env = state.get("environment") or {}
    seed = next((m["seed"] for m in ranked if m["seed"] is not None), None)
    facts = [["run", state.get("run", run_dir.name)], ["profile", state.get("profile", "")],
             ["dataset", state.get("dataset", "")], ["seed", "" if seed is None else seed],
             ["started", state.get("started", "")], ["finished", state.get("finished", "")],
             ["device", env.get("device", "")], *env.get("versions", {}).items()]
    facts = [[_text(k), _text(v)] for k, v in facts]
    figure = ""
    if (run_dir / "ensemble" / "figures" / "leaderboard.png").exists():
        figure = "<p><img src=\"ensemble/figures/leaderboard.png\" alt=\"leaderboard\"></p>"
    body = (f"<p><a href=\"../index.html\">all runs</a></p>\n<h2>Leaderboard (test split)</h2>\n"
            f"{board}\n{figure}\n<h2>Notebooks</h2>\n{notebooks}\n"
            f"<h2>Environment</h2>\n{_table(['', ''], facts)}")
    return write_text(run_dir / "index.html", _page(f"Run {run_dir.name}", body))


def write_runs_index(reports_dir: Path = config.REPORTS_DIR) -> Path:
    """Write ``reports/index.html``, one row per run, newest first."""
    rows = []
    for state_file in sorted(Path(reports_dir).glob(f"*/{STATE_FILE}"),
                             key=lambda p: p.stat().st_mtime, reverse=True):
        run_dir = state_file.parent
        try:
            state = load_state(run_dir)
        except DamagedRunError:
            rows.append([_text(run_dir.name), "", "", "", "<span class=\"failed\">runner.json "
                         "is damaged</span>", ""])
            continue
        records = state.get("notebooks", {}).values()
        failed = sum(r.get("status") not in ("ok", "stale") for r in records)
        stale = sum(r.get("status") == "stale" for r in records)
        best = next(iter(leaderboard(run_dir)), None)
        rows.append([f"<a href=\"{html.escape(run_dir.name)}/index.html\">"
                     f"{html.escape(run_dir.name)}</a>",
                     _text(state.get("started", "")), _text(state.get("profile", "")),
                     _text(state.get("dataset", "")),
                     f"{len(records) - failed - stale} ok"
                     + (f", <span class=\"stale\">{stale} stale</span>" if stale else "")
                     + (f", <span class=\"failed\">{failed} failed</span>" if failed else ""),
                     f"{_text(best['experiment'])} {_pct(best['accuracy'])}" if best else ""])
    body = _table(["run", "started", "profile", "dataset", "notebooks", "best (test accuracy)"],
                  rows) if rows else "<p class=\"muted\">No runs yet.</p>"
    return write_text(Path(reports_dir) / "index.html", _page("Runs", body))


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td class=\"num\">{c}</td>" if j in numeric else f"<td>{c}</td>"
                         for j, c in enumerate(row)) + "</tr>\n" for row in rows)
    return f"<table><tr>{head}</tr>\n{body}</table>"


def _text(value) -> str:
    return "" if value is None else html.escape(str(value))


def _number(value, fmt: str) -> str:
    return fmt.format(value) if isinstance(value, int | float) else ""


def _interval(bounds, fmt: str) -> str:
    """`` <small>(low–high)</small>`` for a [low, high] pair; nothing for results without."""
    if not (isinstance(bounds, list | tuple) and len(bounds) == 2):
        return ""
    return f" <small class=\"muted\">({fmt.format(bounds[0])}–{fmt.format(bounds[1])})</small>"


def _pct(value) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, int | float) else ""
