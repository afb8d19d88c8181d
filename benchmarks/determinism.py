"""Determinism: what TensorFlow's op determinism (the setting ``deterministic``, on in the cpu and
smoke profiles) costs in training time, and whether it makes two trainings byte-identical.

The baseline CNN of notebook 01 (``shared.models.networks.build_baseline`` at the image size,
with its flip augmentation inside the tf.data pipeline) trains on the same in-memory images once
with op determinism off and twice with it on, each training in its own process (op determinism
has no public switch to turn it off again in a process). Reported: the median seconds of a steady
epoch each way, their ratio (off / on: below 1 means determinism costs time), and whether the two
trainings with it on ended with identical weights (the benchmark fails when they did not).

    python benchmarks/determinism.py [--images 2048] [--size 28] [--epochs 3]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import parser, positive, report

HERE = Path(__file__).resolve().parent

# One training, in a child process: prints its epoch seconds and a digest of its weights.
TRAIN = """
import hashlib, json, sys, time
import keras, numpy as np, tensorflow as tf
from shared.data import augment
from shared.models import networks
from shared.training import experiment, recipes

images, size, epochs, deterministic = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), \\
    sys.argv[4] == "on"
experiment.set_seed(7, deterministic=deterministic)
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (images, size, size, 3)).astype("float32")
y = keras.utils.to_categorical(rng.integers(0, 10, images), 10)
ds = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(images, seed=1).batch(64)
      .map(augment.build("flip", 10)).prefetch(2))
model = networks.build_baseline((size, size, 3), 10, **recipes.baseline_architecture(size))
recipe = recipes.Recipe()
model.compile(optimizer=recipes.make_optimizer(recipe), loss=recipes.make_loss(recipe))
seconds = []
class Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None):
        seconds.append(time.perf_counter() - self.start)
model.fit(ds, epochs=epochs, verbose=0, callbacks=[Timer()])
digest = hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in model.weights)).hexdigest()
print(json.dumps({"seconds": seconds, "digest": digest}))
"""


def train(images: int, size: int, epochs: int, mode: str) -> dict:
    """One training in a child process (op determinism ``mode`` "on" or "off")."""
    done = subprocess.run([sys.executable, "-c", TRAIN, str(images), str(size), str(epochs),
                           mode], capture_output=True, text=True, check=True, cwd=HERE.parent,
                          env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0], "determinism.json")
    p.add_argument("--images", type=positive, default=2048)
    p.add_argument("--size", type=positive, default=28)
    p.add_argument("--epochs", type=positive, default=3, help="at least 2: the first one "
                   "(tracing) is not timed")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be at least 2: the first epoch (tracing) is not timed")
    runs = {mode: [train(args.images, args.size, args.epochs, mode) for _ in range(times)]
            for mode, times in (("off", 1), ("on", 2))}
    steady = {mode: statistics.median(s for r in rs for s in r["seconds"][1:])
              for mode, rs in runs.items()}
    figures = {"images": args.images, "image_size": args.size,
               "epoch_seconds_off": round(steady["off"], 3),
               "epoch_seconds_on": round(steady["on"], 3),
               "identical_weights_on": runs["on"][0]["digest"] == runs["on"][1]["digest"]}
    ratios = {"determinism_off_vs_on": round(steady["off"] / steady["on"], 3)}
    report(args.json, "determinism: op determinism off vs on (baseline CNN, CPU)", figures,
           ratios)
    return 0 if figures["identical_weights_on"] else 1


if __name__ == "__main__":
    sys.exit(main())
