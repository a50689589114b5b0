"""README's examples run: a README that no longer runs, or whose shown output drifted, fails here.

Every shell and Python block of README.md is executed top to bottom in one shared folder that holds
a copy of the sample data (data/digits), as a new user would run them from the repository root.
An HTML comment on the line before a block says how to treat it:

    <!-- not run: <reason> -->    a block this machine cannot run (a GPU, packages to install, data
                                  that is not shipped); its cnnfeat commands' option names are still
                                  checked against the CLI, and its Python is compiled
    <!-- output of: <command> --> a plain block showing what <command> prints; add "(exit N)" when
                                  it does not exit 0
    <!-- file: <name> -->         a block to save as <name> in the folder, for the commands after it

The shared folder stands for the user's home: torch's cache is its `.cache/torch` (empty: ImageNet
weights cannot be had, as offline) and its path is shown as `~`. cnnfeat commands run in-process;
no other program may appear in a block that runs.
"""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main

from .conftest import ROOT, go_offline

README = ROOT / "README.md"
MARKER = re.compile(r"^<!--\s*(not run|output of|file):\s*(.*?)\s*-->$")
EXIT = re.compile(r"^(.*?)\s*\(exit (\d+)\)$")
RUNS = ("bash", "python")  # the languages of blocks that are executed
PIPELINE = ("-m", "pipeline")  # `python -m pipeline` / `torchrun ... -m pipeline` are the cnnfeat command


@dataclass(frozen=True)
class Block:
    """One fenced block of the README, with the marker comment on the line before it ("" if none)."""
    language: str  # after the opening fence: "bash", "python", "toml"; "" for shown output and diagrams
    text: str
    kind: str  # "", "not run", "output of" or "file"
    detail: str  # the reason, command or file name the marker gives
    line: int  # where the block opens, for messages

    @property
    def where(self) -> str:
        return f"README.md:{self.line}"


def parse_blocks(markdown: str) -> list[Block]:
    """The fenced blocks in order. A comment that looks like a marker but names no known kind is an error,
    so a typo cannot quietly turn a check off."""
    lines, blocks, i = markdown.splitlines(), [], 0
    while i < len(lines):
        fence = re.fullmatch(r"```(\w*)\s*", lines[i])
        if fence is None:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise ValueError(f"README.md:{i + 1}: the block is never closed")
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        kind, detail = "", ""
        if before.startswith("<!--"):
            marker = MARKER.match(before)
            if marker is None:
                raise ValueError(f"README.md:{i}: {before!r} is no marker; use not run:, output of: or file:")
            kind, detail = marker.groups()
            if not detail:
                raise ValueError(f"README.md:{i}: {kind}: needs a reason, command or file name")
        blocks.append(Block(fence.group(1), "\n".join(lines[i + 1:end]), kind, detail, i + 1))
        i = end + 1
    return blocks


def shell_commands(text: str) -> list[list[str]]:
    """A shell block's commands as argument lists: continued lines joined, comments dropped, `a && b` split."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        command: list[str] = []
        for word in shlex.split(line, comments=True):
            if word == "&&":
                commands.append(command)
                command = []
            else:
                command.append(word)
        if command:
            commands.append(command)
    return commands


def cnnfeat_arguments(command: list[str]) -> list[str] | None:
    """The arguments given to cnnfeat (`cnnfeat ...`, `python -m pipeline ...`, `torchrun ... -m pipeline ...`);
    None for any other program."""
    if command[0] == "cnnfeat":
        return command[1:]
    for i in range(len(command) - 1):
        if tuple(command[i:i + 2]) == PIPELINE:
            return command[i + 2:]
    return None


def unknown_options(arguments: list[str]) -> list[str]:
    """The subcommand or `--options` that the cnnfeat CLI does not have."""
    words = [w for w in arguments if w not in ("-v", "--verbose")]
    if not words or words[0].startswith("-"):
        return []  # `cnnfeat --help`, `--version`
    command = main.commands.get(words[0])
    if command is None:
        return [words[0]]
    known = {name for param in command.params for name in (*param.opts, *param.secondary_opts)} | {"--help"}
    return [w.split("=")[0] for w in words[1:] if w.startswith("--") and w.split("=")[0] not in known]


@dataclass
class Ran:
    """What one command did: its exit status and what it printed."""
    exit_code: int
    output: str


def run_command(command: list[str]) -> Ran:
    """One README command in the current folder; cnnfeat runs in-process (no interpreter start per command)."""
    arguments = cnnfeat_arguments(command)
    if arguments is None:
        raise ValueError(f"`{shlex.join(command)}` is not cnnfeat: this test runs no other program; "
                         "mark the block <!-- not run: <reason> -->")
    result = CliRunner().invoke(main, arguments, catch_exceptions=False)
    return Ran(result.exit_code, result.stdout + "\n" + result.stderr)  # progress bars are on stderr


DECIMAL = re.compile(r"\d+\.\d+")


def line_pattern(shown: str) -> re.Pattern:
    """A shown line as a pattern: `...` stands for any text, a decimal number for any decimal number
    (scores and timings vary; names, headers, counts and file names must not), any run of spaces for any."""

    def piece_pattern(piece: str) -> str:
        if piece == "...":
            return ".*"
        if piece.isspace():
            return r"\s+"
        return DECIMAL.pattern if DECIMAL.fullmatch(piece) else re.escape(piece)

    pieces = re.split(r"(\.\.\.|\d+\.\d+|\s+)", shown.strip())
    return re.compile("".join(piece_pattern(p) for p in pieces if p))


def output_mismatches(shown: str, printed: str, home: Path) -> list[str]:
    """The shown lines the printed output lacks: each must match a printed line after the one the line before it
    matched (the output may have more lines: progress, logging). The home folder's path is written `~`."""
    printed_lines = [ln.strip() for ln in re.split(r"[\r\n]", printed.replace(str(home), "~"))]
    missing, at = [], 0
    for shown_line in (ln for ln in shown.splitlines() if ln.strip()):
        pattern = line_pattern(shown_line)
        found = next((i for i in range(at, len(printed_lines)) if pattern.fullmatch(printed_lines[i])), None)
        if found is None:
            missing.append(shown_line)
        else:
            at = found + 1
    return missing


@dataclass
class ReadmeRun:
    """Every block's fate: problems found, and each command's result for the output blocks after it."""
    home: Path
    problems: list[str] = field(default_factory=list)
    results: dict[str, Ran] = field(default_factory=dict)

    def command(self, line: str) -> Ran:
        """A command's result: as it ran in its block, else run now (an output block's own command)."""
        command = shlex.split(line)
        key = shlex.join(command)
        if key not in self.results:
            self.results[key] = run_command(command)
        return self.results[key]


def check_not_run(block: Block) -> list[str]:
    """What can be checked without running: cnnfeat's option names, Python's syntax."""
    if block.language == "python":
        compile(block.text, block.where, "exec")
    if block.language != "bash":
        return []
    problems = []
    for command in shell_commands(block.text):
        arguments = cnnfeat_arguments(command)
        unknown = unknown_options(arguments) if arguments is not None else []
        if unknown:
            problems.append(f"{block.where}: `{shlex.join(command)}`: cnnfeat has no {', '.join(unknown)}")
    return problems


def run_block(block: Block, state: ReadmeRun) -> None:
    """Run one block in the current folder (the shared one), recording what went wrong in state.problems."""
    if block.kind == "not run":
        state.problems += check_not_run(block)
    elif block.kind == "file":
        Path(block.detail).write_text(block.text + "\n")
    elif block.kind == "output of":
        command, exit_code = (m.group(1), int(m.group(2))) if (m := EXIT.match(block.detail)) else (block.detail, 0)
        ran = state.command(command)
        if ran.exit_code != exit_code:
            state.problems.append(f"{block.where}: `{command}` exited {ran.exit_code}, README says {exit_code}")
        state.problems += [f"{block.where}: `{command}` no longer prints {line!r}"
                           for line in output_mismatches(block.text, ran.output, state.home)]
    elif block.language == "python":
        exec(compile(block.text, block.where, "exec"), {"__name__": "readme"})  # noqa: S102 - README's own code
    elif block.language == "bash":
        for command in shell_commands(block.text):
            line = shlex.join(command)
            ran = state.results[line] = run_command(command)
            if ran.exit_code != 0:
                state.problems.append(f"{block.where}: `{line}` exited {ran.exit_code}:\n{ran.output[-2000:]}")
                return  # the block's later commands depend on this one


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory: pytest.TempPathFactory) -> ReadmeRun:
    """README run once, top to bottom, as a new user would from the repository root, for every test here."""
    home = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "data" / "digits", home / "data" / "digits")
    state = ReadmeRun(home)
    with pytest.MonkeyPatch.context() as mp:
        go_offline(mp)
        mp.setenv("TORCH_HOME", str(home / ".cache" / "torch"))  # torch's default folder in this home: empty
        mp.chdir(home)
        for block in parse_blocks(README.read_text()):
            if block.language in RUNS or block.kind:
                try:
                    run_block(block, state)
                except Exception as err:  # noqa: BLE001 - a Python block's failure is reported with its line
                    state.problems.append(f"{block.where}: {type(err).__name__}: {err}")
    return state


def test_every_block_runs_and_shows_what_cnnfeat_prints(readme_run):
    assert not readme_run.problems, "\n".join(readme_run.problems)


def test_a_block_running_another_program_says_why_it_is_not_run():
    """A shell block that is not run must say why; and the README's sample job is among those that run."""
    blocks = parse_blocks(README.read_text())
    for block in blocks:
        if block.language == "bash" and block.kind != "not run":
            for command in shell_commands(block.text):
                assert cnnfeat_arguments(command) is not None, f"{block.where}: {command[0]} cannot run here"
    assert any("cnnfeat run --data data/digits" in b.text and not b.kind for b in blocks)


def test_a_renamed_option_fails_the_block(readme_run):
    """README drift: `--workdir` misspelt in the sample job is refused by cnnfeat (exit 2) and by the name check."""
    sample = next(b for b in parse_blocks(README.read_text()) if "cnnfeat run --data data/digits" in b.text)
    drifted = Block(sample.language, sample.text.replace("--workdir", "--workdirr"), sample.kind, "", sample.line)
    state = ReadmeRun(readme_run.home)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(readme_run.home)
        run_block(drifted, state)
    assert len(state.problems) == 1 and "exited 2" in state.problems[0] and "--workdirr" in state.problems[0]
    not_run = Block("bash", drifted.text, "not run", "a reason", sample.line)
    assert check_not_run(not_run) == [f"README.md:{sample.line}: `{shlex.join(shell_commands(drifted.text)[-1])}`: "
                                      "cnnfeat has no --workdirr"]


def test_a_changed_output_line_fails_the_comparison(readme_run):
    shown = next(b for b in parse_blocks(README.read_text()) if b.kind == "output of" and "cnnfeat run" in b.detail)
    printed = readme_run.command(shown.detail).output
    assert output_mismatches(shown.text, printed, readme_run.home) == []
    last = shown.text.splitlines()[-1]
    assert re.search(r"\(\d+ rows\)", last), "the sample job's last line counts the submission's rows"
    drifted = shown.text.replace(last, re.sub(r"\((\d+) rows\)", lambda m: f"({int(m[1]) + 1} rows)", last))
    assert output_mismatches(drifted, printed, readme_run.home) == [drifted.splitlines()[-1]]
    renamed = shown.text.replace("best", "bestt", 1)
    assert len(output_mismatches(renamed, printed, readme_run.home)) == 1


def test_output_lines_match_names_and_counts_but_not_scores(tmp_path):
    printed = f"model   val acc\nbest    0.9333\nwrote {tmp_path}/x.csv (15 rows)\n"
    assert output_mismatches("best  0.1\nwrote ~/x.csv (15 rows)", printed, tmp_path) == []
    assert output_mismatches("wrote ~/x.csv (16 rows)", printed, tmp_path) == ["wrote ~/x.csv (16 rows)"]
    assert output_mismatches("wrote ... (15 rows)\nbest  0.1", printed, tmp_path) == ["best  0.1"]  # order counts


def test_markers_are_parsed_and_a_marker_without_its_reason_is_refused():
    text = ("<!-- not run: needs a GPU -->\n```bash\ncnnfeat extract --device cuda \\\n  --data d # why\n```\n\n"
            "<!-- output of: cnnfeat info (exit 1) -->\n```\nerror: x\n```\n")
    gpu, shown = parse_blocks(text)
    assert (gpu.language, gpu.kind, gpu.detail, gpu.line) == ("bash", "not run", "needs a GPU", 2)
    assert shell_commands(gpu.text) == [["cnnfeat", "extract", "--device", "cuda", "--data", "d"]]
    assert (shown.language, shown.kind, shown.detail, shown.text) == ("", "output of", "cnnfeat info (exit 1)", "error: x")
    with pytest.raises(ValueError, match="needs a reason"):
        parse_blocks("<!-- not run: -->\n```bash\ncnnfeat info\n```\n")
    with pytest.raises(ValueError, match="is no marker"):
        parse_blocks("<!-- not ran: GPU -->\n```bash\ncnnfeat info\n```\n")
    assert unknown_options(["extract", "--data", "d", "--workdirr", "w"]) == ["--workdirr"]
    assert unknown_options(["--version"]) == [] and unknown_options(["extrakt"]) == ["extrakt"]
