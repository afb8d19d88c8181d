"""shared.evaluation.evaluate: probabilities, metrics, the results files of an experiment, reading
a run."""

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from shared import environment
from shared.evaluation import conclusions, evaluate
from shared.evaluation.metrics import bootstrap_intervals, compute_metrics
from shared.files import read_json, write_json
from shared.results import check_complete, is_complete, read_results, results_table, write_results

pytestmark = pytest.mark.trains  # not in `make check`

CLASSES = ["ankle boot", "bag", "coat"]


@dataclass
class TinySplit:
    """The contract's Split interface (root, class_names, info, part) over a given frame."""

    root: Path
    class_names: list
    frame: pd.DataFrame
    info: dict = field(default_factory=dict)

    def part(self, name):
        return self.frame[self.frame["split"] == name].reset_index(drop=True)


def colour_model(num_classes=3, activation="softmax"):
    """Predicts the class whose channel is brightest: average pooling then a fixed Dense."""
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(num_classes, activation=activation)
    model = keras.Model(inputs, dense(x))
    dense.set_weights([4.0 * np.eye(3, num_classes, dtype="float32"),
                       np.zeros(num_classes, "float32")])
    return model


def colour_dataset(frame, root, class_names, image_size, batch_size):
    """Each path names the colour channel its image lights up: "<i>_c<k>.png"."""
    channels = [int(p.split("_c")[1][0]) for p in frame["path"]]
    images = np.zeros((len(frame), image_size, image_size, 3), "float32")
    images[np.arange(len(frame)), :, :, channels] = 255.0
    labels = tf.one_hot([class_names.index(v) for v in frame["label"]], len(class_names))
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)


def make_split(tmp_path):
    # test: true labels, and the colour (= the model's prediction) of each image
    test_labels = [0, 0, 0, 1, 1, 2, 2, 2]
    test_colour = [0, 0, 1, 1, 1, 2, 0, 2]
    val_labels, val_colour = [0, 1, 2, 2], [0, 1, 2, 1]
    rows = [("test", f"t{i}_c{c}.png", CLASSES[y]) for i, (y, c) in
            enumerate(zip(test_labels, test_colour, strict=True))]
    rows += [("val", f"v{i}_c{c}.png", CLASSES[y]) for i, (y, c) in
             enumerate(zip(val_labels, val_colour, strict=True))]
    rows += [("train", "x_c0.png", CLASSES[0])]
    frame = pd.DataFrame(rows, columns=["split", "path", "label"])
    split = TinySplit(tmp_path / "data", CLASSES, frame, {"spec": "tiny", "seed": 7})
    return split, (test_labels, test_colour), (val_labels, val_colour)


def run_evaluate(model, split, out_dir, **kwargs):
    return evaluate.evaluate(model, split, out_dir, image_size=4, batch_size=3,
                             make_dataset=colour_dataset, **kwargs)


def test_evaluate_writes_predictions_and_metrics_that_match_sklearn(tmp_path):
    split, (y_test, p_test), (y_val, p_val) = make_split(tmp_path)
    history = pd.DataFrame({"epoch": [1, 2], "phase": ["train", "train"], "loss": [1.0, 0.5],
                            "accuracy": [0.5, 0.7], "val_loss": [1.1, 0.6],
                            "val_accuracy": [0.4, 0.6]})
    out = tmp_path / "run" / "baseline"
    metrics = run_evaluate(colour_model(), split, out, history=history,
                           info={"profile": "smoke", "train_seconds": 12.5, "augment": "flip"})

    predictions = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert list(predictions.columns) == ["split", "path", "label", "predicted",
                                         "p_ankle boot", "p_bag", "p_coat"]
    assert predictions["split"].value_counts().to_dict() == {"test": 8, "val": 4}
    assert np.allclose(predictions.filter(like="p_").sum(axis=1), 1, atol=1e-5)
    test_rows = predictions[predictions["split"] == "test"]
    assert [CLASSES.index(v) for v in test_rows["predicted"]] == p_test

    assert metrics == read_json(out / "metrics.json")
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y_test, p_test))
    assert metrics["macro_f1"] == pytest.approx(f1_score(y_test, p_test, average="macro"))
    assert metrics["val_accuracy"] == pytest.approx(accuracy_score(y_val, p_val))
    assert metrics["confusion_matrix"] == confusion_matrix(y_test, p_test).tolist()
    assert metrics["per_class"]["coat"]["support"] == 3
    assert metrics["per_class"]["bag"]["precision"] == pytest.approx(2 / 3)
    assert metrics["params"] == {"total": 12, "trainable": 12}
    assert metrics["images"] == {"val": 4, "test": 8}
    assert (metrics["experiment"], metrics["dataset"], metrics["seed"]) == ("baseline", "tiny", 7)
    assert (metrics["profile"], metrics["train_seconds"], metrics["augment"]) == \
        ("smoke", 12.5, "flip")
    assert metrics["epochs_run"] == 2 and metrics["status"] == "complete"
    assert metrics["class_names"] == CLASSES and metrics["image_size"] == 4
    assert {"tensorflow", "keras", "numpy", "scikit-learn", "python", "platform"} <= \
        set(metrics["versions"])
    assert metrics["device"] and metrics["inference_seconds"] >= 0
    assert metrics["code"] == environment.code_version()       # which code made the numbers
    assert pd.read_csv(out / "history.csv")["val_loss"].tolist() == [1.1, 0.6]
    assert is_complete(out)


def test_compute_metrics_on_a_known_case():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    m = compute_metrics(["a", "b", "b", "b"], probs, ["a", "b"])
    assert m["accuracy"] == 0.75
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3),
                                   "support": 1}
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["confusion_matrix"] == [[1, 0], [1, 2]]
    with pytest.raises(ValueError, match="unknown label.*dog.*classes are a, b"):
        compute_metrics(["dog", "a", "b", "b"], probs, ["a", "b"])


def test_scores_of_a_linear_head_become_probabilities(tmp_path):
    # a quasi-SVM-like model: nested "head" sub-model ending in a linear layer
    head_in = keras.Input((3,))
    head = keras.Model(head_in, keras.layers.Dense(3)(head_in), name="head")
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, head(keras.layers.GlobalAveragePooling2D()(inputs)))
    assert evaluate.output_kind(model) == "scores"
    assert evaluate.output_kind(colour_model()) == "probabilities"
    images = np.random.default_rng(0).uniform(0, 255, (5, 4, 4, 3)).astype("float32")
    probs = evaluate.predict(model, images)
    raw = model.predict(images, verbose=0)
    assert probs.dtype == np.float32 and np.allclose(probs.sum(axis=1), 1, atol=1e-6)
    assert np.allclose(probs, tf.nn.softmax(raw).numpy(), atol=1e-5)


def test_a_failing_write_leaves_the_previous_results_whole(tmp_path, monkeypatch):
    split, *_ = make_split(tmp_path)
    out = tmp_path / "run" / "baseline"
    run_evaluate(colour_model(), split, out, info={})
    before = {name: (out / name).read_bytes() for name in ("predictions.csv", "metrics.json")}

    def broken_to_csv(self, path, **kwargs):
        Path(path).write_text("split,path,lab")  # half a file, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken_to_csv)
    with pytest.raises(OSError, match="disk full"):
        run_evaluate(colour_model(), split, out, info={"profile": "other"})
    assert {name: (out / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "predictions.csv"]

    fresh = tmp_path / "run" / "fresh"
    with pytest.raises(OSError):
        run_evaluate(colour_model(), split, fresh, info={})
    assert not (fresh / "predictions.csv").exists() and not (fresh / "metrics.json").exists()
    assert list(fresh.iterdir()) == []


def test_predictions_from_another_evaluation_do_not_count_as_complete(tmp_path):
    split, *_ = make_split(tmp_path)
    out = tmp_path / "run" / "baseline"
    run_evaluate(colour_model(), split, out, info={})
    assert check_complete(out) is None
    # as if a later evaluation was cut off between writing predictions.csv and metrics.json
    frame = pd.read_csv(out / "predictions.csv")
    frame["p_bag"] = frame["p_bag"] * 0.5
    frame.to_csv(out / "predictions.csv", index=False)
    assert check_complete(out).startswith(
        "predictions.csv is not the one metrics.json was written with")


def write_experiment(run, name, accuracy, status="complete", rows=2):
    folder = run / name
    folder.mkdir(parents=True)
    frame = pd.DataFrame({"split": ["test"] * rows, "path": [f"{i}.png" for i in range(rows)],
                          "label": ["a"] * rows, "predicted": ["a"] * rows, "p_a": [1.0] * rows})
    frame.to_csv(folder / "predictions.csv", index=False)
    write_json(folder / "metrics.json", {"experiment": name, "accuracy": accuracy,
                                         "macro_f1": accuracy, "status": status,
                                         "images": {"test": 2}})
    return folder


def test_read_results_names_and_skips_broken_experiments(tmp_path):
    run = tmp_path / "run"
    write_experiment(run, "baseline", 0.9)
    write_experiment(run, "vgg19", 0.95)
    (write_experiment(run, "corrupt", 0.5) / "metrics.json").write_text('{"accuracy": 0.')
    write_experiment(run, "running", 0.5, status="running")
    write_experiment(run, "short", 0.5, rows=1)
    (run / "failed").mkdir()
    (run / "failed" / "history.csv").write_text("epoch,loss\n1,0.5\n")
    (run / "figures").mkdir()  # not an experiment: ignored silently

    with pytest.warns(UserWarning) as caught:
        results = read_results(run)
    messages = " | ".join(str(w.message) for w in caught)
    assert [m["experiment"] for m in results] == ["baseline", "vgg19"]
    assert results[0]["dir"] == "baseline"
    for name, reason in (("corrupt", "unreadable"), ("running", "status 'running'"),
                         ("short", "1 rows"), ("failed", "no metrics.json")):
        assert f"{name}: skipped" in messages and reason in messages
    assert "figures" not in messages
    assert not is_complete(run / "corrupt") and is_complete(run / "vgg19")
    table = results_table(results)
    assert table["experiment"].tolist() == ["vgg19", "baseline"]


def test_summary_sentence_is_computed_from_the_metrics():
    metrics = {"experiment": "baseline CNN", "accuracy": 0.91349, "macro_f1": 0.9121,
               "train_seconds": 211.6, "per_class": {
                   "Shirt": {"precision": 0.7, "recall": 0.72, "f1": 0.7111, "support": 10},
                   "Bag": {"precision": 0.99, "recall": 0.98, "f1": 0.985, "support": 10}}}
    assert conclusions.summary_sentence(metrics) == (
        "The baseline CNN reaches 91.3% test accuracy (macro-F1 0.912) in 212 s of training; "
        "its weakest class is Shirt (F1 0.71).")


def test_a_damaged_experiment_is_named_with_what_to_do(tmp_path):
    """Catches an edited predictions.csv passing for a finished experiment, or a bare reason."""
    out = tmp_path / "baseline"
    frame = pd.DataFrame({"split": ["test"], "path": ["a.png"], "label": ["x"],
                          "predicted": ["x"], "p_x": [1.0]})
    write_results(out, frame, {"status": "complete", "images": {"test": 1}})
    assert check_complete(out) is None
    (out / "predictions.csv").write_text((out / "predictions.csv").read_text() + "\n")
    reason = check_complete(out)
    assert reason.startswith("predictions.csv is not the one metrics.json was written with")
    assert "FRESH=1" in reason and str(out) in reason
    (out / "metrics.json").write_text('{"status": "comp')
    assert check_complete(out).startswith("metrics.json is unreadable")


def test_bootstrap_intervals_are_those_of_scikit_learn_on_the_same_resamples():
    """Catches a wrong vectorised macro-F1 (e.g. classes absent from a resample) or accuracy."""
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(3)
    y_true = rng.choice(4, 200, p=[0.5, 0.4, 0.09, 0.01])      # class 3: absent from some
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, 3, 200))
    accuracy, f1 = bootstrap_intervals(y_true, y_pred, 4, resamples=100, seed=5)
    idx = np.random.default_rng(5).integers(0, 200, (100, 200))
    ours = [np.mean(y_true[i] == y_pred[i]) for i in idx]
    theirs = [f1_score(y_true[i], y_pred[i], labels=range(4), average="macro",
                       zero_division=0) for i in idx]
    assert accuracy == np.percentile(ours, [2.5, 97.5]).round(4).tolist()
    assert f1 == np.percentile(theirs, [2.5, 97.5]).round(4).tolist()
    assert accuracy[0] < np.mean(y_true == y_pred) < accuracy[1]


def test_metrics_carry_intervals_macro_scores_top5_and_the_report():
    names = [f"c{i}" for i in range(7)]
    labels = np.arange(70) % 7
    probs = np.full((70, 7), 0.01)
    probs[np.arange(70), (labels + (np.arange(70) % 10 == 0)) % 7] = 0.9   # 7 of 70 wrong
    probs[np.arange(70), labels] += 0.05                                   # true class 2nd
    metrics = compute_metrics(labels, probs, names)
    assert metrics["accuracy"] == 0.9 and metrics["top5_accuracy"] == 1.0
    low, high = metrics["accuracy_ci95"]
    assert low < 0.9 < high and metrics["macro_f1_ci95"][0] < metrics["macro_f1"]
    assert 0 < metrics["macro_precision"] <= 1 and 0 < metrics["macro_recall"] <= 1
    assert metrics["classification_report"]["c3"]["support"] == 10
    assert "top5_accuracy" not in compute_metrics(labels % 5, probs[:, :5], names[:5])


def test_the_code_s_version_is_its_commit_and_whether_tracked_files_changed(tmp_path):
    """Catches a result that cannot say which code produced it, or calls a changed tree clean."""
    assert environment.code_version(tmp_path) == {"commit": None, "dirty": None}   # no git
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    (tmp_path / "notes.txt").write_text("untracked: reports and data are not code")
    assert environment.code_version(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "a.py").write_text("x = 2\n")
    assert environment.code_version(tmp_path) == {"commit": head, "dirty": True}
    assert environment.code_text(environment.code_version(tmp_path)) == \
        f"{head[:12]} with uncommitted changes"
