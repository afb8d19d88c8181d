"""The HTML pages of the reports: ``<run>/index.html`` (the run's leaderboard, its notebooks
and its environment) and ``reports/index.html`` (every run). Self-contained: no external
assets, readable with no network. They read only the run's files: ``runner.json`` (written by
:mod:`shared.run.runner`, read by :func:`shared.results.load_state`) and each experiment's
results (:func:`shared.results.read_results`)."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from shared import config, environment
from shared.evaluation import ranking
from shared.files import read_json, write_text
from shared.reporting import cards
from shared.results import (
    STATE_FILE,
    DamagedRunError,
    load_state,
    read_predictions,
    read_results,
    results_table,
)

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:72em;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:.3em .6em;
text-align:left}th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
.failed{color:#b00020;font-weight:bold}.ok{color:#1b5e20}.stale,.interrupted{color:#a15c00}
.muted{color:#777}tr.tied td{background:#eef7ee}
img{max-width:100%}
"""


def duration(seconds: float | None) -> str:
    """``75`` -> ``"1m15s"``."""
    if seconds is None:
        return ""
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def leaderboard(run_dir: Path) -> list[dict]:
    """The run's finished experiments, best test accuracy first (missing values as None), each
    with ``tie``, ``p_value`` and ``p_holm`` (:func:`shared.evaluation.ranking.ties_for_first`)
    and ``right`` (which test images it got right, by path)."""
    table = results_table(read_results(run_dir))
    board = table.astype(object).where(pd.notna(table), None).to_dict("records")
    # read_results has checked each predictions.csv already (shared.results.check_complete)
    right = [ranking.right_answers(read_predictions(Path(run_dir) / str(m["dir"])
                                                    / "predictions.csv")) for m in board]
    for m, r, tie in zip(board, right, ranking.ties_for_first(right), strict=True):
        m |= tie | {"right": r}
    return board


def write_index(run_dir: Path) -> Path:
    """Write ``<run>/index.html``: leaderboard, notebooks, environment."""
    run_dir = Path(run_dir)
    state = load_state(run_dir)
    ranked = leaderboard(run_dir)
    for m in ranked:
        cards.write_card(run_dir / str(m["dir"]))
    rows = [[_rank(rank, m),
             f"<a href=\"{html.escape(str(m['dir']))}/\">{_text(m['experiment'])}</a>"
             f" <small>(<a href=\"{html.escape(str(m['dir']))}/model_card.html\">card</a>)"
             "</small>",
             _pct(m["accuracy"]) + _interval(m["accuracy_ci95"], "{:.1%}"),
             _number(m["macro_f1"], "{:.4f}") + _interval(m["macro_f1_ci95"], "{:.3f}"),
             _pct(m["val_accuracy"]),
             _number(m["params"], "{:,.0f}"), duration(m["train_seconds"]),
             _number(m["image_size"], "{:.0f}"), _text(m["weights_source"]), _text(m["profile"]),
             _versus_best(m)]
            for rank, m in enumerate(ranked, 1)]
    board = _table(["#", "experiment", "test accuracy (95% interval)", "macro-F1 (95% interval)",
                    "val accuracy", "parameters",
                    "training time", "image size", "weights", "profile",
                    "worse than the best? p (Holm)"], rows,
                   numeric={0, 2, 3, 4, 5, 6}, marked=_tied_rows(ranked)) \
        + _muted(ranking.method_sentence(ranked)) if rows else \
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
             ["code", environment.code_text(env.get("code")) if env else ""],
             ["device", env.get("device", "")], *env.get("versions", {}).items()]
    facts = [[_text(k), _text(v)] for k, v in facts]
    figure = ""
    if (run_dir / "ensemble" / "figures" / "leaderboard.png").exists():
        figure = "<p><img src=\"ensemble/figures/leaderboard.png\" alt=\"leaderboard\"></p>"
    body = (f"<p><a href=\"../index.html\">all runs</a></p>\n{_reproduction(run_dir)}"
            f"<h2>Leaderboard (test split)</h2>\n{board}\n{figure}\n"
            f"<h2>Notebooks</h2>\n{notebooks}\n"
            f"<h2>Environment</h2>\n{_table(['', ''], facts)}")
    return write_text(run_dir / "index.html", _page(f"Run {run_dir.name}", body))


def write_runs_index(reports_dir: Path = config.REPORTS_DIR) -> Path:
    """Write ``reports/index.html``: one row per run, newest first, then every experiment of
    every run in one table, sortable and filterable in the browser (an inline script, no
    network). Experiments are ranked within their dataset only: runs on different datasets
    are never ranked against each other."""
    rows, experiments = [], []
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
        board = leaderboard(run_dir)
        best = next(iter(board), None)
        rows.append([f"<a href=\"{html.escape(run_dir.name)}/index.html\">"
                     f"{html.escape(run_dir.name)}</a>",
                     _text(state.get("started", "")), _text(state.get("profile", "")),
                     _text(state.get("dataset", "")),
                     f"{len(records) - failed - stale} ok"
                     + (f", <span class=\"stale\">{stale} stale</span>" if stale else "")
                     + (f", <span class=\"failed\">{failed} failed</span>" if failed else ""),
                     f"{_text(best['experiment'])} {_pct(best['accuracy'])}" if best else ""])
        experiments += [m | {"run": run_dir.name, "started": state.get("started", ""),
                             "dataset": state.get("dataset", m.get("dataset"))} for m in board]
    runs = _table(["run", "started", "profile", "dataset", "notebooks", "best (test accuracy)"],
                  rows) if rows else "<p class=\"muted\">No runs yet.</p>"
    body = runs + "\n<h2>Every experiment of every run</h2>\n" + _experiments_table(experiments)
    return write_text(Path(reports_dir) / "index.html", _page("Runs", body))


def _experiments_table(experiments: list[dict]) -> str:
    """The cross-run table: one row per experiment, ranked within its dataset."""
    if not experiments:
        return "<p class=\"muted\">No finished experiment yet.</p>"
    ranked, sentences = [], []
    for dataset in sorted({str(m["dataset"]) for m in experiments}):
        same = sorted((m for m in experiments if str(m["dataset"]) == dataset),
                      key=lambda m: -(m.get("accuracy") or 0.0))
        ties = ranking.ties_for_first([m["right"] for m in same])
        same = [m | tie for m, tie in zip(same, ties, strict=True)]
        ranked += [(rank, m) for rank, m in enumerate(same, 1)]
        sentences.append(f"{dataset}: {ranking.method_sentence(same)}")
    headers = ["dataset", "rank in dataset", "run", "date", "profile", "experiment", "weights",
               "test accuracy (95% interval)", "macro-F1", "training time",
               "worse than the best? p (Holm)"]
    body = []
    for rank, m in ranked:
        run = html.escape(m["run"])
        accuracy = m.get("accuracy")
        cells = [(_text(m["dataset"]), _text(m["dataset"])), (_rank(rank, m), str(rank)),
                 (f"<a href=\"{run}/index.html\">{run}</a>", run),
                 (_text(m["started"]), _text(m["started"])),
                 (_text(m.get("profile")), _text(m.get("profile"))),
                 (f"<a href=\"{run}/{html.escape(str(m['dir']))}/model_card.html\">"
                  f"{_text(m['experiment'])}</a>", _text(m["experiment"])),
                 (_text(m.get("weights_source")), _text(m.get("weights_source"))),
                 (_pct(accuracy) + _interval(m.get("accuracy_ci95"), "{:.1%}"),
                  "" if accuracy is None else f"{accuracy:.6f}"),
                 (_number(m.get("macro_f1"), "{:.4f}"), _number(m.get("macro_f1"), "{:.6f}")),
                 (duration(m.get("train_seconds")), _number(m.get("train_seconds"), "{:.1f}")),
                 (_versus_best(m), _number(m.get("p_holm"), "{:.6f}"))]
        tied = " class=\"tied\"" if m["tie"] in (ranking.BEST, ranking.TIED) else ""
        body.append(f"<tr{tied}>" + "".join(f"<td data-key=\"{key}\">{shown}</td>"
                                     for shown, key in cells) + "</tr>")
    head = "".join(f"<th title=\"click to sort\">{h}</th>" for h in headers)
    return ("<p><input id=\"filter\" placeholder=\"filter: dataset, run, experiment...\" "
            "size=\"40\"> <span class=\"muted\">click a column's name to sort</span></p>\n"
            f"<table id=\"experiments\"><thead><tr>{head}</tr></thead><tbody>"
            + "\n".join(body) + "</tbody></table>\n"
            + "".join(_muted(t) for t in sentences)
            + f"\n<script>{_SORT_AND_FILTER}</script>")


# Sorts the experiments table by a clicked column (numbers as numbers) and hides the rows that
# do not contain the filter's text. Inline, so the page needs no network.
_SORT_AND_FILTER = """
const table = document.getElementById("experiments");
const rows = () => Array.from(table.tBodies[0].rows);
table.tHead.rows[0].querySelectorAll("th").forEach((th, i) => {
  th.style.cursor = "pointer";
  th.addEventListener("click", () => {
    const up = th.dataset.dir !== "up";
    th.dataset.dir = up ? "up" : "down";
    const key = r => r.cells[i].dataset.key;
    const numeric = rows().every(r => key(r) === "" || !isNaN(Number(key(r))));
    rows().sort((a, b) => {
      const x = key(a), y = key(b);
      const order = numeric ? Number(x) - Number(y) : x.localeCompare(y);
      return up ? order : -order;
    }).forEach(r => table.tBodies[0].appendChild(r));
  });
});
document.getElementById("filter").addEventListener("input", e => {
  const text = e.target.value.toLowerCase();
  rows().forEach(r => {
    r.style.display = r.textContent.toLowerCase().includes(text) ? "" : "none";
  });
});
"""


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def _reproduction(run_dir: Path) -> str:
    """The section of a rerun made by ``make reproduce`` (its reproduction.json): each
    experiment's figures, original against rerun, its changed predictions and verdict."""
    path = run_dir / "reproduction.json"
    if not path.is_file():
        return ""
    found = read_json(path)
    rows = []
    for r in found["experiments"]:
        new = r["rerun"] or {}
        pairs = [f"{_number(r['original'].get(k), '{:.4f}')} → {_number(new.get(k), '{:.4f}')}"
                 if (r["original"].get(k), new.get(k)) != (None, None) else ""
                 for k in ("accuracy", "macro_f1", "val_accuracy", "ece")]
        rows.append([_text(r["experiment"]), *pairs, _text(r["changed_predictions"]),
                     _text(r["verdict"])])
    codes = found["code"]
    code = (f"Code: {environment.code_text(codes['original'])} then, "
            f"{environment.code_text(codes['rerun'])} now"
            + ("." if found["same_code"] else " — not the same code."))
    return (f"<h2>Reproduction of <a href=\"../{html.escape(found['original_run'])}/index.html"
            f"\">{html.escape(found['original_run'])}</a>: {html.escape(found['verdict'])}</h2>\n"
            + _table(["experiment", "test accuracy", "macro-F1", "val accuracy", "test ECE",
                      "test predictions changed", "verdict"], rows, numeric={1, 2, 3, 4, 5})
            + f"\n<p class=\"muted\">{html.escape(code)} Identical: every figure equal and no "
            "test prediction changed; within the interval: test accuracy and macro-F1 inside "
            "the original's 95% intervals.</p>\n")


def _muted(text: str) -> str:
    """A grey paragraph, or nothing for no text."""
    return f"\n<p class=\"muted\">{html.escape(text)}</p>" if text else ""


def _rank(rank: int, entry: dict) -> str:
    """The rank, or "=1" for an entry tied for first."""
    return "=1" if entry.get("tie") == ranking.TIED else str(rank)


def _versus_best(entry: dict) -> str:
    """The leaderboard's last cell: whether the entry is worse than the best, with p."""
    tie = entry.get("tie")
    if tie in (ranking.TIED, ranking.APART):
        verdict = "no: tied for first" if tie == ranking.TIED else "yes"
        return f"{verdict} (p = {entry['p_holm']:.3g})"
    return "best" if tie == ranking.BEST else "<span class=\"muted\">not compared</span>"


def _tied_rows(board: list[dict]) -> set[int]:
    return {i for i, m in enumerate(board) if m.get("tie") in (ranking.BEST, ranking.TIED)}


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset(),
           marked: set[int] = frozenset()) -> str:
    """A table; the rows whose index is in ``marked`` are highlighted (tied for first)."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join(
        ("<tr class=\"tied\">" if i in marked else "<tr>")
        + "".join(f"<td class=\"num\">{c}</td>" if j in numeric else f"<td>{c}</td>"
                  for j, c in enumerate(row)) + "</tr>\n" for i, row in enumerate(rows))
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
