"""House rules from docs/ARCHITECTURE.md, checked on the source: dependency direction and a quiet library.

The import rules are checked on the parsed source (`ast`), counting imports at module level and inside
functions alike, with relative imports resolved:
(a) no import cycle among sdlora's modules;
(b) no module imports another module's private name (`from x import _name`, or `x._name`);
(c) the layers listed in docs/ARCHITECTURE.md: a module imports only modules of its own or a lower layer;
(d) in the web UI, an import inside a function only of a module whose import loads torch & co.;
(e) the module map in docs/ARCHITECTURE.md lists every module of sdlora.
(a)-(c) hold for `sdlora/` and for `sdlora_webui/` (which may import sdlora's modules, never the other way round).
The checker functions are tested on synthetic packages too, to show that each check can fail.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY_FILES = sorted((ROOT / "sdlora").rglob("*.py"))
FORBIDDEN_IN_LIBRARY = ("gradio", "sdlora_webui", "sdlora.cli")


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
    # the CLI may import the web UI lazily inside `sdlora webui`'s run(); nothing else may
    if path.name == "webui.py" and _is_cli(path):
        bad = [name for name in bad if not name.startswith("sdlora_webui")]
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


def test_train_dry_run_imports_no_torch_before_its_memory_estimate(tmp_path):
    """`sdlora train --dry-run`'s settings, data set scan and check (caption token counts included) and the
    settings preflight load neither torch, diffusers nor transformers. Its last line, the memory estimate
    (sdlora.train.estimate), builds the model on the meta device and so needs them; it is left out here."""
    code = (
        "import sys; import sdlora.cli.train as cli_train; from sdlora.cli import main; "
        "cli_train._estimate_line = lambda cfg: 'no estimate'; "
        f"code = main(['train', '--data', 'sample_data', '--base', 'embedded', '--output', {str(tmp_path)!r}, "
        "'--dry-run']); "
        "print('LOADED', code, sorted(m for m in ('torch', 'diffusers', 'transformers', 'gradio') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip().splitlines()[-1] == "LOADED 0 []"


# ----------------------------------------------------------------------------------------------------------
# import rules: the checker


@dataclass(frozen=True)
class ImportEdge:
    """`module` imports `target` (a module of the package) at `line`; `names` are the names taken from it."""

    module: str
    target: str
    names: tuple[str, ...]
    line: int
    in_function: bool = False


def module_names(root: Path, package: str) -> dict[str, Path]:
    """{dotted module name: file} of every module of `package` under `root` (packages by their __init__)."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom reads from (relative imports resolved against `module`)."""
    if not node.level:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def import_edges(root: Path, package: str, below: tuple[str, ...] = ()) -> list[ImportEdge]:
    """Every import of one of the package's modules by another, at any depth of the source; with `below`,
    imports of those packages' modules (the package builds on them) are edges too."""
    own = module_names(root, package)
    modules = own | {m: p for b in below for m, p in module_names(root, b).items()}
    edges = []
    for module, path in own.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        inner = {id(n) for f in ast.walk(tree) if isinstance(f, FUNCTIONS) for n in ast.walk(f)}
        for node in ast.walk(tree):
            late = id(node) in inner
            if isinstance(node, ast.Import):
                edges += [ImportEdge(module, a.name, (), node.lineno, late) for a in node.names if a.name in modules]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(module, path.name == "__init__.py", node)
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    if submodule in modules:  # `from pkg import submodule`
                        edges.append(ImportEdge(module, submodule, (), node.lineno, late))
                    elif base in modules:
                        edges.append(ImportEdge(module, base, (alias.name,), node.lineno, late))
    return [e for e in edges if e.target != e.module]


FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def import_graph(edges: list[ImportEdge]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.module, set()).add(edge.target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: each strongly connected set of two or more modules, sorted (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:  # node is the root of a strongly connected set: pop it off the stack
            members = stack[stack.index(node):]
            del stack[stack.index(node):]
            if len(members) > 1:
                cycles.append(sorted(members))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(root: Path, package: str, below: tuple[str, ...] = ()) -> list[str]:
    """`module:line name` for every private name one module takes from another: `from x import _name`, or
    `x._name` where `x` is bound to another module of the package (or of the packages `below` it)."""
    own = module_names(root, package)
    modules = own | {m: p for b in below for m, p in module_names(root, b).items()}
    found = [f"{e.module}:{e.line} {e.target}.{n}" for e in import_edges(root, package, below) for n in e.names
             if _is_private(n)]
    for module, path in own.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        bound = _module_aliases(tree, module, path.name == "__init__.py", modules)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _is_private(node.attr):
                owner = _dotted(node.value, bound)
                if owner in modules and owner != module:
                    found.append(f"{module}:{node.lineno} {owner}.{node.attr}")
    return sorted(found)


def _dotted(node: ast.expr, bound: dict[str, str]) -> str | None:
    """The module an expression like `x` or `x.y.z` names, through the file's import bindings."""
    if isinstance(node, ast.Name):
        return bound.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value, bound)
        return f"{base}.{node.attr}" if base else None
    return None


def _module_aliases(tree: ast.AST, module: str, is_package: bool, modules: dict[str, Path]) -> dict[str, str]:
    """{local name: module of the package it is bound to} from `import a.b as c` and `from a import b`."""
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    bound[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node)
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    bound[alias.asname or alias.name] = f"{base}.{alias.name}"
    return bound


def read_layers(doc: Path, heading: str = "Layers") -> list[tuple[str, list[str]]]:
    """[(layer name, [module patterns])], lowest layer first, from the table under "## <heading>" in `doc`.

    Table rows look like `| 2 | arch | `sdlora.arch.*` |`; a pattern `x.*` is package x and all it holds.
    """
    text = doc.read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    layers = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].isdigit():
            layers.append((int(cells[0]), cells[1], re.findall(r"`([\w.*]+)`", cells[2])))
    assert [n for n, _, _ in layers] == list(range(len(layers))), "layers must be numbered 0, 1, 2, ..."
    return [(name, patterns) for _, name, patterns in layers]


def _matches(module: str, pattern: str) -> bool:
    if pattern.endswith(".*"):
        return module == pattern[:-2] or module.startswith(pattern[:-1])
    return module == pattern


def layer_of(layers: list[tuple[str, list[str]]]):
    """A function module -> layer number; the most specific matching pattern decides (an exact name beats
    `x.*` for module x itself; a longer prefix beats a shorter one)."""

    def specificity(pattern: str) -> int:
        return len(pattern) - 2 if pattern.endswith(".*") else len(pattern) + 1

    def find(module: str) -> int | None:
        hits = [(specificity(p), i) for i, (_, patterns) in enumerate(layers) for p in patterns
                if _matches(module, p)]
        return max(hits)[1] if hits else None

    return find


def layer_violations(edges: list[ImportEdge], layers: list[tuple[str, list[str]]]) -> list[str]:
    """`module:line imports target` for every import of a module in a higher layer."""
    find = layer_of(layers)
    bad = []
    for e in edges:
        mine, theirs = find(e.module), find(e.target)
        if mine is not None and theirs is not None and theirs > mine:
            bad.append(f"{e.module}:{e.line} ({layers[mine][0]}) imports {e.target} ({layers[theirs][0]})")
    return sorted(set(bad))


def read_module_map(doc: Path) -> dict[str, str]:
    """{entry: its text} of the code block under "## Module map": an entry is a line indented two spaces,
    `name.py` (a module of the package's top level) or `name/` (a subpackage or a data folder), then its
    description; deeper-indented lines go on with the entry above."""
    section = doc.read_text(encoding="utf-8").split("\n## Module map", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    entries: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        match = re.match(r"^  (\S+)\s*(.*)$", line)
        if match:
            current = match.group(1)
            entries[current] = match.group(2)
        elif current is not None and line.strip():
            entries[current] += " " + line.strip()
    return entries


def module_map_gaps(entries: dict[str, str], modules: dict[str, Path], package: str) -> list[str]:
    """The modules the map leaves out: a top-level `x.py` needs its own entry; a module `pkg.sub.name` needs
    `name` as a word in the text of the `sub/` entry (a package's `__init__` is its entry itself)."""
    gaps = []
    for module, path in modules.items():
        parts = module.split(".")[1:]
        if not parts:
            continue  # the package itself: its __init__.py entry is checked as `__init__.py`
        if len(parts) == 1 and path.name != "__init__.py":
            if f"{parts[0]}.py" not in entries:
                gaps.append(module)
        else:
            folder = f"{parts[0]}/"
            text = entries.get(folder)
            named = path.name == "__init__.py" or (text is not None and re.search(
                rf"(?<![\w.]){re.escape(parts[-1])}(?![\w])", text))
            if text is None or not named:
                gaps.append(module)
    if "__init__.py" not in entries:
        gaps.insert(0, package)
    return gaps


# ----------------------------------------------------------------------------------------------------------
# function-level imports: only of heavy modules

HEAVY_LIBRARIES = ("torch", "diffusers", "transformers", "accelerate", "safetensors.torch", "peft", "deepspeed")


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported: at module level, also inside top-level
    `if`/`try`/`with` blocks, but not under `if TYPE_CHECKING:` (which never runs)."""
    found = []
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        elif isinstance(node, ast.With):
            todo += node.body
    return found


def _loads_heavy_library(node: ast.Import | ast.ImportFrom) -> bool:
    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
    if isinstance(node, ast.ImportFrom) and node.level:
        return False
    return any(n == lib or n.startswith(lib + ".") for n in names for lib in HEAVY_LIBRARIES)


def heavy_modules(root: Path, packages: tuple[str, ...]) -> set[str]:
    """The modules whose import loads a heavy library (torch, diffusers, ...): one that imports it at module
    level, or a module-level import of a heavy module of `packages`, or a heavy enclosing package."""
    modules = {m: p for package in packages for m, p in module_names(root, package).items()}
    needs: dict[str, set[str]] = {m: {m.rsplit(".", 1)[0]} & modules.keys() for m in modules}
    heavy = set()
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        if any(_loads_heavy_library(node) for node in _module_level_imports(tree)):
            heavy.add(module)
    for package in packages:
        needs_here = import_graph([e for e in import_edges(root, package, packages) if not e.in_function])
        for module, targets in needs_here.items():
            needs[module] |= targets
    changed = True
    while changed:  # a fixed point: heavy spreads to every module that needs a heavy one
        light = [m for m in modules if m not in heavy and needs[m] & heavy]
        heavy |= set(light)
        changed = bool(light)
    return heavy


def light_late_imports(root: Path, package: str, below: tuple[str, ...] = (),
                       exempt: tuple[str, ...] = ()) -> list[str]:
    """`module:line imports target` for every import inside a function of a module that is not heavy: it
    belongs at the top. Modules matching an `exempt` pattern may import anything late."""
    heavy = heavy_modules(root, (package, *below))
    return sorted(f"{e.module}:{e.line} imports {e.target}" for e in import_edges(root, package, below)
                  if e.in_function and e.target not in heavy and not any(_matches(e.module, p) for p in exempt))


# ----------------------------------------------------------------------------------------------------------
# import rules: the project

DOC = ROOT / "docs" / "ARCHITECTURE.md"
# (package, the packages below it that it imports, the heading of its layer table in DOC)
PACKAGES = [("sdlora", (), "Layers"), ("sdlora_webui", ("sdlora",), "Web UI layers")]
# modules that import project modules inside functions for another reason than a heavy import: the CLI
# command modules import their library modules inside `run`, because building the parser imports them all
LATE_IMPORTS_ALLOWED = ("sdlora.cli.*", "sdlora.__main__")


@pytest.mark.parametrize("package", [p for p, _, _ in PACKAGES])
def test_no_import_cycles(package):
    assert find_cycles(import_graph(import_edges(ROOT, package))) == []


@pytest.mark.parametrize(("package", "below"), [(p, b) for p, b, _ in PACKAGES])
def test_no_private_names_from_other_modules(package, below):
    assert private_imports(ROOT, package, below) == []


@pytest.mark.parametrize(("package", "heading"), [(p, h) for p, _, h in PACKAGES])
def test_lower_layers_never_import_higher_ones(package, heading):
    assert layer_violations(import_edges(ROOT, package), read_layers(DOC, heading)) == []


@pytest.mark.parametrize(("package", "heading"), [(p, h) for p, _, h in PACKAGES])
def test_every_module_has_exactly_one_layer_in_the_doc(package, heading):
    """The doc's layer table and the code agree: each module is placed, each pattern names real modules."""
    layers = read_layers(DOC, heading)
    modules = module_names(ROOT, package)
    find = layer_of(layers)
    assert [m for m in modules if find(m) is None] == []
    patterns = [p for _, ps in layers for p in ps]
    assert [p for p in patterns if not any(_matches(m, p) for m in modules)] == []
    assert len(patterns) == len(set(patterns)), "a pattern is listed twice"


def test_webui_imports_project_modules_inside_functions_only_when_heavy():
    """docs/ARCHITECTURE.md "Import rules": an import inside a function only for a module whose import loads
    torch & co.; every other project module is imported at the top, where the layer check sees it plainly."""
    assert light_late_imports(ROOT, "sdlora_webui", ("sdlora",), LATE_IMPORTS_ALLOWED) == []


def test_modules_found_light_load_no_heavy_library():
    """The source analysis behind the late-import rule agrees with Python: importing every module it finds
    light loads neither torch, diffusers nor transformers."""
    packages = tuple(p for p, _, _ in PACKAGES)
    heavy = heavy_modules(ROOT, packages)
    light = [m for p in packages for m in module_names(ROOT, p) if m not in heavy and m != "sdlora.__main__"]
    assert len(light) > 20
    code = ("import importlib, sys\n"
            f"for m in {light!r}:\n"
            "    importlib.import_module(m)\n"
            "    loaded = [x for x in ('torch', 'diffusers', 'transformers') if x in sys.modules]\n"
            "    if loaded:\n"
            "        print(m, loaded)\n"
            "        break\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout == ""
def test_module_map_lists_every_module():
    """docs/ARCHITECTURE.md's module map leaves no module out (a new module must be described there)."""
    assert module_map_gaps(read_module_map(DOC), module_names(ROOT, "sdlora"), "sdlora") == []


# ----------------------------------------------------------------------------------------------------------
# import rules: the checker finds what it must (synthetic packages)


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return tmp_path


def test_checker_finds_a_cycle_through_a_function_level_relative_import(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkg.b import g\n",
        "b.py": "def g():\n    from .c import h\n",
        "c.py": "import pkg.a\n",
        "d.py": "from pkg import a\n",
    })
    assert find_cycles(import_graph(import_edges(root, "pkg"))) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_checker_finds_private_imports(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "_hidden = 1\n__version__ = '1'\n",
        "b.py": "def f():\n    from .a import _hidden, __version__\n",
        "c.py": "from pkg import a\nx = a._hidden\ny = a.__version__\n",
        "d.py": "import pkg.a\n\n\ndef f():\n    return pkg.a._hidden, pkg.a.__version__\n",
        "e.py": "_own = 1\nz = _own\n",
    })
    assert private_imports(root, "pkg") == ["pkg.b:2 pkg.a._hidden", "pkg.c:2 pkg.a._hidden", "pkg.d:5 pkg.a._hidden"]


def test_checker_finds_an_import_of_a_higher_layer(tmp_path):
    root = _package(tmp_path, {"__init__.py": "", "low.py": "def f():\n    import pkg.high\n",
                               "high.py": "import pkg.low\n"})
    doc = tmp_path / "layers.md"
    doc.write_text("# x\n\n## Layers\n\n| layer | name | modules |\n|---|---|---|\n"
                   "| 0 | bottom | `pkg`, `pkg.low` |\n| 1 | top | `pkg.high` |\n\n## Next\n| 2 | no | `pkg` |\n")
    layers = read_layers(doc)
    assert layers == [("bottom", ["pkg", "pkg.low"]), ("top", ["pkg.high"])]
    assert layer_violations(import_edges(root, "pkg"), layers) == ["pkg.low:2 (bottom) imports pkg.high (top)"]


def test_checker_finds_an_injected_webui_cycle(tmp_path):
    """The web UI's own tree with the cycle it once had (runs_view importing train_tab inside a function)."""
    shutil.copytree(ROOT / "sdlora_webui", tmp_path / "sdlora_webui", ignore=shutil.ignore_patterns("__pycache__"))
    assert find_cycles(import_graph(import_edges(tmp_path, "sdlora_webui"))) == []
    view = tmp_path / "sdlora_webui" / "tabs" / "runs_view.py"
    injected = "\n\ndef _resume():\n    from sdlora_webui.tabs import train_tab\n"
    view.write_text(view.read_text(encoding="utf-8") + injected, encoding="utf-8")
    assert find_cycles(import_graph(import_edges(tmp_path, "sdlora_webui"))) == [
        ["sdlora_webui.tabs.runs_view", "sdlora_webui.tabs.train_tab"]]


def test_checker_finds_late_imports_of_light_modules(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "heavy.py": "import torch.nn\n",
        "carrier.py": "from . import heavy\n",  # heavy through a module-level import of a heavy module
        "typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n",
        "sub/__init__.py": "import diffusers\n",
        "sub/inner.py": "X = 1\n",  # heavy: importing it runs its package's __init__
        "user.py": ("def f():\n    from pkg import heavy, carrier, typed\n    import pkg.sub.inner\n"
                    "    from .sub import inner\n"),
    })
    assert heavy_modules(root, ("pkg",)) == {"pkg.heavy", "pkg.carrier", "pkg.sub", "pkg.sub.inner"}
    assert light_late_imports(root, "pkg") == ["pkg.user:2 imports pkg.typed"]
    assert light_late_imports(root, "pkg", exempt=("pkg.user",)) == []
def test_checker_finds_modules_the_map_leaves_out(tmp_path):
    root = _package(tmp_path, {"__init__.py": "", "listed.py": "", "forgotten.py": "", "sub/__init__.py": "",
                               "sub/named.py": "", "sub/unnamed.py": "", "other/__init__.py": "",
                               "other/x.py": ""})
    doc = tmp_path / "map.md"
    doc.write_text("# x\n\n## Module map\n\n```\npkg/\n  __init__.py  the face\n  listed.py    listed\n"
                   "  sub/         holds named, and\n               not.unnamed\n```\n\n## Next\n  forgotten.py\n")
    entries = read_module_map(doc)
    assert entries["sub/"] == "holds named, and not.unnamed"
    assert module_map_gaps(entries, module_names(root, "pkg"), "pkg") == [
        "pkg.forgotten", "pkg.other", "pkg.other.x", "pkg.sub.unnamed"]
