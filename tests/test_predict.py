"""shared.serve.predict: a CSV of predictions for a folder of new images, with a saved model or a
run's ensemble; unreadable files listed, an empty folder a clear error."""

import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from shared import config, data
from shared.files import write_json
from shared.serve import loading, predict

pytestmark = pytest.mark.trains  # not in `make check`

CLASSES = ["cat", "dog"]


def save_experiment(run, name, size, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    folder = run / name
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    write_json(folder / "metrics.json", {"experiment": name, "image_size": size,
                                         "class_names": CLASSES, "status": "complete"})
    return folder, model


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "new images"
    (folder / "more").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (9, 9), dtype=np.uint8)).save(folder / "b gray.jpg")
    Image.fromarray(rng.integers(0, 255, (12, 12, 4), dtype=np.uint8)).save(folder / "c.png")
    Image.fromarray(rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)).save(
        folder / "more" / "d.webp")
    (folder / "broken.jpg").write_text("this is not a JPEG")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / "t.jpg")
    (folder / "truncated.jpg").write_bytes((folder / "t.jpg").read_bytes()[:300])
    (folder / "t.jpg").unlink()
    (folder / "notes.txt").write_text("labels are secret")
    Image.fromarray(rng.integers(0, 255, (5, 5, 3), dtype=np.uint8)).save(folder / ".hidden.png")
    return folder


READABLE = ["a.png", "b gray.jpg", "c.png", "more/d.webp"]


def predicted(model_dir, images, out):
    """The rows predict_folder wrote."""
    predict.predict_folder(model_dir, images, out)
    return pd.read_csv(out)


def test_predict_folder_writes_one_row_per_image_and_lists_the_skipped(tmp_path, images):
    folder, model = save_experiment(tmp_path / "run", "baseline", 8, seed=1)
    out = tmp_path / "out" / "submission.csv"
    done = predict.predict_folder(folder, images, out)

    written = pd.read_csv(out)
    assert list(written.columns) == ["file", "predicted", "p_cat", "p_dog"]
    assert written["file"].tolist() == READABLE
    pixels = np.stack([data.read_image(images / f, 8) for f in READABLE]).astype(np.float32)
    expected = model.predict(pixels, verbose=0)
    np.testing.assert_allclose(written[["p_cat", "p_dog"]].to_numpy(), expected, atol=1e-5)
    assert written["predicted"].tolist() == [CLASSES[i] for i in expected.argmax(axis=1)]
    assert (done.out_csv, done.predicted, done.skipped) == (out, 4, 3)

    skipped = pd.read_csv(tmp_path / "out" / "submission.skipped.csv")
    assert skipped["file"].tolist() == ["broken.jpg", "notes.txt", "truncated.jpg"]
    assert "not an image" in skipped["reason"][0]
    assert "not an image file (.txt" in skipped["reason"][1]
    assert "cannot be decoded" in skipped["reason"][2]
    assert sorted(p.name for p in out.parent.iterdir()) == ["submission.csv",
                                                            "submission.skipped.csv"]


def test_images_to_predict_are_rgb_in_0_255_for_odd_formats(tmp_path):
    sixteen = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(sixteen)
    palette = tmp_path / "palette.png"
    Image.new("RGB", (6, 6), (255, 0, 0)).convert("P").save(palette)
    batch = next(iter(predict.images_dataset([sixteen, palette], 5))).numpy()
    assert batch.shape == (2, 5, 5, 3) and batch.dtype == np.float32
    assert batch.max() == 255.0 and batch.min() >= 0
    assert batch[1, ..., 0].min() == 255  # red stays red


def test_an_ensemble_predicts_with_its_members_and_weights(tmp_path, images):
    run = tmp_path / "run"
    save_experiment(run, "small", 8, seed=1)
    save_experiment(run, "large", 12, seed=2)
    write_json(run / "ensemble" / "metrics.json", {
        "experiment": "ensemble", "members": ["small", "large"], "method": "weighted",
        "weights": {"small": 0.25, "large": 0.75}, "class_names": CLASSES, "status": "complete"})
    parts = {name: predicted(run / name, images, tmp_path / f"{name}.csv")
             for name in ("small", "large")}
    combined = predicted(run / "ensemble", images, tmp_path / "ensemble.csv")
    assert combined["file"].tolist() == READABLE
    expected = 0.25 * parts["small"][["p_cat", "p_dog"]] + 0.75 * parts["large"][["p_cat",
                                                                                   "p_dog"]]
    np.testing.assert_allclose(combined[["p_cat", "p_dog"]], expected, atol=1e-5)
    skipped = pd.read_csv(tmp_path / "ensemble.skipped.csv")
    assert skipped["file"].tolist() == ["broken.jpg", "notes.txt", "truncated.jpg"]

    # "best": the ensemble is one member alone; the other's model is not even needed
    best_of = {"experiment": "ensemble", "members": ["small", "large"], "method": "best",
               "class_names": CLASSES, "status": "complete"}
    write_json(run / "ensemble" / "metrics.json", best_of)
    with pytest.raises(predict.PredictError, match="metrics.json has method 'best' but no"):
        predict.predict_folder(run / "ensemble", images, tmp_path / "best.csv")
    write_json(run / "ensemble" / "metrics.json", best_of | {"best_member": "large"})
    (run / "small" / "model.keras").unlink()
    best = predicted(run / "ensemble", images, tmp_path / "best.csv")
    np.testing.assert_allclose(best[["p_cat", "p_dog"]], parts["large"][["p_cat", "p_dog"]],
                               atol=1e-6)


def test_model_is_found_relative_to_reports(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "REPORTS_DIR", tmp_path)
    (tmp_path / "run" / "exp").mkdir(parents=True)
    write_json(tmp_path / "run" / "exp" / "metrics.json", {})
    assert loading.resolve_model_dir("run/exp") == tmp_path / "run" / "exp"
    (tmp_path / "run" / "unfinished").mkdir()
    with pytest.raises(loading.PredictError, match="unfinished holds no metrics.json"):
        loading.resolve_model_dir("run/unfinished")


def test_main_returns_zero_and_writes_the_csv(tmp_path, images, capsys):
    folder, _ = save_experiment(tmp_path / "run", "baseline", 8, seed=1)
    out = tmp_path / "p.csv"
    assert predict.main(["--model", str(folder), "--images", str(images),
                         "--out", str(out)]) == 0
    assert len(pd.read_csv(out)) == 4
    assert "skipped truncated.jpg: cannot be decoded" in capsys.readouterr().out


def test_cli_on_a_folder_without_images_fails_with_a_clear_message(tmp_path):
    folder = tmp_path / "run" / "baseline"
    folder.mkdir(parents=True)
    write_json(folder / "metrics.json", {"image_size": 8, "class_names": CLASSES})
    empty = tmp_path / "empty folder"
    empty.mkdir()
    (empty / "readme.txt").write_text("no pictures here")
    out = tmp_path / "p.csv"
    done = subprocess.run([sys.executable, "-m", "shared.serve.predict", "--model", str(folder),
                           "--images", str(empty), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert f"error: no images in {empty}" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()

    missing = predict.main(["--model", str(tmp_path / "nowhere"), "--images", str(empty),
                            "--out", str(out)])
    assert missing == 1


def test_images_to_predict_are_decoded_exactly_as_training_images(image_folder):
    """One road for pixels: prediction and training go through the same pipeline."""
    ds = data.load(image_folder)
    paths = [ds.root / p for p in ds.files["path"]]
    predicted = np.concatenate([b.numpy() for b in predict.images_dataset(paths, 12, 5)])
    trained = np.concatenate([x.numpy() for x, _ in data.pipeline(
        ds.files, ds.root, ds.class_names, 12, 64, cache=None)])
    assert np.array_equal(predicted, trained)
    assert np.array_equal(predicted[0], data.read_image(paths[0], 12).astype(np.float32))
