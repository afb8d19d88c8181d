"""The real notebooks through the real runner, once (smoke profile, Fashion-MNIST): the
results land in the run folder, the index lists them, every figure a notebook computes is in
its report, no library noise, readable files, conclusions from the results, the studies' trials
and best trials, the ensemble after them, and a rerun of 01 marks its readers (02, 04) stale."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat

import nbformat
import pandas as pd
import pytest

from shared import config, files, results
from shared.run import runner
from shared.studies import study
from tests.conftest import run_all

pytestmark = [pytest.mark.slow, pytest.mark.end_to_end]

EXPERIMENTS = ("baseline", "vgg19", "inceptionv3", "backbones", "fine_tuning", "search",
               "ablations", "cross_validation", "ensemble")
NOTEBOOKS = ("00_data", "01_baseline_cnn", "02_vgg19_transfer", "03_inceptionv3_quasi_svm",
             "04_ensemble", "05_backbones", "06_fine_tuning_depth", "07_search", "08_ablations",
             "09_cross_validation", "10_data_quality")
STUDY_TRIALS = {"backbones": ["vgg16", "densenet121-cut1"],   # the smoke profile's
                "fine_tuning": ["top-1", "three-stage"],
                "ablations": [f"{change}@seed{seed}" for change in
                              ("reference", "augment=mixup", "train_per_class=10")
                              for seed in (1, 2)]}
# TensorFlow's C++ log lines, printed before its logging is set up
CPP_NOISE = re.compile(r"cpu_feature_guard|oneDNN custom operations|cuInit|cudart_stub|"
                       r"absl::InitializeLog|^[IWE]\d{4} \d\d:\d\d:\d\d|"
                       r"triggered tf\.function retracing", re.MULTILINE)
# what draws a figure in a notebook cell: a function of plots, data_plots or study_plots, or
# a figure the ensemble returns
FIGURE_CALL = re.compile(r"\b\w*plots\.\w+\(|\[\"figures\"\]\[")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """(run directory, exit code, printed output) of `run-all` over the real notebooks."""
    return run_all(tmp_path_factory.mktemp("real") / "reports" / "real", "smoke")


def executed(run_dir, name):
    return nbformat.read(run_dir / f"{name}.ipynb", as_version=4)


def test_every_notebook_completes_and_its_results_land_in_the_run(real_run):
    """Catches a notebook writing its results anywhere but the run_dir it was given."""
    run_dir, code, out = real_run
    state = json.loads((run_dir / "runner.json").read_text())["notebooks"]
    assert code == 0, out[-3000:]
    assert {n: r["status"] for n, r in state.items()} == {n: "ok" for n in NOTEBOOKS}
    assert (run_dir / "split.csv").is_file()
    for name in EXPERIMENTS:
        assert results.is_complete(run_dir / name), name
        metrics = files.read_json(run_dir / name / "metrics.json")
        assert metrics["profile"] == "smoke" and metrics["dataset"] == "fashion-mnist"
    index = (run_dir / "index.html").read_text()
    for name in EXPERIMENTS:
        assert f'href="{name}/"' in index
    for name in NOTEBOOKS:
        assert f'href="{name}.html"' in index


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_figure_a_notebook_computes_is_in_its_report(real_run, name):
    """Catches figures that are saved but never shown (a call ended with `;`)."""
    nb = executed(real_run[0], name)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        drawn = len(FIGURE_CALL.findall(cell.source))
        shown = sum("image/png" in output.get("data", {}) for output in cell.outputs)
        assert shown == drawn, f"{name} cell {i}: {drawn} figure(s) computed, {shown} shown"
    html = (real_run[0] / f"{name}.html").read_text()
    assert html.count("data:image/png;base64") >= sum(
        len(FIGURE_CALL.findall(c.source)) for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_no_report_shows_tensorflow_cpp_log_lines(real_run, name):
    nb = executed(real_run[0], name)
    texts = [output.get("text", "") for cell in nb.cells if cell.cell_type == "code"
             for output in cell.outputs]
    noisy = [t[:200] for t in texts if CPP_NOISE.search(t)]
    assert not noisy, f"{name}: {noisy}"


def test_the_data_quality_audit_writes_its_tables_and_compares_cleaning(real_run):
    folder = real_run[0] / "data_quality"
    summary = files.read_json(folder / "summary.json")
    split = pd.read_csv(real_run[0] / "split.csv")
    assert summary["images"] == len(split) and summary["hashed"] == len(split)
    assert summary["scored_out_of_fold"] == split["split"].isin(["train", "val"]).sum()
    issues = pd.read_csv(folder / "label_issues.csv")
    assert len(issues) == summary["label_issues"] and set(issues["split"]) <= {"train", "val"}
    assert set(pd.read_csv(folder / "near_duplicates.csv").columns) >= {
        "path_a", "path_b", "distance", "similarity", "kind"}
    assert summary["cleaning"]["comparison"]["images"] == (split["split"] == "test").sum()


def test_the_studies_write_their_trials_and_the_ensemble_votes_over_their_best(real_run):
    run_dir = real_run[0]
    for name, trials in STUDY_TRIALS.items():
        table = study.read_trials(run_dir / name)
        assert table["trial"].tolist() == trials, name
        assert (table["status"] == "done").all(), table.to_dict("records")
        assert table["test_accuracy_ci_low"].le(table["test_accuracy"]).all()
        best = files.read_json(run_dir / name / "metrics.json")
        assert best["trial"] == study.best_trial(table) and best["study"] == name
        assert (run_dir / name / "model.keras").is_file()
        assert not list((run_dir / name / "trials").glob("*/model.keras"))
    cut = study.read_trials(run_dir / "backbones").set_index("trial").loc["densenet121-cut1"]
    assert int(cut["parameters"]) == 4_852_298   # one dense block removed, 10 classes
    three = study.read_trials(run_dir / "fine_tuning").set_index("trial").loc["three-stage"]
    assert set(files.read_json(run_dir / "fine_tuning" / "trials" / "three-stage" /
                               "metrics.json")["recipes"]) == {"head", "fine_tune_top",
                                                               "fine_tune_all"}
    assert int(three["backbone_layers_trained"]) > 0
    ensemble = files.read_json(run_dir / "ensemble" / "metrics.json")
    assert {"backbones", "fine_tuning"} <= set(ensemble["member_image_sizes"])
    order = list(files.read_json(run_dir / "runner.json")["notebooks"])
    assert order[-1] == "04_ensemble", order
    for notebook, what in (("05_backbones", "backbone trial"), ("06_fine_tuning_depth",
                                                                 "schedule")):
        text = conclusion(run_dir, notebook)
        assert f"The best {what} by validation accuracy is" in text, text
        if best["weights_source"].startswith("random"):
            assert text.startswith("ImageNet weights were not loaded"), text


def test_the_search_writes_its_trials_and_its_best_trial(real_run):
    run_dir = real_run[0]
    table = study.read_trials(run_dir / "search")
    assert (table["status"] == "done").sum() >= 1, table.to_dict("records")
    hyperparameters = {"blocks", "filters", "dropout", "l2", "learning_rate", "optimizer",
                       "augment"}
    assert hyperparameters <= set(table.columns)
    best = files.read_json(run_dir / "search" / "metrics.json")
    assert best["study"] == "search" and best["trial"] == study.best_trial(table)
    assert hyperparameters <= set(best["trial_settings"])
    assert (run_dir / "search" / "tuner" / "oracle.json").is_file()
    assert (run_dir / "search" / "figures" / "accuracy_by_hyperparameter.png").is_file()


def test_the_ablations_say_what_helps_beyond_seed_noise(real_run):
    run_dir = real_run[0]
    for figure in ("ablation_accuracy", "learning_curve"):
        assert (run_dir / "ablations" / "figures" / f"{figure}.png").is_file(), figure
    seeds = {files.read_json(run_dir / "ablations" / "trials" / f"reference@seed{k}" /
                             "metrics.json")["settings"]["train_seed"] for k in (1, 2)}
    assert seeds == {1, 2}
    assert "Beyond seed noise (Welch's t-test" in conclusion(run_dir, "08_ablations")


def test_cross_validation_reports_its_folds_and_its_final_model(real_run):
    run_dir = real_run[0]
    table = study.read_trials(run_dir / "cross_validation")
    assert table["trial"].tolist() == ["fold-1", "fold-2"]    # the smoke profile's 2 folds
    assert (table["status"] == "done").all(), table.to_dict("records")
    metrics = files.read_json(run_dir / "cross_validation" / "metrics.json")
    cv = metrics["cross_validation"]
    assert list(cv["fold_accuracy"].values()) == pytest.approx(table["val_accuracy"].tolist())
    assert cv["ci95"][0] <= cv["mean"] <= cv["ci95"][1]
    split = files.read_json(run_dir / "dataset.json")["counts"]
    assert metrics["images"]["test"] == sum(split["test"].values())    # the whole test split
    assert not metrics["images"].get("val")                    # val was trained on
    assert cv["final_train_images"] == cv["pool_images"]
    assert metrics["fold_ensemble"]["members"] == 2
    text = conclusion(run_dir, "09_cross_validation")
    assert "on the held-out folds" in text and "McNemar" in text, text


def test_result_files_are_readable_by_other_users(real_run):
    """Catches files left with mkstemp's 0600 mode."""
    expected = 0o666 & ~files.current_umask()
    run_dir = real_run[0]
    for path in [run_dir / "index.html", run_dir / "split.csv", run_dir / "01_baseline_cnn.html",
                 *[run_dir / name / "metrics.json" for name in EXPERIMENTS],
                 run_dir / "baseline" / "model.keras"]:
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_metrics_record_what_shaped_each_model(real_run):
    run_dir = real_run[0]
    baseline = files.read_json(run_dir / "baseline" / "metrics.json")
    assert baseline["architecture"]["builder"] == "build_baseline"
    assert baseline["architecture"]["input_shape"] == [28, 28, 3]
    assert baseline["recipes"]["train"]["optimizer"] == "adam"
    assert baseline["settings"]["augment"] == "flip" and baseline["seed"] == 42

    vgg = files.read_json(run_dir / "vgg19" / "metrics.json")
    assert vgg["architecture"]["backbone"] == "vgg19"
    assert vgg["architecture"]["head"]["kind"] == "dense"
    assert set(vgg["recipes"]) == {"head", "fine_tune"}
    assert vgg["recipes"]["fine_tune"]["learning_rate"] == vgg["settings"]["fine_tune_lr"]

    svm = files.read_json(run_dir / "inceptionv3" / "metrics.json")
    assert svm["architecture"]["head"]["kind"] == "quasi_svm"
    assert svm["architecture"]["head"]["output_dim"] == 4096
    assert svm["recipes"]["quasi_svm"]["loss"] == "categorical_hinge"

    ensemble = files.read_json(run_dir / "ensemble" / "metrics.json")
    used = ensemble["params"]["members"]
    assert ensemble["params"]["total"] == sum(
        files.read_json(run_dir / m / "metrics.json")["params"]["total"] for m in used)


def test_metrics_carry_tta_and_the_baseline_its_dog_comparison(real_run):
    """Catches a notebook dropping test-time augmentation, or 01 its DoG comparison."""
    run_dir = real_run[0]
    for name, notebook in zip(EXPERIMENTS[:3], NOTEBOOKS[1:4], strict=True):
        metrics = files.read_json(run_dir / name / "metrics.json")
        tta = metrics["tta"]
        per_class = metrics["settings"]["tta_per_class"]     # 5 for the backbones in smoke
        expected = per_class * len(metrics["class_names"]) if per_class else \
            metrics["images"]["test"]
        assert tta["views"] == 4 and tta["images"] == expected, name
        assert 0 <= tta["plain_accuracy"] <= 1 and 0 <= tta["mcnemar_p"] <= 1
        printed = "".join(o.get("text", "") for c in executed(run_dir, notebook).cells
                          for o in c.get("outputs", []))
        assert "Test-time augmentation averages the probabilities of 4 views" in printed
    baseline = files.read_json(run_dir / "baseline" / "metrics.json")
    dog = baseline["dog_comparison"]
    for arm in ("without", "with"):
        assert results.is_complete(run_dir / dog["folder"] / arm), arm
    assert dog["comparison"]["images"] == baseline["images"]["test"]
    assert "difference-of-Gaussians" in conclusion(run_dir, "01_baseline_cnn")


def conclusion(run_dir, name) -> str:
    nb = executed(run_dir, name)
    return "".join(o.get("text", "") for o in nb.cells[-1].outputs)


def test_conclusions_answer_the_notebooks_questions(real_run):
    run_dir = real_run[0]
    vgg = conclusion(run_dir, "02_vgg19_transfer")
    weights = files.read_json(run_dir / "vgg19" / "metrics.json")["weights_source"]
    if weights.startswith("random"):   # no ImageNet weights on this machine: said first
        assert vgg.startswith("ImageNet weights could not be loaded on this machine")
    assert "this run's baseline CNN" in vgg and "after phase 1 alone" in vgg
    assert vgg.count("McNemar") == 2
    svm = conclusion(run_dir, "03_inceptionv3_quasi_svm")
    assert "the dense head it replaced" in svm and "McNemar" in svm
    data = conclusion(run_dir, "00_data")
    assert "classes are balanced" in data and "Every file was readable" in data


def test_a_rerun_of_the_baseline_marks_its_readers_stale(real_run, tmp_path, capsys):
    """Catches 04 losing the metadata that says it reads the run's results, or 02 (which
    reads the baseline's, metadata "after") kept as complete."""
    run_dir = tmp_path / "reports" / "again"
    shutil.copytree(real_run[0], run_dir)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(config.ENV_FRESH, raising=False)
        code = runner.main(["run", "--nb", "01", "--fresh", "--profile", "smoke",
                            "--data", "fashion-mnist", "--run", str(run_dir)])
    assert code == 0
    assert "STALE: 02_vgg19_transfer, 04_ensemble" in capsys.readouterr().out
    state = json.loads((run_dir / "runner.json").read_text())["notebooks"]
    assert state["04_ensemble"]["status"] == state["02_vgg19_transfer"]["status"] == "stale"
    assert state["01_baseline_cnn"]["status"] == state["03_inceptionv3_quasi_svm"]["status"] \
        == "ok"
    assert (run_dir / "baseline" / "previous" / "metrics.json").is_file()
    assert os.path.getmtime(run_dir / "baseline" / "metrics.json") > \
        os.path.getmtime(real_run[0] / "baseline" / "metrics.json")
