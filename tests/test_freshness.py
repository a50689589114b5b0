from __future__ import annotations

import os
import shutil

import pytest
from PIL import Image

from features import CacheError, FeatureCache, cache_path, check_fresh, extract, pending_extraction

from .conftest import extract_config


@pytest.fixture
def tiny(tmp_path):
    """A data folder of six images and its cache (resnet34 only)."""
    for split, names in (("train/a", "12"), ("train/b", "34"), ("test", "56")):
        (tmp_path / "data" / split).mkdir(parents=True)
        for name in names:
            Image.new("RGB", (40, 40), (40 * int(name), 0, 0)).save(tmp_path / "data" / split / f"{name}.png")
    extract(extract_config(tmp_path / "data", tmp_path / "work", backbones=("resnet34",)))
    return tmp_path / "data", tmp_path / "work"


def test_an_unchanged_folder_is_fresh_and_a_changed_split_is_named(tiny):
    data, workdir = tiny
    with FeatureCache(cache_path(workdir)) as cache:
        check_fresh(cache, ["train", "test"])
        assert pending_extraction(cache, ["resnet34"]) == []
        os.utime(data / "train" / "a" / "1.png", ns=(10**18, 10**18))
        with pytest.raises(CacheError, match=r"split 'train'.*rewritten, touched or relabeled.*cnnfeat extract --data"):
            check_fresh(cache, ["train"])
        check_fresh(cache, ["test"])  # only the split asked about
        shutil.move(data / "train" / "b" / "3.png", data / "train" / "a" / "3.png")  # moved to another class
        assert [(s, why) for s, _, why in pending_extraction(cache, ["resnet34"])] == [("train", "files added, removed or changed")]


def test_a_gone_split_or_an_unreachable_folder(tiny, tmp_path):
    data, workdir = tiny
    shutil.rmtree(data / "test")
    with FeatureCache(cache_path(workdir)) as cache:
        with pytest.raises(CacheError, match="test/ is gone from"):
            check_fresh(cache, ["test"])
    shutil.move(data, tmp_path / "moved")  # another machine: the cache is all there is, and is trusted
    with FeatureCache(cache_path(workdir)) as cache:
        check_fresh(cache, ["train", "test"])
        assert "the next run needs --data" in pending_extraction(cache)[0][2]


def test_pending_extraction_names_missing_backbones_and_views(tiny):
    _, workdir = tiny
    with FeatureCache(cache_path(workdir)) as cache:
        pending = pending_extraction(cache)
    assert ("train", "inception", "not extracted yet") in pending and ("test", "densenet121", "not extracted yet") in pending
    assert not any(name == "resnet34" for _, name, _ in pending)
