"""make export: each format is written with its check against the Keras model on the run's
test images, and a format that differs fails loudly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_class_folder

from shared import config, data
from shared.files import write_json
from shared.models import networks
from shared.serve import export

pytestmark = pytest.mark.trains  # not in `make check`


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A run with a split of real image files and a finished experiment: a quasi-SVM head on a
    small transfer model (custom layers: the preprocessing and random Fourier features)."""
    tmp = tmp_path_factory.mktemp("export")
    root = make_class_folder(tmp / "photos", ("a", "b", "c"), per_class=6, size=(40, 40))
    run = tmp / "run"
    cfg = {"seed": 1, "val_fraction": 0.2, "test_fraction": 0.3, "per_class": None,
           "test_per_class": None}
    split = data.prepare(root, run, cfg)
    transfer = networks.build_transfer("vgg16", (32, 32, 3), 3, weights=None)
    model = networks.replace_head(transfer, networks.build_head("quasi_svm",
                                                            networks.feature_dim(transfer), 3,
                                                            output_dim=32))
    folder = run / "svm"
    folder.mkdir()
    model.save(folder / "model.keras")
    write_json(folder / "metrics.json", {"experiment": "svm", "image_size": 32,
                                         "class_names": split.class_names,
                                         "status": "complete"})
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("fmt", export.FORMATS)
def test_each_format_is_exported_and_matches_the_keras_model(experiment, fmt):
    check = export.export(experiment, fmt)
    out = experiment / "export" / fmt
    assert check["passed"] and check["images_from"].endswith("test images")
    assert check["max_abs_difference"] <= export.TOLERANCE[fmt]
    assert json.loads((out / "parity.json").read_text()) == check
    written = {"savedmodel": "saved_model.pb", "tflite": "model.tflite", "onnx": "model.onnx"}
    assert (out / written[fmt]).is_file()


def test_an_export_that_differs_fails_and_says_so(experiment, monkeypatch, capsys):
    """Catches a check that passes whatever the export computes."""
    monkeypatch.setattr(export, "_onnx", lambda model, out, pixels: np.full(
        (len(pixels), 3), 1 / 3, dtype=np.float32))
    assert export.main(["--model", str(experiment), "--format", "onnx"]) == 1
    err = capsys.readouterr().err
    assert "differs from the Keras model" in err and "parity.json" in err
    parity = json.loads((experiment / "export" / "onnx" / "parity.json").read_text())
    assert parity["passed"] is False


def test_make_export_passes_its_arguments():
    import subprocess

    out = subprocess.run(["make", "-n", "-C", str(config.REPO_ROOT), "export", "MODEL=r/svm",
                          "FORMAT=tflite", "OUT=/tmp/x"], capture_output=True, text=True,
                         check=True).stdout
    assert '-m shared.serve.export --model "r/svm" --format "tflite" --out "/tmp/x"' in out
    with pytest.raises(export.ExportError, match="choose one of savedmodel, tflite, onnx"):
        export.export("anything", "torchscript")
