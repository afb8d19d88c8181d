"""The machine a result was made on: library versions and the device, as recorded in
metrics.json, on the index pages and in the benchmarks' files."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

PACKAGES = ("tensorflow", "keras", "numpy", "pandas", "scikit-learn")


def library_versions() -> dict:
    """Versions of Python, the libraries the results depend on, and the platform (read from
    the installed packages' metadata, without importing them)."""
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions | {"platform": platform.platform()}


def code_version(repo: Path = REPO_ROOT) -> dict:
    """The repository's commit and whether tracked files differ from it (``dirty``; files git
    does not track, such as reports/ and data/, do not count). Both None outside a git
    checkout or without git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def code_text(code: dict | None) -> str:
    """``code_version()`` as a reader sees it: "1a2b3c4d5e6f", "1a2b3c4d5e6f with uncommitted
    changes", or "unknown"."""
    if not code or not code.get("commit"):
        return "unknown"
    return code["commit"][:12] + (" with uncommitted changes" if code.get("dirty") else "")


def device_description() -> str:
    """"GPU: <names>" where TensorFlow sees GPUs, else "CPU (<n> cores)"."""
    try:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            names = [tf.config.experimental.get_device_details(g).get("device_name", g.name)
                     for g in gpus]
            return "GPU: " + ", ".join(names)
    except Exception:  # noqa: BLE001 - the description is informative only
        pass
    return f"CPU ({os.cpu_count()} cores)"


def describe() -> dict:
    """Library versions, the code's version, device and core count, as recorded on the index
    page."""
    return {"versions": library_versions(), "code": code_version(),
            "device": device_description(), "cpu_count": os.cpu_count()}
