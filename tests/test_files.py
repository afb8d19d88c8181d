"""Result files behave like any file the user writes: umask permissions, data on the disk."""

from __future__ import annotations

import os
import stat

import pandas as pd
import pytest

from shared import files


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_result_files_follow_the_umask(tmp_path, mask):
    """Catches the temporary file keeping mkstemp's 0600 (colleagues cannot read results)."""
    old = os.umask(mask)
    try:
        written = [files.write_text(tmp_path / "a.txt", "x"),
                   files.write_json(tmp_path / "m.json", {"a": 1}),
                   files.write_csv(tmp_path / "p.csv", pd.DataFrame({"a": [1]})),
                   files.write_with(tmp_path / "w.bin", lambda p: p.write_bytes(b"1"))]
    finally:
        os.umask(old)
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path.name
    assert files.current_umask() == old


def test_the_file_reaches_the_disk_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    """Catches a rename without fsync (a power cut could leave an empty file)."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        events.append(("fsync", os.path.basename(target)))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    files.write_json(tmp_path / "metrics.json", {"accuracy": 0.9})
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    assert events[0][1].startswith(".metrics.json.")   # the temporary file, before the rename
    assert events[2][1] == tmp_path.name                 # its folder, after it
    assert files.read_json(tmp_path / "metrics.json") == {"accuracy": 0.9}


def test_a_failed_writer_leaves_the_old_file_and_no_temporary_one(tmp_path):
    target = files.write_text(tmp_path / "r.txt", "old")

    def fail(path):
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.write_with(target, fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.txt"]


def test_a_folder_that_cannot_be_synced_does_not_fail_the_write(tmp_path, monkeypatch):
    real = files._fsync

    def fsync(path):
        if os.path.isdir(path):
            raise OSError(22, "Invalid argument")     # as some network file systems answer
        real(path)

    monkeypatch.setattr(files, "_fsync", fsync)
    assert files.write_text(tmp_path / "a.txt", "x").read_text() == "x"
