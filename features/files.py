"""Writing into a workdir safely: one writer at a time, and files that appear whole or not at all.

    with workdir_lock(workdir):                 # WorkdirBusyError while another process holds it
        with atomic_output(path) as tmp:        # write tmp; it replaces path only if the block finishes
            tmp.write_text(...)

    @writes_workdir                             # a stage: runs holding the lock of its cfg.workdir
    def train_linear_heads(cfg, ...): ...
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator, TypeVar

from .errors import WorkdirBusyError

LOCK_NAME = ".lock"
# atomic_output's temporary files: <target name>.<16 hex digits>.tmp, never matched by a glob for the real suffix
TEMP_NAME = re.compile(r".+\.[0-9a-f]{16}\.tmp")
_held: set[Path] = set()  # workdirs this process holds: a nested workdir_lock of one of them is already inside
Stage = TypeVar("Stage", bound=Callable[..., Any])


@contextmanager
def workdir_lock(workdir: Path | str) -> Iterator[None]:
    """Hold the workdir exclusively; the OS drops the lock when the process dies, even by kill -9.

    Re-entrant within a process (`run` holds it while its stages take it again). Under torchrun
    every rank runs the same command and rank 0 holds the lock for them all. The lock file is
    removed on release, and the folders this call created are removed again if nothing was written
    in them, so a run that fails early leaves nothing behind.
    """
    workdir = Path(workdir)
    key = workdir.resolve()
    if key in _held or _another_torchrun_rank():
        yield
        return
    created = [folder for folder in (workdir, *workdir.parents) if not folder.exists()]  # innermost first
    workdir.mkdir(parents=True, exist_ok=True)
    lock = workdir / LOCK_NAME
    try:
        with _locked(lock) as handle:
            handle.write(str(os.getpid()))
            handle.flush()
            _remove_leftovers(workdir)
            _held.add(key)
            try:
                yield
            finally:
                _held.discard(key)
                lock.unlink(missing_ok=True)  # while still locked: nobody can take a lock on it meanwhile
    finally:
        for folder in created:  # the folders this call made, while nothing was written in them
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def lock_holder(workdir: Path | str) -> str | None:
    """The pid of another process holding the workdir (as its lock file says), or None when none does. Tried
    with a shared lock, given back at once: a reader never keeps a writer out."""
    lock = Path(workdir) / LOCK_NAME
    try:
        handle = open(lock)
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return handle.read().strip() or "unknown"
    return None


def writes_workdir(stage: Stage) -> Stage:
    """Run a stage holding the lock of the workdir it writes: its first argument's `.workdir`, or the
    argument itself when it is the workdir, so the Python API is as safe as the CLI."""

    @functools.wraps(stage)
    def locked(first: Any, *args: Any, **kwargs: Any) -> Any:
        with workdir_lock(getattr(first, "workdir", first)):
            return stage(first, *args, **kwargs)

    return locked  # type: ignore[return-value]


def _another_torchrun_rank() -> bool:
    """A torchrun rank other than 0 (torchrun sets WORLD_SIZE and RANK, as features.distributed reads them)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0


def _remove_leftovers(workdir: Path) -> None:
    """Temporary files of writers that were killed (each writer has its own): with the lock held,
    nobody else can be writing one."""
    for path in workdir.rglob("*.tmp"):
        if TEMP_NAME.fullmatch(path.name):
            path.unlink(missing_ok=True)


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
    Each writer gets a temporary file of its own, so two writers of one path never mix their bytes;
    the last to finish wins.
    """
    tmp = _own_temp(path)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _own_temp(path: Path) -> Path:
    """A new empty file beside `path`, <name>.<random>.tmp: created exclusively (no other writer has
    it), with the permissions open() would give (0o666 less the umask; mkstemp's are 0o600)."""
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(8)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return tmp
