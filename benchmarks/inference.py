"""Inference speed of the transfer models, and what scoring more test images costs.

Each backbone (at the notebooks' cpu-profile image size, with a dense head, ``weights=None``:
the weights do not change the time) predicts ``--images`` random images in batches of 64 after
one traced batch; reported: images per second, and the seconds one pass over ``--extra`` more
test images costs (the cpu profile's 10,000 Fashion-MNIST test images instead of 5,000: 5,000).

    python benchmarks/inference.py [--backbones vgg19@32,inceptionv3@75] [--images 2000]
"""

from __future__ import annotations

import sys
import time

import numpy as np
from common import parser, report


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0], "inference.json")
    p.add_argument("--backbones", default="vgg19@32,inceptionv3@75")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--extra", type=int, default=5000)
    args = p.parse_args(argv)

    from shared.models import networks

    figures, ratios = {"images": args.images, "extra_test_images": args.extra}, {}
    for item in args.backbones.split(","):
        name, size = item.split("@")
        size = int(size)
        model = networks.build_transfer(name, (size, size, 3), 10, weights=None)
        x = np.random.default_rng(0).uniform(0, 255, (args.images, size, size, 3))
        x = x.astype("float32")
        model.predict(x[:64], batch_size=64, verbose=0)
        start = time.perf_counter()
        model.predict(x, batch_size=64, verbose=0)
        rate = args.images / (time.perf_counter() - start)
        figures[f"{item} images/s"] = round(rate, 1)
        figures[f"{item} seconds per pass over the extra images"] = round(args.extra / rate, 1)
        ratios[f"{item} images/s"] = round(rate, 1)
    report(args.json, "transfer model inference", figures, ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
