"""`make predict` on a large folder: memory does not grow with the number of images.

Peak traced memory (tracemalloc: Python objects and NumPy arrays) of predict_folder on 500 and
on 3,000 tiny PNGs, with chunks of 250 images so that both runs stream. What may grow is the
sorted list of one folder's file names (~70-150 bytes an image); the bound, 400 bytes an image,
leaves room for that and is far below what holding rows per image costs (the whole-array
version grew by ~2,800 bytes an image: a Path, a check result, a DataFrame row, probabilities).
"""

from __future__ import annotations

import tracemalloc

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from shared import files
from shared.serve import predict

pytestmark = pytest.mark.trains  # not in `make check`

CLASSES = ["a", "b", "c"]
BOUND = 400     # bytes of peak memory per extra image


def tiny_experiment(folder):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)).save(
        folder / "model.keras")
    files.write_json(folder / "metrics.json", {"image_size": 8, "class_names": CLASSES})
    return folder


def pngs(folder, n, pixels):
    folder.mkdir()
    for i in range(n):
        Image.fromarray(pixels[i]).save(folder / f"{i:05d}.png", compress_level=0)
    return folder


def peak(model, images, out):
    tracemalloc.start()
    try:
        predict.predict_folder(model, images, out)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_the_number_of_images(tmp_path, monkeypatch):
    monkeypatch.setattr(predict, "CHUNK", 250)
    model = tiny_experiment(tmp_path)
    pixels = np.random.default_rng(0).integers(0, 256, (3000, 8, 8, 3), dtype=np.uint8)
    small, large = pngs(tmp_path / "500", 500, pixels), pngs(tmp_path / "3000", 3000, pixels)
    predict.predict_folder(model, small, tmp_path / "warm-up.csv")   # Keras and TF set up
    peaks = {n: min(peak(model, folder, tmp_path / f"{n}.csv") for _ in range(2))
             for n, folder in ((500, small), (3000, large))}
    per_image = (peaks[3000] - peaks[500]) / 2500
    assert per_image < BOUND, f"peak memory {peaks}: {per_image:.0f} bytes per extra image"

    rows = pd.read_csv(tmp_path / "3000.csv")
    assert rows["file"].tolist() == [f"{i:05d}.png" for i in range(3000)]   # all, in order
    assert rows[[f"p_{c}" for c in CLASSES]].notna().all().all()
    first = rows.iloc[[0, 1499, 2999]]
    expected = keras.saving.load_model(model / "model.keras").predict(
        pixels[[0, 1499, 2999]].astype("float32"), verbose=0)
    np.testing.assert_allclose(first[[f"p_{c}" for c in CLASSES]], expected, atol=1e-5)
    assert sorted(p.name for p in tmp_path.glob(".*")) == []   # no temporary CSV left
