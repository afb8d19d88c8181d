"""A full disk while writing results or training state: one clear error naming the file and the
free space, the previous complete version intact, no temporary file left, and a rerun resumes.

The failures are simulated: the write raises OSError(ENOSPC) after writing part of the file, as
a real full disk does, and shutil.disk_usage reports a known free space.
"""

from __future__ import annotations

import errno
import json
import shutil
from collections import namedtuple
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from test_train import FAST, dataset, tiny_baseline

from shared import files, training
from shared.training import callbacks, experiment, recipes

pytestmark = pytest.mark.trains  # not in `make check`

FREE = 3 * 1024**2 + 512 * 1024     # what the patched disk_usage reports: "3.5 MiB"
Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def free_space(monkeypatch):
    """shutil.disk_usage reports FREE bytes; the folders it was asked about are listed."""
    asked = []

    def disk_usage(path):
        asked.append(Path(path))
        return Usage(10 * FREE, 9 * FREE, FREE)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    return asked


def no_space(path, partial=b"half-written"):
    """Write the first bytes of a file, then fail as a full disk does."""
    Path(path).write_bytes(partial)
    raise OSError(errno.ENOSPC, "No space left on device")


def leftovers(folder: Path) -> list[str]:
    """Temporary files of shared.files (hidden, beside their targets)."""
    return sorted(p.name for p in folder.rglob(".*") if p.is_file())


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_while_writing_metrics_keeps_the_old_file(tmp_path, monkeypatch, free_space,
                                                              code):
    """Catches a raw OSError without the file's name, a half-written temporary file left, or an
    old metrics.json replaced."""
    target = files.write_json(tmp_path / "metrics.json", {"accuracy": 0.91, "status": "complete"})
    old = target.read_bytes()
    real = Path.write_bytes

    def write_bytes(self, data):
        if self.name.startswith(".metrics.json."):
            real(self, data[:5])
            raise OSError(code, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    new = {"accuracy": 0.95, "per_class": list(range(200))}
    with pytest.raises(files.DiskFullError) as caught:
        files.write_json(target, new)
    error = caught.value
    assert isinstance(error, OSError) and error.errno == code
    assert error.path == target and error.free == FREE
    message = str(error)
    assert str(target) in message and "3.5 MiB free" in message
    size = len(json.dumps(new, indent=2).encode()) + 1
    assert error.size == size and f"{files.human_bytes(size)} to write" in message
    assert free_space[-1] == tmp_path            # the free space of the target's file system
    assert target.read_bytes() == old            # the earlier complete results, intact
    assert leftovers(tmp_path) == [] and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]

    monkeypatch.undo()                           # space again: the write goes through
    assert files.read_json(files.write_json(target, new)) == new


def test_a_full_disk_deep_inside_a_library_is_recognised(tmp_path, free_space):
    """h5py and zipfile raise their own OSError(28, ...) or chain it: still a DiskFullError,
    with the size written so far; other OSErrors pass unchanged."""
    target = tmp_path / "model.keras"

    def chained(path):
        try:
            no_space(path)
        except OSError as error:
            raise RuntimeError("could not save the model") from error

    with pytest.raises(files.DiskFullError, match=r"model\.keras \(3\.5 MiB free on its file "
                                                  r"system, at least 12 bytes to write\)"):
        files.write_with(target, chained)
    with pytest.raises(PermissionError):
        files.write_with(target, lambda p: (_ for _ in ()).throw(PermissionError(13, "denied")))
    assert leftovers(tmp_path) == [] and not target.exists()


def test_require_space_fails_before_writing(tmp_path, free_space):
    files.require_space(tmp_path / "cache" / "tfdata-64px", FREE)
    with pytest.raises(files.DiskFullError, match=r"tfdata-64px \(3\.5 MiB free on its file "
                                                  r"system, 4\.0 MiB to write\)"):
        files.require_space(tmp_path / "cache" / "tfdata-64px", 4 * 1024**2)


# ---------------------------------------------------------------------------------------------
# training


class Count(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def fit(out_dir, *extra):
    experiment.set_seed(3)
    return training.fit(tiny_baseline(), dataset(shuffle=True), dataset(seed=1),
                        recipes.Recipe(epochs=4, **FAST), out_dir, callbacks=list(extra))


@pytest.mark.parametrize("failing", ["history", "backup"])
def test_a_full_disk_during_training_stops_clearly_and_the_rerun_resumes(tmp_path, monkeypatch,
                                                                         free_space, failing):
    """The write of epoch 2's backup, or of its history row (written after the backup), fails.
    Catches a raw OSError, epoch 2's row lost when the backup is ahead of the history (the
    rerun would give history 1, 3, 4), and a damaged backup (the rerun would start again from
    epoch 1 or fail to load)."""
    real_to_csv, real_save_weights = pd.DataFrame.to_csv, keras.Model.save_weights

    def to_csv(self, path=None, *args, **kwargs):
        if failing == "history" and Path(str(path)).name.startswith(".history.csv.") \
                and len(self) == 2:
            no_space(path)
        return real_to_csv(self, path, *args, **kwargs)

    saves = []

    def save_weights(self, path, *args, **kwargs):
        if Path(str(path)).name.startswith(".latest.weights.h5."):
            saves.append(path)
            if failing == "backup" and len(saves) == 2:
                no_space(path)
        return real_save_weights(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
    monkeypatch.setattr(keras.Model, "save_weights", save_weights)
    with pytest.raises(files.DiskFullError) as caught:
        fit(tmp_path)
    named = {"history": tmp_path / "history.csv",
             "backup": tmp_path / "backup" / "train" / "latest.weights.h5"}[failing]
    assert caught.value.path == named
    assert str(named) in str(caught.value) and "3.5 MiB free" in str(caught.value)
    assert leftovers(tmp_path) == []
    history = callbacks.read_history(tmp_path)
    backup = files.read_json(tmp_path / "backup" / "train" / "training_metadata.json")
    assert history.epoch.tolist() == [1]                   # epoch 2's row: not written
    assert backup["epoch"] == (2 if failing == "history" else 1)   # the last backup saved whole
    assert not (tmp_path / "checkpoints" / "train-final.weights.h5").exists()

    monkeypatch.undo()                                     # space again
    count = Count()
    history = fit(tmp_path, count)
    assert count.epochs == list(range(backup["epoch"], 4))  # zero-based: after the backup
    assert history.epoch.tolist() == [1, 2, 3, 4] and history.loss.notna().all()
    assert not (tmp_path / "backup" / "train").exists()
    assert leftovers(tmp_path) == []


def test_a_full_disk_while_saving_the_best_model_keeps_the_previous_best(tmp_path, monkeypatch,
                                                                         free_space):
    """callbacks.AtomicModelCheckpoint (Keras' ModelCheckpoint writes in place: the same
    failure leaves the previous best model truncated and raises OSError without a file name)."""
    best = tmp_path / "checkpoints" / "train-best.keras"
    real_save = keras.Model.save
    saved = []

    def save(self, path, *args, **kwargs):
        saved.append(path)
        if len(saved) == 2:
            no_space(path)
        return real_save(self, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", save)
    model = tiny_baseline()
    model.compile("adam", "categorical_crossentropy")
    first = []
    keep = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: first.append(
        [np.copy(w) for w in model.get_weights()]) if epoch == 0 else None)
    checkpoint = callbacks.AtomicModelCheckpoint(str(best), monitor="loss", save_best_only=False)
    with pytest.raises(files.DiskFullError, match=r"train-best\.keras \(3\.5 MiB free"):
        model.fit(dataset(), epochs=3, callbacks=[keep, checkpoint], verbose=0,
                  shuffle=False)
    assert leftovers(tmp_path) == []
    loaded = keras.saving.load_model(best, compile=False)  # epoch 1's model, whole
    for a, b in zip(loaded.get_weights(), first[0], strict=True):
        np.testing.assert_array_equal(a, b)
