"""Training throughput: images/second of the baseline CNN fed by shared's pipeline vs from memory.

One model (``networks.build_baseline``, the cpu profile's image size 28 and batch size 64) is
trained on image files through ``shared.data.pipeline`` (cached in memory, shuffled), and an
identical one on the same decoded images held as tensors (``tf.data.Dataset.from_tensor_slices``,
same batch size, shuffled every epoch). If the pipeline keeps up, both train equally fast: the
ratio is the pipeline's images/second over the in-memory one's. The first epoch of each (the
train step traced, the pipeline's cache filled) is not timed; then the two models take turns,
one epoch at a time, so that other work on the machine slows both alike.

XLA: a third model, compiled with ``jit_compile=True`` (the setting ``jit_compile``), trains on
the same pipeline; ``xla_vs_off`` is its images/second over the pipeline-fed model's (no target:
whether XLA pays depends on the model and the device).

The images are a class-balanced subset of Fashion-MNIST's training PNGs where
``data/fashion-mnist`` exists (``make data``), else generated 28x28 PNGs. ``--augment flip``
(the cpu profile's baseline policy) applies the same augmentation to both feeds;
``--autotune`` turns tf.data's autotuner back on for shared's pipeline, which turns it off.

    python benchmarks/throughput.py [--data <folder>] [--images 3000] [--augment flip]
                                    [--autotune] [--json F]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
from common import BENCH_DIR, epoch_timer, parser, report

TARGET = 0.9


def png_folder(n: int, parent: Path, size: int = 28, classes: int = 10) -> Path:
    """``parent/pngs-<n>/<class>/<i>.png``: n small grayscale PNGs (a bright square on noise
    whose position depends on the class), written once."""
    from PIL import Image

    root = parent / f"pngs-{n}"
    marker = root / ".complete"
    if marker.is_file():
        return root
    rng = np.random.default_rng(0)
    for i in range(n):
        label = i % classes
        pixels = rng.integers(0, 80, (size, size), dtype=np.uint8)
        at = 2 + 2 * label
        pixels[at:at + 8, at:at + 8] = 230
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, "L").save(folder / f"{i:05d}.png")
    marker.write_text(f"{n}\n")
    return root


def training_frame(spec, images: int):
    """(frame, root, class names, description): ``images`` training images, balanced over the
    classes, of the dataset ``spec``."""
    from shared import data

    ds = data.load(spec)
    pool = ds.files[ds.files["given_split"].isin(["train", ""])]
    per_class = -(-images // len(ds.class_names))
    frame = (pool.sort_values("path").groupby("label", sort=False).head(per_class)
             .sort_values("path").head(images).reset_index(drop=True))
    return frame, ds.root, ds.class_names, f"{spec} ({len(frame)} training images)"


def decoded_arrays(pipe) -> tuple[np.ndarray, np.ndarray]:
    """Every batch of an unshuffled pipeline, concatenated."""
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in pipe], strict=True)
    return np.concatenate(images), np.concatenate(labels)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0], "throughput.json")
    p.add_argument("--data", help="dataset spec or folder (default: fashion-mnist if written, "
                                  "else generated PNGs)")
    p.add_argument("--images", type=int, default=3000, help="training images (default 3000)")
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--augment", default="none",
                   help="augmentation policy of both feeds (default none)")
    p.add_argument("--autotune", action="store_true",
                   help="tf.data's autotuner on for shared's pipeline (as tf.data's default)")
    args = p.parse_args(argv)

    import tensorflow as tf

    from shared import config, data
    from shared.data import augment
    from shared.models import networks
    from shared.training import experiment, recipes

    spec = args.data
    if spec is None:
        fashion = config.DATA_DIR / data.FASHION_MNIST
        spec = (data.FASHION_MNIST if (fashion / data.fashion.MARKER).is_file()
                else png_folder(args.images, BENCH_DIR))
    frame, root, class_names, described = training_frame(spec, args.images)
    n, size, batch = len(frame), args.image_size, args.batch_size
    print(f"{described}, {size} px, batch {batch}", flush=True)

    pipe = data.pipeline(frame, root, class_names, size, batch, shuffle=True, seed=0,
                         cache="memory", augment=args.augment, autotune=args.autotune)
    x, y = decoded_arrays(data.pipeline(frame, root, class_names, size, batch, cache="none"))
    in_memory = (tf.data.Dataset.from_tensor_slices((x, y))
                 .shuffle(len(x), seed=0, reshuffle_each_iteration=True).batch(batch))
    if augment.parse(args.augment):
        in_memory = in_memory.map(augment.build(args.augment, len(class_names), 0))
    in_memory = in_memory.prefetch(tf.data.AUTOTUNE)

    fed = {}
    for name, dataset, jit in (("pipeline", pipe, False), ("in_memory", in_memory, False),
                               ("pipeline_xla", pipe, True)):
        experiment.set_seed(0)
        model = networks.build_baseline((size, size, 3), len(class_names))
        recipe = recipes.Recipe()
        model.compile(optimizer=recipes.make_optimizer(recipe), loss=recipes.make_loss(recipe),
                      metrics=["accuracy"], jit_compile=jit)
        start = time.perf_counter()
        model.fit(dataset, epochs=1, verbose=0, shuffle=False)   # traces; fills the cache
        print(f"  {name}: first epoch {time.perf_counter() - start:.1f} s", flush=True)
        fed[name] = (model, dataset, epoch_timer())
    for _ in range(args.repeats):
        for model, dataset, timer in fed.values():
            model.fit(dataset, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
    seconds = {name: timer.seconds for name, (_, _, timer) in fed.items()}
    median = {name: statistics.median(s) for name, s in seconds.items()}

    figures = {"data": described, "image_size": size, "batch_size": batch,
               "model": "networks.build_baseline defaults",
               "pipeline": "shared.data.pipeline(cache='memory', shuffle=True)",
               "augment": args.augment, "pipeline_autotune": args.autotune,
               "in_memory": "from_tensor_slices(float32 arrays).shuffle(all).batch",
               "timed_epochs": args.repeats,
               # Keras turns jit_compile off (with a warning) for a model XLA cannot compile
               "pipeline_xla.jit_compile": bool(fed["pipeline_xla"][0].jit_compile),
               **{f"images_per_second.{k}": round(n / v, 1) for k, v in median.items()},
               "epoch_seconds": {k: [round(t, 3) for t in v] for k, v in seconds.items()}}
    ratios = {"pipeline_vs_in_memory": round(median["in_memory"] / median["pipeline"], 3),
              "xla_vs_off": round(median["pipeline"] / median["pipeline_xla"], 3)}
    report(args.json, "training throughput: baseline CNN, pipeline vs in-memory, XLA", figures,
           ratios, {"pipeline_vs_in_memory": TARGET})
    return 0


if __name__ == "__main__":
    sys.exit(main())
