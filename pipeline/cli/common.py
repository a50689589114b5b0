"""What every command shares: exit statuses, error handling, shared options and progress bars."""

from __future__ import annotations

import errno
import functools
import math
import os
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from features import (ALL_BACKBONES, DEFAULT_DEVICE, DEFAULT_SEED, DEFAULT_WORKDIR, DEVICES, SEED, VIEWS, Bounds,
                      CnnfeatError, ConfigError, FeatureGroup, Job, WorkdirBusyError, bounds_of, did_you_mean, job_path,
                      read_job, write_job)

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

# What a workdir's job.toml records (README: "The workdir remembers its job"), by option name, besides its [[features]] groups
# (backbones, weights, image size): the settings that decide its results. Speed settings (batch size, workers,
# device) are the machine's, not the job's.
JOB_SETTINGS = ("data", "views", "pool", "precision", "decode", "seed", "train_split", "val_split", "holdout",
                "c_grid", "max_iter", "flip", "concat", "epochs", "lr", "weight_decay", "patience", "dropout", "hidden",
                "head_batch_size", "folds", "calibrate", "select", "refit", "kaggle_binary", "clip")
JOB = "cnnfeat.job"  # the key of the workdir's recorded job in click's ctx.meta


def _read_job(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """The workdir's recorded settings become the command's defaults, beneath a --config file's and the
    command line's: one precedence for every setting (flag > --config > job.toml > the settings' defaults)."""
    workdir = usable_path("workdir")(ctx, param, value)
    # a damaged or mistyped job.toml is a problem in the workdir, not in the option's value: exit 1, as `info` does
    try:
        job = read_job(workdir)
    except ConfigError as err:
        raise click.ClickException(str(err)) from None
    ctx.meta[JOB] = job
    unknown = [key for key in (job.settings if job is not None else {}) if key not in JOB_SETTINGS]
    if unknown:  # a hand-edited typo must not be ignored in silence
        raise click.ClickException(f"{job_path(workdir)}: unknown setting {unknown[0]!r}"
                                   f"{did_you_mean(unknown[0], JOB_SETTINGS)}; job.toml takes {', '.join(JOB_SETTINGS)} "
                                   f"and [[features]] tables")
    if job is not None:
        options = {p.name: p for p in ctx.command.params}
        recorded = {k: option_value(options[k], v) for k, v in job.settings.items() if k in options}
        ctx.default_map = {**recorded, **(ctx.default_map or {})}
    return workdir


job_workdir_option = click.option(
    "--workdir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_WORKDIR, is_eager=True,
    callback=_read_job, help=f"{WORKDIR_HELP} Its job.toml holds the settings of the commands before: what this "
                             f"command is not told, it takes from there.")


def option_value(param: click.Parameter, value: Any) -> Any:
    """A setting read from TOML as its option takes it on a command line: a list as a comma list (c-grid = [0.01, 1]
    as --c-grid 0.01,1; views = [] as --views none), a string for a repeatable option as one occurrence."""
    if isinstance(value, list) and not getattr(param, "multiple", False):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, str) and getattr(param, "multiple", False):
        return [value]
    return value


def given(name: str) -> bool:
    """Whether the option was set on the command line or by --config, not left to its default. Asked of the feature
    groups' options (backbones, weights, image size), which the job keeps in its groups, never among the defaults."""
    return click.get_current_context().get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)


def _recorded(value: Any) -> Any:
    """A setting as job.toml holds it: paths absolute (a hint pasted anywhere finds them), tuples as lists."""
    if isinstance(value, Path):
        return str(value.resolve())
    return list(value) if isinstance(value, tuple) else value


@dataclass
class JobUpdate:
    """The workdir's job as this command leaves it, saved once the command has done its work (a command that
    fails leaves the workdir and its job as they were)."""

    workdir: Path
    job: Job
    changes: list[str]
    first: bool  # no job was recorded before

    def save(self) -> None:
        """Write job.toml and say, in one line, what changed in a job recorded before."""
        if self.first:
            click.echo(f"job: recorded in {job_path(self.workdir)}; later commands take their settings from there")
        elif self.changes:
            click.echo(f"job: {'; '.join(self.changes)}")
        if self.first or self.changes or read_job(self.workdir) != self.job:
            write_job(self.workdir, self.job)


def job_update(workdir: Path, o: dict[str, Any], groups: list[FeatureGroup] | None = None,
               group_changes: tuple[str, ...] = ()) -> JobUpdate:
    """The command's settings recorded in the workdir's job (groups: its feature groups, when it extracts)."""
    before = click.get_current_context().meta.get(JOB)
    job = Job(dict(before.settings), list(before.features)) if before is not None else Job()
    changes = list(group_changes)
    for name in JOB_SETTINGS:
        if name in o and o[name] is not None:  # None: "choose for me", the settings' default (--clip unset)
            value = _recorded(o[name])
            if before is not None and name in job.settings and job.settings[name] != value:
                changes.append(f"{name} {shown_setting(job.settings[name])} -> {shown_setting(value)}")
            job.settings[name] = value
    if groups is not None:
        job.features = groups
    return JobUpdate(workdir, job, changes, before is None)


def shown_setting(value: Any) -> str:
    """A recorded setting as a person reads it: a list as a comma list (none when empty)."""
    return (",".join(map(str, value)) or "none") if isinstance(value, list) else str(value)


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
