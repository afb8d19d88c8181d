"""How far a notebook is, as the runner shows it: small JSON files the notebook's processes write.

The runner gives each notebook's process ``$SHARED_PROGRESS``, a path prefix in the run's
``logs/`` folder. The process that executes the notebook reports the cell (``<prefix>.cell.json``);
the kernel reports the trial of a study and the epoch of a fit (``<prefix>.train.json``). Outside
the runner (a notebook opened by hand, the tests) ``$SHARED_PROGRESS`` is unset and nothing is
written. No TensorFlow here: the runner reads these files without it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ENV = "SHARED_PROGRESS"
KINDS = ("cell", "train")


def path_of(prefix: str | os.PathLike, kind: str) -> Path:
    """The file of ``kind`` ("cell" or "train") for the notebook whose prefix is ``prefix``."""
    if kind not in KINDS:
        raise ValueError(f"progress kind must be one of {KINDS}, not {kind!r}")
    return Path(f"{prefix}.{kind}.json")


def report(kind: str, **fields) -> None:
    """Merge ``fields`` into this process's progress file of ``kind`` (a field None removes
    it). Does nothing outside the runner; a failure to write never stops the notebook."""
    prefix = os.environ.get(ENV)
    if not prefix:
        return
    path = path_of(prefix, kind)
    state = {**read(path), **fields}
    state = {k: v for k, v in state.items() if v is not None}
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        temporary.write_text(json.dumps(state, default=str))
        temporary.replace(path)
    except (OSError, TypeError, ValueError):
        temporary.unlink(missing_ok=True)


def clear(prefix: str | os.PathLike) -> None:
    """Remove the progress files of the notebook whose prefix is ``prefix``."""
    for kind in KINDS:
        path_of(prefix, kind).unlink(missing_ok=True)


def read(path: str | os.PathLike) -> dict:
    """A progress file's fields ({} when it is absent or being replaced)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def describe(prefix: str | os.PathLike) -> str:
    """"cell 7/15 · trial 2/4 vgg16 · epoch 3/5", from what the notebook has reported."""
    cell, train = read(path_of(prefix, "cell")), read(path_of(prefix, "train"))
    parts = []
    if cell.get("cell"):
        parts.append(f"cell {cell['cell']}/{cell.get('cells', '?')}")
    if train.get("trial"):
        name = f" {train['name']}" if train.get("name") else ""
        total = f"/{train['trials']}" if train.get("trials") else ""
        parts.append(f"trial {train['trial']}{total}{name}")
    if train.get("epoch"):
        parts.append(f"epoch {train['epoch']}/{train.get('epochs', '?')}")
    return " · ".join(parts)
