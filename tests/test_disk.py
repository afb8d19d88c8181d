"""Disk: a finished experiment keeps one model file, an unfinished one its checkpoints, and
`prune-models` frees the models of old runs while their results and pages still read."""

from __future__ import annotations

import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_class_folder

from shared import config, data, results
from shared.evaluation import evaluate
from shared.files import read_json
from shared.models import networks
from shared.reporting import pages
from shared.run import prune
from shared.serve import loading
from shared.training import experiment, recipes
from shared.training.fitting import fit

pytestmark = pytest.mark.trains  # not in `make check`

SIZE = 16


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run folder with the split of 3 small classes and a baseline trained for one epoch
    (checkpoints and logs written, not yet finished), plus the model and the split."""
    base = tmp_path_factory.mktemp("disk")
    root = make_class_folder(base / "images", per_class=8, size=(SIZE, SIZE))
    run_dir = base / "run"
    split = data.prepare(root, run_dir, dict(seed=1, val_fraction=0.25, test_fraction=0.25,
                                             per_class=None, test_per_class=None))
    experiment.set_seed(0)
    model = networks.build_baseline((SIZE, SIZE, 3), 3, blocks=1, dense=())
    x = np.random.default_rng(0).uniform(0, 255, (12, SIZE, SIZE, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices(
        (x, keras.utils.to_categorical(np.arange(12) % 3, 3))).batch(4)
    fit(model, ds, ds, recipes.Recipe(epochs=1, patience=None), run_dir / "baseline")
    (run_dir / "baseline" / "backup" / "train").mkdir(parents=True, exist_ok=True)
    return run_dir, model, split


def finished_run(trained, tmp_path, **settings):
    """A copy of the trained run whose baseline went through evaluate.finish."""
    source, model, split = trained
    run_dir = tmp_path / "reports" / "old-run"
    shutil.copytree(source, run_dir)
    cfg = dict(out_dir=run_dir / "baseline", experiment="baseline", profile="smoke", seed=1,
               dataset="images", image_size=SIZE, batch_size=4) | settings
    evaluate.finish(model, split, cfg)
    return run_dir


def test_a_finished_experiment_keeps_one_model_file(trained, tmp_path):
    """Catches finish leaving the checkpoints (270 MB beside VGG19's model.keras)."""
    assert (trained[0] / "baseline" / "checkpoints" / "train-final.weights.h5").is_file()
    out = finished_run(trained, tmp_path) / "baseline"
    assert not (out / "checkpoints").exists() and not (out / "backup").exists()
    assert results.is_complete(out) and (out / "model.keras").is_file()
    assert (out / "logs" / "train.csv").is_file() and (out / "history.csv").is_file()


def test_model_keras_holds_no_optimizer_state(trained, tmp_path):
    """Catches model.keras carrying Adam's slots (VGG19 fine-tuned: 133 MB instead of 78)."""
    import zipfile

    import h5py

    out = finished_run(trained, tmp_path) / "baseline"
    with zipfile.ZipFile(out / "model.keras") as archive, \
            archive.open("model.weights.h5") as raw, h5py.File(raw) as weights:
        names = []
        weights.visit(names.append)
    assert any(name.startswith("layers/") for name in names)
    assert not [name for name in names if name.startswith("optimizer/") and "/vars/" in name]
    assert trained[1].optimizer is not None      # the model in memory keeps its optimizer
    reloaded = keras.saving.load_model(out / "model.keras", compile=False)
    x = np.zeros((2, SIZE, SIZE, 3), "float32")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), trained[1].predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_keep_checkpoints_keeps_them(trained, tmp_path):
    assert config.settings("smoke", "vgg19")["keep_checkpoints"] is False
    out = finished_run(trained, tmp_path, keep_checkpoints=True) / "baseline"
    assert (out / "checkpoints" / "train-best.keras").is_file() and (out / "backup").is_dir()


def test_an_unfinished_experiment_keeps_its_checkpoints(trained, tmp_path):
    """Catches deleting what resumes an interrupted run (no metrics.json yet)."""
    out = tmp_path / "baseline"
    shutil.copytree(trained[0] / "baseline", out)
    assert results.remove_checkpoints(out) == 0
    assert (out / "checkpoints" / "train-final.weights.h5").is_file()


def test_a_rerun_of_a_finished_experiment_without_checkpoints_trains_again(
        trained, tmp_path, monkeypatch, capsys):
    """Its phases cannot be loaded: the old results go to previous/, none is mixed in."""
    out = finished_run(trained, tmp_path) / "baseline"
    monkeypatch.setattr(data, "prepare", lambda *args: "split")
    monkeypatch.setattr(data, "training_data", lambda split, cfg: ("train", "val", None))
    monkeypatch.setattr(experiment, "derive_settings", lambda cfg, split, **options: {})
    cfg = config.settings("smoke", "baseline", image_size=SIZE, batch_size=4) | {
        "out_dir": out, "run_dir": out.parent, "dataset": "x", "fresh": False}
    experiment.start(cfg)
    assert "trains again from scratch" in capsys.readouterr().out
    assert (out / "previous" / "metrics.json").is_file() and not (out / "metrics.json").exists()
    study = tmp_path / "study"                   # finished, but trained in its trials folders
    study.mkdir()
    (study / "metrics.json").write_text("{}")
    assert not experiment._checkpoints_deleted(study)


def test_prune_models_frees_models_and_keeps_results(trained, tmp_path, capsys):
    run_dir = finished_run(trained, tmp_path)
    unfinished = run_dir / "vgg19"
    shutil.copytree(trained[0] / "baseline", unfinished)        # checkpoints, no metrics.json
    kept = {p.relative_to(run_dir) for p in run_dir.rglob("*") if p.is_file()}

    results = prune.prune_models(run_dir.parent, run="old-run")
    assert set(results[0]["freed"]) == {"baseline"} and "vgg19" in results[0]["kept"]
    assert "old-run: freed" in capsys.readouterr().out
    out = run_dir / "baseline"
    assert not (out / "model.keras").exists()
    assert read_json(out / config.MODEL_FREED)["removed"] == ["model.keras"]
    left = {p.relative_to(run_dir) for p in run_dir.rglob("*") if p.is_file()}
    assert kept - left == {out.relative_to(run_dir) / "model.keras"}
    assert (unfinished / "checkpoints" / "train-final.weights.h5").is_file()

    with pytest.warns(UserWarning, match="vgg19: skipped"):          # the index still renders
        assert "baseline" in pages.write_index(run_dir).read_text()
    with pytest.raises(loading.PredictError, match="freed by `make prune-models`.*make run "
                                                   "NB=01_baseline_cnn RUN=.*FRESH=1"):
        loading.load_model(out)


def test_prune_models_keeps_the_newest_runs(trained, tmp_path, capsys):
    old = finished_run(trained, tmp_path)
    new = old.parent / "new-run"
    shutil.copytree(old, new)
    (new / results.STATE_FILE).write_text('{"started": "2030-01-01T00:00:00"}')
    (old / results.STATE_FILE).write_text('{"started": "2020-01-01T00:00:00"}')
    assert prune.list_runs(old.parent) == [new, old]
    assert prune.main(["prune-models", "--keep", "1", "--reports", str(old.parent)]) == 0
    assert (new / "baseline" / "model.keras").is_file()
    assert not (old / "baseline" / "model.keras").exists()
    assert prune.main(["prune-models", "--reports", str(old.parent)]) == 2
    assert "give either --keep N" in capsys.readouterr().err
