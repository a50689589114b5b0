from __future__ import annotations

import numpy as np
import pytest

from features.store import (
    CacheError,
    FeatureCache,
    SplitContent,
    Staging,
    WorkdirBusyError,
    commit_cache,
    workdir_lock,
)


def _stage(staging: Staging, start: int, stop: int, failed: tuple[int, ...] = ()) -> None:
    rows = np.array([r for r in range(start, stop) if r not in failed])
    staging.save(start, stop, rows, rows[:, None].repeat(3, axis=1).astype(np.float32),
                 list(failed), ["broken"] * len(failed))


def test_staging_knows_every_staged_row_gaps_included(tmp_path):
    staging = Staging(tmp_path, "train", "resnet34", "k")
    assert not staging.done_rows(18).any()
    _stage(staging, 0, 4)
    _stage(staging, 4, 8)
    _stage(staging, 12, 16, failed=(13,))  # a gap at 8..12 (another rank's batch, or a killed one)
    expected = [r < 8 or 12 <= r < 16 for r in range(18)]
    assert staging.done_rows(18).tolist() == expected
    assert not list(staging.folder.glob("*.tmp"))


def test_staging_key_depends_on_settings_and_files():
    settings = dict(backbone="resnet34", weights="w", pool="avg", image_size=299, layer="layer4", precision="fp32")
    key = Staging.key(settings, "files")
    assert key == Staging.key({**settings, "torch_version": "other"}, "files")
    assert key != Staging.key({**settings, "pool": "max"}, "files")
    assert key != Staging.key(settings, "other files")


def test_commit_drops_failed_rows_and_keeps_labels_in_step(tmp_path):
    staging = Staging(tmp_path, "train", "resnet34", "k")
    _stage(staging, 0, 3, failed=(1,))
    _stage(staging, 3, 5)
    paths = tuple(f"train/c{i % 2}/{i}.jpg" for i in range(5))
    content = SplitContent("train", "fp", paths, np.array([0, 1, 0, 1, 0]),
                           {"resnet34": (staging, {"backbone": "resnet34", "pool": "avg"}, (3,))})
    commit_cache(tmp_path / "features.h5", ("c0", "c1"), "/data", [content])
    with FeatureCache(tmp_path / "features.h5") as cache:
        assert cache.paths("train") == [paths[i] for i in (0, 2, 3, 4)]
        assert cache.labels("train").tolist() == [0, 0, 1, 0]
        assert cache.features("train", "resnet34")[:, 0].tolist() == [0, 2, 3, 4]
        assert cache.skipped("train") == [(paths[1], "broken")]
        assert cache.classes == ("c0", "c1") and cache.backbones("train") == ["resnet34"]
        assert cache.features("train", "resnet34", slice(1, 3))[:, 0].tolist() == [2, 3]
    assert not (tmp_path / "features.h5.tmp").exists()


def test_backbones_that_skipped_different_files_are_refused(tmp_path):
    first, second = Staging(tmp_path, "train", "a", "k"), Staging(tmp_path, "train", "b", "k")
    _stage(first, 0, 3, failed=(1,))
    _stage(second, 0, 3)
    content = SplitContent("train", "fp", ("x", "y", "z"), np.zeros(3, dtype=np.int64),
                           {"a": (first, {"backbone": "a"}, (3,)), "b": (second, {"backbone": "b"}, (3,))})
    with pytest.raises(CacheError, match="skipped other files"):
        commit_cache(tmp_path / "features.h5", ("c",), "/data", [content])
    assert not (tmp_path / "features.h5").exists() and not (tmp_path / "features.h5.tmp").exists()


def test_missing_and_foreign_caches_say_what_to_run(tmp_path):
    with pytest.raises(CacheError, match="no feature cache.*cnnfeat extract"):
        FeatureCache(tmp_path / "features.h5")
    (tmp_path / "features.h5").write_bytes(b"garbage" * 100)
    with pytest.raises(CacheError, match="not a readable HDF5 file.*delete it"):
        FeatureCache(tmp_path / "features.h5")


def test_missing_split_or_backbone_names_what_exists(tmp_path):
    staging = Staging(tmp_path, "train", "resnet34", "k")
    _stage(staging, 0, 2)
    content = SplitContent("train", "fp", ("a", "b"), np.zeros(2, dtype=np.int64),
                           {"resnet34": (staging, {"backbone": "resnet34"}, (3,))})
    commit_cache(tmp_path / "features.h5", ("c",), "/data", [content])
    with FeatureCache(tmp_path / "features.h5") as cache:
        with pytest.raises(CacheError, match=r"split 'valid' is not in .*\(it has train\)"):
            cache.paths("valid")
        with pytest.raises(CacheError, match="'inception' has no features.*cached: resnet34.*--backbone inception"):
            cache.features("train", "inception")


def test_a_second_writer_is_refused(tmp_path):
    with workdir_lock(tmp_path):
        with pytest.raises(WorkdirBusyError, match="another cnnfeat process"):
            with workdir_lock(tmp_path):
                pass
    with workdir_lock(tmp_path):  # released on exit
        pass
