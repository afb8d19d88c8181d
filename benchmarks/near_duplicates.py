"""Which near-duplicate pairs pHash alone finds on a real dataset, and which the thumbnail check
keeps (``shared.data.duplicates.near_pairs``'s ``min_similarity``): pairs per pHash distance
with and without the check, against copies made here of ``--copies`` of the images (1.5 times
larger, re-encoded as JPEG quality 70), each of which should be found.

    python benchmarks/near_duplicates.py [--data fashion-mnist|<folder>] [--images 20000]
"""

from __future__ import annotations

import io
import sys

import numpy as np
import pandas as pd
from common import parser, positive, report
from PIL import Image

from shared import data
from shared.data import duplicates


def copy_fingerprint(path) -> tuple[int, bytes]:
    """The fingerprint of a resized, re-encoded copy of the image at ``path``."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        image = image.resize((int(image.width * 1.5), int(image.height * 1.5)))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=70)
    buffer.seek(0)
    return duplicates.fingerprint(buffer)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0], "near_duplicates.json")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--images", type=positive, default=20_000)
    p.add_argument("--copies", type=positive, default=300)
    p.add_argument("--threshold", type=int, default=duplicates.DEFAULT_THRESHOLD)
    p.add_argument("--similarity", type=float, default=duplicates.DEFAULT_SIMILARITY)
    args = p.parse_args(argv)
    data.ensure_available(args.data)
    ds = data.load(args.data)
    paths = ds.files["path"].tolist()
    if len(paths) > args.images:
        paths = sorted(np.random.default_rng(0).choice(paths, args.images, replace=False))
    table = duplicates.hashes(ds.root, paths)
    by_hash = duplicates.near_pairs(table, args.threshold, min_similarity=None)
    checked = duplicates.near_pairs(table, args.threshold, args.similarity)
    copied = table.head(args.copies)
    copies = pd.DataFrame([(f"copy of {p}", *copy_fingerprint(ds.root / p))
                           for p in copied["path"]], columns=["path", "hash", "thumbnail"])
    both = pd.concat([copied, copies], ignore_index=True)
    found = duplicates.near_pairs(both, args.threshold, args.similarity)
    found = found[found["path_b"].str.startswith("copy of ")
                  & (found["path_b"] == "copy of " + found["path_a"])]
    per_distance = {int(d): [int((by_hash["distance"] == d).sum()),
                             int((checked["distance"] == d).sum())]
                    for d in sorted(by_hash["distance"].unique())}
    figures = {"data": args.data, "images": len(table), "threshold": args.threshold,
               "min_similarity": args.similarity,
               "pairs_by_hash": len(by_hash), "pairs_kept": len(checked),
               "pairs_per_distance_by_hash_and_kept": per_distance,
               "copies": len(copies), "copies_found": len(found),
               "lowest_copy_similarity": float(found["similarity"].min()) if len(found) else None}
    ratios = {"kept_vs_hash_pairs": round(len(checked) / max(len(by_hash), 1), 4),
              "copies_found_share": round(len(found) / len(copies), 4)}
    report(args.json, "near-duplicates on a real dataset: pHash pairs kept by the thumbnail "
           "check, copies found", figures, ratios)
    return 0 if len(found) == len(copies) else 1


if __name__ == "__main__":
    sys.exit(main())
