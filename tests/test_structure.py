"""The code's shape: subpackages named for their jobs with import rules between them, at most six
modules at the top of the package, no import circle, no class over 200 lines and no function over
60 lines, and configs whose `_target_`s point into the package of the same job."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "isda_exp"
MAX_CLASS, MAX_FUNCTION = 200, 60
MAX_TOP_LEVEL = 6
# package -> the packages it must never import (at any depth of a file: lazy imports count).
# The layers, from the bottom: errors/seeding/paths; models, losses, parallel, rundir; data;
# training; sweeps, explain; cli. The report reads run files only (no torch, no training).
FORBIDDEN = {
    "losses": {"data", "models", "training", "rundir", "cli", "sweeps", "report", "explain"},
    "models": {"data", "losses", "training", "rundir", "parallel", "cli", "sweeps", "report", "explain"},
    "parallel": {"data", "losses", "models", "training", "rundir", "cli", "sweeps", "report", "explain"},
    "rundir": {"data", "losses", "models", "training", "parallel", "cli", "sweeps", "report", "explain"},
    "data": {"losses", "models", "training", "rundir", "cli", "sweeps", "report", "explain"},
    "training": {"cli", "sweeps", "report", "explain"},
    "report": {"data", "losses", "models", "training", "parallel", "cli", "sweeps", "explain"},
    "sweeps": {"cli", "explain"},
    "explain": {"cli", "sweeps", "report"},
    "cli": {"explain", "report"},
    # evaluation only (isda_exp.evaluate): builds through training and reads runs as explain does
    "evaluate": {"cli", "sweeps", "report"},
}


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def imports_of(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The project's modules `name` imports, at any depth of the file (lazy imports count)."""
    package = name if name in known and (SRC.parent / name.replace(".", "/") / "__init__.py").exists() \
        else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m in known and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_circle_in_src():
    trees = modules()
    known = set(trees)
    # a package's __init__ importing its own submodules is how a package re-exports: not a circle
    graph = {name: {m for m in imports_of(name, tree, known) if not m.startswith(name + ".")}
             for name, tree in trees.items()}
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph))}"


def test_no_long_class_or_function_in_src():
    too_long = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                limit = MAX_CLASS if isinstance(node, ast.ClassDef) else MAX_FUNCTION
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    too_long.append(f"{name}.{node.name}: {length} lines (> {limit})")
    assert not too_long, "\n".join(too_long)


def package_of(module: str) -> str:
    """isda_exp.data.folder.source -> data; isda_exp.errors -> errors."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for name, deps in graph.items():
        banned = FORBIDDEN.get(package_of(name), set())
        found += [f"{name} imports {d}" for d in sorted(deps) if package_of(d) in banned]
    return found


def test_the_rule_checker_finds_a_planted_violation():
    assert violations({"isda_exp.losses.isda": {"isda_exp.training.trainer", "isda_exp.errors"}}) \
        == ["isda_exp.losses.isda imports isda_exp.training.trainer"]
    assert violations({"isda_exp.training.trainer": {"isda_exp.losses.isda"}}) == []


def test_packages_import_only_downwards():
    trees = modules()
    known = set(trees)
    graph = {name: imports_of(name, tree, known) for name, tree in trees.items()}
    assert not violations(graph), "\n".join(violations(graph))
    # the modules at the top (errors, seeding, paths, ...) sit below every subpackage: only
    # paths asks rundir.identity for the configs' resolver, and the package's front doors
    # (__init__, __main__, compat) load what they export
    for name in ("isda_exp.errors", "isda_exp.seeding"):
        assert graph[name] <= {"isda_exp"}, (name, graph[name])


def test_at_most_six_modules_at_the_top_of_the_package():
    top = sorted(p.name for p in SRC.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL, top
    packages = sorted(p.name for p in SRC.iterdir() if (p / "__init__.py").is_file())
    assert {"losses", "models", "data", "training", "rundir", "parallel", "cli", "sweeps",
            "report", "explain"} <= set(packages), packages


def test_every_package_is_listed_for_the_wheel():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(SRC.parent).parts) for p in SRC.rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages"


GROUP_PACKAGES = {"dataset": "isda_exp.data", "aug": "isda_exp.data", "model": "isda_exp.models",
                  "isda": "isda_exp.losses", "loss": "isda_exp.losses"}


def config_targets():
    import yaml

    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        def walk(node):
            if isinstance(node, dict):
                for k, v in node.items():
                    if k in ("_target_", "class") and isinstance(v, str) and v.startswith("isda_exp"):
                        yield v
                    else:
                        yield from walk(v)
            elif isinstance(node, list):
                for v in node:
                    yield from walk(v)
        yield path, list(walk(yaml.safe_load(path.read_text()) or {}))


def test_configs_mirror_the_code_and_every_target_resolves():
    """configs/<group>/ builds objects of the package of the same job, and each target exists."""
    from hydra.utils import get_object

    seen = 0
    for path, targets in config_targets():
        group = path.relative_to(ROOT / "configs").parts[0]
        for target in targets:
            seen += 1
            assert get_object(target) is not None, (path, target)
            if group in GROUP_PACKAGES:
                assert target.startswith(GROUP_PACKAGES[group] + "."), (path, target)
    assert seen >= 20


def test_the_public_api_is_lazy_and_names_the_real_objects():
    """`import isda_exp` loads neither torch nor Hydra (a program that only wants the loss pays for
    torch once, when it asks for it); each front-door name is the subpackage's own object."""
    code = """
import json, sys, isda_exp
assert not {'torch', 'hydra', 'omegaconf'} & set(sys.modules), sorted(sys.modules)
from isda_exp import ISDALoss, isda_ratio, create_model, list_models
import isda_exp.losses as losses, isda_exp.models as models
assert ISDALoss is losses.ISDALoss and isda_ratio is losses.isda_ratio
assert create_model is models.create_model and list_models is models.list_models
assert 'resnet32' in list_models()
try:
    isda_exp.NoSuchThing
except AttributeError as e:
    assert 'NoSuchThing' in str(e)
else:
    raise SystemExit('no AttributeError')
print(json.dumps(sorted(isda_exp.__all__)))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(SRC.parent)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["ISDALoss", "__version__", "create_model", "isda_ratio",
                                       "list_models"]
