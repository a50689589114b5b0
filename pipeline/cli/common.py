"""What every command shares: exit statuses, error handling, shared options and progress bars."""

from __future__ import annotations

import errno
import functools
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import click

from features import (ALL_BACKBONES, DEFAULT_DEVICE, DEFAULT_SEED, DEFAULT_WORKDIR, DEVICES, VIEWS, CnnfeatError,
                      WorkdirBusyError)

# Exit statuses (README: "Exit status"): one meaning each, so scripts can act on them.
EXIT_PROBLEM = 1  # something to fix; the message says what and which command to run
# 2: a bad option or argument, refused by click before the command runs
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


def floats(ctx: click.Context, param: click.Parameter, value: Any) -> tuple[float, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(float(v) for v in value)
    try:
        return tuple(float(v) for v in str(value).split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma list of numbers") from None


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


workdir_option = click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_WORKDIR,
                              help="Where features.h5 and everything after it live.")
force_option = click.option("--force", is_flag=True, help="Redo even what is up to date.")
device_option = click.option("--device", type=click.Choice(DEVICES), default=DEFAULT_DEVICE)
seed_option = click.option("--seed", type=int, default=DEFAULT_SEED, help="Seed of --weights random, splits and heads.")


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
