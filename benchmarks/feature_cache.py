"""Feature cache: seconds per head-training epoch on cached backbone features vs the backbone in
the loop.

For each backbone (at the notebooks' cpu-profile image size, ``weights=None``: the weights do
not change the time), the same images, batch size and dense head are trained two ways:

* cached (``shared.training.transfer.fit_head``'s way): ``transfer.extract_features`` runs the
  frozen backbone once over the images (its one-time cost, building and tracing the extractor
  included, is reported, with the number of in-the-loop epochs it costs), then the head trains on
  the features;
* in the loop: the whole model with its backbone frozen (``trainable=False``) is fitted, so
  every epoch runs the backbone forward again (``transfer.fit_transfer`` with
  ``feature_cache=False``, or with augmentation, does this).

Both use in-memory tensors (the input pipeline is not what is measured) and Keras' ``fit`` with the
project's optimizer and loss and no callbacks but a timer (``shared.training.fitting.fit`` adds
checkpoints and logs, which cost the in-the-loop model more: it saves the whole backbone). Each
model is traced on two batches first; the timed epochs are steady-state epochs, median reported.

    python benchmarks/feature_cache.py                              # vgg19@32, inceptionv3@75
    python benchmarks/feature_cache.py --backbones inceptionv3@150 --images 512 \\
        --json reports/bench/feature_cache_150.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from common import epoch_timer, parser, report

DEFAULT_BACKBONES = ("vgg19@32", "inceptionv3@75")   # the smoke and cpu profiles' sizes
TARGET = 10.0
NUM_CLASSES = 10


def parse_backbone(text: str) -> tuple[str, int]:
    """``"inceptionv3@75"`` -> ("inceptionv3", 75); an argparse type."""
    from shared.models import backbones

    name, _, size = text.partition("@")
    if name not in backbones.BACKBONES:
        raise argparse.ArgumentTypeError(
            f"unknown backbone {name!r}: choose one of {', '.join(backbones.BACKBONES)}")
    if not size.isdigit():
        raise argparse.ArgumentTypeError(f"give the image size as {name}@<pixels>, not {text!r}")
    return name, int(size)


def epochs_on(model, dataset, warm_up, epochs: int) -> list[float]:
    """Seconds of ``epochs`` epochs of ``model`` (compiled) on ``dataset``, after tracing its
    train step on ``warm_up``."""
    model.fit(warm_up, epochs=1, verbose=0, shuffle=False)
    timer = epoch_timer()
    model.fit(dataset, epochs=epochs, verbose=0, shuffle=False, callbacks=[timer])
    return timer.seconds


def compile_like_shared(model) -> None:
    from shared.training import recipes

    recipe = recipes.Recipe()
    model.compile(optimizer=recipes.make_optimizer(recipe), loss=recipes.make_loss(recipe),
                  metrics=["accuracy"])


def measure(name: str, size: int, images: int, batch_size: int, epochs: int,
            cached_epochs: int) -> dict:
    """Seconds per epoch both ways and the extraction's seconds for one backbone."""
    import keras
    import tensorflow as tf

    from shared.models import networks
    from shared.training import experiment, transfer

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (images, size, size, 3)).astype(np.float32)
    y = keras.utils.to_categorical(rng.integers(0, NUM_CLASSES, images), NUM_CLASSES)

    def batches(*arrays):
        return (tf.data.Dataset.from_tensor_slices(arrays)
                .shuffle(len(arrays[0]), seed=0, reshuffle_each_iteration=True)
                .batch(batch_size).prefetch(tf.data.AUTOTUNE))

    experiment.set_seed(0)
    model = networks.build_transfer(name, (size, size, 3), NUM_CLASSES, weights=None)
    model.get_layer("backbone").trainable = False
    images_ds = batches(x, y)
    warm_up = images_ds.take(2)

    # cached: what fit_head does (extract once, then epochs of the head on the features);
    # extract_features builds and traces its extractor on each call: that is part of its cost
    start = time.perf_counter()
    features, labels = transfer.extract_features(model, batches(x, y))
    extraction = time.perf_counter() - start
    head = model.get_layer("head")
    compile_like_shared(head)
    features_ds = batches(features, labels)
    cached = epochs_on(head, features_ds, features_ds.take(2), cached_epochs)

    # in the loop: the frozen backbone runs in every step
    compile_like_shared(model)
    in_loop = epochs_on(model, images_ds, warm_up, epochs)
    return {"extraction": extraction, "cached": cached, "in_loop": in_loop,
            "feature_dim": int(features.shape[1])}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0], "feature_cache.json")
    p.add_argument("--backbones", nargs="+", type=parse_backbone,
                   default=[parse_backbone(b) for b in DEFAULT_BACKBONES],
                   help="name@size of each backbone (default: vgg19@32 inceptionv3@75)")
    p.add_argument("--images", type=int, default=1024, help="images (default 1024)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (cpu profile: 64)")
    p.add_argument("--cached-epochs", type=int, default=10,
                   help="timed epochs on cached features (cheap; default 10)")
    p.set_defaults(repeats=2)
    p.epilog = "--repeats is the number of timed epochs with the backbone in the loop (default 2)"
    args = p.parse_args(argv)

    figures = {"images": args.images, "batch_size": args.batch_size,
               "steps_per_epoch": -(-args.images // args.batch_size), "weights": "None (random)",
               "head": "dense (256, dropout 0.5, batch norm)", "input": "in-memory tensors",
               "timed_epochs_in_loop": args.repeats, "timed_epochs_cached": args.cached_epochs}
    ratios, targets = {}, {}
    for name, size in args.backbones:
        print(f"{name} at {size} px: {args.images} images, batch {args.batch_size}", flush=True)
        result = measure(name, size, args.images, args.batch_size, args.repeats,
                         args.cached_epochs)
        cached = statistics.median(result["cached"])
        in_loop = statistics.median(result["in_loop"])
        key = name if f"{name}@{size}" in DEFAULT_BACKBONES else f"{name}@{size}"
        figures |= {f"{key}.{k}": v for k, v in {
            "image_size": size, "feature_dim": result["feature_dim"],
            "extraction_seconds": round(result["extraction"], 2),
            "cached_epoch_seconds": round(cached, 4),
            "in_loop_epoch_seconds": round(in_loop, 3),
            "epochs_to_repay_extraction": (round(result["extraction"] / (in_loop - cached), 2)
                                           if in_loop > cached else None),
            "cached_epochs": [round(s, 4) for s in result["cached"]],
            "in_loop_epochs": [round(s, 3) for s in result["in_loop"]],
        }.items()}
        ratios[key] = round(in_loop / cached, 1)
        targets[key] = TARGET
        print(f"  extraction {result['extraction']:.2f} s, epoch cached {cached:.3f} s, "
              f"in the loop {in_loop:.2f} s: {in_loop / cached:.1f}x", flush=True)
    report(args.json, "feature cache: seconds per head-training epoch", figures, ratios, targets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
