"""Comparisons and conclusions: two models on the same images (an exact McNemar test), and
the sentences that end an experiment's report, computed from its results."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import binomtest

ALPHA = 0.05    # significance level of the comparisons in conclusions


def mcnemar_p(reference_right, candidate_right, alternative: str = "greater") -> float:
    """Exact McNemar p-value on the same images (boolean arrays: which images each model got
    right): one-sided by default, that the candidate is more accurate than the reference;
    ``alternative="two-sided"`` for a difference either way."""
    reference_right = np.asarray(reference_right, dtype=bool)
    candidate_right = np.asarray(candidate_right, dtype=bool)
    gains = int((candidate_right & ~reference_right).sum())
    losses = int((reference_right & ~candidate_right).sum())
    if gains + losses == 0:
        return 1.0
    return float(binomtest(gains, gains + losses, 0.5, alternative=alternative).pvalue)


def compare(candidate: pd.DataFrame, reference: pd.DataFrame, part: str = "test") -> dict:
    """Two models' predictions (predictions.csv rows) on the same images of ``part``: their
    accuracies, the images only one of them got right, and the exact two-sided McNemar
    p-value. Raises ValueError when the two were not scored on the same images."""
    a = candidate[candidate["split"] == part].set_index("path")
    b = reference[reference["split"] == part].set_index("path")
    if a.empty or set(a.index) != set(b.index):
        raise ValueError(f"the two models were not scored on the same {part} images "
                         f"({len(a)} and {len(b)} images)")
    b = b.loc[a.index]
    a_right = (a["predicted"] == a["label"]).to_numpy()
    b_right = (b["predicted"] == b["label"]).to_numpy()
    return {"part": part, "images": len(a), "accuracy": float(a_right.mean()),
            "reference_accuracy": float(b_right.mean()),
            "only_candidate": int((a_right & ~b_right).sum()),
            "only_reference": int((b_right & ~a_right).sum()),
            "p_value": mcnemar_p(b_right, a_right, alternative="two-sided")}


def comparison_sentence(result: dict, candidate: str, reference: str,
                        alpha: float = ALPHA) -> str:
    """One sentence on :func:`compare`'s ``result``: which is better, by how much, and
    whether the difference is beyond chance at level ``alpha``."""
    delta = 100 * (result["accuracy"] - result["reference_accuracy"])
    p = result["p_value"]
    verdict = (f"a difference beyond chance (p = {p:.3g} < {alpha:g})" if p < alpha
               else f"not a difference beyond chance (p = {p:.3g})")
    if round(delta, 1) == 0:
        how = f"is as accurate as {reference}"
    else:
        how = f"is {abs(delta):.1f} points {'more' if delta > 0 else 'less'} accurate than " \
              f"{reference}"
    return (f"On the same {_count(result['images'], 'image')} of the {result['part']} split, "
            f"{candidate} ({100 * result['accuracy']:.1f}%) {how} "
            f"({100 * result['reference_accuracy']:.1f}%): "
            f"{_count(result['only_candidate'], 'image')} only {candidate} gets right, "
            f"{result['only_reference']:,} only {reference}, {verdict}, exact McNemar test.")


def tta_sentence(metrics: dict) -> str:
    """What test-time augmentation did (metrics.json's ``tta``, from
    :func:`shared.evaluation.evaluate.tta_scores`): the views, then a :func:`comparison_sentence`
    against the model alone; or that it did not run."""
    tta = metrics.get("tta")
    if not tta or not tta.get("images"):
        return "Test-time augmentation did not run (the setting tta is 0 or 1)."
    result = {"part": tta["part"], "images": tta["images"], "accuracy": tta["accuracy"],
              "reference_accuracy": tta["plain_accuracy"], "only_candidate": tta["only_tta"],
              "only_reference": tta["only_plain"], "p_value": tta["mcnemar_p"]}
    return (f"Test-time augmentation averages the probabilities of {tta['views']} views of "
            f"each image ({', '.join(tta['transforms'])}). "
            + comparison_sentence(result, "the model with it", "the model alone"))


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def comparisons(predictions: pd.DataFrame, candidate: str,
                references: dict[str, pd.DataFrame | str | None], part: str = "test"
                ) -> list[str]:
    """A :func:`comparison_sentence` of ``predictions`` (named ``candidate``) against each
    reference (name: its predictions). A reference given as a string (why there is none) or
    None, or one that cannot be compared, gets a sentence saying so."""
    sentences = []
    for name, reference in references.items():
        if reference is None or isinstance(reference, str):
            sentences.append(f"No comparison with {name}: {reference or 'it has no results'}.")
            continue
        try:
            result = compare(predictions, reference, part)
        except ValueError as err:
            sentences.append(f"No comparison with {name}: {err}.")
            continue
        sentences.append(comparison_sentence(result, candidate, name))
    return sentences


def weights_sentence(metrics: dict) -> str | None:
    """For a backbone whose weights are random, the sentence that must open the conclusion."""
    source = str(metrics.get("weights_source", ""))
    if not source.startswith("random"):
        return None
    why = ("ImageNet weights could not be loaded on this machine, so the backbone's weights "
           "were random" if "unavailable" in source else "The backbone's weights were random")
    return (f"{why}: this experiment says nothing about ImageNet transfer. "
            "Its frozen layers computed random features, and every comparison below is one of "
            "a randomly initialised network.")


def conclusion(metrics: dict, comparisons: Sequence[str] = ()) -> str:
    """An experiment's conclusion: the random-weights warning where it applies (first), the
    summary sentence, then ``comparisons`` (from :func:`comparison_sentence`)."""
    parts = [weights_sentence(metrics), summary_sentence(metrics), *comparisons]
    return "\n\n".join(p for p in parts if p)


def weakest_class(metrics: dict) -> tuple[str, float] | None:
    """The class with the lowest F1 and that F1."""
    per_class = metrics.get("per_class") or {}
    if not per_class:
        return None
    name = min(per_class, key=lambda c: per_class[c]["f1"])
    return name, per_class[name]["f1"]


def summary_sentence(metrics: dict, title: str | None = None) -> str:
    """The computed conclusion of an experiment, e.g. "The baseline CNN reaches 91.3% test
    accuracy (macro-F1 0.912) in 212 s of training; its weakest class is Shirt (F1 0.71)."."""
    title = title or metrics.get("title") or metrics.get("experiment") or "The model"
    if not title.lower().startswith("the "):
        title = f"The {title}"
    split = metrics.get("evaluated_on", "test")
    text = f"{title} reaches {100 * metrics['accuracy']:.1f}% {split} accuracy"
    if metrics.get("macro_f1") is not None:
        text += f" (macro-F1 {metrics['macro_f1']:.3f})"
    if metrics.get("train_seconds") is not None:
        text += f" in {metrics['train_seconds']:.0f} s of training"
    weakest = weakest_class(metrics)
    if weakest and len(metrics.get("per_class", {})) > 1:
        text += f"; its weakest class is {weakest[0]} (F1 {weakest[1]:.2f})"
    return text + "."
