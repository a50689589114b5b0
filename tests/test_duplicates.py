from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from features import CacheError, ExtractConfig, FeatureCache, cache_path, extract
from pipeline.report import SIMILARITY, find_duplicates
from pipeline.report import duplicates as duplicates_module
from tests.conftest import IMAGE_SIZE, make_digits

# copied into test/ from the first training scan of a class: (class, size in pixels, JPEG quality)
PLANTED = [("0", 61, 70), ("4", 100, 85), ("9", 48, 60)]


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """106 distinct digit scans (10 classes x 8 train + 2 valid, 6 test) and, in test/, three resized, re-encoded
    copies of training images; resnet34 features with seeded random weights."""
    root = tmp_path_factory.mktemp("planted")
    data = make_digits.write_digits(root / "data", list(range(10)), 8, 2, 6, size=IMAGE_SIZE)
    copies = {}
    for number, (label, size, quality) in enumerate(PLANTED, start=101):
        source = sorted((data / "train" / label).glob("*.jpg"))[0]
        with Image.open(source) as image:
            image.resize((size, size), Image.LANCZOS).save(data / "test" / f"{number}.jpg", quality=quality)
        copies[source.relative_to(data).as_posix()] = f"test/{number}.jpg"
    extract(ExtractConfig(data=data, workdir=root / "work", backbones=("resnet34",), weights="random",
                          image_size=IMAGE_SIZE, batch_size=32, workers=0))
    return root / "work", copies


def test_planted_copies_are_the_only_pairs(planted):
    workdir, copies = planted
    with FeatureCache(cache_path(workdir)) as cache:
        found = find_duplicates(cache, SIMILARITY)
    assert found.backbone == "resnet34" and found.images == 109
    assert {(p.path_a, p.split_a, p.path_b, p.split_b) for p in found.pairs} == \
        {(source, "train", copy, "test") for source, copy in copies.items()}
    assert found.found == 3 and found.counts() == {("train", "test"): 3}
    assert [p.similarity for p in found.pairs] == sorted((p.similarity for p in found.pairs), reverse=True)


def test_search_in_blocks_is_exact_and_keeps_the_most_similar(planted, monkeypatch):
    workdir, _ = planted
    with FeatureCache(cache_path(workdir)) as cache:
        whole = find_duplicates(cache, 0.3)
        monkeypatch.setattr(duplicates_module, "BLOCK_BYTES", 4 * 109 * 7)  # blocks of 7 rows
        blocks = find_duplicates(cache, 0.3)
        monkeypatch.setattr(duplicates_module, "MAX_PAIRS", 5)
        capped = find_duplicates(cache, 0.3)
    assert len(whole.pairs) > 5 and whole.found == len(whole.pairs)
    assert [(p.path_a, p.path_b) for p in blocks.pairs] == [(p.path_a, p.path_b) for p in whole.pairs]
    assert np.allclose([p.similarity for p in blocks.pairs], [p.similarity for p in whole.pairs], atol=1e-4)
    assert capped.found == whole.found and capped.pairs == blocks.pairs[:5]


def test_a_named_backbone_must_have_features_for_every_split(planted):
    workdir, _ = planted
    with FeatureCache(cache_path(workdir)) as cache, pytest.raises(CacheError, match="those that do: resnet34"):
        find_duplicates(cache, SIMILARITY, "densenet121")
