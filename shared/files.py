"""Whole-file writes: a results file is either complete or absent, never half-written.

Each writer writes to a temporary file beside the target and renames it into place, which is
atomic on POSIX file systems, so a run killed mid-write leaves the previous version (or none).
A full disk (or quota) raises :class:`DiskFullError`, which names the file, the free space and
the size being written; the temporary file is removed and the previous version is untouched.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A write failed because its file system (or the user's quota) is full. ``path``, ``free``
    (bytes free on its file system, None if unknown) and ``size`` (bytes being written, None if
    unknown) say where and how much."""

    def __init__(self, path: str | os.PathLike, free: int | None, size: int | None = None,
                 code: int = errno.ENOSPC, at_least: bool = False):
        self.path, self.free, self.size, self.at_least = Path(path), free, size, at_least
        what = ("" if size is None else
                f", {'at least ' if at_least else ''}{human_bytes(size)} to write")
        free_text = "unknown" if free is None else human_bytes(free)
        super().__init__(code, f"no space left to write {self.path} ({free_text} free on its "
                               f"file system{what}); its previous version, if any, is "
                               "unchanged. Free some space and run the command again",
                         str(self.path))

    def __str__(self) -> str:
        return self.strerror

    def __reduce__(self):
        return type(self), (self.path, self.free, self.size, self.errno, self.at_least)


def is_disk_full(error: BaseException | None) -> bool:
    """Whether ``error`` (or an error it was raised from) says the disk or quota is full."""
    return _disk_full_errno(error) is not None


def _disk_full_errno(error: BaseException | None) -> int | None:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return error.errno
        error = error.__cause__ or error.__context__
    return None


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes free on the file system of ``path`` (its nearest existing folder), None if unknown."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def require_space(path: str | os.PathLike, needed: int) -> None:
    """Raise :class:`DiskFullError` before writing ``needed`` bytes to ``path`` (a file, or the
    prefix of a set of files) when its file system has less free, e.g. before a disk cache of
    decoded images is built."""
    free = free_bytes(Path(path).parent)
    if free is not None and free < needed:
        raise DiskFullError(path, free, needed)


def human_bytes(count: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    if count < 1024:
        return f"{count} bytes"
    value = count / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None, size: int | None = None):
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The file gets the permissions of any file the user creates (0666 less the umask, not
    mkstemp's 0600), and reaches the disk before the rename (fsync of the file, then of the
    folder), so a power cut leaves the old version or the new one, never an empty file. A full
    disk raises :class:`DiskFullError` naming ``path``, the free space and ``size`` (the bytes
    being written; when not given, the temporary file's size when the write failed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:   # Keras wants its own double suffix on weights files
        suffix = ".weights.h5" if path.name.endswith(".weights.h5") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp",
                               dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        _fsync(tmp)
        os.replace(tmp, path)
        with contextlib.suppress(OSError):   # some file systems cannot sync a folder
            _fsync(path.parent)
    except Exception as error:   # a library may wrap the OSError in its own exception
        if isinstance(error, DiskFullError) or not is_disk_full(error):
            raise
        written = os.path.getsize(tmp) if os.path.exists(tmp) else None
        _remove(tmp)    # first, so that the free space reported is what is really free
        raise DiskFullError(path, free_bytes(path.parent), size if size is not None else
                            written, _disk_full_errno(error), at_least=size is None) from error
    finally:
        _remove(tmp)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def current_umask() -> int:
    """The process's umask: read from /proc on Linux (no change to the process), elsewhere
    by setting it and setting it straight back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    encoded = text.encode("utf-8")
    with atomic_path(path, size=len(encoded)) as tmp:
        tmp.write_bytes(encoded)
    return Path(path)


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as indented JSON atomically; NumPy scalars and paths become plain values."""
    return write_text(path, json.dumps(obj, indent=2, default=_plain, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_csv(path: str | os.PathLike, frame, **kwargs) -> Path:
    """Write a pandas DataFrame as CSV atomically (no index unless asked)."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, **kwargs)
    return Path(path)


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Atomically create ``path`` with ``writer(tmp_path)``, e.g. ``model.save`` or ``savefig``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
