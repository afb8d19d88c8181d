"""Ablations of the baseline CNN (notebook 08): one change at a time from a reference setting,
each trial repeated over several training seeds, trained by
:func:`shared.studies.baseline.train_trial` through :func:`shared.studies.study.run`.

A change is ``"<setting>=<value>"`` (``augment=mixup``, ``class_weight=off``,
``plain_epochs=5``, ``train_per_class=50``, ``blocks=2`` …: any setting a baseline trial
reads); the reference is the study's cfg as it stands (the baseline's settings of the
profile). A trial is one change with one ``train_seed`` (1 … ``seeds``), named
``<change>@seed<k>`` (``reference@seed1``, ``augment=mixup@seed2``): the seed varies only the
initialisation, the shuffling and the augmentation, never the run's split.

Whether a change helps beyond seed noise: Welch's t-test (:func:`scipy.stats.ttest_ind` with
unequal variances) of its per-seed test accuracies against the reference's, two-sided, at
:data:`shared.evaluation.conclusions.ALPHA`. The per-seed accuracies are the right unit here: the
question is whether the difference exceeds what retraining with another seed does, and McNemar on
pooled predictions would count every test image of every seed as independent and take seed-to-seed
variation for a real effect. With two or three seeds the test has little power, so "cannot be told
apart" is the honest reading of most small differences; no correction is made for the number of
changes (at p < 0.05, one change in twenty is flagged by chance).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy.stats import ttest_ind

from shared import data
from shared.data import augment
from shared.evaluation import conclusions, ranking
from shared.studies import baseline, study

REFERENCE = "reference"
SEED_MARK = "@seed"
# every augmentation policy of the ablation (the reference's own is left out)
POLICIES = ("none", "flip", "basic", "color", "randaugment", "cutmix", "mixup", "gridmask")
# the learning curve's training images per class (those below the reference's count)
CURVE = (50, 100, 200, 500, 1000, 2000)
# the settings a change may set: a baseline trial's own
KEYS = ("augment", "class_weight", "oversample", "plain_epochs", "train_per_class",
        "optimizer", "learning_rate", "epochs", *baseline.ARCHITECTURE_KEYS)
HELPS, HURTS, UNCLEAR, FEW = "helps", "hurts", "cannot tell", "too few seeds"


def parse_change(change: str) -> dict:
    """``"augment=mixup"`` -> ``{"augment": "mixup"}``; values on/off/true/false are booleans,
    numbers are numbers. Raises ValueError naming the change when it is not one."""
    key, sep, text = str(change).partition("=")
    key, text = key.strip(), text.strip()
    if not sep or not text or key not in KEYS:
        raise ValueError(f"ablation change {change!r}: write it as <setting>=<value> with a "
                         f"setting among {', '.join(KEYS)}")
    if text.lower() in ("on", "true", "off", "false"):
        value = text.lower() in ("on", "true")
    else:
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                value = text
    if key == "augment":
        augment.parse(value)
    return {key: value}


def default_changes(cfg: dict, split: data.Split) -> list[str]:
    """Every change of the ablation for the reference ``cfg`` (epochs already derived): every
    other augmentation policy, class weights toggled, the first epochs without augmentation
    (at most 5, at most half the epochs; not with augmentation none), and the learning curve
    below the reference's training images per class."""
    reference = str(cfg.get("augment") or "none")
    changes = [f"augment={p}" for p in POLICIES if p != reference]
    changes.append(f"class_weight={'off' if cfg.get('class_weight') else 'on'}")
    plain = min(5, int(cfg["epochs"]) // 2)
    if plain and reference != "none":
        changes.append(f"plain_epochs={plain}")
    per_class = reference_per_class(cfg, split)
    changes += [f"train_per_class={n}" for n in CURVE if n < per_class]
    return changes


def reference_per_class(cfg: dict, split: data.Split) -> float:
    """The reference's training images per class (their mean over the classes)."""
    train = split.part("train", cfg.get("train_per_class"), cfg["seed"])
    return len(train) / max(1, len(split.class_names))


def describe_reference(cfg: dict, split: data.Split) -> str:
    """The reference setting in one line."""
    return (f"reference: augment {cfg.get('augment') or 'none'}, class weights "
            f"{'on' if cfg.get('class_weight') else 'off'}, {cfg['epochs']} epochs, "
            f"{reference_per_class(cfg, split):,.0f} training images per class, "
            f"learning rate {cfg['learning_rate']:g}")


def trials(cfg: dict, split: data.Split) -> list[study.Trial]:
    """The reference and each change of ``cfg["changes"]`` (None: :func:`default_changes`),
    each over train seeds 1 … ``cfg["seeds"]``, grouped by change so that a time budget cuts
    whole changes."""
    seeds = int(cfg.get("seeds") or 1)
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, not {cfg.get('seeds')}")
    changes = cfg.get("changes")
    changes = default_changes(cfg, split) if changes is None else list(changes)
    settings = {REFERENCE: {}} | {str(c).replace(" ", ""): parse_change(c) for c in changes}
    return [study.Trial(f"{name}{SEED_MARK}{seed}", {**changed, "train_seed": seed})
            for name, changed in settings.items() for seed in range(1, seeds + 1)]


def change_of(trial_name: str) -> str:
    """``"augment=mixup@seed2"`` -> ``"augment=mixup"``."""
    return str(trial_name).rsplit(SEED_MARK, 1)[0]


def per_seed(table: pd.DataFrame) -> pd.DataFrame:
    """The finished trials of trials.csv as change, train_seed, test and val accuracy."""
    done = table[table["status"] == study.DONE] if len(table) else table
    return pd.DataFrame({"change": [change_of(n) for n in done["trial"]],
                         "train_seed": done["train_seed"].astype(int).to_numpy(),
                         "test_accuracy": done["test_accuracy"].astype(float).to_numpy(),
                         "val_accuracy": done["val_accuracy"].astype(float).to_numpy()})


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per change (reference first): finished seeds, mean and standard deviation (over seeds)
    of the test and val accuracy, the test difference from the reference in points, Welch's
    p-value, that p-value corrected with Holm's method over the changes judged (``p_holm``), and
    the verdict: helps / hurts (``p_holm`` < ALPHA), cannot tell, too few seeds (fewer than two
    on either side)."""
    seeds = per_seed(table)
    order = list(dict.fromkeys([REFERENCE, *(change_of(n) for n in table["trial"])]))
    base = seeds.loc[seeds["change"] == REFERENCE, "test_accuracy"].to_numpy()
    rows = []
    for change in order:
        mine = seeds[seeds["change"] == change]
        if mine.empty:
            continue
        test = mine["test_accuracy"].to_numpy()
        row = {"change": change, "seeds": len(mine),
               "test_mean": test.mean(), "test_std": _std(test),
               "val_mean": mine["val_accuracy"].mean(), "val_std": _std(mine["val_accuracy"]),
               "points": np.nan, "p_value": np.nan, "p_holm": np.nan, "verdict": REFERENCE}
        if change != REFERENCE:
            row |= _versus(test, base)
        rows.append(row)
    columns = ["change", "seeds", "test_mean", "test_std", "val_mean", "val_std", "points",
               "p_value", "p_holm", "verdict"]
    table = pd.DataFrame(rows, columns=columns)
    judged = table["p_value"].notna()
    table.loc[judged, "p_holm"] = ranking.holm(table.loc[judged, "p_value"].tolist())
    table.loc[judged, "verdict"] = [
        UNCLEAR if p >= conclusions.ALPHA else HELPS if points > 0 else HURTS
        for p, points in zip(table.loc[judged, "p_holm"], table.loc[judged, "points"],
                             strict=True)]
    untested = (table["verdict"] == REFERENCE) & (table["change"] != REFERENCE)
    table.loc[untested, "verdict"] = UNCLEAR     # a test that gave no p-value
    return table


def _versus(test: np.ndarray, base: np.ndarray) -> dict:
    if len(base) == 0:
        return {"verdict": FEW}
    points = 100 * (test.mean() - base.mean())
    if len(test) < 2 or len(base) < 2:
        return {"points": points, "verdict": FEW}
    if np.ptp(test) == 0 and np.ptp(base) == 0:
        # no spread at all: the t statistic is undefined; a constant gap is not noise
        p = 1.0 if test[0] == base[0] else 0.0
    else:
        with warnings.catch_warnings(action="ignore", category=RuntimeWarning):
            # seeds that agree to the last digit warn of precision loss; the p-value stands
            p = float(ttest_ind(test, base, equal_var=False).pvalue)
    return {"points": points, "p_value": p}     # the verdict after Holm's correction


def _std(values) -> float:
    values = np.asarray(values, dtype=float)
    return float(values.std(ddof=1)) if len(values) > 1 else np.nan


def learning_curve(table: pd.DataFrame, reference: float) -> pd.DataFrame:
    """Per finished seed of the reference and of each ``train_per_class`` change: images per
    class (``reference``, the reference's own, for it), train_seed and test accuracy."""
    seeds = per_seed(table)
    curve = seeds[(seeds["change"] == REFERENCE)
                  | seeds["change"].str.startswith("train_per_class=")].copy()
    curve["per_class"] = [reference if c == REFERENCE else float(c.partition("=")[2])
                          for c in curve["change"]]
    return curve.sort_values(["per_class", "train_seed"])[
        ["per_class", "train_seed", "test_accuracy"]].reset_index(drop=True)


def conclusion(table: pd.DataFrame, summed: pd.DataFrame, reference: float | None = None) -> str:
    """The ablation's conclusion from trials.csv and :func:`summary`: the reference's accuracy,
    which changes help and hurt beyond seed noise and which cannot be told apart from it, the
    learning curve (with ``reference``, its images per class), and what did not run."""
    rows = summed.set_index("change")
    if REFERENCE not in rows.index:
        return "\n\n".join(["No reference trial finished, so no change can be judged."]
                           + study.not_run(table))
    ref = rows.loc[REFERENCE]
    sentences = [f"The reference reaches {_mean_std(ref)} test accuracy (mean ± standard "
                 f"deviation over {int(ref['seeds'])} seed{'s' if ref['seeds'] != 1 else ''})."]
    changes = summed[summed["change"] != REFERENCE]
    listed = {v: [f"{r.change} ({r.points:+.1f} points)" for r in changes.itertuples()
                  if r.verdict == v] for v in (HELPS, HURTS)}
    unclear = changes.loc[changes["verdict"] == UNCLEAR, "change"].tolist()
    few = changes.loc[changes["verdict"] == FEW, "change"].tolist()
    if len(changes) > len(few):
        sentences.append(
            f"Beyond seed noise (Welch's t-test on the per-seed test accuracies, "
            f"{ranking.holm_text(len(changes) - len(few))}), "
            f"{_verb(listed[HELPS], 'help', 'no change')}; "
            f"{_verb(listed[HURTS], 'hurt', 'none')}"
            + (f"; {study.names_text(unclear)} cannot be told apart from the reference."
               if unclear else "."))
    if few:
        sentences.append(f"Too few seeds finished to judge {study.names_text(few)}.")
    curve = changes[changes["change"].str.startswith("train_per_class=")]
    if len(curve) and reference is not None:
        points = [f"{r.change.partition('=')[2]} images per class {_mean_std(r)}"
                  for r in curve.sort_values("change", key=_per_class).itertuples()]
        sentences.append(f"Learning curve (test accuracy): {'; '.join(points)}; the "
                         f"reference's {reference:,.0f} per class {_mean_std(ref)}.")
    return "\n\n".join(sentences + study.not_run(table))


def _verb(names: list[str], verb: str, nobody: str) -> str:
    if not names:
        return f"{nobody} {verb}s"
    return f"{study.names_text(names)} {verb}{'s' if len(names) == 1 else ''}"


def _per_class(changes: pd.Series) -> pd.Series:
    return changes.str.partition("=")[2].astype(float)


def _mean_std(row) -> str:
    """A row of :func:`summary` (a Series or a named tuple) as "81.2% ± 0.4"."""
    spread = "" if math.isnan(row.test_std) else f" ± {100 * row.test_std:.1f}"
    return f"{100 * row.test_mean:.1f}%{spread}"
