"""Distributed search on KerasTuner's own mode: a chief holding the oracle and two workers,
each `python -m shared.studies.search` with KERASTUNER_* set, on 127.0.0.1 and one run folder (the
search on several machines of docs/studies.md). The trials are shared out between the workers,
every one finishes, and the chief writes the best trial as the study's experiment."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from shared import config
from shared.files import read_json
from shared.studies import search, study
from tests.conftest import make_class_folder
from tests.test_multi_worker import free_ports

# python -m shared.studies.search, with the data-check cache out of the repository as in every test
ENTRY = ("import sys; from shared.data import check; check.CHECK_CACHE_DIR = sys.argv.pop(1); "
         "from shared.studies import search; search.main()")
TRIALS = 3


@pytest.mark.slow
@pytest.mark.end_to_end
def test_a_chief_and_two_workers_share_the_trials(tmp_path, monkeypatch):
    images = make_class_folder(tmp_path / "images", per_class=12, size=(16, 16))
    run = tmp_path / "run"
    args = ["--run", str(run), "--profile", "smoke", "--data", str(images), "--tuner",
            "bayesian", "--max-trials", str(TRIALS), "--epochs", "1", "--image-size", "16"]
    (port,) = free_ports(1)
    procs = {}
    for tuner_id in ("chief", "worker0", "worker1"):
        env = os.environ | {"KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": "127.0.0.1",
                            "KERASTUNER_ORACLE_PORT": str(port), "CUDA_VISIBLE_DEVICES": "",
                            "TF_CPP_MIN_LOG_LEVEL": "2", "SHARED_FRESH": ""}
        procs[tuner_id] = subprocess.Popen(
            [sys.executable, "-c", ENTRY, str(tmp_path / "checked"), *args], env=env,
            cwd=config.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = {}
    try:
        for tuner_id, proc in procs.items():
            outputs[tuner_id] = proc.communicate(timeout=180)[0]
            assert proc.returncode == 0, f"{tuner_id}:\n{outputs[tuner_id][-3000:]}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    table = study.read_trials(run / "search")
    assert len(table) == TRIALS and (table["status"] == study.DONE).all(), table
    ran = {tuner_id: [name for name in table["trial"] if f"=== trial {name}:" in out]
           for tuner_id, out in outputs.items()}
    assert ran["chief"] == [], "the chief holds the oracle and runs no trial"
    assert ran["worker0"] and ran["worker1"], ran
    assert sorted(ran["worker0"] + ran["worker1"]) == sorted(table["trial"])
    metrics = read_json(run / "search" / "metrics.json")
    assert metrics["study"] == "search" and metrics["trial"] == study.best_trial(table)

    # the notebook, on the same run afterwards, shows the finished search: no tuner's trial
    # again, only the baseline's default, which a distributed search's chief does not run
    asked = []
    monkeypatch.setattr(search, "run_one", lambda trial, *a: asked.append(trial.name))
    cfg = config.experiment("search", "smoke", str(images), run, tuner="bayesian",
                            max_trials=TRIALS, epochs=1, image_size=16)
    again = search.search(search.start(cfg), cfg)
    assert asked == [search.DEFAULT_TRIAL] and again.equals(table)
