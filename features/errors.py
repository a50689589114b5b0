"""The errors cnnfeat raises on purpose: each says what is wrong, where, and what to run.

The CLI prints these as one line and exits 1 (3 for a busy workdir); any other exception is a
bug and keeps its traceback. The ValueError/FileNotFoundError bases keep `except ValueError` in
callers' code working as before.
"""

from __future__ import annotations


class CnnfeatError(Exception):
    """Something the user can fix; the message says how."""


class ConfigError(CnnfeatError, ValueError):
    """A setting has a value cnnfeat cannot use."""


class DataLayoutError(CnnfeatError, ValueError):
    """The data folder does not have the split/class layout cnnfeat reads."""


class CacheError(CnnfeatError, RuntimeError):
    """The feature cache is missing, unreadable, stale or lacks what was asked for."""


class WorkdirBusyError(CnnfeatError, RuntimeError):
    """Another cnnfeat process is writing to the same workdir."""


class WeightsUnavailableError(CnnfeatError, RuntimeError):
    """Pretrained weights are neither cached nor downloadable (offline machine, broken file)."""


class MissingInputError(CnnfeatError, FileNotFoundError):
    """A file or folder the command needs does not exist."""


class OutputExistsError(CnnfeatError, FileExistsError):
    """An output is already there and the command was not asked to replace it."""
