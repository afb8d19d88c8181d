"""The gpu profile, run end to end on a CPU: every notebook through the real runner with the
gpu profile's image sizes, batch sizes, augmentation and code paths, its counts shrunk
($SHARED_SHRINK=1: a handful of images, one epoch, one trial; config.SHRUNK). Mixed precision
stays off here (it needs a GPU), which the reports say."""

from __future__ import annotations

import json

import pytest

from shared import config, files, results
from shared.run import order
from tests.conftest import run_all

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("gpu") / "reports" / "gpu"
    return run_all(run_dir, "gpu", **{config.ENV_SHRINK: "1"})   # the kernels inherit it


def test_shrinking_changes_counts_only(monkeypatch):
    full = config.settings("gpu", "vgg19")
    monkeypatch.setenv(config.ENV_SHRINK, "1")
    shrunk = config.settings("gpu", "vgg19")
    changed = {k for k in full if full[k] != shrunk[k]}
    assert changed and changed <= set(config.SHRUNK), changed
    assert shrunk["image_size"] == 224 and shrunk["batch_size"] == full["batch_size"]
    assert config.settings("gpu", "backbones")["trials"] == ["vgg16"]


@pytest.mark.end_to_end
def test_every_notebook_runs_with_the_gpu_profile(gpu_run):
    run_dir, code, out = gpu_run
    state = json.loads((run_dir / "runner.json").read_text())["notebooks"]
    assert code == 0, out[-3000:]
    assert set(state) == {p.stem for p in order.list_notebooks()}
    assert {r["status"] for r in state.values()} == {"ok"}, state
    sizes = {}
    for folder in results.experiment_dirs(run_dir):
        metrics = files.read_json(folder / "metrics.json")
        assert metrics["profile"] == "gpu", folder.name
        sizes[folder.name] = metrics.get("settings", {}).get("image_size")
    # the gpu profile's own sizes, not the smoke or cpu ones
    assert sizes["vgg19"] == 224 and sizes["inceptionv3"] == 299
    recorded = files.read_json(run_dir / "baseline" / "metrics.json")
    baseline = recorded["settings"]
    # augment "auto": Fashion-MNIST keeps flip, without a probe (shared.training.probe)
    assert baseline["augment"] == "flip" and baseline["batch_size"] == 64
    assert "no probe" in recorded["derived_settings"]["augment"]["why"]
    assert baseline["mixed_precision"] is True
