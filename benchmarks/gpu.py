"""GPU training throughput: images/second of every backbone, float32 vs mixed precision, XLA on
vs off, and whether the input pipeline keeps up (``make bench-gpu``).

For each backbone of ``shared.models.backbones.BACKBONES``, at the gpu profile's image size (VGG19
and InceptionV3 their experiments', the others the backbones study's, at least the backbone's
smallest input) and batch size, a ``networks.build_transfer`` model (random weights, every layer
trainable: fine-tuning, the costliest phase) trains on one batch of random pixels held in
memory, so its images/second are the model's appetite: under float32 and ``mixed_float16``,
each with XLA (``jit_compile``) off and on. The first epoch (tracing, XLA compilation) is not
timed. Then ``shared.data.pipeline`` (the gpu profile's augmentation, cache in memory) reads
generated photo-like JPEGs at the same size: its images/second in the first epoch (decoding)
and a cached one, over the fastest variant's appetite, say whether the GPU would starve
(``<name>.pipeline_vs_model`` < 1).

Where TensorFlow sees no GPU it prints one line saying so and exits 0 (``--allow-cpu``
measures on the CPU anyway, with tiny settings, to test this script).

    python benchmarks/gpu.py [--backbones vgg19 inceptionv3] [--steps 20] [--json F]
"""

from __future__ import annotations

import statistics
import sys
import time

from common import BENCH_DIR, epoch_timer, parser, report
from pipeline import photo_folder

PRECISIONS = ("float32", "mixed_float16")
# the pipeline (cached epoch) must feed at least as many images/s as the model takes
TARGET = 1.0


def gpu_settings(name: str) -> tuple[int, int, str]:
    """(image size, batch size, augmentation) of ``name`` in the gpu profile."""
    from shared import config
    from shared.models import backbones

    experiment = name if name in ("vgg19", "inceptionv3") else "backbones"
    try:
        cfg = config.settings("gpu", experiment)
    except ValueError:            # no such experiment in this version of config
        cfg = config.settings("gpu", "vgg19")
    size = max(cfg.get("image_size") or 224, backbones.backbone_spec(name).min_size)
    return size, cfg.get("batch_size") or 64, cfg.get("augment") or "none"


def appetite(name: str, size: int, batch: int, precision: str, xla: bool, steps: int,
             repeats: int) -> tuple[float, bool]:
    """Training images/second of backbone ``name`` on one in-memory batch; and whether Keras
    kept XLA on."""
    import keras
    import numpy as np
    import tensorflow as tf

    from shared.models import networks
    from shared.training import experiment, recipes

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(precision)
    try:
        experiment.set_seed(0)
        model = networks.build_transfer(name, (size, size, 3), 10, weights=None)
        model.trainable = True
        recipe = recipes.Recipe()
        model.compile(optimizer=recipes.make_optimizer(recipe), loss=recipes.make_loss(recipe),
                      jit_compile=xla)
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
        y = keras.utils.to_categorical(rng.integers(0, 10, batch), 10)
        ds = tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(2)
        timer = epoch_timer()
        model.fit(ds, epochs=1 + repeats, steps_per_epoch=steps, verbose=0, callbacks=[timer])
        return steps * batch / statistics.median(timer.seconds[1:]), bool(model.jit_compile)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def feed(size: int, batch: int, augment: str, images: int) -> tuple[float, float]:
    """Images/second of shared.data.pipeline over generated JPEGs: first and cached epoch."""
    from shared import data

    ds = data.load(photo_folder(images, BENCH_DIR))
    pipe = data.pipeline(ds.files, ds.root, ds.class_names, size, batch, shuffle=True, seed=0,
                         cache="memory", augment=augment)
    speeds = []
    for _ in range(2):
        start = time.perf_counter()
        seen = sum(int(x.shape[0]) for x, _ in pipe)
        speeds.append(seen / (time.perf_counter() - start))
    return speeds[0], speeds[1]


def main(argv: list[str] | None = None) -> int:
    from shared.models import backbones

    p = parser(__doc__.splitlines()[0], "gpu.json")
    p.add_argument("--backbones", nargs="+", choices=list(backbones.BACKBONES),
                   default=list(backbones.BACKBONES))
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    p.add_argument("--xla", nargs="+", choices=("off", "on"), default=["off", "on"])
    p.add_argument("--steps", type=int, default=20, help="training steps per timed epoch")
    p.add_argument("--images", type=int, default=2000, help="JPEGs the pipeline reads")
    p.add_argument("--image-size", type=int, help="instead of the gpu profile's")
    p.add_argument("--batch-size", type=int, help="instead of the gpu profile's")
    p.add_argument("--allow-cpu", action="store_true", help="measure without a GPU (tests)")
    args = p.parse_args(argv)

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and not args.allow_cpu:
        print("bench-gpu: TensorFlow sees no GPU on this machine; nothing was measured")
        return 0
    figures, ratios, targets, rows = {"gpus": len(gpus), "steps": args.steps}, {}, {}, []
    for name in args.backbones:
        size, batch, augment = gpu_settings(name)
        size, batch = args.image_size or size, args.batch_size or batch
        speed = {}
        for precision in args.precisions:
            for xla in args.xla:
                key = f"{name}.{precision}.xla_{xla}"
                speed[key], kept = appetite(name, size, batch, precision, xla == "on",
                                            args.steps, args.repeats)
                figures[f"{key}.images_per_second"] = round(speed[key], 1)
                figures[f"{key}.jit_compile"] = kept
                print(f"  {key}: {speed[key]:.1f} images/s", flush=True)
        first, cached = feed(size, batch, augment, args.images)
        best = max(speed.values())
        figures |= {f"{name}.image_size": size, f"{name}.batch_size": batch,
                    f"{name}.pipeline.first_epoch_images_per_second": round(first, 1),
                    f"{name}.pipeline.cached_epoch_images_per_second": round(cached, 1)}
        base = f"{name}.float32.xla_off"
        if base in speed and f"{name}.mixed_float16.xla_off" in speed:
            ratios[f"{name}.mixed_vs_float32"] = round(
                speed[f"{name}.mixed_float16.xla_off"] / speed[base], 3)
        if base in speed and f"{name}.float32.xla_on" in speed:
            ratios[f"{name}.xla_vs_off"] = round(speed[f"{name}.float32.xla_on"] / speed[base],
                                                 3)
        ratios[f"{name}.pipeline_vs_model"] = round(cached / best, 3)
        targets[f"{name}.pipeline_vs_model"] = TARGET
        rows.append([name, size, batch, *(f"{speed.get(f'{name}.{p}.xla_{x}', 0):.0f}"
                                          for p in PRECISIONS for x in ("off", "on")),
                     f"{first:.0f}", f"{cached:.0f}"])

    print("\n| backbone | px | batch | f32 | f32+XLA | mixed | mixed+XLA | pipeline first | "
          "pipeline cached |\n|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")
    report(args.json, "GPU training throughput per backbone (images/s)", figures, ratios,
           targets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
