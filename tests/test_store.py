from __future__ import annotations

import h5py
import numpy as np
import pytest

from features.errors import CacheError
from features.staging import Staging

from .conftest import stage_rows
from features.store import FeatureCache, SplitContent, commit_cache


def test_rows_no_batch_covered_are_refused_not_left_zero(tmp_path):
    staging = Staging(tmp_path, "train", "resnet34", "k")
    stage_rows(staging, 0, 4)
    stage_rows(staging, 8, 10)  # rows 4-7: a batch another rank staged where this one cannot see it
    content = SplitContent("train", "fp", tuple(f"{i}.jpg" for i in range(10)), np.zeros(10, dtype=np.int64), True,
                           {"resnet34": (staging, {"backbone": "resnet34"}, (3,))})
    with pytest.raises(CacheError, match="rows 4-7 of 10 were never staged"):
        commit_cache(tmp_path / "features.h5", ("c",), "/data", [content])
    assert not (tmp_path / "features.h5").exists() and not list(tmp_path.glob("features.h5.*tmp"))


def test_verify_reads_every_byte(tmp_path):
    staging = Staging(tmp_path, "train", "resnet34", "k")
    stage_rows(staging, 0, 3)
    content = SplitContent("train", "fp", ("a", "b", "c"), np.zeros(3, dtype=np.int64), True,
                           {"resnet34": (staging, {"backbone": "resnet34"}, (3,))})
    commit_cache(tmp_path / "features.h5", ("c",), "/data", [content])
    with FeatureCache(tmp_path / "features.h5") as cache:
        assert cache.verify() == []
        offset = cache._file["train/resnet34"].id.get_chunk_info(0).byte_offset
    data = bytearray((tmp_path / "features.h5").read_bytes())
    data[offset : offset + 8] = b"\x12\x34" * 4  # (0xffff words would not do: Fletcher-32 counts them as 0)
    (tmp_path / "features.h5").write_bytes(bytes(data))
    with FeatureCache(tmp_path / "features.h5") as cache:
        damaged = cache.verify()
    assert len(damaged) == 1 and "train/resnet34" in damaged[0] and "cnnfeat extract --force" in damaged[0]


def test_commit_drops_failed_rows_and_keeps_labels_in_step(tmp_path):
    staging = Staging(tmp_path, "train", "resnet34", "k")
    stage_rows(staging, 0, 3, failed=(1,))
    stage_rows(staging, 3, 5)
    paths = tuple(f"train/c{i % 2}/{i}.jpg" for i in range(5))
    content = SplitContent("train", "fp", paths, np.array([0, 1, 0, 1, 0]), True,
                           {"resnet34": (staging, {"backbone": "resnet34", "pool": "avg"}, (3,))})
    commit_cache(tmp_path / "features.h5", ("c0", "c1"), "/data", [content])
    with FeatureCache(tmp_path / "features.h5") as cache:
        assert cache.paths("train") == [paths[i] for i in (0, 2, 3, 4)]
        assert cache.labels("train").tolist() == [0, 0, 1, 0]
        assert cache.features("train", "resnet34")[:, 0].tolist() == [0, 2, 3, 4]
        assert cache.skipped("train") == [(paths[1], "broken")]
        assert cache.classes == ("c0", "c1") and cache.backbones("train") == ["resnet34"]
        assert cache.features("train", "resnet34", slice(1, 3))[:, 0].tolist() == [2, 3]
    assert not list(tmp_path.glob("features.h5.*tmp"))


def test_backbones_that_skipped_different_files_are_refused(tmp_path):
    first, second = Staging(tmp_path, "train", "a", "k"), Staging(tmp_path, "train", "b", "k")
    stage_rows(first, 0, 3, failed=(1,))
    stage_rows(second, 0, 3)
    content = SplitContent("train", "fp", ("x", "y", "z"), np.zeros(3, dtype=np.int64), True,
                           {"a": (first, {"backbone": "a"}, (3,)), "b": (second, {"backbone": "b"}, (3,))})
    with pytest.raises(CacheError, match="skipped other files"):
        commit_cache(tmp_path / "features.h5", ("c",), "/data", [content])
    assert not (tmp_path / "features.h5").exists() and not list(tmp_path.glob("features.h5.*tmp"))


def test_missing_and_foreign_caches_say_what_to_run(tmp_path):
    with pytest.raises(CacheError, match="no feature cache.*cnnfeat extract"):
        FeatureCache(tmp_path / "features.h5")
    (tmp_path / "features.h5").write_bytes(b"garbage" * 100)
    with pytest.raises(CacheError, match="not a readable HDF5 file.*delete it"):
        FeatureCache(tmp_path / "features.h5")


def test_missing_split_or_backbone_names_what_exists(tmp_path):
    staging = Staging(tmp_path, "train", "resnet34", "k")
    stage_rows(staging, 0, 2)
    content = SplitContent("train", "fp", ("a", "b"), np.zeros(2, dtype=np.int64), True,
                           {"resnet34": (staging, {"backbone": "resnet34"}, (3,))})
    commit_cache(tmp_path / "features.h5", ("c",), "/data", [content])
    with FeatureCache(tmp_path / "features.h5") as cache:
        with pytest.raises(CacheError, match=r"split 'valid' is not in .*\(it has train\)"):
            cache.paths("valid")
        with pytest.raises(CacheError, match="'inception' has no features.*cached: resnet34.*--backbone inception"):
            cache.features("train", "inception")


def test_a_format_1_cache_is_read_and_keeps_no_rows_when_its_files_change(tmp_path):
    staging = Staging(tmp_path, "train", "resnet34", "k")
    stage_rows(staging, 0, 2)
    identities = np.array([[10, 1], [20, 2]], dtype=np.int64)
    content = SplitContent("train", "fp", ("a", "b"), np.zeros(2, dtype=np.int64), True,
                           {"resnet34": (staging, {"backbone": "resnet34"}, (3,))}, identities)
    commit_cache(tmp_path / "features.h5", ("c",), "/data", [content])
    with FeatureCache(tmp_path / "features.h5") as cache:  # format 2: unchanged files are known by their identity
        assert cache.reusable_rows("train", ("a", "b", "new"), np.array([[10, 1], [21, 2], [5, 5]])).tolist() == [
            True, False, False]
    with h5py.File(tmp_path / "features.h5", "r+") as f:  # as cnnfeat 0.2.0 wrote it
        f.attrs["format_version"] = 1
        del f["train/identity"], f["train/skipped_identity"]
    with FeatureCache(tmp_path / "features.h5") as cache:
        assert cache.features("train", "resnet34")[:, 0].tolist() == [0, 1]
        assert not cache.reusable_rows("train", ("a", "b"), identities).any()
