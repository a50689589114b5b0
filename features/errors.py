"""The errors cnnfeat raises on purpose: each says what is wrong, where, and what to run.

The CLI prints these as one line and exits 1 (3 for a busy workdir); any other exception is a
bug and keeps its traceback. The ValueError/FileNotFoundError bases keep `except ValueError` in
callers' code working as before.
"""

from __future__ import annotations

import difflib
from typing import Iterable, Sequence


class CnnfeatError(Exception):
    """Something the user can fix; the message says how."""


class ConfigError(CnnfeatError, ValueError):
    """A setting has a value cnnfeat cannot use; `setting` names it (a settings field) when one is to blame,
    so the CLI can name the option."""

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class DataLayoutError(CnnfeatError, ValueError):
    """The data folder does not have the split/class layout cnnfeat reads."""


class CacheError(CnnfeatError, RuntimeError):
    """The feature cache is missing, unreadable, stale or lacks what was asked for."""


class WorkdirBusyError(CnnfeatError, RuntimeError):
    """Another cnnfeat process is writing to the same workdir."""


class WeightsUnavailableError(CnnfeatError, RuntimeError):
    """Pretrained weights are neither cached nor downloadable (offline machine, broken file).

    `missing` says what is lacking and `advice` what to do, apart, so that several models' missing
    files are listed together with the advice given once (`joined`)."""

    def __init__(self, missing: str, advice: str = "") -> None:
        super().__init__(f"{missing}\n{advice}" if advice else missing)
        self.missing, self.advice = missing, advice

    @classmethod
    def joined(cls, errors: Sequence["WeightsUnavailableError"]) -> "WeightsUnavailableError":
        """One error for several models: every missing file, then each distinct piece of advice once."""
        return cls("\n".join(e.missing for e in errors), "\n".join(dict.fromkeys(e.advice for e in errors if e.advice)))


class MissingInputError(CnnfeatError, FileNotFoundError):
    """A file or folder the command needs does not exist."""


class OutputExistsError(CnnfeatError, FileExistsError):
    """An output is already there and the command was not asked to replace it."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """' (did you mean 'valid'?)' for a near miss among the known names, else ''."""
    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""
