"""Test-time augmentation (shared.evaluation.tta): the views are what they claim, averaged
probabilities are rows of probabilities, a flip-invariant model gains nothing from a flip, `make
predict` with TTA writes one row per image, and evaluate.finish records a ``tta`` section."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import make_class_folder

from shared import data, results
from shared.evaluation import conclusions, evaluate, tta
from shared.evaluation.metrics import label_indices
from shared.files import read_json, write_json
from shared.reporting import cards
from shared.serve import predict

pytestmark = pytest.mark.trains  # not in `make check`

CLASSES = ["cat", "dog", "owl"]


def batch(n=3, size=8, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


def conv_model(size, classes=3, seed=0):
    """A model that is neither flip- nor shift-invariant (a convolution, then flatten)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x))


def pooled_model(size, classes=3, seed=0):
    """Flip-invariant by construction: a per-pixel layer, then a global average."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Dense(5, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x))


# --------------------------------------------------------------------------- the views


def test_views_are_the_identity_a_flip_then_seeded_small_shifts():
    chosen = tta.views(6, 28, seed=3)
    assert chosen[0].identity and chosen[0].describe() == "identity"
    assert chosen[1] == tta.View(flip=True) and chosen[1].describe() == "flip"
    reach = round(tta.MAX_SHIFT * 28)
    for k, view in enumerate(chosen[2:]):
        assert (view.dy, view.dx) != (0, 0)
        assert max(abs(view.dy), abs(view.dx)) <= reach
        assert view.flip == (k % 2 == 1)
    assert len(set(chosen)) == 6
    assert tta.views(6, 28, seed=3) == chosen             # deterministic given the seed
    assert tta.views(6, 28, seed=4) != chosen
    assert tta.views(2, 28) == chosen[:2] and tta.views(1, 28) == [tta.View()]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="number of views"):
            tta.views(bad, 28)


def test_a_dihedral_model_is_shown_the_turns_and_flips_it_was_trained_on():
    """Catches shift views (never seen in training) for a model trained with ``dihedral``."""
    chosen = tta.views(4, 28, seed=3, policy="dihedral")
    assert [v.describe() for v in chosen] == ["identity", "turn 90°", "turn 180°", "turn 270°"]
    whole = tta.views(10, 28, seed=3, policy="flip+dihedral")
    assert whole[:8] == tta.DIHEDRAL and len(set(whole[:8])) == 8
    assert all(v.dy or v.dx for v in whole[8:])         # shifts only past the eight
    assert tta.views(4, 28, seed=3, policy="flip") == tta.views(4, 28, seed=3)
    images = batch()
    np.testing.assert_array_equal(tta.apply(images, tta.View(turns=1)).numpy(),
                                  np.rot90(images, 1, axes=(1, 2)))
    np.testing.assert_array_equal(tta.apply(images, tta.View(flip=True, turns=3)).numpy(),
                                  np.rot90(images[:, :, ::-1], 3, axes=(1, 2)))


def test_a_view_flips_and_shifts_the_pixels_it_says():
    images = batch()
    np.testing.assert_array_equal(tta.apply(images, tta.View(flip=True)).numpy(),
                                  images[:, :, ::-1])
    shifted = tta.apply(images, tta.View(dy=2, dx=-1)).numpy()
    assert shifted.shape == images.shape
    # content moves 2 rows down and 1 column left; the uncovered edge mirrors the image
    np.testing.assert_array_equal(shifted[:, 2:, :-1], images[:, :-2, 1:])
    np.testing.assert_array_equal(shifted[:, :2, :-1], images[:, 1::-1, 1:])
    both = tta.apply(images, tta.View(flip=True, dy=-1, dx=1)).numpy()
    np.testing.assert_array_equal(both[:, :-1, 1:], images[:, 1:, ::-1][:, :, :-1])
    assert tta.transform(images, tta.View()) is images


def test_averaged_probabilities_are_the_mean_over_the_views_and_sum_to_one():
    model, images = conv_model(8), batch(5)
    chosen = tta.views(4, 8, seed=1)
    averaged = evaluate.predict(model, images, views=chosen)
    each = [model.predict(tta.apply(images, v).numpy(), verbose=0) for v in chosen]
    np.testing.assert_allclose(averaged, np.mean(each, axis=0), atol=1e-6)
    np.testing.assert_allclose(averaged.sum(axis=1), 1, atol=1e-5)
    assert np.abs(averaged - each[0]).max() > 1e-4      # the views did change something
    # through a tf.data pipeline of (images, labels) batches, the same
    import tensorflow as tf
    dataset = tf.data.Dataset.from_tensor_slices((images, np.zeros(5))).batch(2)
    np.testing.assert_allclose(evaluate.predict(model, dataset, views=chosen), averaged,
                               atol=1e-5)


def test_a_flip_invariant_model_gains_nothing_from_a_flip():
    model, images = pooled_model(8), batch(6)
    plain = evaluate.predict(model, images)
    flipped = evaluate.predict(model, images, views=tta.views(2, 8))
    np.testing.assert_allclose(flipped, plain, atol=1e-6)
    # while a model that sees positions does change
    other = conv_model(8)
    assert np.abs(evaluate.predict(other, images, views=tta.views(2, 8))
                  - evaluate.predict(other, images)).max() > 1e-4


# --------------------------------------------------------------------------- make predict


def saved_experiment(folder, size, seed, recorded_tta=None):
    model = conv_model(size, classes=2, seed=seed)
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    metrics = {"experiment": folder.name, "image_size": size, "class_names": ["cat", "dog"],
               "status": "complete", "seed": 7}
    if recorded_tta:
        metrics["tta"] = recorded_tta
    write_json(folder / "metrics.json", metrics)
    return model


def test_predict_with_tta_writes_one_row_per_image_averaged_over_the_recorded_views(
        tmp_path, image_writer):
    images = tmp_path / "images"
    names = ["a.png", "b.jpg", "sub/c.png"]
    for i, name in enumerate(names):
        image_writer(images / name, (10 + i, 12), seed=i)
    (images / "notes.txt").write_text("not an image")
    model = saved_experiment(tmp_path / "run" / "exp", 8, 1, {"views": 3, "seed": 5})

    out = tmp_path / "tta.csv"
    assert predict.main(["--model", str(tmp_path / "run" / "exp"), "--images", str(images),
                         "--out", str(out), "--tta"]) == 0
    written = pd.read_csv(out)
    assert written["file"].tolist() == names                  # one row per image
    pixels = np.stack([data.read_image(images / n, 8) for n in names]).astype(np.float32)
    chosen = tta.views(3, 8, seed=5)                           # the views it was scored with
    expected = np.mean([model.predict(tta.apply(pixels, v).numpy(), verbose=0)
                        for v in chosen], axis=0)
    probs = written[["p_cat", "p_dog"]].to_numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert written["predicted"].tolist() == [["cat", "dog"][i] for i in expected.argmax(1)]
    plain = pd.read_csv(predict.predict_folder(tmp_path / "run" / "exp", images,
                                               tmp_path / "plain.csv").out_csv)
    assert np.abs(plain[["p_cat", "p_dog"]].to_numpy() - probs).max() > 1e-4

    # an ensemble with TTA: each member averages its own views, still one row per image
    saved_experiment(tmp_path / "run" / "other", 12, 2)
    write_json(tmp_path / "run" / "ensemble" / "metrics.json", {
        "experiment": "ensemble", "members": ["exp", "other"], "method": "soft",
        "class_names": ["cat", "dog"], "status": "complete"})
    done = predict.predict_folder(tmp_path / "run" / "ensemble", images,
                                  tmp_path / "ensemble.csv", tta=True)
    rows = pd.read_csv(done.out_csv)
    assert rows["file"].tolist() == names and done.predicted == 3 and done.skipped == 1
    np.testing.assert_allclose(rows[["p_cat", "p_dog"]].sum(axis=1), 1, atol=1e-5)
    with pytest.raises(predict.PredictError, match="number of views"):
        predict.predict_folder(tmp_path / "run" / "exp", images, out, tta=True, views=-2)


# --------------------------------------------------------------------------- evaluate.finish


@pytest.fixture
def split(tmp_path):
    root = make_class_folder(tmp_path / "animals", CLASSES, per_class=8, size=(12, 12))
    cfg = dict(seed=1, val_fraction=0.25, test_fraction=0.5, per_class=None,
               test_per_class=None)
    return data.prepare(root, tmp_path / "run", cfg)


def finish_cfg(tmp_path, **settings):
    return dict(out_dir=tmp_path / "run" / "exp", experiment="exp", profile="smoke", seed=1,
                dataset="animals", image_size=8, batch_size=4) | settings


def test_finish_records_tta_beside_the_model_alone_and_leaves_predictions_plain(
        split, tmp_path):
    model = conv_model(8, seed=3)
    metrics, predictions = evaluate.finish(model, split, finish_cfg(tmp_path, tta=4))
    written = read_json(tmp_path / "run" / "exp" / "metrics.json")
    section = written["tta"]
    assert section == metrics["tta"]
    chosen = tta.views(4, 8, seed=1)
    assert section["views"] == 4 and section["transforms"] == [v.describe() for v in chosen]
    test = split.part("test")
    assert (section["part"], section["images"]) == ("test", len(test))

    labels = label_indices(test["label"], CLASSES)
    plain = evaluate.predict(model, test, split.root, CLASSES, 8)
    averaged = evaluate.predict(model, test, split.root, CLASSES, 8, views=chosen)
    tta_right, plain_right = averaged.argmax(1) == labels, plain.argmax(1) == labels
    assert section["accuracy"] == pytest.approx(tta_right.mean())
    assert section["plain_accuracy"] == pytest.approx(written["accuracy"])
    assert section["only_tta"] == int((tta_right & ~plain_right).sum())
    assert section["only_plain"] == int((plain_right & ~tta_right).sum())
    assert section["mcnemar_p"] == pytest.approx(
        conclusions.mcnemar_p(plain_right, tta_right, alternative="two-sided"))
    low, high = section["accuracy_ci95"]
    assert low <= section["accuracy"] <= high and "macro_f1" in section
    # predictions.csv is the model alone
    rows = predictions[predictions["split"] == "test"]
    np.testing.assert_allclose(rows[results.probability_columns(CLASSES)].to_numpy(), plain,
                               atol=1e-6)
    sentence = conclusions.tta_sentence(written)
    assert "4 views" in sentence and "McNemar" in sentence
    assert f"{100 * section['accuracy']:.1f}%" in sentence
    card = cards.write_card(tmp_path / "run" / "exp")[0].read_text()
    assert f"## Test-time augmentation\n\n{sentence}\n" in card

    # on at most one test image per class; and off
    subset = evaluate.finish(model, split, finish_cfg(tmp_path, tta=2, tta_per_class=1))[0]
    assert subset["tta"]["images"] == len(CLASSES) and subset["tta"]["views"] == 2
    off = evaluate.finish(model, split, finish_cfg(tmp_path, tta=0))[0]
    assert "tta" not in off and "did not run" in conclusions.tta_sentence(off)
    with pytest.raises(ValueError, match="number of views"):
        evaluate.finish(model, split, finish_cfg(tmp_path, tta=-3))


def test_finish_and_predict_use_the_views_of_the_training_policy(split, tmp_path):
    """Catches TTA views that ignore the policy, or `make predict --tta` that forgets it."""
    model = conv_model(8, seed=3)
    cfg = finish_cfg(tmp_path, tta=4, augment="dihedral")
    section = evaluate.finish(model, split, cfg)[0]["tta"]
    assert section["policy"] == "dihedral"
    assert section["transforms"] == [v.describe() for v in tta.DIHEDRAL[:4]]
    from shared.serve import loading
    assert loading.tta_views(read_json(tmp_path / "run" / "exp" / "metrics.json")) == \
        tta.DIHEDRAL[:4]
