from __future__ import annotations

import fcntl
import os

import pytest

from features.errors import WorkdirBusyError
from features.files import atomic_output, workdir_lock, writes_workdir

from .conftest import lock_held_elsewhere


def test_a_second_writer_is_refused(tmp_path):
    with lock_held_elsewhere(tmp_path):
        with pytest.raises(WorkdirBusyError, match="another cnnfeat process .* is writing to"):
            with workdir_lock(tmp_path):
                pass
    with workdir_lock(tmp_path):  # released when the other process lets go
        pass


def _held_by_someone(workdir) -> bool:
    with open(workdir / ".lock", "a") as handle:  # a new open file: flock counts it as another holder
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


def test_the_lock_is_re_entrant_within_a_process(tmp_path):
    @writes_workdir
    def stage(workdir):
        assert _held_by_someone(workdir)
        return "done"

    workdir, alias = tmp_path / "work", tmp_path / "alias"
    workdir.mkdir()
    alias.symlink_to(workdir)
    with workdir_lock(workdir):
        with workdir_lock(alias):  # the same folder, spelled otherwise
            assert stage(workdir) == "done"
        assert _held_by_someone(workdir)  # the inner block's end does not release the outer one
    assert not (workdir / ".lock").exists()
    with lock_held_elsewhere(workdir), pytest.raises(WorkdirBusyError):
        stage(workdir)  # a stage takes the lock itself


def test_the_lock_leaves_nothing_behind(tmp_path):
    workdir = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with workdir_lock(workdir):
            assert (workdir / ".lock").exists()
            raise RuntimeError("the run failed before writing anything")
    assert not workdir.exists()  # it made the folder, and nothing was written to it
    with workdir_lock(tmp_path):
        (tmp_path / "kept.txt").write_text("output")
    assert (tmp_path / "kept.txt").exists() and not (tmp_path / ".lock").exists()


def test_taking_the_lock_removes_what_killed_writers_left(tmp_path):
    (tmp_path / "heads").mkdir()
    leftover = tmp_path / "heads" / "best.pt.0123456789abcdef.tmp"
    leftover.write_bytes(b"half a model")
    (tmp_path / "notes.tmp").write_text("a file of the user's")
    with workdir_lock(tmp_path):
        pass
    assert not leftover.exists() and (tmp_path / "notes.tmp").exists()


def test_writers_of_one_file_each_have_their_own_temporary_file(tmp_path):
    target = tmp_path / "model.pt"
    with atomic_output(target) as first, atomic_output(target) as second:
        assert first != second and first.name.startswith("model.pt.") and first.name.endswith(".tmp")
        first.write_bytes(b"A" * 100_000)
        second.write_bytes(b"B" * 10)
    assert target.read_bytes() == b"A" * 100_000  # one writer's whole file: the last to finish
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "summary.csv"
    target.write_text("old")
    with pytest.raises(ValueError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise ValueError("the writer failed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.csv"]


def test_written_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "submission.csv") as tmp:
            tmp.write_text("id,label\n")
    finally:
        os.umask(umask)
    assert (tmp_path / "submission.csv").stat().st_mode & 0o777 == 0o644  # as open() makes them, not mkstemp's 0o600
