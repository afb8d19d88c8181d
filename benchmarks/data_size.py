"""Cost against data size: the check of every file (first and cached), the split, one pipeline
epoch, their peak memory and the disk they write, for folders of 1,000, 10,000 and 100,000 files.

Each folder holds small generated JPEGs (32-64 px a side, smooth colours and noise, JPEG quality
70-95; a fixed seed) in four class folders, written under a temporary folder (``--tmp``, default
the system's) and deleted once measured. Each size is measured in a child process of its own
(``shared`` and TensorFlow imported before the first step), so that its peak memory is its own:
the resident-memory high-water mark of every step (Linux's VmHWM, reset at the start of each
step; elsewhere the peak since the child started). The steps, as a notebook runs them:

* ``check_first``: ``data.load`` with an empty check cache (every file opened and decoded);
* ``check_cached``: ``data.load`` again, its results read from the cache;
* ``split``: ``data.split`` (stratified, 10% validation, 10% test);
* ``prepare``: ``data.prepare``, the run's split as notebook 00 makes it (a cached load, the
  split, and split.csv, dataset.json and dataset_files.csv written);
* ``epoch_disk_cache``: one epoch of ``data.pipeline`` over the training part (shuffled), its
  decoded images cached on disk, as cache="auto" does above ``data.AUTO_CACHE_LIMIT`` decoded
  bytes (its memory must not grow with the number of files);
* ``epoch``: the same epoch with ``--cache`` (default "auto", as the cpu profile: in memory up
  to that limit, so its memory grows with the decoded images, bounded by the limit).

The check cache lives in the temporary folder too (never under ``data/.cache``). The files were
just written, so they are in the OS page cache: a first check from a cold disk is slower.
Writing and deleting the folders is timed too (``generate_seconds``, ``delete_seconds``): on a
disk mounted with ``discard`` deleting 100,000 files takes minutes, which ``--tmp /dev/shm``
(memory) avoids.
Ratios compare each size with the one before (10x the files: about 10x the seconds is linear);
``growth_exponent.<step>`` in the figures is the slope of log(seconds) against log(files) over
every size (1.0: linear).

    python benchmarks/data_size.py                      # 1,000, 10,000 and 100,000 files
    python benchmarks/data_size.py --sizes 1000,10000   # a quicker run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import parser, report

SIZES = (1_000, 10_000, 100_000)
CLASSES = ("alpha", "beta", "gamma", "delta")
STEPS = ("check_first", "check_cached", "split", "prepare", "epoch_disk_cache", "epoch")
MEMORY_STEPS = ("check_first", "epoch_disk_cache", "epoch")   # peak memory compared by size
TARGET_FILES_PER_SECOND = 1_000               # the first check of the largest folder
TARGETS = {"first_check_vs_1000_files_per_second": 1.0}
SPLIT = {"seed": 0, "val_fraction": 0.1, "test_fraction": 0.1, "per_class": None,
         "test_per_class": None}


def sizes_arg(text: str) -> list[int]:
    """"1000,10000" -> [1000, 10000] (sorted, each at least 5 per class)."""
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 5 * len(CLASSES):
        raise argparse.ArgumentTypeError(f"--sizes takes file counts of at least "
                                         f"{5 * len(CLASSES)} separated by commas, e.g. "
                                         f"1000,10000; got {text!r}")
    return sizes


def jpeg_folder(root: Path, n: int, seed: int = 0) -> int:
    """``root/<class>/<i>.jpg``: n small JPEGs, varied in size, colours, noise and quality,
    the same for the same seed. Returns the bytes written."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
    written = 0
    for i in range(n):
        width, height = (int(v) for v in rng.integers(32, 65, 2))
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        slope = rng.uniform(-2, 2, (2, 3))
        pixels = (rng.uniform(40, 200, 3) + x[..., None] * slope[0] + y[..., None] * slope[1]
                  + rng.normal(0, 12, (height, width, 3)))
        path = root / CLASSES[i % len(CLASSES)] / f"{i:06d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            path, quality=int(rng.integers(70, 96)))
        written += path.stat().st_size
    return written


class PeakMemory:
    """Peak resident memory (MiB) of this process over a step."""

    def __init__(self):
        self.per_step = self._reset()

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")           # resets VmHWM to the current resident size
            return True
        except OSError:
            return False

    @staticmethod
    def current() -> float:
        import psutil

        return psutil.Process().memory_info().rss / 2**20

    def start(self) -> float:
        """Reset the high-water mark where possible; return the resident MiB now."""
        self._reset()
        return self.current()

    def peak(self) -> float:
        try:
            with open("/proc/self/status") as f:
                line = next(x for x in f if x.startswith("VmHWM:"))
            return int(line.split()[1]) / 1024
        except (OSError, StopIteration):
            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024


def disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def measure(root: Path, work: Path, image_size: int, batch_size: int, cache: str,
            repeats: int) -> dict:
    """The steps over the folder ``root`` (in this process), each ``repeats`` times from an
    empty cache in ``work``: seconds, peak and added resident MiB, disk bytes."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    import shared.data.check as check
    from shared import data

    check.CHECK_CACHE_DIR = work / "checked"
    memory = PeakMemory()
    baseline = memory.current()
    seconds = {step: [] for step in STEPS}
    peak = dict.fromkeys(STEPS, 0.0)
    added = dict.fromkeys(STEPS, 0.0)
    out = {}

    def step(name, fn, *args):
        before = memory.start()
        start = time.perf_counter()
        result = fn(*args)
        seconds[name].append(time.perf_counter() - start)
        peak[name] = max(peak[name], memory.peak())
        added[name] = max(added[name], memory.peak() - before)
        return result

    def epoch(the_split, train, mode, cache_dir):
        pipe = data.pipeline(train, the_split.root, the_split.class_names, image_size,
                             batch_size, shuffle=True, seed=0, cache=mode, cache_dir=cache_dir)
        seen = sum(int(tf.shape(images)[0]) for images, _ in pipe)
        if seen != len(train):
            raise RuntimeError(f"one epoch gave {seen} images, not the {len(train)} of the "
                               "training part")

    for _ in range(repeats):
        shutil.rmtree(work, ignore_errors=True)
        run_dir = work / "run"
        ds = step("check_first", data.load, root)
        step("check_cached", data.load, root)
        step("split", data.split, ds, SPLIT["seed"], SPLIT["val_fraction"],
             SPLIT["test_fraction"])
        the_split = step("prepare", data.prepare, root, run_dir, SPLIT)
        train = the_split.part("train")
        # the disk cache first: what memory the other epoch leaves to the allocator would
        # hide its own
        step("epoch_disk_cache", epoch, the_split, train, "disk", work / "disk-cache")
        step("epoch", epoch, the_split, train, cache, run_dir / ".cache")
        out = {"files": len(ds.files), "skipped": len(ds.skipped), "train_images": len(train),
               "disk_bytes": {"check_cache": disk_bytes(work / "checked"),
                              "split_files": sum(disk_bytes(p) for p in run_dir.iterdir()
                                                 if p.name != ".cache"),
                              "epoch_cache": disk_bytes(run_dir / ".cache"),
                              "disk_cache": disk_bytes(work / "disk-cache")}}
    decoded = out["train_images"] * image_size * image_size * 3
    chosen = cache if cache != "auto" else (
        "memory" if decoded <= data.AUTO_CACHE_LIMIT else "disk")
    return {**out, "image_size": image_size, "seconds": seconds, "peak_rss_mib": peak,
            "added_rss_mib": added, "baseline_rss_mib": baseline,
            "decoded_mib": decoded / 2**20, "cache": chosen,
            "peak_method": ("VmHWM reset per step" if memory.per_step
                            else "peak since the process started")}


def measure_size(n: int, tmp: Path | None, args) -> dict:
    """Generate n JPEGs in a temporary folder, measure them in a child process, delete them."""
    folder = Path(tempfile.mkdtemp(prefix=f"data-size-{n}-", dir=tmp))
    try:
        root, work = folder / "images", folder / "work"
        start = time.perf_counter()
        dataset_bytes = jpeg_folder(root, n)
        generate_seconds = time.perf_counter() - start
        print(f"{n:,} JPEGs written to {root} ({dataset_bytes / n / 1024:.1f} KiB each) in "
              f"{generate_seconds:.1f} s", flush=True)
        out = folder / "figures.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--measure", str(root),
                   "--work", str(work), "--out", str(out), "--image-size", str(args.image_size),
                   "--batch-size", str(args.batch_size), "--cache", args.cache,
                   "--repeats", str(args.repeats)]
        status = subprocess.run(command, check=False).returncode
        if status != 0 or not out.is_file():
            raise RuntimeError(f"measuring {n:,} files failed (exit status {status})")
        result = json.loads(out.read_text())
        start = time.perf_counter()
        shutil.rmtree(folder)
        result.update(dataset_bytes=dataset_bytes, generate_seconds=generate_seconds,
                      delete_seconds=time.perf_counter() - start)
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)     # after a failure


def growth_exponent(sizes: list[int], values: list[float]) -> float:
    """Slope of log(value) against log(size): 1.0 is linear, 0 flat."""
    return float(np.polyfit(np.log(sizes), np.log(np.maximum(values, 1e-6)), 1)[0])


def summarise(results: dict[int, dict]) -> tuple[dict, dict]:
    """The figures (keys ``<files>.<figure>``) and ratios of the measured sizes."""
    sizes = sorted(results)
    median = {n: {s: statistics.median(v) for s, v in results[n]["seconds"].items()}
              for n in sizes}
    figures = {"sizes": sizes, "image_size": results[sizes[0]]["image_size"],
               "peak_memory": results[sizes[0]]["peak_method"],
               "page_cache": "files just written (warm); a cold disk is slower"}
    for n in sizes:
        r = results[n]
        figures.update({
            f"{n}.files": r["files"], f"{n}.train_images": r["train_images"],
            **{f"{n}.seconds.{s}": round(t, 3) for s, t in median[n].items()},
            f"{n}.first_check_files_per_second": round(n / median[n]["check_first"], 1),
            f"{n}.baseline_rss_mib": round(r["baseline_rss_mib"], 1),
            **{f"{n}.peak_rss_mib.{s}": round(v, 1) for s, v in r["peak_rss_mib"].items()},
            **{f"{n}.added_rss_mib.{s}": round(v, 1) for s, v in r["added_rss_mib"].items()},
            f"{n}.check_added_bytes_per_file": round(r["added_rss_mib"]["check_first"]
                                                     * 2**20 / n),
            f"{n}.epoch_cache": r["cache"], f"{n}.decoded_mib": round(r["decoded_mib"], 1),
            **{f"{n}.disk_bytes.{k}": v for k, v in r["disk_bytes"].items()},
            f"{n}.disk_bytes.dataset": r["dataset_bytes"],
            f"{n}.generate_seconds": round(r["generate_seconds"], 1),
            f"{n}.delete_seconds": round(r["delete_seconds"], 1)})
        if len(r["seconds"]["check_first"]) > 1:
            figures[f"{n}.every_repetition_seconds"] = r["seconds"]
    if len(sizes) > 1:
        figures.update({f"growth_exponent.{s}": round(growth_exponent(
            sizes, [median[n][s] for n in sizes]), 2) for s in STEPS})
    ratios = {}
    for a, b in zip(sizes, sizes[1:], strict=False):
        for s in STEPS:
            ratios[f"{s}_seconds.{b}_vs_{a}"] = round(max(median[b][s], 1e-6)
                                                      / max(median[a][s], 1e-6), 2)
        for s in MEMORY_STEPS:
            ratios[f"{s}_peak_rss.{b}_vs_{a}"] = round(
                results[b]["peak_rss_mib"][s] / results[a]["peak_rss_mib"][s], 2)
    largest = sizes[-1]
    figures["target"] = (f"first check of the {largest:,} files at least "
                         f"{TARGET_FILES_PER_SECOND:,} files/s")
    ratios["first_check_vs_1000_files_per_second"] = round(
        largest / median[largest]["check_first"] / TARGET_FILES_PER_SECOND, 2)
    return figures, ratios


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0], "data_size.json")
    p.add_argument("--sizes", type=sizes_arg, default=list(SIZES),
                   help="file counts, comma-separated (default 1000,10000,100000)")
    # 64 px: a decoded image (12 KiB) is several times what each file costs in lists, so
    # whether an epoch holds decoded copies shows in its memory
    p.add_argument("--image-size", type=int, default=64, help="pipeline image size (64)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cache", choices=("auto", "memory", "disk", "none"), default="auto",
                   help='the pipeline\'s cache (default "auto")')
    p.add_argument("--tmp", type=Path, help="where the folders are generated (default: the "
                                            "system's temporary folder)")
    p.add_argument("--measure", type=Path, help=argparse.SUPPRESS)   # the child's side
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.set_defaults(repeats=1)        # 100,000 files take minutes: once, unless asked
    args = p.parse_args(argv)

    if args.measure:
        result = measure(args.measure, args.work, args.image_size, args.batch_size, args.cache,
                         args.repeats)
        args.out.write_text(json.dumps(result))
        return 0
    results = {}
    for n in args.sizes:
        results[n] = measure_size(n, args.tmp, args)
        r = results[n]
        print(f"  {n:>7,} files: " + ", ".join(
            f"{s} {statistics.median(r['seconds'][s]):.2f} s "
            f"(peak {r['peak_rss_mib'][s]:.0f} MiB)" for s in STEPS), flush=True)
    figures, ratios = summarise(results)
    report(args.json, "cost against data size: check, split, epoch, memory, disk", figures,
           ratios, TARGETS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
