"""evaluate.finish and evaluate.score read each part's images in the order of its frame, through
their default pipeline (no injected dataset).

The images are solid colours: class k lights channel k, so a model of fixed layers (mean colour,
then a Dense with set weights) predicts from each file the class its colour encodes. Some test
files are filed under another class than their colour, so the prediction of a file is not its
label; predictions.csv is checked row by row against the colour of the file it names.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from PIL import Image

from shared import data, results
from shared.evaluation import evaluate
from shared.files import read_json

pytestmark = pytest.mark.trains  # not in `make check`

CLASSES = ["c0_red", "c1_green", "c2_blue"]      # class index k lights channel k
SIZE = 8
# part: [(folder class, colour class), ...]; in test, three files sit in another class' folder
FILES = {
    "train": [(k, k) for k in (0, 0, 0, 1, 1, 1, 2, 2, 2)],
    "val": [(k, k) for k in (0, 0, 0, 1, 1, 2, 2, 2)],
    "test": [(0, 0), (0, 0), (0, 2), (0, 0), (1, 1), (1, 0), (1, 1), (1, 1), (2, 2), (2, 1),
             (2, 2), (2, 2), (2, 2)],
}


@pytest.fixture
def colour_split(tmp_path):
    """A run's split of solid-colour PNGs, and {path: colour class} of every file."""
    root = tmp_path / "colours"
    colour_of = {}
    for i, (part, rows) in enumerate(FILES.items()):
        for n, (folder, colour) in enumerate(rows):
            pixels = np.full((SIZE, SIZE, 3), 20 * i + n, np.uint8)   # no two files alike
            pixels[..., colour] = 220
            rel = f"{part}/{CLASSES[folder]}/{7 * n % len(rows):02d}.png"   # names unsorted
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / rel)
            colour_of[rel] = CLASSES[colour]
    cfg = dict(seed=1, val_fraction=0.2, test_fraction=0.2, per_class=None, test_per_class=None)
    split = data.prepare(root, tmp_path / "run", cfg)
    return split, colour_of


def colour_model():
    """Predicts the class whose channel is brightest on average (fixed weights)."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(3, activation="softmax", name="probabilities")
    model = keras.Model(inputs, dense(x), name="colour_model")
    dense.set_weights([10.0 * np.eye(3, dtype="float32"), np.zeros(3, "float32")])
    return model


def run_cfg(tmp_path):
    return dict(out_dir=tmp_path / "run" / "colour", experiment="colour", profile="smoke", seed=1,
                dataset="colours", image_size=SIZE, batch_size=3)


def test_finish_predicts_each_file_in_its_row(colour_split, tmp_path):
    """Catches a default evaluation pipeline that shuffles (or otherwise reorders) the images:
    every row of predictions.csv must carry the prediction of the file it names."""
    split, colour_of = colour_split
    cfg = run_cfg(tmp_path)
    evaluate.finish(colour_model(), split, cfg)
    metrics = read_json(cfg["out_dir"] / "metrics.json")

    rows = results.read_predictions(cfg["out_dir"] / "predictions.csv")
    assert rows["split"].value_counts().to_dict() == {"test": 13, "val": 8}
    for part in ("val", "test"):
        got = rows[rows["split"] == part]
        assert got["path"].tolist() == split.part(part)["path"].tolist()
        assert got["label"].tolist() == split.part(part)["label"].tolist()
    for path, predicted in zip(rows["path"], rows["predicted"], strict=True):
        assert predicted == colour_of[path], path
    probs = rows[results.probability_columns(CLASSES)].to_numpy()
    assert (probs.argmax(axis=1) == [CLASSES.index(colour_of[p]) for p in rows["path"]]).all()

    test = rows[rows["split"] == "test"]
    expected = float(np.mean([colour_of[p] == lab for p, lab in zip(test["path"], test["label"],
                                                                      strict=True)]))
    assert expected == pytest.approx(10 / 13)
    assert metrics["accuracy"] == pytest.approx(expected)
    assert metrics["val_accuracy"] == 1.0
    assert metrics["confusion_matrix"] == [[3, 0, 1], [1, 3, 0], [0, 1, 4]]


def test_score_reads_the_part_in_order(colour_split, tmp_path):
    """Catches evaluate.score's default pipeline reading the images out of the frame's order
    (the val part is all correctly labelled: any reordering costs accuracy)."""
    split, colour_of = colour_split
    cfg = run_cfg(tmp_path)
    model = colour_model()
    val = evaluate.score(model, split, "val", cfg)
    assert (val["accuracy"], val["macro_f1"]) == (1.0, 1.0)
    test = evaluate.score(model, split, "test", cfg)
    assert test["accuracy"] == pytest.approx(10 / 13)
    # predict (what score uses) gives each file's colour, row by row
    frame = split.part("test")
    probs = evaluate.predict(model, frame, split.root, split.class_names, SIZE, 5)
    assert probs.argmax(axis=1).tolist() == [CLASSES.index(colour_of[p]) for p in frame["path"]]
