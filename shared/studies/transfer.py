"""The trials of the transfer-learning studies, 05_backbones and 06_fine_tuning_depth.

A trial's settings say which backbone (``backbone``), how many of its top blocks are cut off
(``remove_blocks``, :func:`shared.models.backbones.cut`), the dense head's layer sizes
(``head_sizes``), the optimizer, and the ``schedule`` of training phases:

    head         the backbone frozen, the head trained (always the first phase)
    top-k        then the top k blocks of the backbone trained as well
    all          then every layer
    three-stage  head, then the top half of the blocks, then every layer
    both-ends    head, then the top block and the bottom block

Block boundaries are the backbones' own (:data:`shared.models.backbones.BACKBONES` ``stages``), so
"top-2" of VGG19 is its last two convolution blocks. Every phase after the head uses the
study's ``fine_tune_epochs`` and ``fine_tune_lr``; batch normalization is handled as in
:func:`shared.training.transfer.fit_phases`.
"""

from __future__ import annotations

import pandas as pd

from shared import data
from shared.models import backbones, networks
from shared.studies.study import DONE, Trial
from shared.training import recipes, transfer

DEFAULT_HEAD = [256]
SCHEDULES = ("head", "top-k", "all", "three-stage", "both-ends")


BACKBONE, CUT, FULL = ("which backbone", "how deep to cut DenseNet121",
                       "InceptionResNetV2 fine-tuned completely")


def backbone_trials() -> list[Trial]:
    """05_backbones asks three questions: which backbone (every one of the registry under one
    recipe: head, then its top block; smallest first, its parameters being its cost in time,
    memory and disk), how deep to cut DenseNet121 (cut by 3-0 dense blocks, with and without
    an extra dense layer of 1,024 units, trained completely; the most cut first) and how
    InceptionResNetV2 does fine-tuned completely with Nadam. The study runs each question's
    cheapest trial first (:func:`shared.studies.trials.by_question`), so a time budget leaves no
    question without an answer before it cuts a second trial of any."""
    by_size = sorted(backbones.BACKBONES, key=lambda name: backbones.BACKBONES[name].params)
    trials = [Trial(name, {"backbone": name, "schedule": "top-1"}, BACKBONE) for name in by_size]
    for removed in (3, 2, 1, 0):
        for sizes in ([], [1024]):
            name = f"densenet121-cut{removed}" + ("-dense1024" if sizes else "")
            trials.append(Trial(name, {"backbone": "densenet121", "remove_blocks": removed,
                                       "head_sizes": sizes, "schedule": "all"}, CUT))
    trials.append(Trial("inceptionresnetv2-full", {"backbone": "inceptionresnetv2",
                                                   "schedule": "all", "optimizer": "nadam"},
                        FULL))
    return trials


def fine_tuning_trials(backbone: str) -> list[Trial]:
    """06_fine_tuning_depth for ``backbone``: its top k blocks fine-tuned for k in none, one,
    two, half and all of its blocks, the three-stage schedule, and both ends."""
    blocks = backbones.backbone_spec(backbone).blocks
    depths = sorted({0, 1, 2, blocks // 2, blocks})
    schedules = ["head" if k == 0 else "all" if k == blocks else f"top-{k}" for k in depths]
    names = {"head": "head-only", "all": "all"}
    trials = [Trial(names.get(s, s), {"backbone": backbone, "schedule": s},
                    "how many blocks to fine-tune") for s in schedules]
    trials += [Trial(s, {"backbone": backbone, "schedule": s}, "whether a schedule of stages "
                     "beats one") for s in ("three-stage", "both-ends")]
    return trials


def phases(schedule: str, boundaries: dict[int, int], cfg: dict) -> list[transfer.Phase]:
    """The :class:`shared.training.transfer.Phase` list of ``schedule``; ``boundaries`` maps k
    blocks to the top layers to unfreeze (:func:`shared.models.backbones.block_boundaries`)."""
    head, tune = recipes.transfer_recipes(cfg, optimizer=cfg.get("optimizer") or "adam")
    blocks = max(boundaries)
    first = [transfer.Phase("head", head)]
    if schedule == "head":
        return first
    if schedule == "all":
        return first + [transfer.Phase("fine_tune", tune, "all")]
    if schedule == "three-stage":
        return first + [transfer.Phase("fine_tune_top", tune, boundaries[max(1, blocks // 2)]),
                        transfer.Phase("fine_tune_all", tune, "all")]
    if schedule == "both-ends":
        bottom = _bottom_block(boundaries)
        return first + [transfer.Phase("fine_tune", tune, boundaries[1], unfreeze_bottom=bottom)]
    if schedule.startswith("top-") and schedule[4:].isdigit():
        k = int(schedule[4:])
        if not 1 <= k <= blocks:
            raise ValueError(f"schedule {schedule!r}: the backbone has {blocks} blocks")
        return first + [transfer.Phase("fine_tune", tune, boundaries[k])]
    raise ValueError(f"unknown schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")


def _bottom_block(boundaries: dict[int, int]) -> int:
    """The layers from the input to the end of the first block (its bottom block)."""
    blocks = max(boundaries)
    return boundaries[blocks] - boundaries[blocks - 1] if blocks >= 1 else 0


def transfer_trainer(weights="imagenet", require_pretrained: bool = False):
    """The function :func:`shared.studies.study.run` calls to build and train one trial of these
    studies, with the backbones' ``weights`` ("imagenet", None or a file)."""

    def train_trial(trial: Trial, cfg: dict, split: data.Split):
        name = cfg["backbone"]
        cfg["image_size"] = size = max(cfg["image_size"], backbones.backbone_spec(name).min_size)
        train_ds, val_ds, class_weights = data.training_data(split, cfg)
        model = networks.build_transfer(
            name, (size, size, 3), len(split.class_names), weights=weights,
            head_options={"sizes": list(cfg.get("head_sizes", DEFAULT_HEAD))},
            remove_blocks=int(cfg.get("remove_blocks") or 0),
            require_pretrained=require_pretrained)
        boundaries = backbones.block_boundaries(model.get_layer("backbone"), name)
        plan = phases(cfg["schedule"], boundaries, cfg)
        history = transfer.fit_phases(model, train_ds, val_ds, plan, cfg["out_dir"],
                                      class_weight=class_weights,
                                      feature_cache=cfg["augment"] == "none")
        return model, history

    return train_trial


def surgery_table(table: pd.DataFrame) -> pd.DataFrame:
    """The DenseNet121 surgery of 05_backbones as the report tabulated it: parameters and
    test accuracy per number of dense blocks removed, without and with the extra dense
    layer (finished trials only)."""
    cuts = table[(table["status"] == DONE) & table["trial"].str.startswith("densenet121-cut")]
    if cuts.empty:
        return pd.DataFrame(columns=["dense blocks removed", "extra dense layer", "parameters",
                                     "test accuracy", "interval"])
    return pd.DataFrame({
        "dense blocks removed": cuts["remove_blocks"].astype(int),
        "extra dense layer": cuts["trial"].str.endswith("-dense1024").map({True: "1024",
                                                                          False: "none"}),
        "parameters": cuts["parameters"].astype(int),
        "test accuracy": cuts["test_accuracy"].astype(float).round(3),
        "interval": [f"{lo:.3f}–{hi:.3f}" for lo, hi in zip(
            cuts["test_accuracy_ci_low"], cuts["test_accuracy_ci_high"], strict=True)],
    }).sort_values(["extra dense layer", "dense blocks removed"], ignore_index=True)
