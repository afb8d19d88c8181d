"""What is wrong with the data (notebook 10): near-duplicate images across and within the
split, training images whose label is probably wrong, and whether training without them helps.

* **Near-duplicates** (:func:`near_duplicates`): pHash of every image of the split
  (:mod:`shared.data.duplicates`), the pairs within ``hash_distance`` bits, each named
  "leakage" (different parts, e.g. train and test) or "duplicate" (the same part).
* **Out-of-fold probabilities** (:func:`out_of_fold`): every train and val image scored by a
  model that never trained on it: 09's folds where they scored every such image, else
  ``folds`` short trainings of the baseline CNN here (trials ``fold-<i>`` under
  ``folds/``, ``fold_epochs`` each: :func:`epochs_for`). The test split is never used: the
  folds hold no test image.
* **Label issues** (:func:`label_issues`): cleanlab's confident learning
  (``find_label_issues``) on those probabilities, ranked by self-confidence (the probability
  of the given label).
* **Does cleaning help?** (:func:`cleaning_comparison`): the baseline CNN trained twice with
  the same recipe and seed, on everything and without the suspects (their train and val
  images), then compared on the same, uncorrected test images (exact McNemar).

Files in ``<run_dir>/data_quality/``: near_duplicates.csv, label_issues.csv,
out_of_fold.csv, summary.json (the counts and the comparison), folds/ and cleaning/ (each a
study: trials.csv, trials/<trial>/).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd

from shared import data, files, results
from shared.data import duplicates
from shared.data.splits import exclude, label_indices
from shared.evaluation import conclusions
from shared.studies import baseline, cross_validation, study
from shared.studies.trials import trial_predictions

NEAR_DUPLICATES_CSV = "near_duplicates.csv"
LABEL_ISSUES_CSV = "label_issues.csv"
OUT_OF_FOLD_CSV = "out_of_fold.csv"
SUMMARY_JSON = "summary.json"
ARMS = ("everything", "cleaned")


# --------------------------------------------------------------------------- near-duplicates


def near_duplicates(split: data.Split, cfg: dict) -> pd.DataFrame:
    """Pairs of the split's images within ``cfg["hash_distance"]`` bits of pHash whose
    thumbnails correlate at least ``cfg["min_similarity"]``, with each image's part and label
    and the pair's kind; written as near_duplicates.csv."""
    frame = split.frame[split.frame["split"].isin(data.SPLITS)]
    table = duplicates.hashes(split.root, frame["path"].tolist())
    pairs = duplicates.with_splits(duplicates.near_pairs(table, cfg["hash_distance"],
                                                         cfg["min_similarity"]), frame)
    label = frame.set_index("path")["label"]
    pairs = pairs.assign(label_a=pairs["path_a"].map(label), label_b=pairs["path_b"].map(label))
    pairs.attrs["hashed"], pairs.attrs["images"] = len(table), len(frame)
    files.write_csv(Path(cfg["out_dir"]) / NEAR_DUPLICATES_CSV, pairs)
    return pairs


def duplicates_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """Pairs per kind and parts (e.g. leakage train-test), and how many have two labels."""
    if pairs.empty:
        return pd.DataFrame(columns=["kind", "parts", "pairs", "labels differ"])
    parts = [" - ".join(sorted((a, b))) for a, b in zip(pairs["split_a"], pairs["split_b"],
                                                         strict=True)]
    differ = pairs["label_a"] != pairs["label_b"]
    table = (pairs.assign(parts=parts, differ=differ).groupby(["kind", "parts"])
             .agg(pairs=("path_a", "size"), differ=("differ", "sum")).reset_index())
    return table.rename(columns={"differ": "labels differ"})


# --------------------------------------------------------------------------- out-of-fold


EPOCH_RANGE = (2, 30)


def epochs_for(cfg: dict, key: str, images: int) -> tuple[int, str]:
    """The epochs of one training of the audit: ``cfg[key]`` where given, else enough to see
    about ``cfg["images_seen"]`` images (``images`` per epoch) within :data:`EPOCH_RANGE`;
    and why."""
    if cfg.get(key):
        return int(cfg[key]), f"{key}={cfg[key]}"
    low, high = EPOCH_RANGE
    epochs = max(low, min(high, math.ceil(cfg["images_seen"] / max(1, images))))
    return epochs, (f"about images_seen={cfg['images_seen']:,} images seen, {images:,} per "
                    f"epoch, within {low}-{high} epochs")


def train_and_val(split: data.Split) -> pd.DataFrame:
    """The images whose labels the audit questions: train and val (never test)."""
    return pd.concat([split.part("train"), split.part("val")], ignore_index=True)


def out_of_fold(split: data.Split, cfg: dict,
                train_trial: study.TrainTrial = baseline.train_trial) -> pd.DataFrame:
    """Probabilities for the train and val images, each from a model that did not train on
    it: ``path, label, predicted, split`` (the image's part), ``fold``, ``p_<class>``…;
    ``attrs["source"]`` says where they come from. Written as out_of_fold.csv. Images of a
    fold that did not finish (failed or past the budget) have no row."""
    questioned = train_and_val(split)
    oof = from_cross_validation(Path(cfg["run_dir"]), questioned)
    if oof is None:
        epochs, why = epochs_for(cfg, "fold_epochs",
                                 len(questioned) * (cfg["folds"] - 1) // cfg["folds"])
        oof = own_folds(split, questioned, cfg | {"fold_epochs": epochs}, train_trial)
        oof.attrs["source"] = (f"{cfg['folds']} folds of the baseline CNN trained here, "
                               f"{epochs} epoch{'s' * (epochs != 1)} each ({why})")
    else:
        oof.attrs["source"] = "the folds of 09_cross_validation"
    part = questioned.set_index("path")["split"]
    oof = oof.assign(split=oof["path"].map(part))
    files.write_csv(Path(cfg["out_dir"]) / OUT_OF_FOLD_CSV, oof)
    return oof


def own_folds(split: data.Split, questioned: pd.DataFrame, cfg: dict,
              train_trial: study.TrainTrial) -> pd.DataFrame:
    """k folds of ``questioned`` (stratified, seeded): each trained on the others and scored
    on its own; their held-out predictions together."""
    number = cross_validation.assign_folds(questioned, cfg["folds"], cfg["seed"])
    held = questioned.assign(fold=number)

    def split_for(trial, _scored):
        fold = trial.settings["fold"]
        part = np.where(number == fold, "val", "train")
        return dataclasses.replace(split, frame=questioned.assign(split=part))

    fcfg = cfg | {"out_dir": Path(cfg["out_dir"]) / "folds", "score_per_class": None}
    fcfg["out_dir"].mkdir(parents=True, exist_ok=True)
    print(f"{cfg['folds']} folds of {len(questioned):,} train and val images: each scored by "
          "the baseline CNN trained on the other folds")
    trials = cross_validation.fold_trials(cfg["folds"], {"epochs": cfg["fold_epochs"]})
    table = study.run(trials, train_trial, split, fcfg, split_for=split_for, promote=False)
    return _held_out(fcfg["out_dir"], table, held)


def from_cross_validation(run_dir: Path, questioned: pd.DataFrame) -> pd.DataFrame | None:
    """The held-out predictions of 09's folds where they scored every train and val image
    exactly once, else None."""
    folder = run_dir / "cross_validation"
    table = study.read_trials(folder)
    if table.empty or not (table["status"] == study.DONE).all():
        return None
    fold = {name: i for i, name in enumerate(table["trial"], 1)}
    oof = _held_out(folder, table, questioned, fold)
    if len(oof) != len(questioned) or not oof["path"].is_unique \
            or set(oof["path"]) != set(questioned["path"]):
        return None
    return oof


def _held_out(folder: Path, table: pd.DataFrame, held: pd.DataFrame,
              fold: dict | None = None) -> pd.DataFrame:
    """The val rows (its held-out images) of each finished fold's predictions.csv that are
    among ``held``'s images; ``fold`` numbers the trials (default: fold-<i> is i)."""
    frames = []
    for name in table.loc[table["status"] == study.DONE, "trial"]:
        predictions = trial_predictions(folder, name)
        if predictions is None:
            continue
        rows = predictions[predictions["split"] == "val"].drop(columns="split")
        number = fold[name] if fold else int(name.rsplit("-", 1)[1])
        frames.append(rows.assign(fold=number))
    if not frames:
        return pd.DataFrame(columns=["path", "label", "fold"])
    oof = pd.concat(frames, ignore_index=True)
    return oof[oof["path"].isin(set(held["path"]))].reset_index(drop=True)


def out_of_fold_accuracy(oof: pd.DataFrame) -> float:
    """How often the out-of-fold probabilities rank the given label first."""
    return float((oof["predicted"] == oof["label"]).mean())


# --------------------------------------------------------------------------- label issues


def label_issues(oof: pd.DataFrame, class_names: list[str]) -> pd.DataFrame:
    """The images whose given label is probably wrong (cleanlab's ``find_label_issues`` on the
    out-of-fold probabilities), most suspect first: ``rank, path, split, given, suggested,
    given_probability, suggested_probability, fold``."""
    from cleanlab.filter import find_label_issues

    columns = results.probability_columns(class_names)
    if oof.empty:
        return pd.DataFrame(columns=["rank", "path", "split", "given", "suggested",
                                     "given_probability", "suggested_probability", "fold"])
    probs = oof[columns].to_numpy(dtype=float)
    probs = probs / probs.sum(axis=1, keepdims=True)
    labels = label_indices(oof, class_names)
    ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence",
                               n_jobs=1)
    rows = oof.iloc[ranked]
    best = probs[ranked].argmax(axis=1)
    return pd.DataFrame({
        "rank": np.arange(1, len(ranked) + 1),
        "path": rows["path"].to_numpy(), "split": rows["split"].to_numpy(),
        "given": rows["label"].to_numpy(),
        "suggested": np.asarray(class_names, dtype=object)[best],
        "given_probability": probs[ranked, labels[ranked]].round(4),
        "suggested_probability": probs[ranked, best].round(4),
        "fold": rows["fold"].to_numpy()})


def write_label_issues(issues: pd.DataFrame, out_dir: Path) -> Path:
    path = Path(out_dir) / LABEL_ISSUES_CSV
    files.write_csv(path, issues)
    return path


def issues_per_class(issues: pd.DataFrame, oof: pd.DataFrame,
                     class_names: list[str]) -> pd.DataFrame:
    """Per given class: images scored, suspects, their share, and the label most suggested."""
    scored = oof["label"].value_counts().reindex(class_names, fill_value=0)
    suspects = issues["given"].value_counts().reindex(class_names, fill_value=0)
    suggested = issues.groupby("given")["suggested"].agg(lambda s: s.value_counts().index[0])
    return pd.DataFrame({
        "scored": scored, "suspects": suspects,
        "share": (suspects / scored.where(scored > 0)).round(4),
        "most suggested": suggested.reindex(class_names).fillna("")}).rename_axis("class")


# --------------------------------------------------------------------------- cleaning


def without(split: data.Split, paths) -> data.Split:
    """``split`` with ``paths`` moved out of train and val (test is kept whole), as the
    ``exclude`` setting would."""
    questioned = train_and_val(split)["path"]
    listed = pd.DataFrame({"path": questioned[questioned.isin(set(paths))]})
    return dataclasses.replace(split, frame=exclude(split.frame, listed)[0])


def cleaning_comparison(split: data.Split, cfg: dict, issues: pd.DataFrame,
                        train_trial: study.TrainTrial = baseline.train_trial) -> dict:
    """The baseline CNN on every train image and without ``issues``' images, the same recipe
    (``clean_epochs``, or :func:`epochs_for`) and seed, both scored on the same test images;
    returns both arms' figures, the McNemar comparison (candidate: cleaned) and its
    sentence."""
    epochs, why = epochs_for(cfg, "clean_epochs", len(split.part("train")))
    cleaned = without(split, issues["path"])
    removed = len(split.part("train")) - len(cleaned.part("train"))
    ccfg = cfg | {"out_dir": Path(cfg["out_dir"]) / "cleaning", "score_per_class": None,
                  "epochs": epochs}
    ccfg["out_dir"].mkdir(parents=True, exist_ok=True)
    arms = [study.Trial(arm, {"arm": arm}) for arm in ARMS]
    table = study.run(arms, train_trial, split, ccfg, promote=False,
                      split_for=lambda trial, scored: cleaned if trial.name == "cleaned"
                      else scored)
    predictions = {arm: trial_predictions(ccfg["out_dir"], arm) for arm in ARMS}
    figures = table.set_index("trial")
    out = {"epochs": epochs, "epochs_why": why, "train_images": len(split.part("train")),
           "removed_from_train": removed,
           "removed_from_val": len(split.part("val")) - len(cleaned.part("val")),
           **{arm: {"test_accuracy": _value(figures, arm, "test_accuracy"),
                    "status": _value(figures, arm, "status")} for arm in ARMS}}
    if any(p is None for p in predictions.values()):
        missing = [arm for arm, p in predictions.items() if p is None]
        out["sentence"] = (f"The comparison is incomplete: the {' and '.join(missing)} "
                           f"arm did not finish (see {ccfg['out_dir'] / 'trials.csv'}).")
        return out
    out["comparison"] = conclusions.compare(predictions["cleaned"], predictions["everything"],
                                            "test")
    out["sentence"] = (
        f"Both arms trained the baseline CNN for {epochs} epoch{'s' * (epochs != 1)} with the "
        f"same seed; the cleaned one without the {removed:,} suspected training images (of "
        f"{out['train_images']:,}). "
        + conclusions.comparison_sentence(out["comparison"], "the baseline trained without "
                                          "the suspects", "the baseline trained on everything")
        + " The test labels themselves were not corrected: a test image with a wrong label "
          "counts against both arms alike.")
    return out


def _value(table: pd.DataFrame, row: str, column: str):
    if row not in table.index or column not in table.columns:
        return None
    value = table.at[row, column]
    return None if pd.isna(value) else value.item() if hasattr(value, "item") else value


def cleaning_table(cleaning: dict) -> pd.DataFrame:
    """Both arms of :func:`cleaning_comparison`: training images, status, test accuracy."""
    removed = cleaning["removed_from_train"]
    return pd.DataFrame([
        {"arm": arm, "training images": cleaning["train_images"] - removed * (arm == "cleaned"),
         "status": cleaning[arm]["status"], "test accuracy": cleaning[arm]["test_accuracy"]}
        for arm in ARMS]).set_index("arm")


# --------------------------------------------------------------------------- conclusion


def write_summary(out_dir: Path, pairs: pd.DataFrame, oof: pd.DataFrame,
                  issues: pd.DataFrame, cleaning: dict | None) -> dict:
    """summary.json of the audit: the counts the conclusion states, and the comparison."""
    kinds = pairs["kind"].value_counts() if len(pairs) else {}
    summary = {"images": pairs.attrs.get("images"), "hashed": pairs.attrs.get("hashed"),
               "near_duplicate_pairs": {k: int(kinds.get(k, 0))
                                        for k in ("leakage", "duplicate", "outside the split")},
               "scored_out_of_fold": len(oof), "out_of_fold_source": oof.attrs.get("source"),
               "label_issues": len(issues),
               "label_issues_by_split": {s: int((issues["split"] == s).sum())
                                         for s in ("train", "val")},
               "cleaning": cleaning}
    files.write_json(Path(out_dir) / SUMMARY_JSON, summary)
    return summary




def conclusion(pairs: pd.DataFrame, oof: pd.DataFrame, issues: pd.DataFrame,
               cleaning: dict | None, questioned: int) -> str:
    """The notebook's closing paragraph: what was found, from what, and what cleaning did."""
    kinds = pairs["kind"].value_counts() if len(pairs) else pd.Series(dtype=int)
    leak = int(kinds.get("leakage", 0))
    test_leak = int(((pairs["kind"] == "leakage")
                     & ((pairs["split_a"] == "test") | (pairs["split_b"] == "test"))).sum()) \
        if len(pairs) else 0
    text = [f"{len(pairs):,} near-duplicate pair(s) among the "
            f"{pairs.attrs.get('images', 0):,} images of the split: {leak:,} across two "
            f"parts ({test_leak:,} with a test image: a near copy of a training image in test "
            f"inflates the test score) and {int(kinds.get('duplicate', 0)):,} within one."]
    scored = len(oof)
    text.append(f"{len(issues):,} of the {scored:,} train and val images scored out of fold "
                f"({oof.attrs.get('source', '')}) are suspected label errors"
                + (f"; {questioned - scored:,} were not scored (a fold did not finish)"
                   if scored < questioned else "") + ".")
    if scored:
        text.append(f"Those models gave the given label the highest probability on "
                    f"{out_of_fold_accuracy(oof):.1%} of the images they scored: the weaker "
                    "they are, the more of the suspects are their own mistakes rather than "
                    "wrong labels, so look at the gallery before excluding them.")
    if cleaning:
        text.append(cleaning["sentence"])
    return " ".join(text)
