"""Hostile input: every option of every command, given values nobody should type, never ends in a traceback.

The cases are generated from click's own description of the commands (each option's type), so a new option
is covered when it is added. Each case runs in-process against a tiny context that fails on its data if the
value is accepted (an empty workdir, a raw download as --data), and must: exit 2 naming the option (a bad
value, refused by the option parser) or 1 with an `error:` line (a problem in the data or workdir); never 70
or a traceback; and leave the folder it ran in exactly as it was.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from features import Bounds, ConfigError, ExtractConfig, PrepareConfig, check_bounds
from pipeline.cli import main
from pipeline.cli.common import EXIT_PROBLEM, EXIT_USAGE, NumberList
from pipeline.config import PredictConfig
from pipeline.finetune import FinetuneConfig
from pipeline.heads import HeadConfig

from .test_architecture import COMMAND_SETTINGS, ROOT

SETTINGS_CLASSES = (ExtractConfig, HeadConfig, FinetuneConfig, PredictConfig, PrepareConfig)


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A raw download (flat train/ and test/ of empty .jpg files: nothing is decoded before the refusal),
    a labels CSV that names none of them, a plain file and an empty folder."""
    root = tmp_path_factory.mktemp("hostile")
    for name in ("train/a.jpg", "train/b.jpg", "test/c.jpg"):
        (root / "raw" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "raw" / name).write_bytes(b"")
    (root / "labels.csv").write_text("id,label\nnothing,x\n")
    (root / "a file.txt").write_text("not a folder")
    (root / "empty").mkdir()
    return root


def base_args(command: str, root: Path) -> dict[str, str]:
    """Options that let each command run as far as its data, where it fails with exit 1 (never 0: nothing is made)."""
    has_workdir = any("--workdir" in param.opts for param in main.commands[command].params)
    given = {"--workdir": str(root / "work")} if has_workdir else {}
    given |= {
        "extract": {"--data": str(root / "raw")},
        "finetune": {"--data": str(root / "raw")},
        "run": {"--data": str(root / "raw")},
        "prepare": {"--train": str(root / "raw" / "train"), "--out": str(root / "out"), "--labels": str(root / "labels.csv")},
    }.get(command, {})
    return given


def hostile_values(param: click.Option, root: Path) -> list[str]:
    """Values for the option's type: out of range, NaN, huge, empty, wrong type, unicode, missing or unwritable paths."""
    kind = param.type
    if isinstance(kind, click.Path):
        values = [str(root / "nowhere" / "x"), str(root / "a file.txt" / "x"), "/proc/cnnfeat-nope/x",
                  str(root / "with spaces ünï"), "x" * 300, ""]
        values += [str(root / "a file.txt")] if not kind.file_okay else []
        values += [str(root / "empty")] if not kind.dir_okay else []
        return values
    if isinstance(kind, NumberList):
        return ["", ",", "nan", "-1", "0", "1,abc", "1e400", "1,,2", "１"]
    if isinstance(kind, click.types.IntParamType):
        return ["-1", "0", "1" + "0" * 30, "nan", "1.5", "", "abc", "٣"]
    if isinstance(kind, click.types.FloatParamType):
        return ["-1", "0", "1e400", "nan", "inf", "-inf", "", "abc", "1" + "0" * 400]
    if isinstance(kind, click.Choice):
        return ["", "nosuch", "ünïcödé"]
    return ["", " ", "ünï cödé", "name with spaces", "([", "x" * 300, "../../etc"]


def _cases() -> list[tuple[str, str, str]]:
    """(command, option, value) for every option that takes a value, of every command."""
    root = Path("/ROOT")  # a placeholder, replaced by the context folder when a case runs
    cases = []
    for name, command in sorted(main.commands.items()):
        for param in command.params:
            if isinstance(param, click.Option) and not param.is_flag and not param.is_eager or param.name == "config":
                cases += [(name, param.opts[0], value) for value in hostile_values(param, root)]
    return cases


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(("command", "option", "value"), _cases())
def test_a_hostile_value_is_refused_with_the_option_named_and_nothing_written(command, option, value, context,
                                                                            monkeypatch):
    monkeypatch.chdir(context)  # relative paths land in the context, where a write would be seen
    value = value.replace("/ROOT", str(context))
    args = {**base_args(command, context), option: value}
    before = _tree(context)
    result = CliRunner().invoke(main, [command, *(part for pair in args.items() for part in pair)])
    output = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), output  # nothing escaped
    assert "Traceback" not in output and result.exit_code in (EXIT_PROBLEM, EXIT_USAGE), (result.exit_code, output)
    if result.exit_code == EXIT_USAGE:
        param = next(p for p in main.commands[command].params if option in p.opts)
        assert any(f"'{opt}'" in output for opt in param.opts), output
    else:
        assert "error: " in output, output
    assert _tree(context) == before, f"{command} {option} {value!r} wrote {_tree(context) - before}"


def test_every_command_and_option_is_covered():
    """A new command or option is covered by the generated cases, not forgotten."""
    covered = {(command, option) for command, option, _ in _cases()}
    for name, command in main.commands.items():
        for param in command.params:
            if isinstance(param, click.Option) and not param.is_flag and not param.is_eager:
                assert (name, param.opts[0]) in covered
    assert len(covered) > 80


def test_a_toml_setting_is_checked_as_its_option(context):
    """`run --config`: a TOML value goes through the option's type (exit 2 naming the option); comma strings and
    lists are read as on the command line."""
    job = context / "job.toml"
    for setting, option in (("epochs = 0", "--epochs"), ("holdout = nan", "--holdout"), ("seed = -1", "--seed"),
                            ("c-grid = [1.0, -1.0]", "--c-grid"), ('image-size = "big"', "--image-size"),
                            ("clip = 0.6", "--clip")):
        job.write_text(f'data = "raw"\nworkdir = "work"\n{setting}\n')
        result = CliRunner().invoke(main, ["run", "--config", str(job)])
        assert result.exit_code == EXIT_USAGE and f"'{option}'" in result.output, (setting, result.output)
    job.write_text('data = "raw"\nworkdir = "work"\nbackbones = "resnet18,mobilenet_v3_small"\n')
    result = CliRunner().invoke(main, ["run", "--config", str(job)])
    assert result.exit_code == EXIT_PROBLEM and "raw download" in result.output and "iterable" not in result.output
    job.unlink()


# one bad value per checked option of every command, each refused by the option parser with torch unimportable
BAD_VALUES = [
    ["prepare", "--train", "raw/train", "--out", "out", "--label-from-name", "(["],
    ["prepare", "--train", "raw/train", "--out", "out", "--label-from-name", "nogroup"],
    ["prepare", "--train", "raw/train", "--out", "out", "--label-from-name", "--seed", "-3"],
    ["prepare", "--train", "raw/train", "--out", "out", "--label-from-name", "--val-fraction", "1"],
    ["train-head", "--seed", "-1"], ["ensemble", "--seed", "-1"], ["run", "--data", "raw", "--seed", "-1"],
    ["predict", "--output", "a file.txt/x.csv"], ["predict", "--output", "/proc/cnnfeat-nope/x.csv"],
    ["predict", "--clip", "0.6"], ["extract", "--data", "raw", "--image-size", "10"],
    ["extract", "--data", "raw", "--batch-size", "0"], ["train-head", "--holdout", "1.5"],
    ["ensemble", "--epochs", "0"], ["finetune", "--data", "raw", "--epochs", "0"],
    ["finetune", "--data", "raw", "--lr", "nan"], ["run", "--data", "raw", "--clip", "0.6"],
    ["train-head", "--val-split", "train"], ["train-head", "--c-grid", "0"], ["extract", "--workdir", "a file.txt/w"],
]


def test_bad_values_are_refused_before_torch_is_imported(context):
    """The refusals above, in one process where importing torch (or scikit-learn, pandas) fails: each exits 2."""
    code = f"""
import json, sys
for blocked in ('torch', 'torchvision', 'sklearn', 'matplotlib', 'pandas'):
    sys.modules[blocked] = None
from pipeline.cli import main
codes = []
for args in {BAD_VALUES!r}:
    try:
        main(args, prog_name='cnnfeat')
    except SystemExit as done:
        codes.append(done.code)
print(json.dumps(codes))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=context, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    codes = json.loads(done.stdout.strip().splitlines()[-1])
    assert codes == [EXIT_USAGE] * len(BAD_VALUES), done.stderr
    assert "Traceback" not in done.stderr and not (context / "out").exists()


def _numbers(bounds: Bounds) -> st.SearchStrategy:
    near = [bounds.low, bounds.high, 0, 1, -1]
    edges = st.sampled_from([n for n in near if n is not None])
    if bounds.integer:
        return st.one_of(edges.map(int), st.integers(-(2**70), 2**70))
    return st.one_of(edges.map(float), st.floats(allow_nan=True, allow_infinity=True))


BOUNDED = [(cls, f.name, f.metadata["bounds"]) for cls in SETTINGS_CLASSES for f in fields(cls) if "bounds" in f.metadata]
REQUIRED = {ExtractConfig: {"data": "d"}, PrepareConfig: {"train": ".", "out": "o", "label_pattern": r"(\w+)"}}


@pytest.mark.parametrize(("cls", "name", "bounds"), BOUNDED, ids=[f"{c.__name__}.{n}" for c, n, _ in BOUNDED])
@settings(max_examples=40, deadline=None, database=None)
@given(data=st.data())
def test_a_bounded_setting_is_accepted_exactly_within_its_bounds(cls, name, bounds, data):
    """Any number (NaN, infinities, huge, the edges): the dataclass keeps it only within its Bounds, refuses it
    with a ConfigError naming the setting otherwise, never with another exception."""
    value = data.draw(_numbers(bounds))
    value = (value,) if name == "c_grid" else value
    try:
        cfg = cls(**REQUIRED.get(cls, {}), **{name: value})
    except ConfigError as err:
        assert err.setting == name and name in str(err)
        assert not bounds.allows(value[0] if name == "c_grid" else value)
    else:
        check_bounds(cfg)  # what was kept is within bounds


@pytest.mark.parametrize("command", sorted(COMMAND_SETTINGS))
@settings(max_examples=25, deadline=None, database=None)
@given(number=st.one_of(st.integers(-(2**40), 2**40), st.floats(allow_nan=True, allow_infinity=True)))
def test_an_option_refuses_exactly_what_its_setting_refuses(command, number):
    """One rule: an option typed from its setting's Bounds accepts a number exactly when the dataclass would."""
    ctx = click.Context(main.commands[command])
    for settings_class, renamed in COMMAND_SETTINGS[command]:
        bounded = {f.name: f.metadata["bounds"] for f in fields(settings_class) if "bounds" in f.metadata}
        for param in main.commands[command].params:
            bounds = bounded.get(renamed.get(param.name, param.name) or "")
            if bounds is None or isinstance(param.type, NumberList):
                continue
            text = str(int(number) if bounds.integer and isinstance(number, float) and math.isfinite(number) else number)
            try:
                param.type.convert(text, param, ctx)
                accepted = True
            except click.BadParameter:
                accepted = False
            assert accepted == bounds.allows(_parsed(text, bounds.integer)), (param.name, text)


def _parsed(text: str, integer: bool) -> int | float | None:
    try:
        return int(text) if integer else float(text)
    except ValueError:
        return None


@pytest.mark.parametrize(("cls", "values"), [
    (HeadConfig, {"val_split": ""}), (HeadConfig, {"train_split": "a/b"}), (HeadConfig, {"c_grid": ()}),
    (HeadConfig, {"device": "tpu"}), (FinetuneConfig, {"optimizer": "adam"}), (PredictConfig, {"device": "gpu"}),
    (PrepareConfig, {"train": ".", "out": "o", "label_pattern": "(["}),
    (PrepareConfig, {"train": ".", "out": "o", "label_pattern": "x", "labels": "l.csv"}),
])
def test_a_setting_that_cannot_be_used_is_named(cls, values):
    with pytest.raises(ConfigError) as refused:
        cls(**values)
    assert refused.value.setting in values
