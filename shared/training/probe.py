"""``augment="auto"``: the augmentation policy chosen from the run's own training and validation
images before the baseline trains, by a short probe.

Each candidate policy (:data:`CANDIDATES`) trains the baseline CNN from the same seed for
``probe_epochs`` epochs on at most ``probe_per_class`` training images per class, at most
``PROBE_MAX_SIZE`` px, with the baseline's recipe at :data:`PROBE_LEARNING_RATE`. Few images seen
many times: the regime the baseline's own training ends in (each image seen about a hundred
times), where weak augmentation overfits; a short probe favours weak augmentation instead (on the
leaf photos, 30 epochs on 150 images per class chose flip, with which 101 epochs of the baseline
reached 99.9% training and 69.8% test accuracy). Each is scored once, after training,
on held-out images: the validation split and the training images the probe did not train on (at
most ``PROBE_SCORED_PER_CLASS`` per class of the latter), never test. The policy with the best
held-out accuracy is chosen, except that a simpler policy (earlier in
:data:`CANDIDATES`) within one standard error of the best one's accuracy wins the tie: the probe
cannot tell such differences apart, and the simpler policy is then the safer bet.

The result is written once per run as ``<run_dir>/augment_probe.json`` (the table, the choice
and why) and read back by every later notebook of the run whose settings ask the same question
(the dataset, image size, seed and probe settings), so 01 and the studies of the baseline use
the same policy. A given ``augment`` (anything but "auto") skips the probe, and so does
Fashion-MNIST, the lab's own default dataset, which keeps :data:`FASHION_POLICY` (its images are
upright and come in tens of thousands; the probe there cannot tell flip from none).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from shared import data, files
from shared.models import networks
from shared.training import recipes
from shared.training.fitting import fit

CANDIDATES = ("none", "flip", "dihedral", "basic")    # simplest first
PROBE_FILE = "augment_probe.json"
PROBE_MAX_SIZE = 48
PROBE_LEARNING_RATE = 2e-3      # the same for every notebook, so they share one probe
PROBE_SCORED_PER_CLASS = 300    # held-out training images per class it is scored on, besides val
PROBE_LOG = "augment_probe.log"
AUTO = "auto"
FASHION_POLICY = "flip"


def wilson(correct: int, total: int) -> tuple[float, float]:
    """The 95% Wilson interval of a proportion."""
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(correct, total, alpha=0.05, method="wilson")
    return float(low), float(high)


def probe_key(split: data.Split, cfg: dict) -> dict:
    """What a cached probe must have been run with to answer this notebook's question."""
    return {"dataset": split.info.get("spec"), "seed": cfg["seed"],
            "image_size": probe_size(cfg), "per_class": cfg["probe_per_class"],
            "epochs": cfg["probe_epochs"], "learning_rate": PROBE_LEARNING_RATE,
            "candidates": list(CANDIDATES)}


def probe_size(cfg: dict) -> int:
    return min(int(cfg["image_size"]), PROBE_MAX_SIZE)


def resolve_augment(split: data.Split, cfg: dict) -> dict | None:
    """Where ``cfg["augment"]`` is "auto": the probe's choice (run here, or read from the run's
    cached probe), set in ``cfg`` and returned as a derived setting ({"value", "why",
    "probe"}); None where augment was given."""
    if cfg.get("augment") != AUTO:
        return None
    if split.info.get("spec") == data.FASHION_MNIST:
        cfg["augment"] = FASHION_POLICY
        return {"value": FASHION_POLICY, "why": "Fashion-MNIST: the lab's default for it, no probe"}
    path = Path(cfg["run_dir"]) / PROBE_FILE if cfg.get("run_dir") else None
    key = probe_key(split, cfg)
    cached = files.read_json(path) if path and path.is_file() else None
    if cached and cached.get("key") == key:
        result = cached
        print(f"augment auto: {result['choice']} (the run's probe, {path.name}: "
              f"{result['why']})")
    else:
        result = run_probe(split, cfg, key)
        if path:
            files.write_json(path, result)
    cfg["augment"] = result["choice"]
    return {"value": result["choice"], "why": result["why"], "probe": result["table"]}


def run_probe(split: data.Split, cfg: dict, key: dict) -> dict:
    """Train every candidate briefly and choose (see the module docstring)."""
    size = key["image_size"]
    probe_split = held_out_split(split, cfg)
    scored = probe_split.part("val")
    if scored.empty:
        raise ValueError("augment='auto' has no held-out images to choose on: give augment "
                         "explicitly")
    log = Path(cfg.get("run_dir") or tempfile.gettempdir()) / PROBE_LOG
    print(f"augment auto: probing {', '.join(CANDIDATES)} ({key['epochs']} epochs each on "
          f"{len(probe_split.part('train')):,} training images at {size} px, scored on "
          f"{len(scored):,} held-out images: validation and training images it did not train "
          f"on; never test; its training in {log.name})", flush=True)
    with open(log, "w", encoding="utf-8") as out:
        rows = []
        for policy in CANDIDATES:
            with contextlib.redirect_stdout(out):
                rows.append(probe_one(policy, probe_split, cfg, size))
            print(f"  {policy}: held-out accuracy {rows[-1]['held_out_accuracy']:.1%} "
                  f"[{rows[-1]['held_out_ci95'][0]:.1%}, "
                  f"{rows[-1]['held_out_ci95'][1]:.1%}], {rows[-1]['seconds']:.0f} s",
                  flush=True)
    choice, why = choose(rows)
    print(f"augment auto -> {choice}: {why}")
    return {"key": key, "table": rows, "choice": choice, "why": why}


def held_out_split(split: data.Split, cfg: dict) -> data.Split:
    """What the probe trains on ("train": at most ``probe_per_class`` training images per class)
    and scores on ("val": the validation split and, at most :data:`PROBE_SCORED_PER_CLASS` per
    class, the other training images). The test split is not in it."""
    train = split.part("train")
    subset = split.part("train", cfg["probe_per_class"], cfg["seed"])
    rest = train[~train["path"].isin(set(subset["path"]))].assign(split="val")
    rest = data.Split(split.root, split.class_names, rest, split.skipped, split.info).part(
        "val", PROBE_SCORED_PER_CLASS, cfg["seed"])
    frame = pd.concat([subset, split.part("val"), rest.assign(split="val")], ignore_index=True)
    return data.Split(split.root, split.class_names, frame, split.skipped, split.info)


def probe_one(policy: str, split: data.Split, cfg: dict, size: int) -> dict:
    """One candidate: trained from the run's seed, scored on validation."""
    import keras

    pcfg = cfg | {"augment": policy, "image_size": size, "train_per_class": None,
                  "epochs": cfg["probe_epochs"], "oversample": False,
                  "learning_rate": PROBE_LEARNING_RATE}
    keras.utils.set_random_seed(cfg["seed"])
    train_ds, _, weights = data.training_data(split, pcfg)
    model = networks.build_baseline((size, size, 3), len(split.class_names),
                                    **recipes.baseline_architecture(size))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="probe-") as scratch:
        fit(model, train_ds, None, recipes.baseline_recipe(pcfg, restore_best=False), scratch,
            class_weight=weights, fresh=True)
    seconds = time.perf_counter() - started
    val = split.part("val")
    labels = data.splits.label_indices(val, split.class_names)
    predicted = model.predict(data.pipeline(val, split.root, split.class_names, size,
                                            cfg["batch_size"], cache=None),
                              verbose=0).argmax(axis=1)
    correct = int((predicted == labels).sum())
    low, high = wilson(correct, len(val))
    return {"policy": policy, "held_out_accuracy": round(correct / len(val), 4),
            "held_out_ci95": [round(low, 4), round(high, 4)], "held_out_images": len(val),
            "seconds": round(seconds, 1)}


def choose(rows: list[dict]) -> tuple[str, str]:
    """The policy to use from the probe's rows (simplest first), and why."""
    best = max(rows, key=lambda r: r["held_out_accuracy"])
    p, n = best["held_out_accuracy"], best["held_out_images"]
    margin = math.sqrt(max(p * (1 - p), 1e-12) / n)
    chosen = next(r for r in rows if r["held_out_accuracy"] >= p - margin)
    why = f"best held-out accuracy, {best['held_out_accuracy']:.1%}"
    if chosen is not best:
        why = (f"{chosen['held_out_accuracy']:.1%} held out, within one standard error "
               f"({margin:.1%}) of {best['policy']}'s {best['held_out_accuracy']:.1%}: the simpler "
               "policy wins the tie")
    return chosen["policy"], why


def probe_table(result: dict | None) -> pd.DataFrame:
    """The probe's rows as a table (policy, held-out accuracy, interval, seconds, chosen)."""
    if not result or "probe" not in result:
        return pd.DataFrame()
    table = pd.DataFrame(result["probe"])
    table["chosen"] = np.where(table["policy"] == result["value"], "<- chosen", "")
    return table.set_index("policy")


def choice_sentence(cfg: dict) -> str:
    """How the experiment's augmentation policy was chosen, in one sentence."""
    derived = (cfg.get("derived_settings") or {}).get("augment")
    if not derived:
        return f"augment {cfg['augment']!r}: given, no probe"
    return f"augment {derived['value']!r}, chosen by the probe: {derived['why']}"
