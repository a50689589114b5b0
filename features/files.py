"""Writing into a workdir safely: one writer at a time, and files that appear whole or not at all.

    with workdir_lock(workdir):                 # WorkdirBusyError while another process holds it
        with atomic_output(path) as tmp:        # write tmp; it replaces path only if the block finishes
            tmp.write_text(...)
"""

from __future__ import annotations

import errno
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from .errors import WorkdirBusyError

LOCK_NAME = ".lock"


@contextmanager
def workdir_lock(workdir: Path) -> Iterator[None]:
    """Hold the workdir exclusively; the OS drops the lock when the process dies, even by kill -9.

    The lock file is removed on release, and a workdir this call created is removed again if
    nothing was written to it, so a run that fails early leaves nothing behind.
    """
    created = not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    lock = workdir / LOCK_NAME
    try:
        with _locked(lock) as handle:
            handle.write(str(os.getpid()))
            handle.flush()
            try:
                yield
            finally:
                lock.unlink(missing_ok=True)  # while still locked: nobody can take a lock on it meanwhile
    finally:
        if created and workdir.is_dir() and not any(workdir.iterdir()):
            workdir.rmdir()


@contextmanager
def _locked(lock: Path) -> Iterator[IO[str]]:
    """An open, exclusively locked lock file that is still the one at its path.

    A holder unlinks the file before unlocking; a process that opened it just before must then
    not count its lock as held, or two processes would each hold a lock on a different file.
    """
    while True:
        handle = open(lock, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise WorkdirBusyError(
                f"another cnnfeat process (pid {holder}) is writing to {lock.parent}; "
                f"wait for it to finish, or use another --workdir"
            ) from None
        try:
            same = os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        yield handle
    finally:
        handle.close()  # closing releases the lock


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Write to the yielded temporary path; it replaces `path` only if the block finishes.

    Readers see the old file or the new one, never half of one, whatever happens to the writer.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
