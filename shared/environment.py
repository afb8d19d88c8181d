"""The machine a result was made on: library versions and the device, as recorded in
metrics.json, on the index pages and in the benchmarks' files."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version

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
    """Library versions, device and core count, as recorded on the index page."""
    return {"versions": library_versions(), "device": device_description(),
            "cpu_count": os.cpu_count()}
