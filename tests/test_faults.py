"""The fault suite: what cnnfeat promises when a run goes wrong (see README, "What cnnfeat promises").

Kills at random moments, damaged caches, a full disk, hundreds of mutated images, two runs on one
workdir, and files that try to run code when loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import pickle
import random
import resource
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from features import CacheError, FeatureCache, WeightsUnavailableError, checkpoint_path, extract, get_backbone
from features.images import ImageFiles, collate_decoded, decode_on_device
from features.staging import Staging
from pipeline.cli import main
from pipeline.heads import HeadError, load_model

from .conftest import IMAGE_SIZE, assert_same_features, extract_config

IMAGES = 42  # in digits_folder


def _extract_args(data: Path, workdir: Path) -> list[str]:
    return ["extract", "--data", str(data), "--workdir", str(workdir), "--weights", "random",
            "--image-size", str(IMAGE_SIZE), "--batch-size", "4", "--workers", "0"]


# Commands under test run as their own processes, forked from a server that imported this module (and so torch)
# once: a fresh `python -m pipeline` spends ~5 s importing torch and torchvision before it does anything. The server
# never runs torch itself, so its children are what a fresh interpreter is, thread pools included (a fork of this
# test process would inherit OpenMP's half-used pool and hang). They keep the server's environment, which is the
# first caller's: commands here need nothing a test sets in it (random weights, no TORCH_HOME).
_SERVER = multiprocessing.get_context("forkserver")
_SERVER.set_forkserver_preload([__name__])


def _run_cnnfeat(args: list[str], stderr: Connection, file_size_limit: int | None) -> None:
    """The child's side of _Cnnfeat: `cnnfeat <args>`, its stderr (and log lines) on the pipe."""
    multiprocessing.set_start_method("fork", force=True)  # a fresh interpreter's default on Linux, not the server's
    if file_size_limit is not None:
        _limit_file_size(file_size_limit)
    os.dup2(stderr.fileno(), 2)
    stderr.close()
    sys.stdout = open(os.devnull, "w")
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    main(args, prog_name="cnnfeat")


class _Cnnfeat:
    """`cnnfeat <args>` in a process of its own, like `python -m pipeline <args>`: the command's code, exit status and
    stderr, and a real process to SIGKILL, started in a moment (see _SERVER)."""

    def __init__(self, args: list[str], file_size_limit: int | None = None) -> None:
        reader, writer = _SERVER.Pipe(duplex=False)
        self.process = _SERVER.Process(target=_run_cnnfeat, args=(args, writer, file_size_limit))
        self.process.start()
        writer.close()  # the child holds the only writer: the pipe ends when the child does
        self._stderr: list[str] = []
        self._reader = threading.Thread(target=self._drain, args=(os.dup(reader.fileno()),))
        reader.close()
        self._reader.start()  # drained as it comes, so a chatty child never blocks on a full pipe

    def _drain(self, fd: int) -> None:
        with open(fd, errors="replace") as pipe:
            self._stderr.append(pipe.read())

    def running(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        self.process.kill()  # SIGKILL, unless it has already ended

    def wait(self, timeout: float = 300) -> tuple[int, str]:
        """(exit status, stderr); a killed child's status is minus the signal's number."""
        self.process.join(timeout)
        self._reader.join(timeout)
        assert self.process.exitcode is not None, "cnnfeat did not finish"
        return self.process.exitcode, "".join(self._stderr)


def test_sigkill_at_random_moments_then_resume_gives_identical_features(reference, digits_folder, tmp_path):
    workdir = tmp_path / "work"
    rng = random.Random(0)
    staged = lambda: len(list(workdir.glob(".staging/*/*/*.npz")))  # noqa: E731
    for _ in range(2):  # the second kill lands in a run that resumed from the first one's staged batches
        process = _Cnnfeat(_extract_args(digits_folder, workdir))
        target = staged() + rng.randint(1, 6)  # a few more batches, then a random extra moment
        deadline = time.monotonic() + 120
        while staged() < target and process.running() and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.2))
        process.kill()
        returncode, _ = process.wait()
        assert not (workdir / "features.h5").exists() or returncode == 0
    report = extract(extract_config(digits_folder, workdir))
    assert report.images_decoded < IMAGES  # the killed runs' batches were kept
    assert_same_features(workdir, reference)
    assert not list(workdir.rglob("*.tmp"))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip-data"])
def test_a_damaged_cache_is_detected_with_a_way_to_rebuild_it(damage, reference, digits_folder, tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    original = (reference / "features.h5").read_bytes()
    cache = workdir / "features.h5"
    if damage == "truncate":
        cache.write_bytes(original[: len(original) // 2])
    elif damage == "garbage":
        cache.write_bytes(os.urandom(len(original)))
    else:  # the header is intact, a run of feature bytes is not: only checksums can tell
        with FeatureCache(reference / "features.h5") as good:
            offset = good._file["train/inception"].id.get_chunk_info(0).byte_offset
        damaged = bytearray(original)
        damaged[offset + 64 : offset + 128] = os.urandom(64)
        cache.write_bytes(bytes(damaged))
    with pytest.raises(CacheError, match="cnnfeat extract"):
        with FeatureCache(cache) as opened:
            opened.features("train", "inception")
    done = CliRunner().invoke(main, ["train-head", "--workdir", str(workdir)], catch_exceptions=False)  # a bug: exit 70
    assert done.exit_code == 1 and "cnnfeat extract" in done.stderr and "Traceback" not in done.stderr, done.stderr
    extract(extract_config(digits_folder, workdir, force=damage == "flip-data"))
    assert_same_features(workdir, reference)


def _limit_file_size(limit: int) -> None:
    """No file of this process may grow past limit bytes: a disk that fills up, as a write sees it."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.parametrize("limit", [20_000, 300_000], ids=["full-while-staging", "full-while-merging"])
def test_a_full_disk_fails_cleanly_and_the_next_run_completes(limit, reference, digits_folder, tmp_path):
    """The disk 'fills up' (a file size limit) while batches are staged, or while the cache is merged."""
    workdir = tmp_path / "work"
    returncode, stderr = _Cnnfeat(_extract_args(digits_folder, workdir), file_size_limit=limit).wait()
    assert returncode == 1, stderr
    assert "[Errno" in stderr and "run the same command again" in stderr
    assert "Traceback" not in stderr
    assert not (workdir / "features.h5").exists() and not list(workdir.rglob("*.tmp"))
    for name in ("resnet34", "inception", "densenet121"):  # whatever was staged is whole
        for folder in workdir.glob(f".staging/*/{name}-*"):
            staging = Staging(workdir, folder.parent.name, name, folder.name.split("-", 1)[1])
            assert all(len(chunk["rows"]) + len(chunk["failed_rows"]) for chunk in staging.chunks())
    extract(extract_config(digits_folder, workdir))
    assert_same_features(workdir, reference)


def _mutants(count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """Valid JPEGs and PNGs with random byte flips or truncations."""
    rng = np.random.default_rng(seed)
    picture = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((64, 48), Image.BICUBIC)
    originals = {}
    for fmt, suffix in (("JPEG", "jpg"), ("PNG", "png")):
        buffer = io.BytesIO()
        picture.save(buffer, format=fmt)
        originals[suffix] = buffer.getvalue()
    mutants = []
    for i in range(count):
        suffix = "jpg" if i % 2 else "png"
        data = bytearray(originals[suffix])
        if i % 3 == 0:
            data = data[: rng.integers(0, len(data))]
        else:
            for position in rng.integers(0, len(data), size=rng.integers(1, 20)):
                data[position] = rng.integers(0, 256)
        mutants.append((f"{i:04d}.{suffix}", bytes(data)))
    return mutants


@pytest.mark.parametrize("on_device", [False, True], ids=["pil", "decode_jpeg"])
def test_hundreds_of_mutated_images_are_each_decoded_or_named(on_device, tmp_path):
    mutants = _mutants(300)
    for name, data in mutants:
        (tmp_path / name).write_bytes(data)
    paths = tuple(name for name, _ in mutants)
    files = ImageFiles(tmp_path, paths, (32,), jpeg_bytes=on_device)
    decoded, failed = [], []
    for start in range(0, len(paths), 50):
        batch = collate_decoded([files[row] for row in range(start, min(start + 50, len(paths)))])
        if on_device:
            batch = decode_on_device(batch, tmp_path, paths, (32,), torch.device("cpu"))
        assert len(batch.rows) == 0 or batch.images[32].shape[1:] == (3, 32, 32)
        assert all(reason for reason in batch.failed_reasons)
        decoded += batch.rows.tolist()
        failed += batch.failed_rows
    assert sorted(decoded + failed) == list(range(len(paths)))  # every file either way, none twice
    assert decoded and failed


def test_an_extraction_over_mutated_images_skips_and_names_the_broken_ones(tmp_path):
    data = tmp_path / "data"
    for i, (name, content) in enumerate(_mutants(60, seed=1)):
        folder = data / "train" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    report = extract(extract_config(data, tmp_path / "work", backbones=("resnet34",), batch_size=16))
    with FeatureCache(tmp_path / "work" / "features.h5") as cache:
        kept, skipped = cache.paths("train"), [path for path, _ in cache.skipped("train")]
        assert sorted(kept + skipped) == sorted(str(p.relative_to(data)) for p in data.rglob("*.*"))
        assert len(cache.labels("train")) == len(kept) == len(cache.features("train", "resnet34"))
        assert [cache.classes[label] for label in cache.labels("train")] == [p.split("/")[1] for p in kept]
    assert [path for path, _ in report.skipped_files["train"]] == skipped


def test_two_extractions_at_once_one_writes_the_other_is_refused(reference, digits_folder, tmp_path):
    workdir = tmp_path / "work"
    runs = [_Cnnfeat(_extract_args(digits_folder, workdir)) for _ in range(2)]
    outcomes = sorted(run.wait() for run in runs)
    assert [code for code, _ in outcomes] == [0, 3], outcomes  # 3: busy, its own exit status
    assert "another cnnfeat process" in outcomes[1][1]
    assert_same_features(workdir, reference)


def test_two_head_trainings_at_once_leave_a_consistent_workdir(digits10_workdir):
    args = ["train-head", "--workdir", str(digits10_workdir), "--backbone", "resnet34", "--c-grid", "1", "--folds", "2",
            "--max-iter", "50", "--no-flip", "--device", "cpu"]
    runs = [_Cnnfeat(args) for _ in range(2)]
    outcomes = sorted(run.wait() for run in runs)
    assert [code for code, _ in outcomes] in ([0, 0], [0, 3]), outcomes  # 0: it ran after the other; 3: refused
    assert outcomes[1][0] == 0 or "another cnnfeat process" in outcomes[1][1]
    heads = sorted((digits10_workdir / "heads").glob("*.pt"))
    assert [p.stem for p in heads] == ["best", "resnet34"]
    for model in heads:  # every sidecar vouches for the model beside it
        sidecar = json.loads(model.with_suffix(".json").read_text())
        assert sidecar["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest(), model.name
    info = CliRunner().invoke(main, ["info", "--workdir", str(digits10_workdir)])
    assert info.exit_code == 0 and "train best:" not in info.output and "train resnet34:" not in info.output, info.output
    assert not list(digits10_workdir.rglob("*.tmp")) and not (digits10_workdir / ".lock").exists()


class _RunsCode:
    """Unpickling this creates a file: the proof that loading executed code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_heads_weights_and_staged_batches_never_run_pickled_code(tmp_path, empty_torch_home, digits_folder):
    marker = tmp_path / "code-ran"
    head = tmp_path / "heads" / "resnet34.pt"
    head.parent.mkdir()
    torch.save({"kind": "linear", "state_dict": _RunsCode(marker)}, head)
    with pytest.raises(HeadError, match="not a loadable cnnfeat model"):
        load_model(head)

    weights = checkpoint_path(get_backbone("resnet34"))
    weights.parent.mkdir(parents=True)
    torch.save({"conv1.weight": _RunsCode(marker)}, weights)
    with pytest.raises(WeightsUnavailableError, match="(?i)delete it"):
        extract(extract_config(digits_folder, tmp_path / "work", weights="imagenet", backbones=("resnet34",)))

    staging = Staging(tmp_path / "work2", "train", "resnet34", "k")
    staging.folder.mkdir(parents=True)
    np.save(staging.folder / "0000000000-0000000004.npz", np.array([_RunsCode(marker)], dtype=object), allow_pickle=True)
    (staging.folder / "0000000000-0000000004.npz.npy").rename(staging.folder / "0000000000-0000000004.npz")
    with pytest.raises(CacheError, match="unreadable"):
        list(staging.chunks())
    assert not marker.exists()
    assert pickle.loads(pickle.dumps(_RunsCode(marker))) == 0 and marker.exists()  # the payload does work
