from __future__ import annotations

import importlib
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from PIL import Image

from features import (BOOK, ConfigError, FeatureCache, WeightsUnavailableError, WorkdirBusyError, extract, feature_names,
                      get_backbone, load_backbone)
from features.backbones import TORCH_HUB_ADVICE
from features.extract import StagingWriter, pad_rows
from features.images import DecodedBatch, load_rgb
from features.staging import Staging

from .conftest import IMAGE_SIZE, assert_same_features, cosines, extract_config, lock_held_elsewhere, snapshot

extract_module = importlib.import_module("features.extract")  # the package re-exports extract(), the function

NAMES = list(BOOK)
SPLITS = ("test", "train", "valid")  # of digits_folder: 6, 24 and 12 images


def some_splits(digits_folder: Path, tmp_path: Path, *splits: str) -> Path:
    """A data folder with only these splits of digits_folder: each row is batched as in `reference`, so its features
    are the reference's, bit for bit, for fewer images to compute."""
    for split in splits:
        shutil.copytree(digits_folder / split, tmp_path / "data" / split)
    return tmp_path / "data"


def test_rows_are_the_features_of_their_own_image(reference, digits_folder):
    """Each stored row equals the backbone applied to the image at that row's path, alone."""
    with FeatureCache(reference / "features.h5") as cache:
        assert cache.classes == ("0", "1", "2")
        assert cache.splits == ["test", "train", "valid"]
        for split in cache.splits:
            paths, labels = cache.paths(split), cache.labels(split)
            assert paths == sorted(paths) and len(paths) == len(labels) == len(set(paths))
            if cache.is_labeled(split):
                assert [p.split("/")[1] for p in paths] == [cache.classes[label] for label in labels]
            else:
                assert (labels == -1).all()
            assert cache.backbones(split) == sorted(NAMES)
        for name in NAMES:
            backbone = load_backbone(get_backbone(name), weights="random")
            paths = cache.paths("train")
            stored = cache.features("train", name)
            assert stored.shape == (24, *backbone.feature_shape(IMAGE_SIZE)) and stored.dtype == np.float32
            for row in (0, 11, 23):
                with torch.inference_mode():
                    alone = backbone(backbone.preprocess(load_rgb(digits_folder / paths[row], IMAGE_SIZE)[None]))[0].numpy()
                # batched and single-image convolutions differ only in float rounding
                np.testing.assert_allclose(stored[row], alone, rtol=1e-4, atol=1e-5 * np.abs(alone).max())
            settings = cache.settings("train", name)
            assert settings["weights"] == "random:seed=0" and settings["pool"] == "avg"
            assert settings["image_size"] == IMAGE_SIZE and settings["layer"] == BOOK[name].map_layer
            assert settings["orientation"] == "exif" and settings["view"] == "" and settings["device"] == "cpu"


def test_second_run_does_nothing_and_a_changed_file_redoes_only_that_file(digits_copy, tmp_path):
    """Freshness is decided per (split, dataset), the same way for every backbone: one shows it."""
    cfg = extract_config(digits_copy, tmp_path / "work", backbones=("resnet34",))
    first = extract(cfg)
    assert sorted(first.computed) == [(s, "resnet34") for s in SPLITS]
    before = snapshot(tmp_path / "work")
    again = extract(cfg)
    assert again.computed == [] and again.images_decoded == 0 and len(again.up_to_date) == 3
    touched = sorted((digits_copy / "valid" / "1").iterdir())[1]
    touched.write_bytes(touched.read_bytes())
    os.utime(touched, ns=(10**18, 10**18))
    third = extract(cfg)
    assert third.computed == [("valid", "resnet34")]
    assert third.images_decoded == 1  # the other 11 rows of valid/ are copied, not recomputed
    after = snapshot(tmp_path / "work")
    with FeatureCache(tmp_path / "work" / "features.h5") as cache:
        row = cache.paths("valid").index(touched.relative_to(digits_copy).as_posix())
    for key, values in before.items():
        others = np.delete(np.arange(len(values)), row) if key[0] == "valid" else np.arange(len(values))
        np.testing.assert_array_equal(after[key][others], values[others], err_msg=str(key))


def test_new_setting_or_backbone_recomputes_only_that(digits_folder, tmp_path):
    workdir, data = tmp_path / "work", some_splits(digits_folder, tmp_path, "valid")
    extract(extract_config(data, workdir, backbones=("resnet34",)))
    added = extract(extract_config(data, workdir, backbones=("resnet34", "densenet")))
    assert added.computed == [("valid", "densenet121")] and added.up_to_date == [("valid", "resnet34")]
    pooled = extract(extract_config(data, workdir, backbones=("resnet34",), pool="max"))
    assert pooled.computed == [("valid", "resnet34")]
    with FeatureCache(workdir / "features.h5") as cache:
        assert cache.backbones("valid") == ["densenet121", "resnet34"]
        assert cache.settings("valid", "resnet34")["pool"] == "max"
        assert cache.settings("valid", "densenet121")["pool"] == "avg"


def test_broken_images_are_skipped_named_and_never_shift_labels(digits_copy, tmp_path, caplog):
    (digits_copy / "train" / "1" / "0_broken.jpg").write_bytes(b"")
    (digits_copy / "train" / "2" / "2_garbage.png").write_bytes(os.urandom(500))
    caplog.set_level(logging.WARNING)
    report = extract(extract_config(digits_copy, tmp_path / "work", backbones=("resnet34",)))
    broken = ["train/1/0_broken.jpg", "train/2/2_garbage.png"]
    assert [path for path, _ in report.skipped_files["train"]] == broken
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and all(any(b in w for w in warned) for b in broken)
    with FeatureCache(tmp_path / "work" / "features.h5") as cache:
        paths, labels = cache.paths("train"), cache.labels("train")
        assert len(paths) == 24 and not set(broken) & set(paths)
        assert [p.split("/")[1] for p in paths] == [cache.classes[label] for label in labels]
        assert cache.features("train", "resnet34").shape == (24, 512)
        assert [p for p, _ in cache.skipped("train")] == broken


def test_interrupted_run_resumes_to_the_same_features(reference, digits_folder, tmp_path):
    workdir = tmp_path / "work"
    seen = []

    def interrupt_after_three_batches(split: str, advanced: int, total: int) -> None:
        seen.extend([split] if advanced else [])
        if len(seen) == 3:
            raise KeyboardInterrupt

    cfg = extract_config(digits_folder, workdir, backbones=("resnet34",))  # the kill test in test_faults runs all three
    with pytest.raises(KeyboardInterrupt):
        extract(cfg, progress=interrupt_after_three_batches)
    assert not (workdir / "features.h5").exists()
    resumed = extract(cfg)
    assert resumed.images_decoded == 42 - (4 + 2 + 4)  # test: 4 + 2, train: 4 staged
    assert_same_features(workdir, reference, [(s, "resnet34") for s in SPLITS])
    assert not (workdir / ".staging").exists()


def test_decoding_workers_give_the_same_rows(reference, digits_folder, tmp_path):
    extract(extract_config(digits_folder, tmp_path / "work", workers=2, backbones=("resnet34",)))
    got = snapshot(tmp_path / "work")
    for key, values in got.items():
        np.testing.assert_allclose(values, snapshot(reference)[key], rtol=1e-4, atol=1e-5)


def test_pool_none_stores_whole_maps(digits_folder, tmp_path):
    extract(extract_config(digits_folder, tmp_path / "work", pool="none", backbones=("densenet121",)))
    with FeatureCache(tmp_path / "work" / "features.h5") as cache:
        maps = cache.features("valid", "densenet121")
        assert maps.shape == (12, 1024, 2, 2) and cache.settings("valid", "densenet121")["pool"] == "none"


def test_bf16_features_are_within_1e_4_cosine_of_fp32(reference, digits_folder, tmp_path):
    """What README promises for --precision bf16, for each book backbone (on the 12 images of valid/: bf16 is slow on
    a CPU without bf16 instructions)."""
    extract(extract_config(some_splits(digits_folder, tmp_path, "valid"), tmp_path / "work", precision="bf16"))
    fp32, bf16 = snapshot(reference), snapshot(tmp_path / "work")
    assert sorted(bf16) == [("valid", name) for name in sorted(NAMES)]
    for key in bf16:
        assert cosines(fp32[key], bf16[key]).min() > 1 - 1e-4, key


def test_imagenet_weights_are_recorded(torch_home, digits_folder, tmp_path):
    extract(extract_config(digits_folder, tmp_path / "work", weights="imagenet", backbones=("inception",)))
    with FeatureCache(tmp_path / "work" / "features.h5") as cache:
        settings = cache.settings("train", "inception")
    assert settings["weights"] == "imagenet:Inception_V3_Weights.IMAGENET1K_V1"
    assert settings["weights_file"] == "inception_v3_google-0cc3c7bd.pth"


def test_offline_without_weights_names_every_missing_file_and_writes_nothing(empty_torch_home, digits_folder, tmp_path):
    with pytest.raises(WeightsUnavailableError) as caught:
        extract(extract_config(digits_folder, tmp_path / "work", weights="imagenet"))
    for name in ("resnet34-b627a593.pth", "inception_v3_google-0cc3c7bd.pth", "densenet121-a639ec97.pth"):
        assert name in str(caught.value)
    message = str(caught.value)  # every file named, the advice given once
    assert message.count("TORCH_HOME") == message.count("--weights random") == 1 and message.endswith(TORCH_HUB_ADVICE)
    assert not (tmp_path / "work").exists()  # not even the lock: a failed run leaves nothing behind


def test_a_busy_workdir_is_refused(digits_folder, tmp_path):
    with lock_held_elsewhere(tmp_path / "work"):
        with pytest.raises(WorkdirBusyError):
            extract(extract_config(digits_folder, tmp_path / "work"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pool": "mean"}, "pool must be one of"),
        ({"precision": "int8"}, "precision must be one of"),
        ({"batch_size": 0}, "batch_size"),
        ({"views": ("vflip",)}, "views must be among hflip"),
    ],
)
def test_bad_settings_are_refused_at_once(overrides, message, digits_folder, tmp_path):
    with pytest.raises(ConfigError, match=message):
        extract_config(digits_folder, tmp_path, **overrides)


@pytest.mark.parametrize(("overrides", "message"), [({"image_size": 64}, "too small for inception"),
                                                    ({"backbones": ("vgg",)}, "unknown backbone"),
                                                    ({"backbones": ("squeezenet1_0",)}, "no final Linear")])
def test_unusable_backbones_and_sizes_are_refused_before_decoding(overrides, message, digits_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(extract_module, "_run_split", lambda *a: pytest.fail("decoding started"))
    with pytest.raises(ConfigError, match=message):
        extract(extract_config(digits_folder, tmp_path / "work", **overrides))
    assert not (tmp_path / "work").exists()


def test_a_resume_fills_every_gap_to_the_same_features(reference, digits_folder, tmp_path, monkeypatch):
    """Batches missing anywhere (a torchrun rank that died, say) are computed; nothing else is."""
    workdir = tmp_path / "work"
    cfg = extract_config(some_splits(digits_folder, tmp_path, "test", "valid"), workdir)

    def crash_before_merging(*args, **kwargs):
        raise RuntimeError("crashed before merging")

    monkeypatch.setattr(extract_module, "commit_cache", crash_before_merging)
    with pytest.raises(RuntimeError, match="before merging"):
        extract(cfg)
    monkeypatch.undo()
    staged = sorted(workdir.glob(".staging/*/*/*.npz"))
    lost = staged[1::2]  # every other batch file: in valid/, inception misses other batches than the others
    missing = {(path.parts[-3], row) for path in lost for row in range(*map(int, path.stem.split("-")))}
    for path in lost:
        path.unlink()
    resumed = extract(cfg)
    assert resumed.images_decoded == len(missing) < 6 + 12  # each image of a lost batch once, no other
    assert_same_features(workdir, reference, [(s, b) for s in ("test", "valid") for b in NAMES])


def test_missing_batches_are_cut_from_each_gap_on_the_batch_grid(tmp_path):
    jobs = [extract_module._Job(extract_module._Target(get_backbone(name), 80, "random", 0, "avg", "fp32"), "", {}, Staging(tmp_path, "train", name, "k"))
            for name in ("resnet34", "inception")]
    jobs[0].staging.save(0, 4, np.arange(4), np.zeros((4, 1)), [], [])
    jobs[0].staging.save(8, 12, np.arange(8, 12), np.zeros((4, 1)), [], [])
    jobs[1].staging.save(0, 4, np.arange(4), np.zeros((4, 1)), [], [])
    batches = extract_module._missing_batches(14, jobs, batch_size=4)
    assert batches == [(4, 8, ("resnet34", "inception")), (8, 12, ("inception",)), (12, 14, ("resnet34", "inception"))]


def test_staging_writer_keeps_finished_batches_and_reports_a_failed_write(tmp_path, monkeypatch):
    staging = Staging(tmp_path, "train", "resnet34", "k")
    batch = DecodedBatch(torch.arange(2), {4: torch.zeros(2, 3, 4, 4, dtype=torch.uint8)}, [], [])
    with StagingWriter(in_flight=1) as writer:
        writer.save(staging, 0, 2, batch, torch.ones(2, 5))
    assert staging.done_rows(2).all()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Staging, "save", disk_full)
    with pytest.raises(OSError, match="No space left"), StagingWriter() as writer:
        writer.save(staging, 2, 4, batch, torch.ones(2, 5))


def test_decoding_on_the_device_matches_pil(reference, digits_copy, tmp_path):
    """The nvJPEG path, run on the CPU: torchvision.io decodes JPEGs, a broken one gets PIL's verdict."""
    (digits_copy / "train" / "0" / "zz-broken.jpg").write_bytes(b"\xff\xd8\xff" + b"garbage" * 10)
    (digits_copy / "train" / "1" / "zz-empty.jpg").write_bytes(b"")
    workdir = tmp_path / "work"
    report = extract(extract_config(digits_copy, workdir, decode="device", backbones=("resnet34",)))  # decoding is shared
    assert [p for p, _ in report.skipped_files["train"]] == ["train/0/zz-broken.jpg", "train/1/zz-empty.jpg"]
    with FeatureCache(workdir / "features.h5") as cache:
        assert cache.settings("train", "resnet34")["decode"] == "torchvision.io.decode_jpeg"
    pil, device = snapshot(reference), snapshot(workdir)
    assert sorted(device) == [(s, "resnet34") for s in SPLITS]
    for key in device:
        assert cosines(pil[key], device[key]).min() > 0.999, key


def test_mirrored_views_are_the_features_of_mirrored_images(digits_folder, tmp_path):
    """Each /<split>/<backbone>_hflip row equals the plain features of the same image mirrored (PNG: lossless)."""
    plain, mirrored = tmp_path / "plain", tmp_path / "mirrored"
    for source in sorted((digits_folder / "valid").rglob("*.jpg")):
        relative = source.relative_to(digits_folder).with_suffix(".png")
        for root, flip in ((plain, False), (mirrored, True)):
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            image = Image.open(source).convert("RGB")
            (image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else image).save(root / relative)
    extract(extract_config(plain, tmp_path / "w1", backbones=("resnet34",), views=("hflip",)))
    extract(extract_config(mirrored, tmp_path / "w2", backbones=("resnet34",)))
    with FeatureCache(tmp_path / "w1" / "features.h5") as one, FeatureCache(tmp_path / "w2" / "features.h5") as two:
        assert one.backbones("valid") == ["resnet34"] and one.datasets("valid") == ["resnet34", "resnet34_hflip"]
        assert one.settings("valid", "resnet34_hflip")["view"] == "hflip"
        assert cosines(one.features("valid", "resnet34_hflip"), two.features("valid", "resnet34")).min() > 0.9999
        assert cosines(one.features("valid", "resnet34_hflip"), one.features("valid", "resnet34")).min() < 0.9999


def test_backbones_of_different_sizes_share_one_decode(digits_folder, tmp_path, monkeypatch):
    opened = []
    real = extract_module.ImageFiles.__getitem__
    monkeypatch.setattr(extract_module.ImageFiles, "__getitem__", lambda self, row: (opened.append(row), real(self, row))[1])
    data = some_splits(digits_folder, tmp_path, "valid")  # Inception at 299 px is costly: 12 images show it
    extract(extract_config(data, tmp_path / "work", backbones=("inception", "mobilenet_v3_small"), image_size=None))
    assert len(opened) == 12  # each image once, though one model runs at 299 px and the other at 224
    with FeatureCache(tmp_path / "work" / "features.h5") as cache:
        assert cache.settings("valid", "inception")["image_size"] == 299
        assert cache.settings("valid", "mobilenet_v3_small")["image_size"] == 224
        assert cache.feature_shape("valid", "mobilenet_v3_small") == (1024,)


def test_a_photo_stored_sideways_gets_the_features_of_the_upright_photo(tmp_path):
    for split in ("upright", "sideways"):
        (tmp_path / split / "train" / "a").mkdir(parents=True)
    pixels = np.zeros((60, 90, 3), dtype=np.uint8)
    pixels[:30, :45] = (250, 10, 10)
    Image.fromarray(pixels).save(tmp_path / "upright" / "train" / "a" / "1.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned; a viewer rotates it 90 degrees clockwise
    Image.fromarray(np.rot90(pixels, 1).copy()).save(tmp_path / "sideways" / "train" / "a" / "1.png", exif=exif.tobytes())
    for split in ("upright", "sideways"):
        extract(extract_config(tmp_path / split, tmp_path / f"w-{split}", backbones=("resnet34",)))
    np.testing.assert_allclose(snapshot(tmp_path / "w-sideways")[("train", "resnet34")],
                               snapshot(tmp_path / "w-upright")[("train", "resnet34")], rtol=1e-5, atol=1e-5)


def test_a_cache_made_before_exif_orientation_is_recomputed(digits_folder, tmp_path):
    import h5py

    cfg = extract_config(digits_folder, tmp_path / "work", backbones=("resnet34",))
    extract(cfg)
    with h5py.File(tmp_path / "work" / "features.h5", "r+") as f:
        del f["train/resnet34"].attrs["orientation"]  # what an older cnnfeat wrote
    assert ("train", "resnet34") in extract(cfg).computed


def test_short_batches_are_padded_to_the_tuned_shape():
    x = torch.randn(3, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    padded = pad_rows(x, 5)
    assert padded.shape == (5, 3, 4, 4) and torch.equal(padded[:3], x) and not padded[3:].any()
    assert padded.is_contiguous(memory_format=torch.channels_last) and pad_rows(x, 2) is x


def _finetuned(path, seed: int, backbone: str = "resnet34", image_size: int = IMAGE_SIZE):
    """A checkpoint in the format `cnnfeat finetune` writes: a torchvision model for three classes."""
    import torchvision

    from features import FINETUNED_FORMAT

    torch.manual_seed(seed)
    model = torchvision.models.resnet34(num_classes=3)
    torch.save({"format": FINETUNED_FORMAT, "backbone": backbone, "builder_kwargs": {}, "classes": ["0", "1", "2"],
                "state_dict": model.state_dict(), "settings": {},
                "preprocessing": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2], "image_size": image_size}}, path)
    return model.eval()


def test_features_from_a_fine_tuned_checkpoint_are_its_classifier_input(digits_folder, tmp_path):
    checkpoint, data = tmp_path / "resnet34.pt", some_splits(digits_folder, tmp_path, "valid")
    model = _finetuned(checkpoint, seed=5)
    cfg = extract_config(data, tmp_path / "work", backbones=("resnet34",), weights=str(checkpoint), image_size=None)
    extract(cfg)
    name = feature_names(cfg)[0]
    assert name.startswith("resnet34@finetuned-")  # beside the ImageNet features, never in their place
    with FeatureCache(tmp_path / "work" / "features.h5") as cache:
        settings, paths = cache.settings("valid", name), cache.paths("valid")
        stored = cache.features("valid", name)
    assert settings["weights"].startswith("finetuned:sha256=") and settings["weights_file"] == "resnet34.pt"
    assert name == f"resnet34@finetuned-{settings['weights'].removeprefix('finetuned:sha256=')[:8]}"
    assert settings["image_size"] == IMAGE_SIZE  # the size it was fine-tuned at
    pixels = load_rgb(data / paths[0], IMAGE_SIZE)[None].float() / 255
    x = (pixels - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / 0.2
    with torch.inference_mode():
        logits = model(x)
        through_fc = model.fc(torch.from_numpy(stored[:1]))
    torch.testing.assert_close(through_fc, logits, rtol=1e-4, atol=1e-4 * logits.abs().max().item())
    assert extract(cfg).computed == []
    _finetuned(checkpoint, seed=6)  # a changed checkpoint makes features of another name
    assert ("valid", feature_names(cfg)[0]) in extract(cfg).computed and feature_names(cfg)[0] != name
    with pytest.raises(ConfigError, match="is a fine-tuned resnet34, not densenet121"):
        extract(extract_config(data, tmp_path / "w2", backbones=("densenet121",), weights=str(checkpoint)))
