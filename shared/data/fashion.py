"""Fashion-MNIST, the default dataset, as a folder of PNG files (form 3 of
:mod:`shared.data.sources`), written once from the first source found; and
:func:`ensure_available`, which makes any dataset spec ready before a run starts."""

from __future__ import annotations

import concurrent.futures as cf
import gzip
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from shared import config, files
from shared.data.images import WORKERS, short

FASHION_MNIST = "fashion-mnist"
FASHION_CLASSES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle_boot")     # official label order 0..9
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
SYSTEM_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")   # Debian dataset-fashion-mnist
MARKER = ".complete"     # the file written last in the folder: the PNGs are all there


def ensure_available(spec: str | os.PathLike) -> Path:
    """Make the dataset ``spec`` ready before a run starts and return its folder: Fashion-MNIST
    is written from its first source found (:func:`fashion_mnist_folder`), a folder or labels
    file must exist. Raises FileNotFoundError saying what to do."""
    if str(spec) == FASHION_MNIST:
        return fashion_mnist_folder(verbose=True)
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset {str(spec)!r} not found: no such file or folder "
                                f"(named datasets: {FASHION_MNIST})")
    return path


_DEFAULT = object()


def fashion_mnist_folder(data_dir: str | os.PathLike | None = None, *,
                         system_dir: str | os.PathLike | None = _DEFAULT,
                         download: bool = True, verbose: bool = False) -> Path:
    """Fashion-MNIST as ``<data_dir>/fashion-mnist/{train,test}/<class>/<index>.png``.

    Written once (a marker file records completion; a half-written folder is redone) from the
    first source found: the Debian package ``dataset-fashion-mnist`` (``system_dir``), the four
    ``*-ubyte.gz`` files placed in ``<data_dir>/fashion-mnist/``, or Keras' download. Returns
    the folder. ``data_dir`` defaults to ``config.DATA_DIR``, ``system_dir`` to
    :data:`SYSTEM_FASHION_DIR` (None: skip that source), both read when called.
    """
    root = Path(config.DATA_DIR if data_dir is None else data_dir) / FASHION_MNIST
    system_dir = SYSTEM_FASHION_DIR if system_dir is _DEFAULT else system_dir
    marker = root / MARKER
    if marker.is_file():
        if verbose:
            print(f"fashion-mnist: already in {root} (delete {marker.name} to write it again)")
        return root
    arrays, source = _fashion_arrays(root, system_dir, download)
    start = time.perf_counter()
    for part in ("train", "test"):
        shutil.rmtree(root / part, ignore_errors=True)
    jobs = []
    for part, (images, labels) in arrays.items():
        for c in FASHION_CLASSES:
            (root / part / c).mkdir(parents=True, exist_ok=True)
        names = np.array(FASHION_CLASSES)[labels]
        jobs += [(root / part / names[i] / f"{i:05d}.png", images[i]) for i in range(len(labels))]

    def write(chunk):
        for path, pixels in chunk:
            Image.fromarray(pixels, "L").save(path, format="PNG", compress_level=1)
    with cf.ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(write, [jobs[i:i + 500] for i in range(0, len(jobs), 500)]))
    counts = {part: int(len(labels)) for part, (_, labels) in arrays.items()}
    files.write_json(marker, {"source": source, "counts": counts,
                              "classes": list(FASHION_CLASSES)})
    if verbose:
        print(f"fashion-mnist: wrote {len(jobs):,} PNG files to {root} from {source} "
              f"in {time.perf_counter() - start:.1f} s")
    return root


def _fashion_arrays(root: Path, system_dir, download: bool):
    """{"train": (images, labels), "test": (...)} and a description of the source."""
    for folder in [Path(system_dir)] if system_dir else []:
        if all((folder / f).is_file() for pair in FASHION_FILES.values() for f in pair):
            return _read_fashion_gz(folder), str(folder)
    if all((root / f).is_file() for pair in FASHION_FILES.values() for f in pair):
        return _read_fashion_gz(root), str(root)
    errors = ""
    if download:
        try:
            import keras
            (xtr, ytr), (xte, yte) = keras.datasets.fashion_mnist.load_data()
            return {"train": (xtr, ytr), "test": (xte, yte)}, "keras.datasets.fashion_mnist"
        except Exception as err:   # noqa: BLE001 - any download failure ends in the same advice
            errors = f" (Keras' download failed: {short(err)})"
    names = ", ".join(f for pair in FASHION_FILES.values() for f in pair)
    raise FileNotFoundError(
        f"Fashion-MNIST is not on this machine{errors}. Either install the Debian package "
        f"(sudo apt-get install dataset-fashion-mnist, which puts the files in "
        f"{SYSTEM_FASHION_DIR}), "
        f"or copy the four files {names} into {root}/, or run where Keras can download it.")


def _read_fashion_gz(folder: Path) -> dict:
    out = {}
    for part, (images_name, labels_name) in FASHION_FILES.items():
        images = read_idx(folder / images_name)
        labels = read_idx(folder / labels_name)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{folder / images_name} and {labels_name} do not match: "
                             f"{images.shape} images, {labels.shape} labels")
        if labels.max(initial=0) >= len(FASHION_CLASSES):
            raise ValueError(f"{folder / labels_name} has labels above 9")
        out[part] = (images, labels)
    return out


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (gzip-compressed or not) as a uint8 array, as in the MNIST distributions."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != math.prod(dims):
        raise ValueError(f"{path} is truncated: expected {math.prod(dims)} values of shape "
                         f"{tuple(dims)}, found {len(data) - offset}")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(dims)
