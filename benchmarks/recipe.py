"""Which parts of the baseline's recipe pay: test accuracy and training time per recipe variant.

Each variant trains the baseline CNN (``networks.build_baseline``) from the same seed on the run's
split of a dataset under a profile's sizes (default: Fashion-MNIST, cpu profile: every training
image, 5% validation, the official 10,000 test images), with ``shared.training.fitting.fit``, and
is scored on the whole test split. The variants add one part of the recipe at a time:

    today      Adam, learning rate reduced on plateau, early stopping, flip (the recipe before)
    cosine     + one warm-up epoch, then a cosine schedule to 0 (no early stopping)
    smoothing  + label smoothing 0.1
    erase      + random erasing (augment "flip+erase")
    ema        + an exponential moving average of the weights (momentum 0.998)
    adamw      + AdamW (decoupled weight decay 0.01) instead of Adam
    recipe     the baseline's recipe as shipped (shared.training.recipes.baseline_recipe and the
               profile's settings), for comparison
    residual   the same recipe with a small residual network instead of the plain stack: two
               convolutions per block with a projection shortcut around them, the starting
               filters lowered so that its multiply-adds stay near the plain stack's
               (``residual_architecture``); both report their multiply-adds

Accuracy is not a timed figure, but the seconds are: other work on the machine (other users of
its cores) slows them, so they are an upper bound. ``--variants`` picks some, ``--epochs`` and
``--architecture`` (JSON of build_baseline arguments) change every variant alike; ``--recipe``
(JSON of Recipe fields, e.g. '{"ema": 0.99}') changes the shipped recipe.

    python benchmarks/recipe.py [--dataset fashion-mnist] [--profile cpu] [--epochs N]
                                [--variants today,cosine,...] [--json F]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from common import parser, report

BASE = dict(optimizer="adam", reduce_lr_factor=0.3, reduce_lr_patience=1, patience=3)
STEPS = {   # each variant: the previous one's recipe and augmentation, changed as noted
    "today": ({}, "flip"),
    "cosine": (dict(schedule="cosine", warmup_epochs=1, patience=None), None),
    "smoothing": (dict(label_smoothing=0.1), None),
    "erase": ({}, "flip+erase"),
    "ema": (dict(ema=0.998), None),
    "adamw": (dict(optimizer="adamw", weight_decay=0.01), None),
}
VARIANTS = (*STEPS, "recipe", "residual")


def residual_architecture(plain: dict, image_size: int) -> dict:
    """A residual counterpart of the plain ``build_baseline`` arguments ``plain``: two
    convolutions per block and a shortcut, with the starting filters chosen (8, 12, … 64) to keep
    the multiply-adds closest to the plain stack's at ``image_size``."""
    from shared.models import networks

    def cost(arguments):
        return conv_macs(networks.build_baseline((image_size, image_size, 3), 10, **arguments))

    target = cost(plain)
    candidates = [plain | dict(convs_per_block=2, residual=True, filters=f)
                  for f in range(8, 65, 4)]
    return min(candidates, key=lambda a: abs(cost(a) - target))


def conv_macs(model) -> int:
    """Multiply-adds of the model's convolutions and dense layers for one image."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, out = layer.output.shape
            kernel = int(layer.kernel.shape[0] * layer.kernel.shape[1] * layer.kernel.shape[2])
            total += height * width * out * kernel
        elif isinstance(layer, keras.layers.Dense):
            total += int(layer.kernel.shape[0] * layer.kernel.shape[1])
    return int(total)


def variant_settings(name: str) -> tuple[dict, str]:
    """The Recipe fields and augmentation policy of a cumulative variant."""
    fields, augment = dict(BASE), "flip"
    for step, (change, policy) in STEPS.items():
        fields.update(change)
        augment = policy or augment
        if step == name:
            return fields, augment
    raise ValueError(f"unknown variant {name!r}: choose from {', '.join(VARIANTS)}")


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0], "recipe.json")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--profile", default="cpu")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--epochs", type=int, default=None, help="default: the profile's")
    p.add_argument("--learning-rate", type=float, default=None, help="default: the profile's")
    p.add_argument("--image-size", type=int, default=None, help="default: from the data")
    p.add_argument("--batch-size", type=int, default=None, help="default: from the data")
    p.add_argument("--augment", default=None,
                   help="the recipe variant's augmentation (default: the profile's)")
    p.add_argument("--oversample", action="store_true",
                   help="oversample the small classes instead of weighting them")
    p.add_argument("--architecture", default=None, help="JSON of build_baseline arguments")
    p.add_argument("--recipe", default=None,
                   help="JSON of Recipe fields that change the recipe and residual variants")
    p.add_argument("--train-per-class", type=int, default=None,
                   help="fewer training images per class (quick checks)")
    p.add_argument("--run-dir", type=Path, default=None, help="default: a temporary folder")
    args = p.parse_args(argv)

    from shared import config, data
    from shared.evaluation import evaluate
    from shared.models import networks
    from shared.training import experiment, recipes
    from shared.training.fitting import fit

    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    for name in names:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}: choose from {', '.join(VARIANTS)}")
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="recipe-bench-"))
    cfg = config.settings(args.profile, "baseline", epochs=args.epochs,
                          learning_rate=args.learning_rate, image_size=args.image_size,
                          batch_size=args.batch_size,
                          augment=args.augment, oversample=args.oversample or None,
                          class_weight=False if args.oversample else None,
                          train_per_class=args.train_per_class)
    cfg.update(dataset=args.dataset, run_dir=run_dir, out_dir=run_dir / "baseline")
    split = data.prepare(args.dataset, run_dir, cfg)
    experiment.derive_settings(cfg, split)
    architecture = (json.loads(args.architecture) if args.architecture
                    else recipes.baseline_architecture(cfg["image_size"]))
    figures = {"dataset": args.dataset, "profile": cfg["profile"],
               "image_size": cfg["image_size"], "batch_size": cfg["batch_size"],
               "epochs": cfg["epochs"], "architecture": architecture,
               "test_images": int((split.frame["split"] == "test").sum()), "variants": {}}
    for name in names:
        built = architecture
        if name in ("recipe", "residual"):
            recipe = recipes.baseline_recipe(cfg, **json.loads(args.recipe or "{}"))
            augment = cfg["augment"]
            if name == "residual":
                built = residual_architecture(architecture, cfg["image_size"])
        else:
            fields, augment = variant_settings(name)
            recipe = recipes.Recipe(learning_rate=cfg["learning_rate"], epochs=cfg["epochs"],
                                    **fields)
        experiment.set_seed(cfg["seed"])
        train_ds, val_ds, weights = data.training_data(split, cfg | {"augment": augment})
        size = cfg["image_size"]
        model = networks.build_baseline((size, size, 3), len(split.class_names), **built)
        started = time.perf_counter()
        history = fit(model, train_ds, val_ds, recipe, run_dir / name,
                      class_weight=weights, fresh=True)
        seconds = time.perf_counter() - started
        scored = evaluate.score(model, split, "test", cfg)
        figures["variants"][name] = {
            "test_accuracy": round(scored["accuracy"], 4),
            "test_accuracy_ci95": [round(x, 4) for x in scored.get("accuracy_ci95") or []],
            "train_seconds": round(seconds, 1), "architecture": built,
            "multiply_adds": conv_macs(model), "parameters": int(model.count_params()),
            "epochs": int(history["epoch"].max()), "augment": augment,
            "recipe": {k: v for k, v in vars(recipe).items() if v is not None}}
        print(f"== {name}: test accuracy {scored['accuracy']:.4f} on {figures['test_images']} "
              f"images, {seconds:.0f} s of training", flush=True)
    reference = figures["variants"].get(names[0], {}).get("test_accuracy") or 1.0
    ratios = {name: round(v["test_accuracy"] / reference, 4)
              for name, v in figures["variants"].items()}
    report(args.json, f"baseline recipe variants (accuracy relative to {names[0]})", figures,
           ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
