"""Near-duplicate search at scale (``shared.data.duplicates``): how fast the perceptual hashes of a
folder of JPEGs are computed by one process and by a pool of one process per core, what that
makes of 100,000 images, and what the banded pair search saves against comparing every pair.

The folder is ``data_size.jpeg_folder``'s: small, varied JPEGs (32-64 px, as the data-size
benchmark uses), with a re-encoded copy of every hundredth one (near duplicates to find). The
pair search is timed on all the hashes; the comparison with all pairs (a vectorised XOR and bit
count of every hash with every later one) on the first ``--sample`` hashes, both ways on the
same ones.

    python benchmarks/hashing.py [--images 20000] [--sample 20000]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import parser, positive, report
from data_size import jpeg_folder

from shared.data import duplicates

FULL = 100_000      # the scale the estimate is given for


def all_pairs_within(values: np.ndarray, threshold: int) -> int:
    """How many pairs of ``values`` (uint64) are within ``threshold`` bits, every pair compared."""
    found = 0
    for i in range(len(values) - 1):
        found += int((np.bitwise_count(values[i + 1:] ^ values[i]) <= threshold).sum())
    return found


def plant_copies(root: Path, every: int = 100) -> int:
    """A re-encoded copy (JPEG quality 60) of every ``every``-th image, beside it."""
    from PIL import Image

    originals = sorted(root.rglob("*.jpg"))[::every]
    for path in originals:
        with Image.open(path) as image:
            image.save(path.with_name(f"{path.stem}-copy.jpg"), quality=60)
    return len(originals)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0], "hashing.json")
    p.add_argument("--images", type=positive, default=20_000)
    p.add_argument("--sample", type=positive, default=20_000,
                   help="hashes on which the pair search is also done by comparing all pairs")
    p.add_argument("--threshold", type=int, default=duplicates.DEFAULT_THRESHOLD)
    args = p.parse_args(argv)
    workers = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos"
        jpeg_folder(root, args.images)
        plant_copies(root)
        paths = sorted(str(f.relative_to(root)) for f in root.rglob("*.jpg"))
        alone = paths[:min(len(paths), 2_000)]
        _, one_seconds = timed(lambda: duplicates.hashes(root, alone, workers=1))
        table, pool_seconds = timed(lambda: duplicates.hashes(root, paths, workers=workers))
    pairs, search_seconds = timed(lambda: duplicates.near_pairs(table, args.threshold))
    sample = table.head(args.sample)       # the search alone: hashes, no thumbnail check
    banded, banded_seconds = timed(lambda: duplicates.near_pairs(sample, args.threshold,
                                                                 min_similarity=None))
    values = np.array([int(v) for v in sample["hash"]], dtype=np.uint64)
    every, every_seconds = timed(lambda: all_pairs_within(values, args.threshold))
    one_rate, pool_rate = len(alone) / one_seconds, len(paths) / pool_seconds
    figures = {"images": len(paths), "workers": workers,
               "hash_images_per_second_one_process": round(one_rate, 1),
               "hash_images_per_second_pool": round(pool_rate, 1),
               f"hash_seconds_for_{FULL}_images": round(FULL / pool_rate, 1),
               "pairs_found": len(pairs), "pair_search_seconds": round(search_seconds, 3),
               "sample": len(sample), "sample_pairs_banded": len(banded),
               "sample_pairs_all_compared": every,
               "sample_banded_seconds": round(banded_seconds, 3),
               "sample_all_pairs_seconds": round(every_seconds, 3)}
    ratios = {"pool_vs_one_process": round(pool_rate / one_rate, 3),
              "banded_vs_all_pairs": round(every_seconds / max(banded_seconds, 1e-9), 3)}
    report(args.json, "near-duplicate hashing: a pool vs one process, bands vs all pairs",
           figures, ratios)
    return 0 if len(banded) == every and len(pairs) else 1   # no pair missed, copies found


if __name__ == "__main__":
    sys.exit(main())
