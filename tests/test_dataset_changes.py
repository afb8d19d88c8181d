"""A dataset folder that changed under a run: files added, removed or replaced after the run wrote
its split are found when a later notebook reads the split back, and the run refuses to go on
with a mixed split; unchanged files (touched or copied over with the same bytes) and
Fashion-MNIST never trigger it."""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import write_image

from shared import config, data

CFG = dict(seed=7, val_fraction=0.2, test_fraction=0.2, per_class=None, test_per_class=None)


@pytest.fixture
def run(image_folder, tmp_path, monkeypatch):
    """(dataset folder, run folder) once the run's split is written; reading the split back
    must never load (check) the dataset again."""
    run_dir = tmp_path / "reports" / "my-run"
    data.prepare(image_folder, run_dir, CFG)
    monkeypatch.setattr(data.splits, "load", lambda *a, **k: pytest.fail("dataset loaded"))
    return image_folder, run_dir


def changed(folder, run_dir) -> data.DatasetChangedError:
    with pytest.raises(data.DatasetChangedError) as info:
        data.prepare(folder, run_dir, CFG)
    message = str(info.value)
    assert str(run_dir) in message and str(folder.resolve()) in message
    assert "make run-all RUN=my-run FRESH=1" in message
    assert isinstance(info.value, ValueError)
    return info.value


def test_unchanged_files_read_the_split_back(run):
    folder, run_dir = run
    first = data.prepare(folder, run_dir, CFG)
    os.utime(folder / "cat" / "000.jpg", ns=(1, 1))                # touched: same bytes
    copy = folder / "dog" / "001.png"
    shutil.copyfile(copy, folder / "copy.png")
    os.replace(folder / "copy.png", copy)                           # copied over itself
    again = data.prepare(folder, run_dir, CFG)
    assert again.frame.equals(first.frame)
    write_image(folder / "loose.jpg")       # not part of the dataset: a loose top-level image
    (folder / "cat" / "notes.txt").write_text("not an image")
    data.prepare(folder, run_dir, CFG)


def test_an_added_file_stops_the_run(run):
    folder, run_dir = run
    write_image(folder / "cat" / "new.jpg")
    write_image(folder / "bird" / "sub" / "deeper.png")
    err = changed(folder, run_dir)
    assert err.added == ["bird/sub/deeper.png", "cat/new.jpg"]
    assert err.removed == [] and err.replaced == []
    assert "2 added (e.g. 'bird/sub/deeper.png', 'cat/new.jpg')" in str(err)
    assert "removed" not in str(err) and "replaced" not in str(err)


def test_a_removed_file_stops_the_run(run):
    folder, run_dir = run
    (folder / "dog" / "003.png").unlink()
    err = changed(folder, run_dir)
    assert err.removed == ["dog/003.png"] and err.added == [] and err.replaced == []
    assert "1 removed (e.g. 'dog/003.png')" in str(err)


def test_a_replaced_file_stops_the_run(run):
    folder, run_dir = run
    path = folder / "bird" / "002.jpg"
    stat = path.stat()
    write_image(path, seed=99)                                      # other bytes, same name
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    err = changed(folder, run_dir)
    assert err.replaced == ["bird/002.jpg"] and err.added == [] and err.removed == []
    assert "1 replaced (e.g. 'bird/002.jpg')" in str(err)


def test_every_kind_of_change_is_counted(run):
    folder, run_dir = run
    write_image(folder / "cat" / "new.jpg")
    (folder / "cat" / "001.png").unlink()
    (folder / "cat" / "003.png").unlink()
    (folder / "dog" / "000.jpg").write_bytes(b"")                   # emptied: replaced
    err = changed(folder, run_dir)
    assert "1 added (e.g. 'cat/new.jpg'), 2 removed (e.g. 'cat/001.png', 'cat/003.png'), " \
           "1 replaced (e.g. 'dog/000.jpg')" in str(err)


@pytest.mark.filterwarnings("ignore:1 file.s. in train have identical copies")
def test_labels_file_and_split_folder_datasets(labels_folder, split_folder, tmp_path):
    run_dir = tmp_path / "reports" / "my-run"
    data.prepare(labels_folder, run_dir, CFG)
    labels = labels_folder / "labels.csv"
    labels.write_text(labels.read_text().replace("10000.jpg,0", "10000.jpg,1"))
    assert changed(labels_folder, run_dir).replaced == ["labels.csv"]   # relabelled
    shutil.rmtree(run_dir)
    data.prepare(split_folder, run_dir, CFG)
    write_image(split_folder / "test" / "b" / "late.jpg")
    assert changed(split_folder, run_dir).added == ["test/b/late.jpg"]


def test_fashion_mnist_is_never_compared(tmp_path, monkeypatch):
    from test_data import fake_fashion_gz

    monkeypatch.setattr(config, "DATA_DIR", tmp_path / "data")
    monkeypatch.setattr(data.fashion, "SYSTEM_FASHION_DIR", None)
    fake_fashion_gz(tmp_path / "data" / data.FASHION_MNIST, n_train=40)
    run_dir = tmp_path / "reports" / "fashion"
    first = data.prepare(data.FASHION_MNIST, run_dir, CFG)
    assert not (run_dir / data.splits.FILES_CSV).exists()
    monkeypatch.setattr(data.splits, "scan_files", lambda *a, **k: pytest.fail("scanned"))
    assert data.prepare(data.FASHION_MNIST, run_dir, CFG).frame.equals(first.frame)


def test_runs_written_before_the_check_read_back_as_before(run):
    folder, run_dir = run
    (run_dir / data.splits.FILES_CSV).unlink()
    write_image(folder / "cat" / "new.jpg")
    data.prepare(folder, run_dir, CFG)


@pytest.mark.parametrize("damage", ["truncated", "rows lost", "not json"])
def test_a_damaged_split_is_named_with_what_to_do(tmp_path, image_folder, damage):
    """Catches a truncated split.csv read back as a smaller split, or a JSON traceback."""
    cfg = {"seed": 1, "val_fraction": 0.2, "test_fraction": 0.2, "per_class": None,
           "test_per_class": None}
    run = tmp_path / "run"
    data.prepare(image_folder, run, cfg)
    if damage == "not json":
        target = run / "dataset.json"
        target.write_text(target.read_text()[:40])
    else:
        target = run / "split.csv"
        text = target.read_text()
        target.write_text(text[: len(text) // 2] if damage == "truncated"
                          else "\n".join(text.splitlines()[:-3]) + "\n")
    with pytest.raises(data.DamagedSplitError, match=f"{target.name} is damaged.*FRESH=1"):
        data.prepare(image_folder, run, cfg)
