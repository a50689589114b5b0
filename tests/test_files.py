from __future__ import annotations

import pytest

from features.errors import WorkdirBusyError
from features.files import workdir_lock


def test_a_second_writer_is_refused(tmp_path):
    with workdir_lock(tmp_path):
        with pytest.raises(WorkdirBusyError, match="another cnnfeat process"):
            with workdir_lock(tmp_path):
                pass
    with workdir_lock(tmp_path):  # released on exit
        pass


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
