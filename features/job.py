"""The workdir's job: the settings that made it, kept in `<workdir>/job.toml`, so later commands need only --workdir.

    job = read_job(workdir)            # None before a command first wrote the workdir
    job = job.with_group(FeatureGroup(("resnet18",), weights="runs/x/finetuned/resnet18.pt"))
    write_job(workdir, job)

job.toml reads like a `cnnfeat run --config` file (README: "The workdir remembers its job"): keys named like
the options, and one [[features]] table per group of backbones that share their weights and image
size. Like Hydra's `.hydra/config.yaml` beside a run's outputs, it holds the resolved settings, so a later
`cnnfeat extract --workdir W` or `cnnfeat run --workdir W` redoes exactly this job. Imports no torch.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .checkpoint import feature_name, weights_tag
from .config import ExtractConfig
from .errors import CnnfeatError, ConfigError
from .files import atomic_output
from .registry import registry_names

JOB_NAME = "job.toml"
FEATURES = "features"  # the key of the [[features]] groups


def job_path(workdir: str | Path) -> Path:
    return Path(workdir) / JOB_NAME


@dataclass(frozen=True)
class FeatureGroup:
    """Backbones extracted with the same weights and image size (None: each backbone's own)."""

    backbones: tuple[str, ...]
    weights: str = ExtractConfig.weights
    image_size: int | None = None

    def describe(self) -> str:
        size = f", image size {self.image_size}" if self.image_size else ""
        return f"{', '.join(self.backbones)} (weights {self.weights}{size})"


@dataclass
class Job:
    """The recorded settings: option name -> value, and the feature groups."""

    settings: dict[str, Any] = field(default_factory=dict)
    features: list[FeatureGroup] = field(default_factory=list)

    def with_group(self, group: FeatureGroup) -> tuple["Job", list[str]]:
        """The job with these backbones at these weights and size, and what that changed.

        A backbone's features are named by its weights (checkpoint.feature_name), so a backbone at weights of
        another name is added beside the one there; at weights of the same name (imagenet and random share
        the plain name) it replaces it."""
        entries = [(b, g.weights, g.image_size) for g in self.features for b in g.backbones]
        changes = []
        for backbone in group.backbones:
            new = (backbone, group.weights, group.image_size)
            same = [e for e in entries if e[0] == backbone and weights_tag(e[1]) == weights_tag(group.weights)]
            if not same:
                entries.append(new)
                changes.append(f"+ {backbone} (weights {group.weights})")
            elif same[0] != new:
                entries[entries.index(same[0])] = new
                was = FeatureGroup((backbone,), same[0][1], same[0][2]).describe()
                changes.append(f"{was} -> {FeatureGroup((backbone,), group.weights, group.image_size).describe()}")
        return replace(self, features=_grouped(entries)), changes

    def feature_names(self) -> list[str]:
        """The plain-view feature names the job extracts (checkpoint.feature_name), without loading torch."""
        names = []
        for group in self.features:
            try:
                tag = weights_tag(group.weights)
            except CnnfeatError:  # a checkpoint since moved: its features cannot be named, nor made
                continue
            names += [feature_name(name, tag) for name in registry_names(group.backbones)]
        return list(dict.fromkeys(names))

    def groups_for(self, backbones: tuple[str, ...]) -> list[FeatureGroup]:
        """The job's groups limited to these backbones (those the job does not know are left out)."""
        limited = [replace(g, backbones=tuple(b for b in g.backbones if b in backbones)) for g in self.features]
        return [g for g in limited if g.backbones]


def extract_hint(workdir: str | Path, data: str | Path | None = None, backbone: str = "", views: str = "",
                 force: bool = False) -> str:
    """The extract command that, pasted as is, makes what is missing in this workdir: with a recorded job,
    `--workdir` alone (the job knows the data, backbones, weights and sizes), and only a backbone or views
    the job lacks; without one, --data too."""
    job = read_job(workdir) if job_path(workdir).exists() else None
    parts = ["cnnfeat extract"] + ["--force"] * force
    if job is None or not job.features:
        parts.append(f"--data {data or 'DATA'}")
    if backbone and (job is None or backbone not in job.feature_names()):
        parts.append(f"--backbone {backbone}")
    if views and (job is None or views not in job.settings.get("views", [])):
        parts.append(f"--views {views}")
    parts.append(f"--workdir {workdir}")
    return " ".join(parts)


def _grouped(entries: list[tuple[str, str, int | None]]) -> list[FeatureGroup]:
    """(backbone, weights, size) entries as groups of equal weights and size, in the order first seen."""
    groups: dict[tuple[str, int | None], list[str]] = {}
    for backbone, weights, size in entries:
        groups.setdefault((weights, size), []).append(backbone)
    return [FeatureGroup(tuple(names), weights, size) for (weights, size), names in groups.items()]


def read_job(workdir: str | Path) -> Job | None:
    """The workdir's job, or None when no command recorded one yet."""
    path = job_path(workdir)
    if not path.exists():
        return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        groups = [FeatureGroup(tuple(g["backbones"]), str(g.get("weights", ExtractConfig.weights)), g.get("image_size"))
                  for g in data.pop(FEATURES, [])]
    except (tomllib.TOMLDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} cannot be read ({type(err).__name__}: {err}); fix it by hand (README: "
                          f"\"The workdir remembers its job\"), or delete it and give every setting again") from err
    return Job(data, groups)


def write_job(workdir: str | Path, job: Job) -> Path:
    """Write job.toml whole (a reader sees the old file or the new one)."""
    path = job_path(workdir)
    lines = ["# cnnfeat's job for this workdir: what `cnnfeat extract --workdir W` and `cnnfeat run --workdir W`",
             "# redo. Options given on a command line change it. README, \"The workdir remembers its job\", describes it.", ""]
    lines += [f"{key} = {_toml_value(value)}" for key, value in job.settings.items() if value is not None]
    for group in job.features:
        lines += ["", f"[[{FEATURES}]]", f"backbones = {_toml_value(list(group.backbones))}",
                  f"weights = {_toml_value(group.weights)}"]
        if group.image_size is not None:
            lines.append(f"image_size = {group.image_size}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _toml_value(value: Any) -> str:
    """A setting as TOML: strings (JSON's escapes are TOML's), booleans, numbers, and lists of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))
