"""shared.evaluation.calibrate: expected calibration error, temperature scaling fitted on the
validation split, recorded by evaluate.finish, drawn by plots.reliability_diagram, applied by
predict."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from shared import data, results
from shared.evaluation import calibrate, evaluate
from shared.evaluation.metrics import label_indices
from shared.files import read_json, write_json
from shared.reporting import plots
from shared.serve import predict

pytestmark = pytest.mark.trains  # not in `make check`


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def synthetic(n=6000, classes=4, seed=0):
    """True logits ``z`` and labels drawn from softmax(z): softmax(z) is calibrated."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, (n, classes))
    p = softmax(z)
    labels = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return z, labels


# --------------------------------------------------------------------------- ECE, reliability


def test_ece_is_zero_when_calibrated_and_large_when_over_confident():
    """Catches an ECE that is not the count-weighted mean of |accuracy - confidence| per bin
    (signed gaps, unweighted bins, the wrong confidence)."""
    # two confidence levels, each right exactly as often as it claims: ECE 0
    probs = np.array([[0.8, 0.2]] * 1000 + [[0.1, 0.9]] * 500)
    labels = np.array([0] * 800 + [1] * 200 + [1] * 450 + [0] * 50)
    assert calibrate.expected_calibration_error(labels, probs) == pytest.approx(0, abs=1e-12)

    # 99% sure, right 60% of the time, and 70% sure, right 70%: 2/3 of the images off by 0.39
    probs = np.array([[0.99, 0.01]] * 1000 + [[0.3, 0.7]] * 500)
    labels = np.array([0] * 600 + [1] * 400 + [1] * 350 + [0] * 150)
    ece = calibrate.expected_calibration_error(labels, probs)
    assert ece == pytest.approx(1000 / 1500 * 0.39, abs=1e-9)

    table = calibrate.reliability(labels, probs, bins=10)
    assert table["count"].sum() == 1500 and len(table) == 10
    filled = table[table["count"] > 0]
    assert filled["count"].tolist() == [500, 1000]
    assert filled["confidence"].tolist() == pytest.approx([0.7, 0.99])
    assert filled["accuracy"].tolist() == pytest.approx([0.7, 0.6])

    # drawn from the model's own probabilities: close to 0; the same logits tripled: large
    z, labels = synthetic()
    assert calibrate.expected_calibration_error(labels, softmax(z)) < 0.03
    assert calibrate.expected_calibration_error(labels, softmax(3 * z)) > 0.15


# --------------------------------------------------------------------------- temperature


def test_fit_temperature_recovers_a_known_temperature():
    """Catches a fit that optimises the wrong thing or returns 1/T: labels drawn from
    softmax(z), a model that outputs softmax(2z) needs T = 2, one that outputs softmax(z/2)
    needs T = 0.5; logits and probabilities give the same T."""
    z, labels = synthetic()
    assert calibrate.fit_temperature(labels, softmax(2 * z)) == pytest.approx(2, rel=0.1)
    assert calibrate.fit_temperature(labels, softmax(z / 2)) == pytest.approx(0.5, rel=0.1)
    assert calibrate.fit_temperature(labels, 2 * z) == pytest.approx(
        calibrate.fit_temperature(labels, softmax(2 * z)), rel=1e-3)
    # and the ECE drops once it is applied
    fitted = calibrate.fit_temperature(labels, softmax(2 * z))
    scaled = calibrate.apply_temperature(softmax(2 * z), fitted)
    assert calibrate.expected_calibration_error(labels, scaled) < \
        calibrate.expected_calibration_error(labels, softmax(2 * z)) / 3


def test_apply_temperature_keeps_the_argmax_and_rows_summing_to_one():
    """Catches a scaling that is not renormalised or that reorders the classes of a row."""
    rng = np.random.default_rng(1)
    probs = softmax(rng.normal(0, 3, (500, 7))).astype(np.float32)
    probs[:5, 0] = 0.0           # exact zeros, as a float32 softmax gives
    probs[:5] /= probs[:5].sum(axis=1, keepdims=True)
    for temperature in (0.25, 1.0, 1.7, 8.0):
        scaled = calibrate.apply_temperature(probs, temperature)
        assert scaled.shape == probs.shape
        np.testing.assert_allclose(scaled.sum(axis=1), 1, atol=1e-9)
        assert (scaled.argmax(axis=1) == probs.argmax(axis=1)).all()
        assert np.isfinite(scaled).all() and (scaled >= 0).all()
    np.testing.assert_allclose(calibrate.apply_temperature(probs, 1.0), probs, atol=1e-6)
    assert (calibrate.apply_temperature(probs, 2.0).max(axis=1) <= probs.max(axis=1)).all()
    np.testing.assert_allclose(calibrate.apply_temperature(probs, 2.0),
                               softmax(np.log(np.clip(probs.astype(float), 1e-38, None)) / 2),
                               atol=1e-9)
    with pytest.raises(ValueError, match="positive"):
        calibrate.apply_temperature(probs, 0.0)


# --------------------------------------------------------------------------- evaluate.finish

CLASSES = ["c0_red", "c1_green", "c2_blue"]      # class index k lights channel k
SIZE = 8
# part: [(folder class, colour class), ...]: the model predicts the colour, sure of itself,
# and a third of the validation files (and some test files) are filed under another class
FILES = {
    "train": [(k, k) for k in (0, 0, 0, 1, 1, 1, 2, 2, 2)],
    "val": [(0, 0), (0, 0), (0, 1), (1, 1), (1, 1), (1, 2), (2, 2), (2, 2), (2, 0)],
    "test": [(0, 0), (0, 0), (0, 2), (1, 1), (1, 0), (1, 1), (2, 2), (2, 1), (2, 2), (2, 2)],
}


@pytest.fixture
def colour_split(tmp_path):
    root = tmp_path / "colours"
    for i, (part, rows) in enumerate(FILES.items()):
        for n, (folder, colour) in enumerate(rows):
            pixels = np.full((SIZE, SIZE, 3), 20 * i + n, np.uint8)
            pixels[..., colour] = 220
            rel = f"{part}/{CLASSES[folder]}/{n:02d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / rel)
    cfg = dict(seed=1, val_fraction=0.2, test_fraction=0.2, per_class=None, test_per_class=None)
    return data.prepare(root, tmp_path / "run", cfg)


def colour_model():
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(3, activation="softmax")
    model = keras.Model(inputs, dense(x))
    dense.set_weights([10.0 * np.eye(3, dtype="float32"), np.zeros(3, "float32")])
    return model


def test_finish_records_a_temperature_fitted_on_val_and_keeps_the_model_predictions(
        colour_split, tmp_path):
    """Catches finish not recording calibration, fitting T on the test split (or on both), a
    temperature that does not lower the validation ECE, or calibrated probabilities leaking
    into predictions.csv and the accuracy."""
    split = colour_split
    cfg = dict(out_dir=tmp_path / "run" / "colour", experiment="colour", profile="smoke",
               seed=1, dataset="colours", image_size=SIZE, batch_size=4)
    model = colour_model()
    metrics, predictions = evaluate.finish(model, split, cfg)
    written = read_json(cfg["out_dir"] / "metrics.json")
    assert written["calibration"] == metrics["calibration"]
    cal = written["calibration"]
    assert set(cal) == {"temperature", "ece_before", "ece_after", "bins", "fitted_on"}
    assert (cal["bins"], cal["fitted_on"]) == (15, "val")
    assert set(cal["ece_before"]) == set(cal["ece_after"]) == {"val", "test"}

    rows = results.read_predictions(cfg["out_dir"] / "predictions.csv")
    columns = results.probability_columns(CLASSES)
    part = {p: rows[rows["split"] == p] for p in ("val", "test")}
    labels = {p: label_indices(r["label"], CLASSES) for p, r in part.items()}
    probs = {p: r[columns].to_numpy() for p, r in part.items()}
    # over-confident (sure, right 2/3 of the time): T > 1, fitted on val alone
    assert cal["temperature"] > 1.5
    assert cal["temperature"] == pytest.approx(
        calibrate.fit_temperature(labels["val"], probs["val"]), rel=1e-3)
    assert cal["temperature"] != pytest.approx(
        calibrate.fit_temperature(labels["test"], probs["test"]), rel=1e-2)
    assert cal["ece_after"]["val"] <= cal["ece_before"]["val"] - 0.1
    for p in ("val", "test"):
        assert cal["ece_before"][p] == pytest.approx(
            calibrate.expected_calibration_error(labels[p], probs[p]), abs=1e-6)
        assert cal["ece_after"][p] == pytest.approx(calibrate.expected_calibration_error(
            labels[p], calibrate.apply_temperature(probs[p], cal["temperature"])), abs=1e-6)

    # predictions.csv and the accuracy are the model's own, and T keeps every predicted class
    for p in ("val", "test"):
        own = evaluate.predict(model, split.part(p), split.root, CLASSES, SIZE)
        np.testing.assert_allclose(probs[p], own, atol=1e-6)
        scaled = calibrate.apply_temperature(probs[p], cal["temperature"])
        assert (scaled.argmax(axis=1) == probs[p].argmax(axis=1)).all()
        assert [CLASSES[i] for i in scaled.argmax(axis=1)] == part[p]["predicted"].tolist()
    assert written["accuracy"] == pytest.approx(np.mean(probs["test"].argmax(axis=1)
                                                        == labels["test"]))
    assert written["accuracy"] == pytest.approx(7 / 10)
    pd.testing.assert_frame_equal(predictions.reset_index(drop=True), rows, check_dtype=False,
                                  atol=1e-6)

    # the reliability diagram of those predictions, before and after T
    fig = plots.reliability_diagram(predictions, CLASSES, cfg["out_dir"], metrics)
    assert (cfg["out_dir"] / "figures" / "reliability.png").stat().st_size > 0
    assert len(fig.axes) == 2
    title = fig._suptitle.get_text()
    assert f"ECE {cal['ece_before']['test']:.3f}" in title
    assert f"{cal['ece_after']['test']:.3f} after" in title
    assert len(plots.reliability_diagram(predictions, CLASSES, part="val").axes) == 1


def test_finish_without_a_validation_split_records_no_calibration(colour_split, tmp_path):
    """Catches a temperature fitted on the test split when there is no validation split."""
    split = colour_split
    empty_val = type(split).part

    class NoVal(type(split)):
        def part(self, name):
            frame = empty_val(self, name)
            return frame.iloc[:0] if name == "val" else frame

    split.__class__ = NoVal
    cfg = dict(out_dir=tmp_path / "run" / "noval", experiment="noval", profile="smoke",
               seed=1, dataset="colours", image_size=SIZE, batch_size=4)
    metrics, _ = evaluate.finish(colour_model(), split, cfg)
    assert "calibration" not in metrics
    assert "calibration" not in read_json(cfg["out_dir"] / "metrics.json")


# --------------------------------------------------------------------------- make predict


def save_member(run, name, size, seed, temperature=None):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    folder = run / name
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    metrics = {"experiment": name, "image_size": size, "class_names": CLASSES,
               "status": "complete"}
    if temperature is not None:
        metrics["calibration"] = {"temperature": temperature, "fitted_on": "val", "bins": 15}
    write_json(folder / "metrics.json", metrics)
    return folder, model


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "new"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(
            folder / f"{i}.png")
    return folder


def model_probabilities(model, folder, size):
    files = sorted(p.name for p in folder.iterdir())
    pixels = np.stack([data.read_image(folder / f, size) for f in files]).astype(np.float32)
    return model.predict(pixels, verbose=0)


def test_predict_applies_the_stored_temperature(tmp_path, images):
    """Catches make predict writing the model's raw probabilities although metrics.json holds a
    temperature, changing the predicted class with it, or an ensemble combining other
    probabilities than those its votes were scored on (its members' own)."""
    run = tmp_path / "run"
    folder, model = save_member(run, "hot", 8, seed=1, temperature=0.3)
    written = pd.read_csv(predict.predict_folder(folder, images, tmp_path / "hot.csv").out_csv)
    own = model_probabilities(model, images, 8)
    columns = [f"p_{c}" for c in CLASSES]
    np.testing.assert_allclose(written[columns].to_numpy(),
                               calibrate.apply_temperature(own, 0.3), atol=1e-5)
    assert not np.allclose(written[columns].to_numpy(), own, atol=1e-3)
    assert written["predicted"].tolist() == [CLASSES[i] for i in own.argmax(axis=1)]

    # ensemble: the members' own probabilities, as the ensemble was scored on them
    _, plain = save_member(run, "plain", 12, seed=2)
    write_json(run / "ensemble" / "metrics.json", {
        "experiment": "ensemble", "members": ["hot", "plain"], "method": "weighted",
        "weights": {"hot": 0.5, "plain": 0.5}, "class_names": CLASSES, "status": "complete"})
    combined = pd.read_csv(predict.predict_folder(run / "ensemble", images,
                                                  tmp_path / "ens.csv").out_csv)
    expected = 0.5 * own + 0.5 * model_probabilities(plain, images, 12)
    np.testing.assert_allclose(combined[columns].to_numpy(), expected, atol=1e-5)
    assert combined["predicted"].tolist() == [CLASSES[i] for i in expected.argmax(axis=1)]

    # a damaged temperature is named, not used
    write_json(folder / "metrics.json", read_json(folder / "metrics.json")
               | {"calibration": {"temperature": -1}})
    with pytest.raises(predict.PredictError, match="calibration.temperature"):
        predict.predict_folder(folder, images, tmp_path / "bad.csv")
