"""The command line: ``python -m shared.data fashion-mnist | <folder> [--labels FILE]`` writes
Fashion-MNIST where needed, then loads and checks the dataset and prints what it found."""

from __future__ import annotations

import argparse
import sys
import time

from shared.data.fashion import FASHION_MNIST, fashion_mnist_folder
from shared.data.sources import load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.data",
                                     description="Prepare and check a dataset.")
    parser.add_argument("dataset", nargs="?", default=FASHION_MNIST,
                        help="fashion-mnist (default), or a dataset folder / labels file")
    parser.add_argument("--labels", default=None, help="labels file (CSV or JSON)")
    args = parser.parse_args(argv)
    try:
        if args.dataset == FASHION_MNIST:
            fashion_mnist_folder(verbose=True)
        start = time.perf_counter()
        ds = load(args.dataset, args.labels)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    given = ds.files["given_split"].replace("", "all").value_counts()
    print(f"{ds.spec}: {len(ds.files):,} usable images in {ds.root} ({ds.form}), "
          f"{len(ds.class_names)} classes, checked in {seconds:.1f} s")
    print("  " + ", ".join(f"{k}: {v:,}" for k, v in given.items()))
    print(f"  classes: {', '.join(ds.class_names)}")
    print(f"  skipped: {len(ds.skipped)}" + "".join(
        f"\n    {p}: {r}" for p, r in ds.skipped.head(20).itertuples(index=False)))
    if len(ds.leakage):
        print(f"  leakage: {len(ds.leakage)} train file(s) have identical copies in test")
    return 0
