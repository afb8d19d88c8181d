"""A model card per experiment: ``<experiment>/model_card.md`` and ``model_card.html``, written
from its metrics.json (and the run's dataset.json) alone: data and split, every setting,
metrics with intervals, per-class scores, weights source, calibration, known limits and how to
predict with it."""

from __future__ import annotations

import html
from pathlib import Path

from shared import environment
from shared.evaluation import conclusions
from shared.files import read_json, write_text

# (heading, paragraphs, table rows); the first row of a table is its header
Section = tuple[str, list[str], list[list[str]]]


def write_card(experiment_dir: Path) -> tuple[Path, Path]:
    """Write the card of a finished experiment (its metrics.json is read, nothing else of it)
    as Markdown and as self-contained HTML; return both paths."""
    experiment_dir = Path(experiment_dir)
    metrics = read_json(experiment_dir / "metrics.json")
    dataset_json = experiment_dir.parent / "dataset.json"
    split = read_json(dataset_json) if dataset_json.is_file() else {}
    name = metrics.get("title") or metrics.get("experiment") or experiment_dir.name
    title = f"Model card: {name}"
    sections = card_sections(metrics, split, f"{experiment_dir.parent.name}/{experiment_dir.name}")
    md = write_text(experiment_dir / "model_card.md", _markdown(title, sections))
    page = write_text(experiment_dir / "model_card.html", _html(title, sections))
    return md, page


def card_sections(metrics: dict, split: dict, model_ref: str) -> list[Section]:
    """The card's content, shared by its Markdown and HTML forms."""
    sections: list[Section] = []
    counts = split.get("counts") or {}
    sizes = ", ".join(f"{part} {sum(per_class.values()):,}" for part, per_class in counts.items())
    sections.append(("Data and split", [
        f"Dataset `{metrics.get('dataset')}`, {len(metrics.get('class_names') or [])} classes"
        + (f"; images per part: {sizes}" if sizes else "") + ".",
        f"Split seeded with {metrics.get('seed')}, stratified; written once per run to "
        "`split.csv`, so every experiment of the run is scored on the same test images."], []))

    rows = [["", "test", "validation"]]
    for label, key in (("accuracy", "accuracy"), ("macro-F1", "macro_f1"),
                       ("macro precision", "macro_precision"), ("macro recall", "macro_recall"),
                       ("top-5 accuracy", "top5_accuracy")):
        if metrics.get(key) is None and metrics.get(f"val_{key}") is None:
            continue
        rows.append([label, _score(metrics, key), _score(metrics, f"val_{key}")])
    sections.append(("Metrics", ["95% intervals are percentile bootstraps over the images."],
                     rows))

    per_class = metrics.get("per_class") or {}
    sections.append(("Per-class scores (test)", [], [["class", "precision", "recall", "F1",
                                                      "support"]] + [
        [name, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}",
         str(s["support"])] for name, s in per_class.items()]))

    settings = dict(metrics.get("settings") or {})
    settings_rows = [["setting", "value"]] + [[k, _value(v)] for k, v in settings.items()]
    for key in ("architecture", "recipes", "phases"):
        if metrics.get(key):
            settings_rows.append([key, _value(metrics[key])])
    sections.append(("Settings", ["Everything that shaped the model, as metrics.json records "
                                  "it."], settings_rows))

    weights = str(metrics.get("weights_source", "unknown"))
    sections.append(("Weights", [f"Source: {weights}."], []))
    calibration = metrics.get("calibration")
    if calibration:
        sections.append(("Calibration", [
            f"Temperature {_value(calibration.get('temperature'))}, fitted on the "
            f"{calibration.get('fitted_on', 'validation')} split; expected calibration error "
            f"before: {_value(calibration.get('ece_before'))}; after: "
            f"{_value(calibration.get('ece_after'))}. `make predict` applies the temperature."],
            []))
    if metrics.get("tta"):
        sections.append(("Test-time augmentation", [conclusions.tta_sentence(metrics)], []))
    versions = metrics.get("versions") or {}
    sections.append(("Code and libraries", [
        f"Code: commit {environment.code_text(metrics.get('code'))}. Libraries: "
        + ", ".join(f"{k} {v}" for k, v in versions.items() if v and k != "platform")
        + (f"; on {versions['platform']}" if versions.get("platform") else "") + "."], []))
    sections.append(("Known limits", limits(metrics), []))
    sections.append(("How to predict with it", [
        f"`make predict MODEL={model_ref} IMAGES=<folder> OUT=predictions.csv` writes one row "
        "per image (the predicted class and one probability per class); unreadable images are "
        "listed in `predictions.skipped.csv`. `TTA=1` averages over the views of test-time "
        "augmentation it was scored with."], []))
    return sections


def limits(metrics: dict) -> list[str]:
    """What a reader must know before trusting the figures."""
    found = []
    weights = str(metrics.get("weights_source", ""))
    if weights.startswith("random"):
        found.append(f"The backbone's weights were random ({weights}): these figures say "
                     "nothing about ImageNet transfer.")
    profile = metrics.get("profile")
    if profile == "smoke":
        found.append("Profile smoke: a few hundred images and one epoch, made to test the code; "
                     "its figures mean nothing about the method.")
    elif profile == "cpu":
        found.append("Profile cpu: sizes cut for a laptop (small images, few epochs, part of "
                     "the training images for the transfer models).")
    images = metrics.get("images") or {}
    if images.get("test") is not None and images["test"] < 1000:
        found.append(f"{images['test']:,} test images: see the width of the intervals.")
    if (metrics.get("code") or {}).get("dirty"):
        found.append("The code had uncommitted changes when this ran: its commit alone does "
                     "not reproduce it.")
    if metrics.get("evaluated_on") not in (None, "test"):
        found.append(f"Scored on the {metrics['evaluated_on']} split: there is no test split.")
    return found or ["None recorded beyond the intervals above."]


def _score(metrics: dict, key: str) -> str:
    value = metrics.get(key)
    if value is None:
        return ""
    bounds = metrics.get(f"{key}_ci95")
    text = f"{value:.4f}"
    if isinstance(bounds, list) and len(bounds) == 2:
        text += f" ({bounds[0]:.4f}–{bounds[1]:.4f})"
    return text


def _value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_value(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_value(v) for v in value)
    return str(value)


def _markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for heading, paragraphs, table in sections:
        lines += [f"## {heading}", ""]
        if paragraphs:     # one paragraph as it is, several as a list
            lines += paragraphs if len(paragraphs) == 1 else [f"- {p}" for p in paragraphs]
            lines.append("")
        if table:
            lines.append("| " + " | ".join(table[0]) + " |")
            lines.append("|" + "---|" * len(table[0]))
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
                      for row in table[1:]]
            lines.append("")
    return "\n".join(lines)


def _html(title: str, sections: list[Section]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for heading, paragraphs, table in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        body += [f"<p>{_inline(p)}</p>" for p in paragraphs]
        if table:
            head = "".join(f"<th>{html.escape(c)}</th>" for c in table[0])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                           for row in table[1:])
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:.2em .5em;"
             "text-align:left;vertical-align:top}code{background:#f4f4f4}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>"
            f"{html.escape(title)}</title><style>{style}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    """Markdown's `code` spans as <code>, the rest escaped."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
