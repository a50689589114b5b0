"""Shared fixtures: tiny real image folders and an offline pretrained-weight cache.

No test reaches the network: downloads are made to fail as they do on an offline machine, and the
"ImageNet" checkpoints are seeded random models saved under torchvision's own file names.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import urllib.error
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pytest
import torch
import torchvision

from features.devices import usable_cores
from features.staging import Staging
from features import BOOK, ExtractConfig, FeatureCache, checkpoint_path, extract, get_backbone, weights_enum

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_digits", ROOT / "data" / "make_digits.py")
make_digits = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_digits)

IMAGE_SIZE = 80  # Inception needs 75; small keeps the CPU tests fast


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each test process gets its share of the cores, for torch and for the programs it
    starts (CLI runs, torchrun ranks), instead of a thread per core in every process."""
    processes = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if processes > 1:
        threads = max(1, usable_cores() // processes)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on an offline machine: a download attempt fails like a missing network."""

    def refuse(url: str, dst: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # timm's Hugging Face downloads fail at once, as offline


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs as on an offline machine (session fixtures call go_offline themselves)."""
    go_offline(monkeypatch)


@contextmanager
def lock_held_elsewhere(workdir: Path) -> Iterator[None]:
    """The workdir lock held by another process (this one's own lock is re-entrant) until the block ends."""
    code = ("import sys\nfrom features.files import workdir_lock\n"
            "with workdir_lock(sys.argv[1]):\n    print('held', flush=True)\n    sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(workdir)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.stdin.close()  # the holder reads to the end of its input, then lets go
        holder.wait(timeout=30)


def stage_rows(staging: "Staging", start: int, stop: int, failed: tuple[int, ...] = ()) -> None:
    """Stage rows start..stop (but the failed ones) with features [row, row, row]: easy to check after a commit."""
    rows = np.array([r for r in range(start, stop) if r not in failed])
    staging.save(start, stop, rows, rows[:, None].repeat(3, axis=1).astype(np.float32),
                 list(failed), ["broken"] * len(failed))


def save_checkpoint(name: str, seed: int = 0, weights: str = "imagenet") -> Path:
    """A seeded random model of the weights' architecture, saved where torchvision looks for those weights."""
    spec = get_backbone(name)
    enum = weights_enum(spec, weights)
    path = checkpoint_path(spec, weights)
    if not path.exists():
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            kwargs = {k: v for k, v in spec.builder_kwargs(enum.meta).items() if k != "init_weights"}
            model = torchvision.models.get_model(spec.builder, weights=None, num_classes=len(enum.meta["categories"]),
                                                 **kwargs)
        for param in model.parameters():  # torchvision zero-initialises some heads (ViT): logits must not be all 0
            if param.dim() and not param.any():
                param.data.normal_(0, 0.02)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def imagenet_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TORCH_HOME whose hub cache holds a seeded checkpoint for each of the book's backbones."""
    home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        for seed, name in enumerate(BOOK):
            save_checkpoint(name, seed)
    return home


@pytest.fixture
def torch_home(imagenet_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(imagenet_home))
    return imagenet_home


@pytest.fixture
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    return tmp_path / "empty_torch_home"


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/valid with three digit classes and an unlabeled test split, real scans at 80 px."""
    return make_digits.write_digits(tmp_path_factory.mktemp("digits"), [0, 1, 2], 8, 4, 6, size=IMAGE_SIZE)


@pytest.fixture
def digits_copy(digits_folder: Path, tmp_path: Path) -> Path:
    """A private copy for tests that add, break or touch files."""
    return Path(shutil.copytree(digits_folder, tmp_path / "data"))


def extract_config(data: Path, workdir: Path, **overrides) -> ExtractConfig:
    """Small and quick: random weights, 80 px, batches of 4, no worker processes."""
    settings = dict(data=data, workdir=workdir, backbones=("all",), weights="random", image_size=IMAGE_SIZE,
                    batch_size=4, workers=0)
    return ExtractConfig(**{**settings, **overrides})


def snapshot(workdir: Path) -> dict[tuple[str, str], np.ndarray]:
    """Every (split, dataset) feature array of a workdir's cache."""
    with FeatureCache(workdir / "features.h5") as cache:
        return {(s, b): cache.features(s, b) for s in cache.splits for b in cache.datasets(s)}


def assert_same_features(workdir: Path, reference: Path, keys: Iterable[tuple[str, str]] | None = None) -> None:
    """The same (split, dataset) arrays, bit for bit: all of the reference's, or (for a run on some of its splits or
    backbones) exactly these keys of it."""
    expected, got = snapshot(reference), snapshot(workdir)
    if keys is not None:
        expected = {key: expected[key] for key in keys}
    assert expected.keys() == got.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=str(key))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of a with the same row of b."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="session")
def reference(digits_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run of every backbone on digits_folder, for the others to compare with."""
    workdir = tmp_path_factory.mktemp("reference")
    extract(extract_config(digits_folder, workdir))
    return workdir


@pytest.fixture(scope="session")
def digits10_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workdir whose features.h5 holds the book's backbones for ten digit classes (400 train, 200 valid, 200 in a
    labeled holdout split that no training sees, 20 test), and ResNet-34's mirrored view: the one that tests of
    +hflip models read (mirroring all three cost 15 s more; trained_digits mirrors every backbone)."""
    root = tmp_path_factory.mktemp("digits10")
    data = make_digits.write_digits(root / "data", list(range(10)), 40, 20, 20, size=IMAGE_SIZE, n_holdout=20)
    common = dict(data=data, workdir=root / "work", weights="random", image_size=IMAGE_SIZE, batch_size=32)
    extract(ExtractConfig(backbones=("resnet34",), views=("hflip",), **common))
    extract(ExtractConfig(backbones=("inception", "densenet121"), **common))
    return root / "work"


@pytest.fixture
def digits10_workdir(digits10_cache: Path, tmp_path: Path) -> Path:
    """A private workdir with the shared cache, for tests that train and write."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    shutil.copy(digits10_cache / "features.h5", workdir / "features.h5")
    return workdir


def exif_rotated_jpeg(path: Path, orientation: int = 6) -> Path:
    """A digit-like 64x48 JPEG stored sideways, with the EXIF orientation that turns it upright."""
    from PIL import Image

    pixels = np.full((48, 64, 3), 255, dtype=np.uint8)
    pixels[8:40, 20:30] = 0  # a dark stroke, off centre, so a wrong turn changes the features
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, "JPEG", exif=exif.tobytes(), quality=95)
    return path


@pytest.fixture(scope="session")
def trained_digits(digits_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workdir with every kind of head (probes, +hflip, concat, ensemble, best) trained on digits whose test split
    also holds an EXIF-rotated JPEG, a grayscale PNG of another size and a file that does not decode. Shared: read only."""
    from PIL import Image

    from pipeline.heads import HeadConfig, select_best, train_concat, train_ensemble, train_linear_heads

    root = tmp_path_factory.mktemp("trained_digits")
    data = Path(shutil.copytree(digits_folder, root / "data"))
    exif_rotated_jpeg(data / "test" / "rotated.jpg")
    Image.open(data / "test" / "1.jpg").convert("L").resize((57, 71)).save(data / "test" / "gray.png")
    (data / "test" / "broken.jpg").write_bytes(b"not a JPEG at all")
    workdir = root / "work"
    extract(extract_config(data, workdir, views=("hflip",), batch_size=16))
    cfg = HeadConfig(workdir=workdir, c_grid=(0.1, 10.0), folds=2, max_iter=50, epochs=3)
    train_linear_heads(cfg), train_concat(cfg), train_ensemble(cfg), select_best(cfg)
    return workdir
