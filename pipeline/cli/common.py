"""What every command shares: exit statuses, error handling, shared options and progress bars."""

from __future__ import annotations

import errno
import functools
import math
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from features import (ALL_BACKBONES, DEFAULT_DEVICE, DEFAULT_SEED, DEFAULT_WORKDIR, DEVICES, SEED, VIEWS, Bounds,
                      CnnfeatError, ConfigError, WorkdirBusyError, bounds_of)

Settings = TypeVar("Settings")

# Exit statuses (README: "Exit status"): one meaning each, so scripts can act on them.
EXIT_PROBLEM = 1  # something to fix; the message says what and which command to run
EXIT_USAGE = 2  # a bad option value or argument: refused before any work starts (click's usage error)
EXIT_BUSY = 3  # another cnnfeat process holds the workdir: retrying later can work
EXIT_INTERNAL = 70  # a bug in cnnfeat (EX_SOFTWARE): the traceback is printed
EXIT_INTERRUPTED = 130
# OS errors a user fixes (a full disk, a read-only folder); any other exception is a bug
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def handled(kept: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """cnnfeat's own errors as one clear line and a non-zero exit; Ctrl-C as a resume hint; bugs with
    their traceback. `kept` says what a failed run of this command leaves behind."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return command(*args, **kwargs)
            except click.ClickException:  # a usage error found while reading the settings: click reports it
                raise
            except CnnfeatError as err:
                click.secho(f"error: {err}", fg="red", err=True)
                sys.exit(EXIT_BUSY if isinstance(err, WorkdirBusyError) else EXIT_PROBLEM)
            except BrokenPipeError:  # the reader went away (`cnnfeat backbones | head`): nothing to say
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                sys.exit(EXIT_PROBLEM)
            except OSError as err:
                if err.errno not in ENVIRONMENT_ERRNOS:
                    _internal_error()
                click.secho(f"error: {err}", fg="red", err=True)
                click.secho(f"{kept}; free space or fix the folder's permissions, then run the same command again",
                            fg="red", err=True)
                sys.exit(EXIT_PROBLEM)
            except KeyboardInterrupt:
                click.secho(f"\ninterrupted: {kept}; run the same command again to carry on.", fg="yellow", err=True)
                sys.exit(EXIT_INTERRUPTED)
            except Exception:  # noqa: BLE001 - anything else is a bug in cnnfeat
                _internal_error()

        return wrapper

    return decorate


def _internal_error() -> None:
    click.secho("internal error: this is a bug in cnnfeat, not in your data or settings; please report it "
                "with the traceback below", fg="red", err=True)
    traceback.print_exc()
    sys.exit(EXIT_INTERNAL)


BATCHES_KEPT = "finished batches are kept and nothing incomplete was written"
NOTHING_HALF_WRITTEN = "nothing half-written was kept; earlier outputs are as they were"


def options(*decorators: Callable[..., Any]) -> Callable[..., Any]:
    """Bundle click options so that several commands share one definition."""

    def apply(command: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange, which lets NaN through any bound and infinity through an open end, refusing both."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def bounds_type(bounds: Bounds) -> click.ParamType:
    """The option type of a setting's Bounds: the option parser refuses what the settings dataclass would."""
    kind = click.IntRange if bounds.integer else FiniteFloatRange
    return kind(bounds.low, bounds.high, min_open=bounds.low_open, max_open=bounds.high_open)


def setting_type(settings: type, name: str) -> click.ParamType:
    """The option type of a settings dataclass's bounded field (its Bounds, see features.config)."""
    return bounds_type(bounds_of(settings, name))


def setting_option(flag: str, settings_class: type, *names: str, field: str = "", **kwargs: Any) -> Callable[..., Any]:
    """An option for a bounded setting, its default and its type (the setting's Bounds) both from the settings
    dataclass; `field` where the setting's name is not the flag's."""
    name = field or flag.lstrip("-").replace("-", "_")
    return click.option(flag, *names, type=setting_type(settings_class, name), default=getattr(settings_class, name),
                        **kwargs)


class NumberList(click.ParamType):
    """A comma list of numbers, each within a setting's Bounds (`--c-grid 0.01,1`; a TOML list too)."""

    name = "numbers"

    def __init__(self, bounds: Bounds) -> None:
        self.number = bounds_type(bounds)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):  # already converted (a default)
            return value
        items = value if isinstance(value, list) else [v for v in str(value).split(",") if v.strip()]
        if not items:
            self.fail(f"{value!r} holds no number; give a comma list such as 0.01,1", param, ctx)
        return tuple(self.number.convert(item, param, ctx) for item in items)


def settings(settings_class: Callable[..., Settings], **values: Any) -> Settings:
    """The command's options as its settings dataclass, built before any stage code (and torch) is imported:
    a value its rules refuse is a bad option value, exit 2, naming the option."""
    try:
        return settings_class(**values)
    except ConfigError as err:
        ctx = click.get_current_context()
        param = next((p for p in ctx.command.params if p.name == err.setting), None)
        raise click.BadParameter(str(err), ctx=ctx, param=param) from None


def _unusable_path(path: Path, what: str, write: bool) -> str:
    """'' when path can be used (with write: made and written), else why not: a name the system refuses (too long),
    a file where a folder must be, or a folder nothing can be made in (read-only, /proc). Writing is tried with a
    temporary folder, removed at once: permissions alone do not tell, for root or on special file systems."""
    existing = path.absolute()
    try:
        try:
            os.stat(path)
        except (FileNotFoundError, NotADirectoryError):  # not there yet, or under a file: found below
            pass
        while not existing.is_dir() and existing != existing.parent:
            if existing.exists() and existing != path.absolute():
                return f"{existing} is a file, so the {what} {path} cannot be made there; choose another path"
            existing = existing.parent
        if write:
            os.rmdir(tempfile.mkdtemp(prefix=".cnnfeat-probe-", dir=existing))
    except OSError as err:
        return f"the {what} {path} cannot be used ({err.strerror} in {existing}); choose another path"
    return ""


def usable_path(what: str, write: bool = True) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A callback refusing a path the command could not use: an output that cannot be written (a file as a
    parent, a read-only folder), or any path the system refuses (a name too long)."""

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None and (why := _unusable_path(Path(value), what, write)):
            raise click.BadParameter(why, ctx=ctx, param=param)
        return value

    return check


def parse_views(ctx: click.Context, param: click.Parameter, value: Any) -> tuple[str, ...]:
    names = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v]
    names = [n.strip() for n in names if n.strip() and n.strip() != "none"]
    unknown = [n for n in names if n not in VIEWS]
    if unknown:
        raise click.BadParameter(f"unknown view(s) {unknown}; known: {', '.join(VIEWS)}, or none")
    return tuple(names)


def views_option(default: tuple[str, ...]) -> Callable[..., Any]:
    return click.option("--views", default=",".join(default) or "none", callback=parse_views,
                        help="hflip: also store the features of each image mirrored left-right; none: not.")


def backbones_option(flag: str, help: str) -> Callable[..., Any]:
    """--backbone (repeatable, comma lists) for the stages; `run` and `ensemble` spell it --backbones."""
    return click.option(flag, "backbones", multiple=True, default=ALL_BACKBONES, help=help)


WORKDIR_HELP = "Where features.h5 and everything after it live."
workdir_option = click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_WORKDIR,
                              callback=usable_path("workdir"), help=WORKDIR_HELP)
read_workdir_option = click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
                                   default=DEFAULT_WORKDIR, callback=usable_path("workdir", write=False),
                                   help=WORKDIR_HELP)
force_option = click.option("--force", is_flag=True, help="Redo even what is up to date.")
device_option = click.option("--device", type=click.Choice(DEVICES), default=DEFAULT_DEVICE)
seed_option = click.option("--seed", type=bounds_type(SEED), default=DEFAULT_SEED,
                           help="Seed of --weights random, splits and heads.")


def _progress(prefix: str) -> Any:
    from tqdm import tqdm

    class StepProgress:
        """One tqdm bar per step in turn (a split, an epoch), showing images per second and any running loss."""

        bar: Any = None
        what = ""

        def __call__(self, what: str, advanced: int, total: int, loss: float | None = None) -> None:
            if self.bar is None or what != self.what:
                self.close()
                self.bar, self.what = tqdm(total=total, desc=f"{prefix}{what}", unit="img", dynamic_ncols=True), what
            self.bar.update(advanced)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            if self.bar.n >= total:  # close now, so the bar's rate is not diluted by what comes next
                self.close()

        def close(self) -> None:
            if self.bar is not None:
                self.bar.close()
            self.bar = None

    return StepProgress()


def with_progress(run: Callable[[Any], Any], prefix: str = "extract ") -> Any:
    from tqdm.contrib.logging import logging_redirect_tqdm

    progress = _progress(prefix)
    try:
        with logging_redirect_tqdm():
            return run(progress)
    finally:
        progress.close()
