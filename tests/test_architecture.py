"""House rules from docs/ARCHITECTURE.md, checked on the source: dependency direction and a quiet library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY_FILES = sorted((ROOT / "sdlora").rglob("*.py"))
FORBIDDEN_IN_LIBRARY = ("gradio", "webui", "sdlora.cli")


def _imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _is_cli(path: Path) -> bool:
    return "cli" in path.relative_to(ROOT / "sdlora").parts or path.name == "__main__.py"


@pytest.mark.parametrize("path", LIBRARY_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_library_never_imports_ui_or_cli(path):
    allowed = ("sdlora.cli",) if _is_cli(path) else ()
    bad = [
        name
        for name in _imported_modules(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IN_LIBRARY)
        and not name.startswith(allowed or ("\0",))
    ]
    # the CLI may import webui lazily inside `sdlora webui`'s run(); nothing else may
    if path.name == "webui.py" and _is_cli(path):
        bad = [name for name in bad if not name.startswith("webui")]
    assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize(
    "path", [p for p in LIBRARY_FILES if not _is_cli(p)], ids=lambda p: str(p.relative_to(ROOT))
)
def test_library_never_prints_or_exits(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    offenders = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in {"print", "exit", "quit"}:
                offenders.append(f"line {node.lineno}: {func.id}()")
            if isinstance(func, ast.Attribute) and func.attr == "exit" and getattr(func.value, "id", "") == "sys":
                offenders.append(f"line {node.lineno}: sys.exit()")
    assert offenders == [], f"{path.relative_to(ROOT)}: {offenders}"


def test_import_sdlora_is_cheap():
    """`import sdlora` and the CLI parser load neither torch, diffusers nor gradio (fast `sdlora inspect`)."""
    code = (
        "import sys, sdlora, sdlora.cli; sdlora.cli.build_parser(); "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'gradio') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
