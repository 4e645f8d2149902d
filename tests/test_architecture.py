"""The package's shape: which layer may import what, and how big a module or a function
may grow. Each boundary is checked the way it matters: the engine statically (it must
not even name the daemon), the rest by importing in a fresh interpreter and looking at
what got loaded (a transitive import counts too)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import stylefold

PACKAGE = Path(stylefold.__file__).parent
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60  # from `def` to its last line, docstring not counted
# Kept on purpose; each says why.
FUNCTION_EXCEPTIONS: dict[str, str] = {}
HEAVY = ("torch", "torchvision", "PIL", "numpy")
# Hot-folder modules that must start fast and stay small: all but the worker loop.
LIGHT_HOTFOLDER = ("layout", "watcher", "claims", "describe", "journal", "origins", "runner", "service",
                   "sdnotify", "console", "admin")


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _loaded_after(code: str) -> list[str]:
    """The heavy modules loaded by running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport sys, json\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    loaded: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


def test_engine_imports_nothing_outside_itself() -> None:
    allowed_third_party = {"torch", "torchvision"}
    for path in sorted((PACKAGE / "engine").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level > 1 or (node.level == 0 and (node.module or "").startswith("stylefold")):
                    pytest.fail(f"{path.name}:{node.lineno} imports {'.' * node.level}{node.module}")
                if node.level == 0:
                    top = (node.module or "").split(".")[0]
                    assert top in allowed_third_party or top in sys.stdlib_module_names, (path.name, top)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    top = alias.name.split(".")[0]
                    assert top in allowed_third_party or top in sys.stdlib_module_names, (path.name, top)


@pytest.mark.parametrize("module", LIGHT_HOTFOLDER)
def test_hot_folder_modules_other_than_the_worker_load_neither_torch_nor_pil(module: str) -> None:
    assert _loaded_after(f"import stylefold.hotfolder.{module}") == []


def test_the_worker_loop_is_where_torch_comes_in() -> None:
    """The probe can see a heavy import: the worker loop does load torch and PIL."""
    loaded = _loaded_after("import stylefold.hotfolder.worker")
    assert "torch" in loaded and "PIL" in loaded


def test_light_modules_of_every_layer_stay_light() -> None:
    for module in ("stylefold.config", "stylefold.presets", "stylefold.failures", "stylefold.fsops",
                   "stylefold.job.spec", "stylefold.engine.layers", "stylefold.engine.steps", "stylefold.cli"):
        assert _loaded_after(f"import {module}") == [], module


@pytest.mark.parametrize("argv", [["--help"], ["status", "--root", "{root}"], ["presets", "validate", "{preset}"]])
def test_help_status_and_presets_validate_never_import_torch(tmp_path: Path, argv: list[str]) -> None:
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"extends": "book", "steps": 10}))
    args = [a.format(root=tmp_path / "hot", preset=preset) for a in argv]
    code = f"from stylefold.cli import main\nassert main(['init', '{tmp_path / 'hot'}']) == 0\nrc = main({args!r})"
    loaded = _loaded_after(f"{code}\nassert rc == 0, rc")
    assert "torch" not in loaded


def test_no_module_over_400_lines() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in _modules() if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_no_function_over_60_lines() -> None:
    long = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                # From `def` to the last line, less the docstring.
                lines = (node.end_lineno or node.lineno) - node.lineno + 1 - _docstring_lines(node)
                name = f"{path.relative_to(PACKAGE)}:{node.name}"
                if lines > MAX_FUNCTION_LINES and name not in FUNCTION_EXCEPTIONS:
                    long[name] = lines
    assert long == {}


def _docstring_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    first = node.body[0] if node.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return (first.end_lineno or first.lineno) - first.lineno + 1
    return 0
