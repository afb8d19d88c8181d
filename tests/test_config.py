"""Profiles: names, auto, overrides, and where a notebook's results go."""

import pytest

from shared import config


def test_unknown_profile_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        config.resolve_profile("laptop")
    for name in ("smoke", "cpu", "gpu", "auto"):
        assert name in str(err.value)


def test_auto_picks_cpu_without_a_gpu_and_says_so(monkeypatch, capsys):
    monkeypatch.setattr(config, "gpu_available", lambda: False)
    assert config.resolve_profile("auto") == "cpu"
    assert "auto -> cpu" in capsys.readouterr().out
    monkeypatch.setattr(config, "gpu_available", lambda: True)
    assert config.resolve_profile("auto") == "gpu"


def test_profile_falls_back_to_the_environment(monkeypatch):
    monkeypatch.setenv(config.ENV_PROFILE, "smoke")
    assert config.resolve_profile(None) == "smoke"


@pytest.mark.parametrize("profile", ["smoke", "cpu", "gpu"])
def test_a_profile_only_sizes_settings_the_defaults_state(profile):
    """Catches a profile introducing a setting of its own (a typo would silently not apply)."""
    for part, values in config.PROFILES[profile].items():
        unknown = set(values) - set(config.DEFAULTS[part])
        assert not unknown, f"{profile}/{part}: {unknown}"
        assert all(config.DEFAULTS[part][k] != v for k, v in values.items()), \
            f"{profile}/{part} repeats a default"
    for experiment in config.EXPERIMENTS:
        assert set(config.settings(profile, experiment)) == \
            set(config.DEFAULTS["common"]) | set(config.DEFAULTS[experiment]) | \
            {"profile", "experiment"}


def test_profiles_size_what_they_say():
    assert config.settings("smoke", "baseline")["epochs"] == 1
    assert config.settings("cpu", "baseline")["learning_rate"] == 2e-3
    assert config.settings("gpu", "inceptionv3")["image_size"] == 299
    assert config.settings("cpu", "vgg19")["class_weight"] is True   # from the defaults


def test_explicit_values_override_single_settings_and_none_keeps_the_profile():
    base = config.settings("smoke", "baseline")
    changed = config.settings("smoke", "baseline", epochs=7, image_size=None)
    assert changed["epochs"] == 7 and base["epochs"] != 7
    assert changed["image_size"] == base["image_size"]
    assert changed["profile"] == "smoke" and changed["experiment"] == "baseline"
    # the profile table itself is never modified by an override
    assert config.settings("smoke", "baseline")["epochs"] == base["epochs"]


def test_an_unknown_setting_is_named():
    with pytest.raises(ValueError, match="epocs"):
        config.settings("smoke", "baseline", epocs=3)
    with pytest.raises(ValueError, match="unknown experiment 'resnet'"):
        config.settings("smoke", "resnet")


def test_run_dir_comes_from_the_argument_the_environment_or_a_stable_default(tmp_path,
                                                                           monkeypatch):
    assert config.resolve_run_dir(tmp_path / "a", "smoke", "x") == (tmp_path / "a").resolve()
    monkeypatch.setenv(config.ENV_RUN_DIR, str(tmp_path / "b"))
    assert config.resolve_run_dir(None, "smoke", "x") == (tmp_path / "b").resolve()
    monkeypatch.delenv(config.ENV_RUN_DIR)
    monkeypatch.setattr(config, "REPORTS_DIR", tmp_path / "reports")
    first = config.resolve_run_dir(None, "cpu", "/data/my leaves/")
    assert first == config.resolve_run_dir(None, "cpu", "/data/my leaves/")
    assert first.name == "interactive-cpu-my-leaves" and first.is_dir()


def test_default_run_name_holds_date_profile_and_dataset():
    import datetime as dt

    name = config.default_run_name("cpu", "fashion-mnist", dt.datetime(2026, 11, 22, 9, 5, 1))
    assert name == "20261122-090501-cpu-fashion-mnist"


def test_experiment_gathers_settings_dataset_and_folders(tmp_path, monkeypatch):
    monkeypatch.setenv(config.ENV_DATA, "/somewhere/leaves")
    cfg = config.experiment("vgg19", "smoke", None, tmp_path / "run", epochs=2)
    assert cfg["dataset"] == "/somewhere/leaves" and cfg["epochs"] == 2
    assert cfg["out_dir"] == (tmp_path / "run" / "vgg19").resolve() and cfg["out_dir"].is_dir()


def test_experiment_decides_fresh_from_the_environment_and_moves_no_result(tmp_path,
                                                                          monkeypatch):
    out = tmp_path / "run" / "baseline"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text("old")
    monkeypatch.delenv(config.ENV_FRESH, raising=False)
    assert config.experiment("baseline", "smoke", "fashion-mnist", tmp_path / "run")["fresh"] \
        is False
    monkeypatch.setenv(config.ENV_FRESH, "1")
    assert config.experiment("baseline", "smoke", "fashion-mnist", tmp_path / "run")["fresh"]
    assert (out / "metrics.json").read_text() == "old" and not (out / "previous").exists()
