from __future__ import annotations


from features.staging import Staging

from .conftest import stage_rows


def test_staging_knows_every_staged_row_gaps_included(tmp_path):
    staging = Staging(tmp_path, "train", "resnet34", "k")
    assert not staging.done_rows(18).any()
    stage_rows(staging, 0, 4)
    stage_rows(staging, 4, 8)
    stage_rows(staging, 12, 16, failed=(13,))  # a gap at 8..12 (another rank's batch, or a killed one)
    expected = [r < 8 or 12 <= r < 16 for r in range(18)]
    assert staging.done_rows(18).tolist() == expected
    assert not list(staging.folder.glob("*.tmp"))


def test_staging_key_depends_on_settings_decoder_device_and_files():
    settings = dict(backbone="resnet34", weights="w", pool="avg", image_size=299, precision="fp32", orientation="exif",
                    view="", decode="PIL", device="cpu", conv_precision="fp32")
    key = Staging.key(settings, "files")
    assert key == Staging.key({**settings, "torch_version": "other"}, "files")
    for change in ({"pool": "max"}, {"decode": "torchvision.io.decode_jpeg"}, {"device": "NVIDIA H100"},
                   {"conv_precision": "tf32"}, {"view": "hflip"}):
        assert key != Staging.key({**settings, **change}, "files"), change
    assert key != Staging.key(settings, "other files")


def test_staged_batches_of_older_settings_and_gone_splits_are_removed(tmp_path):
    old, new = Staging(tmp_path, "train", "resnet34", "old"), Staging(tmp_path, "train", "resnet34", "new")
    other = Staging(tmp_path, "train", "inception", "old")
    gone = Staging(tmp_path, "extra", "resnet34", "k")
    for staging in (old, new, other, gone):
        stage_rows(staging, 0, 2)
    new.remove_other_versions()
    assert not old.folder.exists() and new.folder.exists() and other.folder.exists()
    Staging.remove_splits_other_than(tmp_path, {"train"})
    assert not gone.folder.exists() and new.folder.exists()
