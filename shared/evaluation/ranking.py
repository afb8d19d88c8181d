"""Which experiments of a leaderboard tie for first: each one scored on the same test images as
the best is compared with it (exact one-sided McNemar test: is the best more accurate?), and the
p-values are corrected for the number of comparisons with Holm's method (statsmodels). An
experiment whose corrected p-value is not below :data:`shared.evaluation.conclusions.ALPHA` is
not significantly worse than the best: tied for first. Experiments scored on other images (a
study's subset of the test split, another split of the data) are not compared."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from statsmodels.stats.multitest import multipletests

from shared.evaluation.conclusions import ALPHA, mcnemar_p

BEST, TIED, APART, NOT_COMPARED = "best", "tied", "apart", "not compared"
METHOD = ("exact one-sided McNemar test of each experiment against the best on the same test "
          "images, Holm's correction over the {n} comparison{s}")


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-corrected p-values (statsmodels' ``multipletests``), in the order given."""
    if len(p_values) == 0:
        return []
    return [float(p) for p in multipletests(list(p_values), method="holm")[1]]


def holm_text(comparisons: int, alpha: float = ALPHA) -> str:
    """How a conclusion names the correction: "Holm's correction over 4 comparisons, corrected
    p < 0.05"."""
    return (f"Holm's correction over {comparisons} comparison{'' if comparisons == 1 else 's'}, "
            f"corrected p < {alpha:g}")


def right_answers(predictions: pd.DataFrame | None, part: str = "test") -> pd.Series | None:
    """Which images of ``part`` a model got right, indexed by path (None: no predictions)."""
    if predictions is None:
        return None
    rows = predictions[predictions["split"] == part]
    if rows.empty:
        return None
    return pd.Series((rows["predicted"] == rows["label"]).to_numpy(),
                     index=rows["path"].to_numpy()).sort_index()


def ties_for_first(right: Sequence[pd.Series | None], alpha: float = ALPHA) -> list[dict]:
    """For each entry of a leaderboard, best first (``right``: :func:`right_answers` of each),
    ``{"tie": best|tied|apart|not compared, "p_value": raw, "p_holm": corrected}``. Only the
    entries scored on exactly the best's test images are compared."""
    out = [{"tie": NOT_COMPARED, "p_value": None, "p_holm": None} for _ in right]
    if not right or right[0] is None:
        return out
    best = right[0]
    out[0]["tie"] = BEST
    compared = [i for i, r in enumerate(right[1:], 1)
                if r is not None and len(r) == len(best) and r.index.equals(best.index)]
    raw = [mcnemar_p(right[i].to_numpy(), best.to_numpy()) for i in compared]
    for i, p, corrected in zip(compared, raw, holm(raw), strict=True):
        out[i] = {"tie": TIED if corrected >= alpha else APART, "p_value": p,
                  "p_holm": corrected}
    return out


def comparisons(ties: Sequence[dict]) -> int:
    """How many entries were compared with the best."""
    return sum(t["tie"] in (TIED, APART) for t in ties)


def method_sentence(ties: Sequence[dict], alpha: float = ALPHA) -> str:
    """The sentence under a leaderboard that says how the ties were found."""
    n = comparisons(ties)
    tied = sum(t["tie"] == TIED for t in ties)
    skipped = sum(t["tie"] == NOT_COMPARED for t in ties)
    sentence = (f"Tied for first: not significantly less accurate than the best (corrected "
                f"p ≥ {alpha:g}; {METHOD.format(n=n, s='' if n == 1 else 's')}); "
                f"{tied} of {n} tie." if n else "")
    if skipped:
        sentence += (f" {skipped} experiment{'s were' if skipped > 1 else ' was'} scored on "
                     "other images than the best (a study's subset, another split) and not "
                     "compared.")
    return sentence.strip()
