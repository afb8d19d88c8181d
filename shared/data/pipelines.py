"""tf.data pipelines: files → decoded, cached, oversampled, shuffled, batched, augmented batches
(:func:`pipeline`), and an experiment's training and validation pipelines with its class
weights (:func:`training_data`)."""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from shared import files
from shared.data import augment as augment_module
from shared.data.check import CHECK_VERSION
from shared.data.decode import PLANS, decode_file, file_plans
from shared.data.splits import Split, class_counts, class_weights, label_indices

AUTO_CACHE_LIMIT = 2 * 1024**3  # cache="auto": memory below this many decoded bytes, else disk
CACHE_MODES = ("memory", "disk", "auto", "none")
SHUFFLE_BUFFER = 10_000


def pipeline(frame: pd.DataFrame, root: str | os.PathLike, class_names: list[str],
             image_size: int, batch_size: int, *, augment: str = "none", shuffle: bool = False,
             seed: int = 0, cache: str | None = "memory",
             cache_dir: str | os.PathLike | None = None, oversample: bool = False,
             autotune: bool = False):
    """A tf.data.Dataset of (images, one_hot) batches: images float32 (B, S, S, 3) in [0, 255];
    of images alone when ``frame`` has no ``label`` column (files to predict, in frame order).

    Files are read and decoded in parallel (JPEGs at a reduced DCT scale when much larger than
    ``image_size``; formats TensorFlow cannot decode, and huge non-JPEG images, through Pillow),
    resized to ``image_size`` square (area-averaged where both sides shrink 2x or more, else
    bilinear), and cached as 8-bit pixels: in memory, on disk under ``cache_dir`` ("disk"), or
    "auto" (memory unless the decoded images exceed 2 GiB); None or "none" does not cache.
    Then, in this order: oversampling (every class raised to the largest, exact counts per
    epoch, see :func:`oversampled_counts`), shuffling (seeded, a new order each epoch: without a
    cache the file names are reshuffled; with one, the files are shuffled once before decoding
    and a buffer of up to :data:`SHUFFLE_BUFFER` decoded images reshuffles every epoch),
    batching, augmentation (``shared.data.augment`` policy on batches, after the cache: pass it for
    training data only), prefetching. Labels are one-hot float32. tf.data's autotuner is off
    unless ``autotune``: with it, the parallel decode at times stayed on one core.
    """
    import tensorflow as tf

    if len(frame) == 0:
        raise ValueError("pipeline: the frame has no images")
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    cache = "none" if cache is None else cache
    if cache not in CACHE_MODES:
        raise ValueError(f"unknown cache {cache!r}: choose one of {', '.join(CACHE_MODES)}")
    aug = (augment_module.build(augment, len(class_names), seed)
           if augment_module.parse(augment or "none") else None)
    if cache == "auto":
        decoded = len(frame) * image_size * image_size * 3
        cache = "memory" if decoded <= AUTO_CACHE_LIMIT else "disk"
        if cache == "disk" and cache_dir is None:
            print(f"pipeline: {decoded / 2**30:.1f} GiB of decoded images exceed the memory "
                  "cache limit and no cache_dir was given: not caching")
            cache = "none"
    if cache == "disk" and cache_dir is None:
        raise ValueError('cache="disk" needs a cache_dir (e.g. the run directory)')

    labelled = "label" in frame.columns
    if not labelled and (oversample or aug is not None):
        raise ValueError("pipeline: oversampling and augmentation need a label column")
    root = Path(root)
    labels = label_indices(frame, class_names) if labelled else np.zeros(len(frame), np.int32)
    paths = np.array([os.path.join(root, p) for p in frame["path"]], dtype=object)
    order = (np.random.default_rng(seed).permutation(len(paths)) if shuffle
             else np.arange(len(paths)))
    paths, labels = paths[order], labels[order]

    plans = file_plans(root, list(frame["path"].iloc[order]), image_size)

    element = image_size * image_size * 3     # a disk cache's buffer is real memory: cap it
    buffer_cap = SHUFFLE_BUFFER if cache != "disk" else max(1024, min(SHUFFLE_BUFFER,
                                                                      256 * 2**20 // element))

    def decoded(sel, tag, shuffle_seed=None, repeat=False):
        """Decoded (image, label) pairs of the files ``sel``: shuffled as file names where
        nothing is cached, else as decoded images after the cache."""
        used, index = np.unique(plans[sel], return_inverse=True)
        ds = tf.data.Dataset.from_tensor_slices(
            (paths[sel].astype(str), index.astype(np.int32), labels[sel]))
        if shuffle_seed is not None and cache == "none":
            ds = ds.shuffle(len(index), seed=shuffle_seed, reshuffle_each_iteration=True)

        @tf.autograph.experimental.do_not_convert     # plain TF code: skip autograph's cost
        def load(path, i, label):
            if len(used) == 1:    # one kind of file: a straight path, no per-image switch
                return decode_file(path, image_size, PLANS[used[0]]), label
            return tf.switch_case(i, [lambda u=u: decode_file(path, image_size, PLANS[u])
                                      for u in used]), label

        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
        if cache == "memory":
            ds = ds.cache()
        elif cache == "disk":
            ds = ds.cache(_disk_cache(Path(cache_dir), paths[sel], labels[sel], image_size, tag))
        if repeat:      # right after the cache, so that the cache is always read to its end
            ds = ds.repeat()
        if shuffle_seed is not None and cache != "none":
            ds = ds.shuffle(min(len(index), buffer_cap), seed=shuffle_seed,
                            reshuffle_each_iteration=True)
        return ds

    if oversample:
        ds, n = _oversampled(decoded, labels, len(class_names), shuffle, seed)
        before = np.bincount(labels, minlength=len(class_names))
        print(f"oversampling: {int((before > 0).sum())} classes raised to {before.max()} "
              f"images each per epoch (were {before[before > 0].min()}–{before.max()}; "
              f"{len(labels)} → {n} images per epoch)")
    else:
        ds, n = decoded(slice(None), "all", seed if shuffle else None), len(paths)
    ds = ds.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.apply(tf.data.experimental.assert_cardinality(math.ceil(n / batch_size)))
    num_classes = len(class_names)
    to_float = tf.autograph.experimental.do_not_convert(
        (lambda x, y: (tf.cast(x, tf.float32), tf.one_hot(y, num_classes))) if labelled
        else (lambda x, _: tf.cast(x, tf.float32)))
    ds = ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
    if aug is not None:     # sequential: see augment.build
        ds = ds.map(aug, num_parallel_calls=None)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    # tf.data's autotuner at times left the parallel decode on one core on a 2-core machine
    # (benchmarks/pipeline.py --autotune: 1.4 s instead of 0.8 s for the same 1,000 JPEGs in
    # 4 of 7 first epochs); without it, AUTOTUNE means "every core", in every epoch measured.
    options = tf.data.Options()
    options.autotune.enabled = autotune
    ds = ds.with_options(options)
    ds.augment = aug.policy if aug is not None else "none"   # read by transfer.fit_transfer
    return ds


def _oversampled(decoded, labels, num_classes, shuffle, seed):
    """Every present class raised to the size of the largest, exactly, each epoch."""
    import tensorflow as tf

    counts = np.bincount(labels, minlength=num_classes)
    present = np.flatnonzero(counts)
    streams = [decoded(labels == c, f"class{c}", seed + 1 + int(c) if shuffle else None,
                       repeat=True) for c in present]
    choice = np.tile(np.arange(len(present), dtype=np.int64), int(counts.max()))
    chooser = tf.data.Dataset.from_tensor_slices(choice)
    if shuffle:
        chooser = chooser.shuffle(len(choice), seed=seed, reshuffle_each_iteration=True)
    return tf.data.Dataset.choose_from_datasets(streams, chooser), len(choice)


_WRITING: dict[str, int] = {}   # disk caches this process writes: the fd of its writer lock


def _claim(prefix: Path) -> bool:
    """Whether this process may write the disk cache ``prefix``: no other live process (a
    notebook running beside this one, ``run-all --jobs``) holds its writer lock, an ``flock``
    that the system releases when its holder ends."""
    if str(prefix) in _WRITING:
        return True
    fd = os.open(prefix.parent / f".{prefix.name}.writer", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _WRITING[str(prefix)] = fd
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # another user's process
        return True
    return True


def _remove_orphans(cache_dir: Path) -> None:
    """Delete the private caches (``-pid<N>``, below) of processes that have ended: nobody
    reads them again."""
    for path in cache_dir.glob("tfdata-*-pid*"):
        found = re.search(r"-pid(\d+)[._]", path.name)
        if found and not _alive(int(found.group(1))):
            path.unlink(missing_ok=True)


def _disk_cache(cache_dir: Path, paths, labels, image_size, tag) -> str:
    """A cache file name unique to these files and size; a stale partial cache is removed.
    While another process writes that cache, this one writes a cache of its own (TensorFlow
    fails two writers of one cache)."""
    digest = hashlib.sha1()
    digest.update(f"{image_size}|{CHECK_VERSION}|".encode())
    for p, y in zip(paths, labels, strict=True):
        digest.update(f"{p}\0{y}\n".encode())
    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_orphans(cache_dir)
    prefix = cache_dir / f"tfdata-{image_size}px-{tag}-{digest.hexdigest()[:16]}"
    if not Path(f"{prefix}.index").exists():
        if not _claim(prefix):
            prefix = prefix.with_name(f"{prefix.name}-pid{os.getpid()}")
        for stale in cache_dir.glob(prefix.name + "[._]*"):    # not another's -pid<N> cache
            stale.unlink()
        # a full disk while TensorFlow writes the cache would surface deep inside fit
        files.require_space(prefix, len(paths) * image_size * image_size * 3)
    return str(prefix)


def training_data(split: Split, cfg: dict):
    """The training and validation pipelines of an experiment, and its class weights.

    Training images: ``split.part("train", cfg["train_per_class"], cfg["seed"])``, shuffled
    (seeded by ``cfg["train_seed"]`` when given, else ``cfg["seed"]``),
    augmented with ``cfg["augment"]`` and oversampled when ``cfg["oversample"]``; validation
    images: the val split as is. Both cached as ``cfg["cache"]`` says (a disk cache goes under
    ``<run_dir>/.cache``). Returns ``(train, val, class_weights)``: val is None when the split
    has no validation images, class_weights is None unless ``cfg["class_weight"]``. Prints the
    counts and the balancing applied.
    """
    missing = [k for k in ("image_size", "batch_size", "seed") if k not in cfg]
    if missing:
        raise ValueError(f"training_data: cfg lacks {', '.join(missing)}")
    seed, names = cfg["seed"], split.class_names
    cache = cfg.get("cache", "memory")
    cache_dir = Path(cfg["run_dir"]) / ".cache" if cfg.get("run_dir") else None
    common = dict(root=split.root, class_names=names, image_size=cfg["image_size"],
                  batch_size=cfg["batch_size"], cache=cache, cache_dir=cache_dir)
    train = split.part("train", cfg.get("train_per_class"), seed)
    val = split.part("val")
    if cfg.get("class_weight") and cfg.get("oversample"):
        warnings.warn("class_weight and oversample both balance the classes; together they "
                      "over-correct (the minority classes weigh twice)", stacklevel=2)
    # the run's seed picks the training images; train_seed shuffles and augments them
    shuffle_seed = seed if cfg.get("train_seed") is None else int(cfg["train_seed"])
    train_ds = pipeline(train, augment=cfg.get("augment") or "none", shuffle=True,
                        seed=shuffle_seed,
                        oversample=bool(cfg.get("oversample")), **common)
    val_ds = pipeline(val, **common) if len(val) else None
    weights = class_weights(train, names) if cfg.get("class_weight") else None
    counts = class_counts(train, names)
    print(f"train: {len(train):,} images ({counts.min()}–{counts.max()} per class), "
          f"val: {len(val):,}; augment: {train_ds.augment}; "
          f"class weights: {'on' if weights else 'off'}; "
          f"oversampling: {'on' if cfg.get('oversample') else 'off'}")
    if weights:
        print("  class weights: " + ", ".join(f"{n} {weights[i]:.2f}" for i, n in
                                               enumerate(names)))
    return train_ds, val_ds, weights
