"""`make predict` with a damaged model folder: a one-line error naming the file and what to do,
exit status 1, no traceback from inside a library."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from test_predict import save_experiment

from shared.serve import predict

pytestmark = pytest.mark.trains  # not in `make check`


def damage(folder, how):
    metrics, model = folder / "metrics.json", folder / "model.keras"
    if how == "truncated metrics.json":
        metrics.write_bytes(metrics.read_bytes()[:25])
        return metrics
    if how == "truncated model.keras":
        model.write_bytes(model.read_bytes()[:600])
        return model
    metrics.write_text(json.dumps({"experiment": "baseline", "image_size": 8}))  # no classes
    return metrics


CASES = ["truncated metrics.json", "truncated model.keras", "metrics.json without class_names"]


@pytest.fixture
def damaged(tmp_path):
    """One run folder per case, and a folder with an image to predict."""
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "a.png")
    folders = {}
    for i, how in enumerate(CASES):
        folder, _ = save_experiment(tmp_path / f"run{i}", "baseline", 8, seed=1)
        folders[how] = (folder, damage(folder, how))
    return images, folders


def test_a_damaged_model_folder_is_a_one_line_error(tmp_path, damaged, capfd):
    """The command's own main(), in this process: what it prints at the file descriptors is what
    a terminal would show (TensorFlow's start-up is the only thing a subprocess would add)."""
    images, folders = damaged
    for i, (how, (folder, file)) in enumerate(folders.items()):
        code = predict.main(["--model", str(folder), "--images", str(images),
                             "--out", str(tmp_path / f"{i}.csv")])
        stderr = capfd.readouterr().err
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert code == 1, (how, stderr[-2000:])
        assert "Traceback" not in stderr, (how, stderr[-2000:])
        assert len(errors) == 1, (how, stderr[-2000:])
        assert errors[0].startswith(f"error: {file} "), errors[0]
        assert errors[0].endswith(f"run that experiment again: make run NB=01_baseline_cnn "
                                  f"RUN={folder.parent} FRESH=1, or delete {folder}"), errors[0]
        assert not (tmp_path / f"{i}.csv").exists()
    assert "without class_names" in CASES[2] and "lacks class_names" in errors[0]
