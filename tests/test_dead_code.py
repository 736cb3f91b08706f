"""No dead code: every function, class and method defined in `sdlora/` and `sdlora_webui/` is used by the
product (the library, the web UI, the scripts or the benchmarks; a use by the tests alone does not count), or is
public API allow-listed below with the reason.

The check is read from the parsed source (`ast`), by name: a definition counts as used when its name is
read anywhere (`f(...)`, `x.f`, `from m import f`) or given as a string (`getattr(x, "f")`,
`monkeypatch.setattr(m, "f", ...)`). It cannot see which object a name is read on, so a dead method that
shares its name with a live one passes; what it does catch is a name nobody reads at all. Dunder methods
(`__init__`, `__getattr__`, ...) are called by Python itself and are left out. The checker is tested on a
synthetic tree too, to show that it can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("sdlora", "sdlora_webui")  # where definitions are looked for
# where uses are looked for (not tests: code only a test calls is dead to a user, unless it is API a user
# calls, allow-listed here)
READERS = ("sdlora", "sdlora_webui", "scripts", "benchmarks")

# "path::name": why it stays with no caller in the product (public API a user calls). Keep it short.
ALLOWED: dict[str, str] = {
    "sdlora/arch/naming.py::diffusers_key_name": "documented arch API (docs/ARCHITECTURE.md): a canonical "
                                                 "name as diffusers' LoRA key",
    "sdlora/arch/naming.py::find_module": "documented arch API (docs/ARCHITECTURE.md): a live module by name",
    "sdlora/stack.py::LoraStack.fallbacks": "public LoraStack API: why layers keep W0 copies (its docstring)",
    "sdlora/train/compiling.py::CompiledUNet.compiled": "public state of a compiled UNet (a caller can tell a "
                                                        "run fell back to eager)",
    # hooks a base class of another library calls by name
    "sdlora/civitai/lookup.py::_Text.handle_starttag": "html.parser.HTMLParser hook, called by feed()",
    "sdlora/civitai/lookup.py::_Text.handle_data": "html.parser.HTMLParser hook, called by feed()",
}


def definitions(path: Path) -> list[tuple[str, int]]:
    """(name, line) of the module's top-level functions and classes and of their classes' methods
    ("Class.method"), dunders left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and not _dunder(node.name):
            found.append((node.name, node.lineno))
        if isinstance(node, ast.ClassDef):
            found += [(f"{node.name}.{sub.name}", sub.lineno) for sub in node.body
                      if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef) and not _dunder(sub.name)]
    return found


def _dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def used_names(path: Path) -> set[str]:
    """Every name the module reads, imports, reads as an attribute or spells as an identifier string."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.alias):
            names.add(node.name.rpartition(".")[2])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
            names.add(node.value)
    return names


def unused_definitions(root: Path, checked=CHECKED, readers=READERS, allowed=ALLOWED) -> list[str]:
    """"path:line: name" for each definition under `checked` whose name nothing under `readers` uses."""
    used: set[str] = set()
    for folder in readers:
        for path in sorted((root / folder).rglob("*.py")):
            used |= used_names(path)
    unused = []
    for folder in checked:
        for path in sorted((root / folder).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            for name, line in definitions(path):
                if name.rpartition(".")[2] not in used and f"{relative}::{name}" not in allowed:
                    unused.append(f"{relative}:{line}: {name}")
    return unused


def test_every_definition_has_a_caller():
    unused = unused_definitions(ROOT)
    assert unused == [], ("defined but never used by sdlora, sdlora_webui, scripts or benchmarks (remove it, or "
                          f"allow-list public API in tests/test_dead_code.py with the reason): {unused}")


def test_allow_list_names_existing_definitions():
    """An allow-list entry whose definition moved or went away would hide nothing: it must be mended."""
    defined = {f"{path.relative_to(ROOT).as_posix()}::{name}"
               for folder in CHECKED for path in (ROOT / folder).rglob("*.py") for name, _ in definitions(path)}
    assert sorted(set(ALLOWED) - defined) == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def test_checker_finds_an_uncalled_function_method_and_class(tmp_path):
    root = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": ("def used():\n    return 1\n\n\ndef forgotten():\n    return used()\n\n\n"
                     "class Kept:\n    def read(self):\n        return 1\n\n    def never(self):\n        return 2\n\n"
                     "    def __repr__(self):\n        return 'k'\n\n\nclass Lost:\n    pass\n"),
        "app/b.py": "from pkg.a import Kept\n\nprint(Kept().read())\n",
        "app/hooks.py": "HOOK = 'by_string'\n",
        "tests/test_x.py": "from pkg.c import only_tested\n\nonly_tested()\n",
        "pkg/c.py": "def by_string():\n    pass\n\n\ndef api():\n    pass\n\n\ndef only_tested():\n    pass\n",
    })
    found = unused_definitions(root, checked=("pkg",), readers=("pkg", "app"), allowed={})
    assert found == ["pkg/a.py:5: forgotten", "pkg/a.py:13: Kept.never", "pkg/a.py:20: Lost", "pkg/c.py:5: api",
                     "pkg/c.py:9: only_tested"]
    allowed = {"pkg/c.py::api": "public API"}
    assert "pkg/c.py:5: api" not in unused_definitions(root, ("pkg",), ("pkg", "app"), allowed)
