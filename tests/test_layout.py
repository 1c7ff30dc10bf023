"""The package's shape: imports run one way, modules stay small, light commands stay light."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bitcli"
MAX_MODULE_LINES = 400
MAX_COMMAND_LINES = 250
COMMAND_SUPPORT = {"app.py", "common.py", "process.py", "screen.py", "__init__.py"}  # cli/ files that are not one command


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every bitcli module `name` imports, at module level or inside functions.

    `from a.b import c` counts as importing `a.b.c` when that is a module, else `a.b`. Imports
    under `if TYPE_CHECKING:` never run, so they do not count. Importing a submodule runs its
    package's `__init__` too, but that edge is Python's, not the code's, and is left out (a
    package face that re-exports its submodules is not a cycle).
    """
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if is_type_checking_block(node):
            for child in node.orelse:  # the `else:` branch does run
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {target for target in found if target in known and target != name}


def import_graph() -> dict[str, set[str]]:
    table = modules()
    known = set(table)
    return {name: imports_of(name, path, known) for name, path in table.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of module names (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle_in_bitcli_function_level_imports_included():
    graph = import_graph()
    assert "bitcli.checkpoint.files" in graph["bitcli.checkpoint.timm"]  # the graph sees real edges
    assert "bitcli.checkpoint.loading" in graph["bitcli.pipeline"]  # function-level ones included
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_checkpoint_files_is_a_leaf_of_the_checkpoint_package():
    graph = import_graph()
    readers = {f"bitcli.checkpoint.{name}" for name in ("timm", "npz", "loading")}
    assert not graph["bitcli.checkpoint.files"] & readers
    for reader in ("timm", "npz", "loading"):
        assert "bitcli.checkpoint.files" in graph[f"bitcli.checkpoint.{reader}"]


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_stay_small(name):
    path = modules()[name]
    lines = len(path.read_text(encoding="utf-8").splitlines())
    command = path.parent.name == "cli" and path.name not in COMMAND_SUPPORT
    limit = MAX_COMMAND_LINES if command else MAX_MODULE_LINES
    assert lines <= limit, f"{path.relative_to(PACKAGE.parent)}: {lines} lines (at most {limit})"


def test_no_module_shadows_the_standard_library():
    stdlib = set(sys.stdlib_module_names)
    shadowing = [name for name in modules() if name.rpartition(".")[2] in stdlib and name.count(".") == 1]
    assert shadowing == []


def cache_timm_model(home: Path) -> None:
    """A cached timm checkpoint in the hub cache layout (refs/main -> a snapshot), as `bit download` leaves it."""
    commit = "0" * 40
    storage = home / "hub" / "models--timm--resnetv2_50x1_bit.goog_in21k_ft_in1k"
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True)
    config = {"architecture": "resnetv2_50x1_bit", "num_classes": 1000, "pretrained_cfg": {"input_size": [3, 448, 448]}}
    (snapshot / "config.json").write_text(json.dumps(config))
    (snapshot / "model.safetensors").write_bytes(b"\0" * 64)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(commit)


@pytest.mark.parametrize("command", [["--help"], ["models"], ["models", "--format", "json"]])
def test_help_and_models_never_import_torch(command, isolated_hf_home):
    cache_timm_model(isolated_hf_home)  # a cached timm model once made `bit models` import torch
    code = (
        "import os, sys\n"
        "os._exit = sys.exit  # main() skips teardown with os._exit once torch is loaded; let the check run\n"
        "from bitcli.cli import main\n"
        f"try:\n    main({command!r})\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "COLUMNS": "100"}
    )
    assert proc.returncode == 0, proc.stderr
    if command[-1] == "json":
        rows = {row["alias"]: row for row in json.loads(proc.stdout)}
        assert rows["bit-m-r50x1"]["cached"] is True  # the cached timm model was looked at


def _bitcli_imports(path: Path) -> list[tuple[str, str | None]]:
    """Every `from bitcli... import name` and `import bitcli...` in `path`, functions included."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bitcli" and node.level == 0:
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == "bitcli"]
    return found


@pytest.mark.parametrize("script", sorted(p.relative_to(ROOT).as_posix() for d in ("bench", "tools") for p in (ROOT / d).glob("*.py")))
def test_bench_and_tools_scripts_import_only_what_bitcli_has(script):
    """The scripts are not run by the suite; what they import from bitcli must still exist."""
    import importlib

    for module, name in _bitcli_imports(ROOT / script):
        imported = importlib.import_module(module)
        if name is not None and not hasattr(imported, name):
            importlib.import_module(f"{module}.{name}")  # a submodule: ModuleNotFoundError names it
