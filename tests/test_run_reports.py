"""The run's reports of data.prepare: skipped.csv names every file left out and why, and
dataset.json (with Split.info) names exactly the train/test pairs of identical files."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from conftest import BAD_FILES, GOOD_ODD_FILES, make_class_folder

from shared import data

CFG = dict(seed=7, val_fraction=0.2, test_fraction=0.2, per_class=None, test_per_class=None)


def read_csv(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_skipped_csv_names_each_bad_file_with_its_reason(salted_folder, tmp_path):
    """Catches skipped.csv missing a bad file, listing a good one, or giving the wrong reason
    (and split.csv holding a file that was skipped)."""
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="class 'empty' has no usable images"):
        split = data.prepare(salted_folder, run, CFG)
    skipped = read_csv(run / "skipped.csv")
    assert list(skipped.columns) == ["path", "reason"]
    reasons = dict(zip(skipped["path"], skipped["reason"], strict=True))
    expected = {**BAD_FILES, "empty/": "class 'empty' has no usable images",
                "empty/.DS_Store": "hidden file", "loose.jpg": "not inside a class folder"}
    assert sorted(reasons) == sorted(expected)
    for path, words in expected.items():
        assert words in reasons[path], (path, reasons[path])
    assert reasons["cat/empty.jpg"] == "empty file (0 bytes)"
    assert reasons["cat/notes.txt"] == "not an image file (extension '.txt')"
    assert reasons["cat/.ipynb_checkpoints/"] == "hidden folder"

    kept = set(read_csv(run / "split.csv")["path"])
    assert set(GOOD_ODD_FILES) <= kept and not kept & set(reasons)
    info = json.loads((run / "dataset.json").read_text())
    assert info["skipped"] == len(expected) and info["leakage"] == []
    assert split.skipped.to_dict("records") == skipped.to_dict("records")
    again = data.prepare(salted_folder, run, CFG)           # read back by a later notebook
    assert again.skipped.to_dict("records") == skipped.to_dict("records")
    assert f"skipped    {len(expected)} file(s)" in data.summary(again)


def test_dataset_json_names_exactly_the_leaked_pairs(split_folder, tmp_path):
    """Catches leakage reports that miss a train/test pair, name the files the wrong way
    round, or count copies within train or between train and val as leakage."""
    shutil.copy(split_folder / "train/b/003.png", split_folder / "test/b/copy.png")
    shutil.copy(split_folder / "train/b/005.png", split_folder / "val/b/copy.png")   # not test
    shutil.copy(split_folder / "train/a/002.jpg", split_folder / "train/a/again.jpg")  # in train
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="2 file\\(s\\) in train have identical copies in test"):
        split = data.prepare(split_folder, run, CFG)
    pairs = [{"train_path": "train/a/001.png", "test_path": "test/a/leak.png"},
             {"train_path": "train/b/003.png", "test_path": "test/b/copy.png"}]
    assert json.loads((run / "dataset.json").read_text())["leakage"] == pairs
    assert split.info["leakage"] == pairs
    again = data.prepare(split_folder, run, CFG)
    assert again.info["leakage"] == pairs
    assert "leakage    2 train/test pair(s)" in data.summary(again)


def test_leakage_follows_the_run_split_not_the_folders(tmp_path):
    """Catches leakage looked up in the dataset's own folders (none for class folders) instead
    of in the run's split: copies that the split puts in train and in test are reported, copies
    that stay in one part or go to val are not."""
    root = make_class_folder(tmp_path / "dups", ("x", "y"), per_class=10)
    copies = {}
    for c in ("x", "y"):
        for i in range(0, 10, 2):
            source = f"{c}/{i:03d}.jpg"
            copy = f"{c}/{i:03d}_copy.jpg"
            shutil.copy(root / source, root / copy)
            copies[source] = copy
    with pytest.warns(UserWarning, match="identical copies in test"):
        split = data.prepare(root, tmp_path / "run", {**CFG, "test_fraction": 0.3})
    where = dict(zip(split.frame["path"], split.frame["split"], strict=True))
    expected = sorted(
        (a, b) if where[a] == "train" else (b, a) for a, b in copies.items()
        if {where[a], where[b]} == {"train", "test"})
    assert expected                           # the seed puts some copies across train/test
    assert len(expected) < len(copies)        # and some not
    got = [(p["train_path"], p["test_path"]) for p in split.info["leakage"]]
    assert got == expected
    info = json.loads((tmp_path / "run" / "dataset.json").read_text())
    assert [(p["train_path"], p["test_path"]) for p in info["leakage"]] == expected
