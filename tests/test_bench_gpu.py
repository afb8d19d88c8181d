"""`make bench-gpu` (benchmarks/gpu.py): one line and exit 0 without a GPU; with one (here
forced onto the CPU with tiny settings) it measures and writes its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.trains  # not in `make check`

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"


@pytest.fixture(scope="module")
def gpu():
    sys.path.insert(0, str(BENCHMARKS))
    import gpu

    yield gpu
    sys.path.remove(str(BENCHMARKS))


def test_without_a_gpu_it_says_so_in_one_line_and_exits_cleanly(gpu, tmp_path, capsys):
    import tensorflow as tf

    assert not tf.config.list_physical_devices("GPU"), "this test expects a machine without GPU"
    assert gpu.main(["--json", str(tmp_path / "gpu.json")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == ["bench-gpu: TensorFlow sees no GPU on this machine; nothing "
                                "was measured"]
    assert not (tmp_path / "gpu.json").exists()


def test_make_bench_gpu_runs_the_script():
    dry = subprocess.run(["make", "-n", "bench-gpu"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert "benchmarks/gpu.py" in dry


def test_the_gpu_profile_sizes_every_backbone(gpu):
    from shared.models import backbones

    assert gpu.gpu_settings("vgg19")[0] == 224 and gpu.gpu_settings("inceptionv3")[0] == 299
    for name, spec in backbones.BACKBONES.items():
        size, batch, _ = gpu.gpu_settings(name)
        assert size >= spec.min_size and batch >= 1, name


def test_it_measures_and_writes_its_figures(gpu, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu, "BENCH_DIR", tmp_path)
    out = tmp_path / "gpu.json"
    assert gpu.main(["--allow-cpu", "--backbones", "vgg16", "--image-size", "32",
                     "--batch-size", "4", "--steps", "2", "--repeats", "1", "--images", "8",
                     "--precisions", "float32", "--xla", "off", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    figures = result["figures"]
    assert figures["vgg16.float32.xla_off.images_per_second"] > 0
    assert figures["vgg16.pipeline.cached_epoch_images_per_second"] > 0
    assert set(result["ratios"]) == {"vgg16.pipeline_vs_model"} == set(result["targets"])
