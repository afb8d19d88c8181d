"""With and without one option of the baseline CNN (the difference-of-Gaussians channel of
notebook 01): the same recipe, the same training images and the same seed for both arms, then
an exact McNemar test on the same test images.

Each arm is a small experiment of its own under ``<experiment>/<folder>/{without,with}/``
(model.keras, history.csv, and predictions.csv and metrics.json of the test split, written by
:func:`shared.evaluation.evaluate.evaluate`), trained through :func:`shared.training.fitting.fit`
there: an interrupted comparison resumes from its last finished epoch, a finished arm is read back,
not retrained, and neither touches the experiment's own files.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from shared import data
from shared.evaluation import conclusions, evaluate
from shared.files import read_json, write_with
from shared.models import networks
from shared.results import is_complete, read_predictions, remove_checkpoints
from shared.studies import study
from shared.training import experiment, recipes
from shared.training.fitting import fit

ARMS = ("without", "with")


def with_and_without(cfg: dict, split, architecture: dict, recipe: recipes.Recipe,
                     option: str = "dog", *, train_per_class: int | None, epochs: int,
                     folder: str | None = None, label: str | None = None) -> dict:
    """Train :func:`shared.models.networks.build_baseline` with ``architecture`` and ``option`` off,
    then on, each with ``recipe`` for ``epochs`` epochs on at most ``train_per_class``
    training images per class (None: all), and compare them on the test split. Returns what
    the experiment's metrics.json records (``<option>_comparison``): the settings, both arms'
    figures, the McNemar comparison (``comparison``, candidate: with the option) and its
    ``sentence`` (``label`` names the option in it)."""
    root = Path(cfg["out_dir"]) / (folder or f"{option}_comparison")
    label = label or f"the {option} option"   # "the baseline with <label>"
    arm_cfg = cfg | {"train_per_class": train_per_class}
    size, classes = cfg["image_size"], len(split.class_names)
    inputs, results, predictions = None, {}, {}
    for arm in ARMS:
        out_dir = root / arm
        if cfg.get("fresh"):
            experiment.set_aside_results(out_dir)
        if not is_complete(out_dir):
            if inputs is None:
                inputs = data.training_data(split, arm_cfg)
            train_ds, val_ds, weights = inputs
            with study.seeded_scope(cfg):
                model = networks.build_baseline((size, size, 3), classes,
                                              **(architecture | {option: arm == "with"}))
            arm_recipe = dataclasses.replace(
                recipe, epochs=epochs, warmup_epochs=min(recipe.warmup_epochs, epochs))
            history = fit(model, train_ds, val_ds, arm_recipe, out_dir,
                          class_weight=weights)
            write_with(out_dir / "model.keras", functools.partial(evaluate.save_model, model))
            evaluate.evaluate(model, split, out_dir, image_size=size,
                              batch_size=cfg["batch_size"], history=history, parts=("test",),
                              info={"experiment": f"{cfg['experiment']} {option} {arm}",
                                    "profile": cfg["profile"], "seed": cfg["seed"],
                                    "dataset": cfg["dataset"]})
            if not cfg.get("keep_checkpoints"):
                remove_checkpoints(out_dir)
        metrics = read_json(out_dir / "metrics.json")
        results[arm] = {key: metrics.get(key) for key in
                        ("accuracy", "accuracy_ci95", "macro_f1", "macro_f1_ci95",
                         "train_seconds", "epochs_run")} | {
                        "params": (metrics.get("params") or {}).get("total")}
        predictions[arm] = read_predictions(out_dir / "predictions.csv")
    result = conclusions.compare(predictions["with"], predictions["without"], "test")
    train_images = len(split.part("train", train_per_class, cfg["seed"]))
    epochs_text = f"{epochs} epoch{'s' if epochs != 1 else ''}"
    sentence = (f"Both arms trained with the same recipe for {epochs_text} on the same "
                f"{train_images:,} training images. "
                + conclusions.comparison_sentence(result, f"the baseline with {label}",
                                              "the baseline without it"))
    return {"option": option, "folder": root.relative_to(Path(cfg["run_dir"])).as_posix(),
            "train_per_class": train_per_class, "train_images": train_images,
            "epochs": epochs, **results, "comparison": result, "sentence": sentence}
