"""Datasets: find the images, check them, split them reproducibly, feed them to Keras fast.

The data flow is ``load`` → ``split`` (or ``prepare``, which also writes and re-reads the run's
split files) → ``pipeline``. Its files, each importing only those above it:

* :mod:`~shared.data.messages`: short texts for error messages (:func:`~shared.data.messages.some`).
* :mod:`~shared.data.images`: one image file: format and size from its first bytes, the check
  with Pillow (:func:`check_image`), 8-bit RGB pixels (:func:`to_rgb`).
* :mod:`~shared.data.check`: the check of every file of a dataset, cached per file.
* :mod:`~shared.data.fashion`: Fashion-MNIST written once as PNG folders; :func:`ensure_available`.
* :mod:`~shared.data.labels`: a labels file's rows, read and checked (form 4 of the sources).
* :mod:`~shared.data.sources`: the dataset forms (its docstring), :func:`load` → :class:`Dataset`.
* :mod:`~shared.data.splits`: the seeded stratified :func:`split`, the run's :class:`Split`
  (:func:`prepare`), class counts and weights.
* :mod:`~shared.data.decode`: per-file decode plans and the TensorFlow decode.
* :mod:`~shared.data.pipelines`: tf.data :func:`pipeline` and :func:`training_data`.
* :mod:`~shared.data.duplicates`: near-duplicate images by perceptual hash, and which of them
  cross the split (used by its own import: ``from shared.data import duplicates``).
* :mod:`~shared.data.describe`: what notebook 00 shows (:func:`summary`, tables, samples, sizes).
* :mod:`~shared.data.cli`: ``python -m shared.data fashion-mnist | <folder>``.

Every name below is re-exported here (``from shared import data; data.load(...)``). Settings a
module reads when called live in that module only, and are changed (e.g. by tests) there:
``data.check.CHECK_CACHE_DIR``, ``data.fashion.SYSTEM_FASHION_DIR``.
"""

from shared.data.check import CHECK_VERSION, check_files
from shared.data.cli import main
from shared.data.decode import DECODERS, JPEG_SCALES, RESIZES, plan_of, read_image
from shared.data.describe import (
    class_counts_table,
    image_sizes,
    imbalance_table,
    sample_images,
    summary,
)
from shared.data.fashion import (
    FASHION_CLASSES,
    FASHION_FILES,
    FASHION_MNIST,
    ensure_available,
    fashion_mnist_folder,
    read_idx,
)
from shared.data.images import HUGE_PIXELS, IMAGE_EXTENSIONS, check_image, to_rgb
from shared.data.pipelines import (
    AUTO_CACHE_LIMIT,
    CACHE_MODES,
    SHUFFLE_BUFFER,
    pipeline,
    training_data,
)
from shared.data.sources import (
    LABEL_FILE_NAMES,
    SPLIT_FOLDERS,
    SPLITS,
    Dataset,
    find_leakage,
    load,
    scan_files,
)
from shared.data.splits import (
    DamagedSplitError,
    DatasetChangedError,
    Split,
    class_counts,
    class_weights,
    oversampled_counts,
    prepare,
    split,
)

__all__ = [
    "AUTO_CACHE_LIMIT", "CACHE_MODES", "CHECK_VERSION", "DECODERS", "FASHION_CLASSES",
    "FASHION_FILES", "FASHION_MNIST", "HUGE_PIXELS", "IMAGE_EXTENSIONS", "JPEG_SCALES",
    "LABEL_FILE_NAMES", "RESIZES", "SHUFFLE_BUFFER", "SPLITS", "SPLIT_FOLDERS",
    "DamagedSplitError", "Dataset", "DatasetChangedError", "Split", "check_files",
    "check_image", "class_counts", "class_counts_table", "class_weights", "ensure_available",
    "fashion_mnist_folder",
    "find_leakage", "image_sizes", "imbalance_table", "load", "main", "oversampled_counts",
    "pipeline", "plan_of", "prepare", "read_idx", "read_image", "sample_images", "scan_files",
    "split", "summary", "to_rgb", "training_data",
]
