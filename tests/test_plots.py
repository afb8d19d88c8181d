"""shared.reporting.plots, data_plots and study_plots: every figure is drawn from tiny inputs
and saved as a PNG; Grad-CAM and feature maps reach inside a nested backbone."""

import numpy as np
import pandas as pd
import pytest
from conftest import images, nested_model
from matplotlib.figure import Figure
from PIL import Image

from shared.evaluation import explain
from shared.reporting import data_plots, plots, study_plots

CLASSES = ["cat", "dog", "owl"]
PNG = b"\x89PNG\r\n\x1a\n"


def assert_png(fig, out_dir, name):
    path = out_dir / "figures" / f"{name}.png"
    assert isinstance(fig, Figure)
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 2000
    with Image.open(path) as img:
        assert img.width > 100 and img.height > 50
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    rows = []
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(3):
            path = f"{name}/{i}.png"
            Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(root / path)
            rows.append({"path": path, "label": name, "split": ["train", "val", "test"][i],
                         "c": c})
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    rows.append({"path": "dog/broken.png", "label": "dog", "split": "test", "c": 1})
    return root, pd.DataFrame(rows)


def test_training_curves_mark_the_phase_boundary(tmp_path):
    history = pd.DataFrame({"epoch": [1, 2, 1, 2], "phase": ["frozen"] * 2 + ["fine_tune"] * 2,
                            "loss": [1.0, 0.8, 0.6, 0.5], "accuracy": [0.5, 0.6, 0.7, 0.8],
                            "val_loss": [1.1, 0.9, 0.7, 0.6],
                            "val_accuracy": [0.4, 0.5, 0.6, 0.7]})
    fig = plots.training_curves(history, tmp_path)
    assert_png(fig, tmp_path, "training_curves")
    loss_axis = fig.axes[0]
    assert len(loss_axis.lines) == 3  # train, validation, the boundary at 2.5
    assert loss_axis.lines[-1].get_xdata()[0] == 2.5
    assert "fine_tune" in [t.get_text() for t in loss_axis.texts]
    single = plots.training_curves(history.assign(phase="train"), tmp_path, name="one_phase")
    assert len(single.axes[0].lines) == 2


def test_evaluation_figures(tmp_path, image_root):
    root, frame = image_root
    labels = ["cat", "cat", "dog", "owl", "dog"]
    predicted = ["cat", "dog", "dog", "owl", "cat"]
    fig = plots.confusion_matrix(labels, predicted, CLASSES, tmp_path)
    assert_png(fig, tmp_path, "confusion_matrix")
    counts = fig.axes[0].collections[0].get_array().reshape(3, 3)
    assert counts.tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]

    metrics = {"per_class": {c: {"precision": 0.5, "recall": 0.6, "f1": 0.55, "support": 3}
                             for c in CLASSES}}
    assert_png(plots.per_class_scores(metrics, tmp_path), tmp_path, "per_class_scores")

    test = frame[frame["split"] == "test"].reset_index(drop=True)
    pred = pd.DataFrame({"split": "test", "path": test["path"], "label": test["label"],
                         "predicted": ["dog", "dog", "cat", "owl"],
                         "p_cat": [0.1, 0.1, 0.6, 0.2], "p_dog": [0.8, 0.8, 0.3, 0.1],
                         "p_owl": [0.1, 0.1, 0.1, 0.7]})
    fig = plots.misclassified(pred, root, CLASSES, tmp_path, n=16)
    assert_png(fig, tmp_path, "misclassified")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    # most confident first; the unreadable file is drawn as a grey square, not an error
    assert titles == ["true cat\npred dog (0.80)", "true dog\npred owl (0.70)",
                      "true owl\npred cat (0.60)"]
    none_wrong = pred.assign(predicted=pred["label"])
    assert_png(plots.misclassified(none_wrong, root, CLASSES, tmp_path, name="none"), tmp_path,
               "none")


def test_data_figures(tmp_path, image_root):
    root, frame = image_root
    fig = data_plots.class_counts(frame, tmp_path)
    assert_png(fig, tmp_path, "class_counts")
    assert sorted(p.get_height() for p in fig.axes[0].patches if p.get_height() > 0) == \
        [1] * 8 + [2]
    wide = {"train": {"cat": 5, "dog": 3}, "test": {"cat": 2, "dog": 1}}
    assert_png(data_plots.class_counts(wide, tmp_path, name="wide"), tmp_path, "wide")
    assert_png(data_plots.sample_grid(frame, root, CLASSES, tmp_path, per_class=2), tmp_path,
               "sample_grid")
    sizes = pd.DataFrame({"width": [28, 28, 640, 800], "height": [28, 28, 480, 600]})
    fig = data_plots.image_sizes(sizes, tmp_path)
    assert_png(fig, tmp_path, "image_sizes")
    assert "4 images, 3 distinct sizes" in fig.axes[0].get_title()
    policies = {"none": images(3), "flip": images(3)[:, :, ::-1]}
    assert_png(data_plots.augmentation_preview(policies, tmp_path), tmp_path,
               "augmentation_preview")


def test_study_figures(tmp_path):
    table = pd.DataFrame({"trial": ["a", "b", "c"], "status": ["done", "done", "failed"],
                          "test_accuracy": [0.7, 0.8, None],
                          "test_accuracy_ci_low": [0.6, 0.72, None],
                          "test_accuracy_ci_high": [0.78, 0.87, None],
                          "train_seconds": [60, 300, None], "parameters": [1e5, 2e6, None],
                          "backbone_layers_trained": [0, 20, None]})
    assert_png(study_plots.trial_accuracy(table, tmp_path), tmp_path, "trial_accuracy")
    assert_png(study_plots.trial_costs(table, tmp_path), tmp_path, "trial_costs")
    assert_png(study_plots.accuracy_by_depth(table, tmp_path), tmp_path, "accuracy_by_depth")
    summary = {"fold_accuracy": {"fold_0": 0.7, "fold_1": 0.75, "fold_2": 0.8}, "mean": 0.75,
               "ci95": [0.69, 0.81]}
    assert_png(study_plots.fold_accuracy(summary, 0.77, tmp_path), tmp_path, "fold_accuracy")
    nothing = study_plots.trial_accuracy(table.iloc[:0], tmp_path, name="nothing")
    assert nothing.axes[0].texts[0].get_text() == "no finished trial yet"


def test_comparison_figures(tmp_path):
    results = [{"experiment": "baseline", "accuracy": 0.91, "macro_f1": 0.90},
               {"experiment": "vgg19", "accuracy": 0.93, "macro_f1": 0.92}]
    fig = plots.leaderboard(results, tmp_path)
    assert_png(fig, tmp_path, "leaderboard")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["vgg19", "baseline"]
    matrix = pd.DataFrame([[0, 0.2], [0.2, 0]], index=["a", "b"], columns=["a", "b"])
    assert_png(plots.disagreement(matrix, tmp_path), tmp_path, "disagreement")


def test_figures_show_inline_as_png(tmp_path):
    fig = plots.per_class_scores({"per_class": {"a": {"precision": 1, "recall": 1, "f1": 1,
                                                      "support": 1}}}, None)
    assert fig._repr_png_().startswith(PNG)
    assert not (tmp_path / "figures").exists()


def test_grad_cam_heatmaps_on_a_nested_model(tmp_path):
    model = nested_model()
    heatmaps, probs, layer = explain.grad_cam_heatmaps(model, images(3))
    assert layer == "backbone/conv2"
    assert heatmaps.shape == (3, 16, 16)
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1
    assert np.ptp(heatmaps) > 0.1 and np.isclose(heatmaps.max(), 1, atol=1e-3)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    other, _, _ = explain.grad_cam_heatmaps(model, images(3), class_index=0, layer="conv1")
    assert other.shape == (3, 16, 16) and not np.allclose(other, heatmaps)
    fig = plots.grad_cam(model, images(3), CLASSES, tmp_path, labels=[0, 1, 2])
    assert_png(fig, tmp_path, "grad_cam")
    assert fig.axes[0].get_title().startswith("true cat\npred ")


def test_feature_maps_of_an_early_and_a_late_layer(tmp_path):
    model = nested_model()
    fig = plots.feature_maps(model, images(1)[0], tmp_path, channels=4)
    assert_png(fig, tmp_path, "feature_maps")
    row_titles = [ax.get_title() for ax in fig.axes[::5]]
    assert row_titles == ["backbone/conv1\n16x16x6", "backbone/conv2\n8x8x8"]
