from __future__ import annotations

import numpy as np
import pytest
import torch

from features import CacheError, FeatureCache, cache_path
from pipeline.heads.table import FeatureTable, concat_tables, stats


def test_streamed_table_gives_the_rows_and_statistics_of_the_in_memory_one(digits10_cache):
    with FeatureCache(cache_path(digits10_cache)) as cache:
        memory = FeatureTable(cache, "train", ["resnet34", "densenet121"])
        streamed = FeatureTable(cache, "train", ["resnet34", "densenet121"], memory_budget=0, chunk_rows=16, mix=4)
        assert memory.in_memory is not None and streamed.in_memory is None
        for name, (mean, std) in stats([memory]).items():
            values = memory.in_memory[name].double()
            torch.testing.assert_close(mean.double(), values.mean(0), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(std.double(), values.std(0, unbiased=False), rtol=1e-4, atol=1e-6)
            s_mean, s_std = stats([streamed])[name]
            torch.testing.assert_close(s_mean, mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(s_std, std, rtol=1e-4, atol=1e-6)
        generator = torch.Generator().manual_seed(0)
        seen = [(x["resnet34"], y) for x, y in streamed.batches(50, generator)]
        rows = torch.cat([x for x, _ in seen])
        labels = torch.cat([y for _, y in seen])
        assert len(rows) == len(memory) == 400
        order = np.lexsort(rows.numpy().T[:3])  # same rows, each with its own label, in some order
        expected = np.lexsort(memory.in_memory["resnet34"].numpy().T[:3])
        np.testing.assert_array_equal(rows.numpy()[order], memory.in_memory["resnet34"].numpy()[expected])
        np.testing.assert_array_equal(labels.numpy()[order], memory.labels.numpy()[expected])


def test_batches_keep_rows_and_labels_together(digits10_cache):
    with FeatureCache(cache_path(digits10_cache)) as cache:
        table = FeatureTable(cache, "valid", ["inception", "resnet34"])
        features, labels = table.in_memory, table.labels
        for inputs, batch_labels in table.batches(17, torch.Generator().manual_seed(1)):
            for row, label in zip(inputs["resnet34"], batch_labels):
                index = int(torch.nonzero((features["resnet34"] == row).all(1))[0])
                assert labels[index] == label
                assert torch.equal(features["inception"][index], inputs["inception"][(inputs["resnet34"] == row).all(1)][0])


def test_a_backbone_whose_rows_disagree_with_paths_is_refused(digits10_workdir):
    import h5py

    with h5py.File(cache_path(digits10_workdir), "r+") as f:
        data = f["train/resnet34"][:-1]
        attrs = dict(f["train/resnet34"].attrs)
        del f["train/resnet34"]
        f["train/resnet34"] = data
        f["train/resnet34"].attrs.update(attrs)
    with FeatureCache(cache_path(digits10_workdir)) as cache:
        with pytest.raises(CacheError, match="399 rows but train/paths has 400"):
            FeatureTable(cache, "train", ["inception", "resnet34"])


def test_streamed_minibatches_mix_classes_as_the_in_memory_ones_do(digits10_cache):
    """The cache is sorted by path, i.e. by class: contiguous blocks alone would give one-class minibatches."""
    with FeatureCache(cache_path(digits10_cache)) as cache:
        memory = FeatureTable(cache, "train", ["resnet34"])
        streamed = FeatureTable(cache, "train", ["resnet34"], memory_budget=0, chunk_rows=8, mix=16)
        assert streamed.in_memory is None

        def classes_per_batch(table: FeatureTable) -> float:
            generator = torch.Generator().manual_seed(0)
            return float(np.mean([len(torch.unique(y)) for _, y in table.batches(32, generator)]))

        in_memory, from_disk = classes_per_batch(memory), classes_per_batch(streamed)
        assert in_memory > 8 and from_disk > 0.8 * in_memory, (in_memory, from_disk)


def test_subsets_and_joined_tables_keep_rows_with_their_labels(digits10_cache):
    with FeatureCache(cache_path(digits10_cache)) as cache:
        whole = FeatureTable(cache, "valid", {"resnet34": "resnet34_hflip"})
        rows = np.array([3, 17, 150])
        direct = FeatureTable(cache, "valid", {"resnet34": "resnet34_hflip"}, rows=rows)
        streamed = FeatureTable(cache, "valid", {"resnet34": "resnet34_hflip"}, rows=rows, memory_budget=0, chunk_rows=8)
        picked = whole.subset(rows)
        for table in (direct, picked):
            torch.testing.assert_close(table.in_memory["resnet34"], torch.from_numpy(cache.features("valid", "resnet34_hflip")[rows]))
            assert table.labels.tolist() == cache.labels("valid")[rows].tolist()
            assert table.paths == [cache.paths("valid")[r] for r in rows]
        (inputs, labels), = streamed.blocks()
        torch.testing.assert_close(inputs["resnet34"], direct.in_memory["resnet34"])
        joined = concat_tables([direct, FeatureTable(cache, "train", {"resnet34": "resnet34_hflip"}, rows=np.array([0]))])
        assert len(joined) == 4 and joined.labels[-1] == cache.labels("train")[0]
