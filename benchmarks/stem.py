"""Training speed of the baseline's first block on photos: max-pooling vs a strided stem.

Two baseline CNNs of the architecture the lab builds for ``--size`` px photos
(``recipes.baseline_architecture``) differ only in how the first block halves the image: its
convolution at full size then a 2x2 max-pooling (``strided_stem=False``), or its convolution
with stride 2 (``strided_stem=True``: the same maps and parameters, a quarter of the first
convolution's positions, no batch normalization or pooling at full size). Both train on the
same random batches with op determinism on, as the cpu profile trains; after one untimed step
each, they take turns, one round of ``--steps`` steps at a time, so that other work on the
machine slows both alike. The ratio is the strided stem's median images/second over the
pooled one's. Accuracy is not measured here: benchmarks/recipe.py trains both on real photos.

    python benchmarks/stem.py [--size 96] [--batch 32] [--steps 10] [--repeats 8] [--json F]
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
from common import parser, positive, report

TARGET = 1.2


def train_step(model, batch: int, size: int, classes: int = 8):
    """A compiled training step of ``model`` on one fixed random batch."""
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = tf.constant(rng.integers(0, 256, (batch, size, size, 3)).astype("float32"))
    y = tf.constant(np.eye(classes, dtype="float32")[rng.integers(0, classes, batch)])
    optimizer = keras.optimizers.Adam(1e-3)
    loss = keras.losses.CategoricalCrossentropy()

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
        grads = tape.gradient(value, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return value

    step()
    return step


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "stem.json")
    p.set_defaults(repeats=8)
    p.add_argument("--size", type=positive, default=96, help="image side in pixels")
    p.add_argument("--batch", type=positive, default=32)
    p.add_argument("--steps", type=positive, default=10, help="steps per timed round")
    args = p.parse_args(argv)
    repeats = args.repeats

    from shared.models import networks
    from shared.training import experiment, recipes

    experiment.set_seed(0, deterministic=True)
    architecture = {k: v for k, v in recipes.baseline_architecture(args.size).items()
                    if k != "strided_stem"}
    steps, macs = {}, {}
    for name, strided in (("pooled", False), ("strided", True)):
        model = networks.build_baseline((args.size, args.size, 3), 8,
                                        **(architecture | {"strided_stem": strided}))
        steps[name] = train_step(model, args.batch, args.size)
        conv = model.get_layer("block1_conv1")
        macs[name] = int(np.prod(conv.output.shape[1:]) * np.prod(conv.kernel.shape[:3]))
    rates = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                value = step()
            float(value)
            rates[name].append(args.steps * args.batch / (time.perf_counter() - start))
    median = {name: round(statistics.median(r), 1) for name, r in rates.items()}
    figures = {"image_size": args.size, "batch_size": args.batch,
               "architecture": architecture, "rounds": repeats, "steps_per_round": args.steps,
               "first_conv_multiply_adds": macs,
               "images_per_second_median": median,
               "images_per_second_rounds": {n: [round(v, 1) for v in r]
                                            for n, r in rates.items()}}
    report(args.json, "strided stem: baseline training steps, first block strided vs pooled",
           figures, {"strided_vs_pooled": round(median["strided"] / median["pooled"], 3)},
           {"strided_vs_pooled": TARGET})
    return 0


if __name__ == "__main__":
    sys.exit(main())
