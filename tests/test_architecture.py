"""The house rules, checked on the source: three parts, no import circles, no global patches, one default each.

features (images -> features) imports no pipeline module; fine-tuning imports features only; the heads
never import fine-tuning nor build a backbone. The import graph is read from the source with ast, every
import counted (the ones inside functions too), `from package import name` resolved to the module
that defines the name where the package exports it lazily.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import click
import pytest

from features import ExtractConfig, PrepareConfig
from pipeline.cli import main
from pipeline.config import RUN_VIEWS, ExportConfig, PredictConfig
from pipeline.finetune import FinetuneConfig
from pipeline.heads import HeadConfig
from pipeline.report import ReportConfig

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("features", "pipeline")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _exports(module: str) -> dict[str, str]:
    """name -> defining module, for a package that exports its names lazily (_EXPORTS = {module: names})."""
    tree = ast.parse(MODULES[module].read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_EXPORTS" for t in node.targets):
            return {name: f"{module}.{sub}" for sub, names in ast.literal_eval(node.value).items() for name in names}
    return {}


def _imports(module: str) -> set[str]:
    """The project modules this module imports, anywhere in its body."""
    is_package = MODULES[module].name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            exports = _exports(base) if base in MODULES else {}
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(exports.get(alias.name) or (child if child in MODULES else base))
    return {name for name in found if name in MODULES and name != module}


GRAPH = {module: _imports(module) for module in MODULES}


def _part(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "pipeline" and len(parts) > 1 else parts[0]


def test_the_import_graph_has_no_circle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(target):] + [module, target]))
            if target not in state:
                visit(target, path + [module])
        state[module] = 2

    for module in MODULES:
        if module not in state:
            visit(module, [])


@pytest.mark.parametrize("part, allowed", [
    ("features", {"features"}),
    ("pipeline.finetune", {"features", "pipeline.finetune", "pipeline"}),
    ("pipeline.heads", {"features", "pipeline.heads", "pipeline.outputs", "pipeline"}),
    ("pipeline.outputs", {"features", "pipeline"}),
])
def test_each_part_imports_only_the_layers_below_it(part, allowed):
    wrong = {(module, target) for module, targets in GRAPH.items() if _part(module) == part
             for target in targets if _part(target) not in allowed}
    assert not wrong, f"{part} may import only {sorted(allowed)}: {sorted(wrong)}"


def test_pipeline_uses_only_what_features_exports():
    exported = set(_exports("features").values())
    reaching_in = {(module, target) for module, targets in GRAPH.items() if module.startswith("pipeline")
                   for target in targets if target.startswith("features.") and target not in exported}
    assert reaching_in <= {(m, "features.lazy") for m in MODULES}, sorted(reaching_in)


def test_importing_the_heads_loads_no_torchvision_model():
    heads = [m for m in MODULES if _part(m) == "pipeline.heads"]
    code = f"import sys; import {', '.join(heads)}; print('torchvision.models' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_no_product_module_patches_globals():
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
            source = getattr(node, "module", "") or ""
            assert "mock" not in source and not any("mock" in n for n in names), f"{module} imports mock"
            if isinstance(node, ast.Assign):  # nn.Module.method = ... replaces a method for the whole process
                for target in node.targets:
                    text = ast.unparse(target)
                    assert not text.startswith(("nn.Module.", "torch.nn.Module.")), f"{module} replaces {text}"


# which settings dataclass each command's options come from (option name -> field name where they differ)
COMMAND_SETTINGS = {
    "extract": [(ExtractConfig, {"extract_batch_size": "batch_size"})],
    "train-head": [(HeadConfig, {})],
    "ensemble": [(HeadConfig, {"head_batch_size": "batch_size"})],
    "predict": [(PredictConfig, {})],
    "export": [(ExportConfig, {"format_": "format"})],
    "finetune": [(FinetuneConfig, {})],
    "prepare": [(PrepareConfig, {"label_pattern": None})],
    "report": [(ReportConfig, {})],
    "run": [(ExtractConfig, {"extract_batch_size": "batch_size", "views": None}), (HeadConfig, {"head_batch_size": "batch_size"}),
            (PredictConfig, {})],
}


@pytest.mark.parametrize("command", sorted(COMMAND_SETTINGS))
def test_every_option_default_is_its_settings_default(command):
    cmd = main.commands[command]
    ctx = click.Context(cmd)
    checked = 0
    for settings, renamed in COMMAND_SETTINGS[command]:
        defaults = {f.name: f.default for f in fields(settings) if f.default is not MISSING}
        defaults |= {f.name: f.default_factory() for f in fields(settings) if f.default_factory is not MISSING}
        for param in cmd.params:
            name = renamed.get(param.name, param.name)
            if name not in defaults or param.required or param.name == "force":
                continue
            value = param.process_value(ctx, param.get_default(ctx))
            expected = defaults[name]
            assert value == expected or (value is None and expected is None), \
                f"{command} --{param.name}: click default {value!r}, {settings.__name__}.{name} {expected!r}"
            checked += 1
    assert checked >= 3
    if command == "run":
        views = next(p for p in cmd.params if p.name == "views")
        assert views.process_value(ctx, views.get_default(ctx)) == RUN_VIEWS
