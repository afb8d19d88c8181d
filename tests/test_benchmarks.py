"""The benchmarks still run and write their figures (tiny settings; speed is never asserted)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.trains  # not in `make check`

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """The benchmarks folder importable as scripts see it (``from common import ...``)."""
    sys.path.insert(0, str(BENCHMARKS))
    yield
    sys.path.remove(str(BENCHMARKS))


def check_json(path: Path, keys: set[str], targets: set[str] | None = None) -> dict:
    result = json.loads(path.read_text())
    assert {"cpu_count", "memory_gib", "device", "versions"} <= set(result["machine"])
    assert set(result["ratios"]) == keys
    assert all(isinstance(v, float | int) and v > 0 for v in result["ratios"].values())
    assert set(result["targets"]) == (keys if targets is None else targets)
    return result


def test_pipeline_benchmark_writes_its_ratios(bench, tmp_path):
    import pipeline

    out = tmp_path / "pipeline.json"
    status = pipeline.main(["--images", "24", "--image-size", "32", "--batch-size", "8",
                            "--repeats", "1", "--photos-dir", str(tmp_path), "--json", str(out)])
    assert status == 0
    result = check_json(out, set(pipeline.TARGETS))
    figures = result["figures"]
    assert figures["images"] == 24
    assert len(list((tmp_path / "photos-24").rglob("*.jpg"))) == 24
    assert all(figures[f"images_per_second.{k}"] > 0 for k in pipeline.LABELS.values())


def test_photo_is_large_and_photo_like(bench):
    import io

    import numpy as np
    import pipeline

    image = pipeline.photo(np.random.default_rng(1))
    assert image.size == pipeline.PHOTO_SIZE and image.mode == "RGB"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    assert 15_000 < len(buffer.getvalue()) < 200_000     # a real photo's size, not flat, not noise


def test_throughput_benchmark_writes_its_ratio(bench, tmp_path):
    import throughput

    root = throughput.png_folder(40, tmp_path)
    out = tmp_path / "throughput.json"
    status = throughput.main(["--data", str(root), "--images", "40", "--batch-size", "8",
                              "--repeats", "1", "--json", str(out)])
    assert status == 0
    result = check_json(out, {"pipeline_vs_in_memory", "xla_vs_off"}, {"pipeline_vs_in_memory"})
    assert "40 training images" in result["figures"]["data"]
    assert result["figures"]["images_per_second.pipeline_xla"] > 0
    assert result["figures"]["pipeline_xla.jit_compile"] is True


@pytest.mark.slow
def test_feature_cache_benchmark_writes_its_ratio(bench, tmp_path):
    import feature_cache

    out = tmp_path / "feature_cache.json"
    status = feature_cache.main(["--backbones", "vgg19@32", "--images", "64", "--batch-size",
                                 "32", "--repeats", "1", "--cached-epochs", "2",
                                 "--json", str(out)])
    assert status == 0
    figures = check_json(out, {"vgg19"})["figures"]
    assert figures["vgg19.extraction_seconds"] > 0
    assert len(figures["vgg19.cached_epochs"]) == 2 and len(figures["vgg19.in_loop_epochs"]) == 1


def test_determinism_benchmark_trains_both_ways_and_writes_its_ratio(bench, tmp_path):
    """Catches two trainings with the deterministic setting (seeds, op determinism) that end
    with other weights: the benchmark exits 1."""
    import determinism

    out = tmp_path / "determinism.json"
    assert determinism.main(["--images", "128", "--size", "16", "--epochs", "2",
                             "--json", str(out)]) == 0
    figures = check_json(out, {"determinism_off_vs_on"}, set())["figures"]
    assert figures["identical_weights_on"] is True
    assert figures["epoch_seconds_on"] > 0 and figures["epoch_seconds_off"] > 0


def test_stem_benchmark_times_both_first_blocks_and_writes_its_ratio(bench, tmp_path):
    """Catches a strided stem that computes its first convolution at full size."""
    import stem

    out = tmp_path / "stem.json"
    assert stem.main(["--size", "48", "--batch", "4", "--steps", "1", "--repeats", "2",
                      "--json", str(out)]) == 0
    figures = check_json(out, {"strided_vs_pooled"})["figures"]
    macs = figures["first_conv_multiply_adds"]
    assert macs["strided"] * 4 == macs["pooled"]
    assert all(len(r) == 2 for r in figures["images_per_second_rounds"].values())


def test_hashing_benchmark_finds_the_planted_copies_and_writes_its_ratios(bench, tmp_path):
    """Catches a banded pair search that misses a pair every-pair comparison finds (exit 1)."""
    import hashing

    out = tmp_path / "hashing.json"
    assert hashing.main(["--images", "300", "--sample", "303", "--json", str(out)]) == 0
    figures = check_json(out, {"pool_vs_one_process", "banded_vs_all_pairs"}, set())["figures"]
    assert figures["images"] == 303 and figures["pairs_found"] >= 1   # 2 of the 3 here: a
    # quality-60 copy of a 32-64 px noisy image can move more than 6 bits of 64
    assert figures["sample_pairs_banded"] == figures["sample_pairs_all_compared"]


def test_feature_cache_names_unknown_backbones(bench, capsys):
    import feature_cache

    assert feature_cache.parse_backbone("inceptionv3@75") == ("inceptionv3", 75)
    with pytest.raises(argparse.ArgumentTypeError, match="unknown backbone 'resnet'.*vgg19"):
        feature_cache.parse_backbone("resnet@32")
    with pytest.raises(argparse.ArgumentTypeError, match="vgg19@<pixels>"):
        feature_cache.parse_backbone("vgg19")
    with pytest.raises(SystemExit):                        # the command line says why
        feature_cache.main(["--backbones", "resnet@32"])
    assert "unknown backbone 'resnet'" in capsys.readouterr().err


def test_run_all_summarises_ratios_against_targets(bench):
    import run_all

    results = {"pipeline": (0, 1.0, {"ratios": {"a": 2.5, "b": 0.5}, "targets": {"a": 1.0,
                                                                                 "b": 1.0}}),
               "end_to_end": (0, 1.0, None)}
    rows = run_all.summary_rows(results)
    assert [(r["ratio"], r["met"]) for r in rows] == [("a", True), ("b", False)]


def test_data_size_benchmark_measures_every_step_and_cleans_up(bench, tmp_path):
    import data_size

    out = tmp_path / "data_size.json"
    status = data_size.main(["--sizes", "50,200", "--tmp", str(tmp_path), "--json", str(out)])
    assert status == 0
    result = json.loads(out.read_text())
    steps, memory_steps = data_size.STEPS, data_size.MEMORY_STEPS
    assert set(result["ratios"]) == ({f"{s}_seconds.200_vs_50" for s in steps}
                                     | {f"{s}_peak_rss.200_vs_50" for s in memory_steps}
                                     | set(data_size.TARGETS))
    assert all(v > 0 for v in result["ratios"].values())
    assert result["targets"] == data_size.TARGETS
    figures = result["figures"]
    for n in (50, 200):
        assert figures[f"{n}.files"] == n and figures[f"{n}.train_images"] == n * 8 // 10
        assert all(figures[f"{n}.seconds.{s}"] > 0 for s in steps)
        assert all(figures[f"{n}.peak_rss_mib.{s}"] >= figures[f"{n}.baseline_rss_mib"] > 0
                   for s in steps)
        assert figures[f"{n}.epoch_cache"] == "memory"      # "auto", far below its limit
        disk = {k: figures[f"{n}.disk_bytes.{k}"] for k in
                ("check_cache", "split_files", "epoch_cache", "disk_cache", "dataset")}
        assert disk.pop("epoch_cache") == 0 and min(disk.values()) > 0
        assert disk["check_cache"] > n * 50                  # a row per file
    assert figures["200.first_check_files_per_second"] > 0
    assert set(tmp_path.iterdir()) == {out}                  # the generated folders are gone


def test_data_size_folders_are_real_varied_jpegs(bench, tmp_path):
    import data_size
    from PIL import Image

    sizes = set()
    for seed_run in ("a", "b"):
        data_size.jpeg_folder(tmp_path / seed_run, 12)
        for path in sorted((tmp_path / seed_run).rglob("*.jpg")):
            with Image.open(path) as im:
                im.load()
                assert im.format == "JPEG" and im.mode == "RGB"
                sizes.add(im.size)
    assert len(list((tmp_path / "a").rglob("*.jpg"))) == 12
    assert len({p.parent.name for p in (tmp_path / "a").rglob("*.jpg")}) == len(
        data_size.CLASSES)
    assert len(sizes) > 3 and all(32 <= side <= 64 for size in sizes for side in size)
    assert all((tmp_path / "a" / p.relative_to(tmp_path / "b")).read_bytes() == p.read_bytes()
               for p in (tmp_path / "b").rglob("*.jpg"))        # the same seed, the same files
    with pytest.raises(argparse.ArgumentTypeError, match="--sizes"):
        data_size.sizes_arg("1000,lots")


def test_performance_page_shows_the_newest_figures_of_each_benchmark(tmp_path):
    import os
    import subprocess
    from datetime import UTC, datetime

    bench_dir, out = tmp_path / "bench", tmp_path / "performance.md"
    bench_dir.mkdir()
    cpu = {"cpu_count": 2, "memory_gib": 23.5, "device": "CPU (2 cores)",
           "platform": "Linux-x86_64", "load_average": [5.12, 6.3, 7.01],
           "versions": {"python": "3.11.7", "tensorflow": "2.21.0", "keras": "3.15.1"}}

    def write(name: str, result: dict, day: int) -> None:     # as common.report writes them
        path = bench_dir / name
        path.write_text(json.dumps(result, indent=2))
        stamp = datetime(2026, 11, day, 12, tzinfo=UTC).timestamp()
        os.utime(path, (stamp, stamp))

    def throughput(pipeline: float, ratio: float) -> dict:
        return {"benchmark": "training throughput: baseline CNN, pipeline vs in-memory, XLA",
                "machine": cpu, "figures": {"data": "fashion-mnist (3000 training images)",
                                            "images_per_second.pipeline": pipeline,
                                            "epoch_seconds": {"pipeline": [2.1, 2.2]}},
                "ratios": {"pipeline_vs_in_memory": ratio, "xla_vs_off": 0.39},
                "targets": {"pipeline_vs_in_memory": 0.9}}

    write("throughput.json", throughput(1642.5, 0.96), 30)
    write("throughput_old.json", throughput(111.1, 0.123), 1)      # older: left out
    write("pipeline.json", {
        "benchmark": "input pipeline: images/second, shared vs Keras loaders",
        "machine": cpu | {"device": "GPU: NVIDIA H200", "load_average": [0.5, 0.4, 0.3]},
        "figures": {"images": 1000, "images_per_second.shared_first_epoch": 1281.9},
        "ratios": {"first_epoch_vs_image_data_generator": 1.7},
        "targets": {"first_epoch_vs_image_data_generator": 2.0}}, 28)
    write("summary.json", {"machine": cpu, "seconds": 1.0, "ratios": [], "benchmarks": {}}, 30)

    code = ("import sys; sys.path.insert(0, sys.argv[1]); import performance_page; "
            "performance_page.main(sys.argv[2:]); assert 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code, str(BENCHMARKS), "--bench-dir", str(bench_dir),
                    "--out", str(out)], check=True)
    page = out.read_text()
    assert "do not edit" in page.lower() and "make performance" in page

    def rows(part: str) -> dict[str, list[str]]:       # figure -> [value, target]
        cells = [[c.strip() for c in line.strip("|").split("|")]
                 for line in part.splitlines() if line.startswith("| ")]
        return {c[0]: c[1:] for c in cells}

    throughput_part = page.split("## throughput")[1]
    table = rows(throughput_part)
    assert table["ratio: pipeline_vs_in_memory"] == ["0.96", "≥ 0.9 (met)"]
    assert table["ratio: xla_vs_off"] == ["0.39", ""]                   # no target invented
    assert table["images_per_second.pipeline"] == ["1642.5", ""]
    assert "`.venv/bin/python benchmarks/throughput.py`" in throughput_part
    assert "2 CPU cores, 23.5 GiB, no GPU, load average 5.12 / 6.3 / 7.01" in throughput_part
    assert "2026-11-30" in throughput_part
    assert "111.1" not in page and "0.123" not in page and "2026-11-01" not in page
    pipeline_part = page.split("## pipeline")[1].split("## throughput")[0]
    assert rows(pipeline_part)["ratio: first_epoch_vs_image_data_generator"] == [
        "1.7", "≥ 2 (MISSED)"]
    assert "GPU: NVIDIA H200" in pipeline_part and "2026-11-28" in pipeline_part
    assert rows(pipeline_part)["images_per_second.shared_first_epoch"] == ["1281.9", ""]
    not_measured = page.split("**Not measured**")[1].split("##")[0]
    assert "feature_cache" in not_measured and "throughput" not in not_measured


def test_the_residual_variant_costs_about_what_the_plain_stack_costs(bench):
    """Catches a residual network compared at another cost than the stack it would replace."""
    import recipe

    from shared.models import networks
    from shared.training import recipes

    plain = recipes.baseline_architecture(96)
    residual = recipe.residual_architecture(plain, 96)
    assert residual["residual"] and residual["convs_per_block"] == 2
    costs = [recipe.conv_macs(networks.build_baseline((96, 96, 3), 8, **a))
             for a in (plain, residual)]
    assert 0.8 < costs[1] / costs[0] < 1.25, costs


def test_the_near_duplicates_benchmark_finds_every_copy(bench, tmp_path):
    import near_duplicates

    from tests.conftest import make_class_folder

    folder = make_class_folder(tmp_path / "photos", per_class=10, size=(48, 48))
    out = tmp_path / "near_duplicates.json"
    assert near_duplicates.main(["--data", str(folder), "--copies", "12", "--json",
                                 str(out)]) == 0
    figures = json.loads(out.read_text())["figures"]
    assert figures["copies_found"] == figures["copies"] == 12
