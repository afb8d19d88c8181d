"""Near-duplicates (shared.data.duplicates): resized, re-encoded and brightened copies are found
across the split and within it, distinct photos are not paired, and the pair search compares
only the hashes that share a band."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance

from shared.data import duplicates


def smooth_image(seed: int, size: int = 96) -> Image.Image:
    """A photo-like image: random 6x6 colours blown up smoothly (distinct for each seed)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    return small.resize((size, size), Image.Resampling.BICUBIC)


@pytest.fixture
def planted(tmp_path):
    """20 distinct images in train/ and test/, and three planted copies: a half-size JPEG of
    train/00 in test/, a brightened train/01 in test/, a re-encoded test/15 in test/."""
    for i in range(20):
        part = "train" if i < 14 else "test"
        (tmp_path / part).mkdir(exist_ok=True)
        smooth_image(i).save(tmp_path / part / f"{i:02d}.png")
    originals = {i: Image.open(tmp_path / ("train" if i < 14 else "test") / f"{i:02d}.png")
                 for i in (0, 1, 15)}
    originals[0].resize((48, 48)).convert("RGB").save(tmp_path / "test/copy00.jpg", quality=70)
    ImageEnhance.Brightness(originals[1]).enhance(1.08).save(tmp_path / "test/copy01.png")
    originals[15].convert("RGB").save(tmp_path / "test/copy15.jpg", quality=80)
    paths = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.*"))
    return tmp_path, paths


def test_planted_copies_are_found_and_distinct_images_are_not(planted):
    root, paths = planted
    table = duplicates.hashes(root, paths, workers=1)
    assert len(table) == 23
    pairs = duplicates.near_pairs(table)
    found = {(a, b) for a, b in zip(pairs["path_a"], pairs["path_b"], strict=True)}
    assert found == {("test/copy00.jpg", "train/00.png"), ("test/copy01.png", "train/01.png"),
                     ("test/15.png", "test/copy15.jpg")}
    split = pd.DataFrame({"path": paths, "split": [p.split("/")[0] for p in paths]})
    kinds = duplicates.with_splits(pairs, split).set_index("path_a")["kind"]
    assert kinds["test/copy00.jpg"] == kinds["test/copy01.png"] == "leakage"
    assert kinds["test/15.png"] == "duplicate"


def test_the_same_hashes_come_from_a_pool_of_processes(planted):
    root, paths = planted
    alone = duplicates.hashes(root, paths, workers=1)
    pooled = duplicates.hashes(root, paths * 30, workers=2, chunk=16)   # 690 files
    assert pooled["hash"].tolist() == alone["hash"].tolist() * 30


def test_an_undecodable_file_gets_no_hash(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    smooth_image(1).save(tmp_path / "good.png")
    assert duplicates.hashes(tmp_path, ["bad.jpg", "good.png"], workers=1)["path"].tolist() == \
        ["good.png"]


def test_the_pair_search_compares_few_of_all_pairs():
    """Catches a search that compares every hash with every other (2,000 images: 2 million
    pairs; the bands leave a few tens of thousands)."""
    values = np.random.default_rng(0).integers(0, 2**63, 2000, dtype=np.int64).tolist()
    compared = sum(len(g) * (len(g) - 1) // 2 for g in duplicates.candidate_groups(values, 7))
    assert compared < 2000 * 1999 // 2 // 20
    near = values[0] ^ 0b101       # two bits from the first: found
    table = pd.DataFrame({"path": [f"{i}" for i in range(2001)], "hash": [*values, near]})
    pairs = duplicates.near_pairs(table, threshold=6, min_similarity=None)
    assert ("0", "2000", 2) in set(pairs.itertuples(index=False, name=None))
    with pytest.raises(ValueError, match="threshold must be between 0 and 31"):
        duplicates.near_pairs(table, threshold=40, min_similarity=None)
