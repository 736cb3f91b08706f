"""Regenerate sdlora/data/modules_<family>.json (sd1, sd2, sdxl, flux) and tests/golden/kohya_keys_<name>.txt
from sdlora/configs/models/, sdlora/data/modules_embedded.json from the embedded model's folder
(sdlora/embedded/weights/, its configs only) and tests/golden/kohya_keys_tiny.txt from the tests' tiny live models.

Usage: .venv/bin/python scripts/gen_module_tables.py [--check]

Each family's unet and text encoder(s) are built on the meta device from the shipped diffusers configs (no
weights). With --check nothing is written; the exit code is 1 if a shipped file differs from a fresh build.
After regenerating, review the golden key diff by eye before committing it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sdlora.arch.family import ALL_FAMILIES
from sdlora.arch.naming import kohya_name
from sdlora.arch.tables import build_table_from_config_dir, config_dir, family_table
from sdlora.configs import CONFIG_DIRS
from sdlora.embedded import weights_dir

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "sdlora" / "data"
GOLDEN = ROOT / "tests" / "golden"


def table_json(table, family: str | None) -> str:
    """One module per line, so that a diff of the shipped table is readable."""
    lines = [
        f"  {json.dumps(name)}: {json.dumps([info.layer, list(info.shape)])}" for name, info in table.items()
    ]
    body = ",\n".join(lines)
    return f'{{"family": {json.dumps(family)},\n "modules": {{\n{body}\n}}}}\n'


def golden_text(table, family: str) -> str:
    header = (
        f"# Kohya LoRA names sdlora writes for every Linear and Conv2d of {CONFIG_DIRS[family]} "
        f"(family {family}), built from sdlora/configs/models/{CONFIG_DIRS[family]}.\n"
        "# columns: kohya name, canonical module, layer, weight shape. Regenerate: scripts/gen_module_tables.py\n"
    )
    rows = sorted(
        f"{kohya_name(name, family)} {name} {info.layer} {'x'.join(map(str, info.shape))}"
        for name, info in table.items()
    )
    return header + "\n".join(rows) + "\n"


def tiny_golden_text() -> str:
    """Kohya names of the tests' tiny live UNet + CLIP text encoder (tests/conftest.py), built in memory.

    Built live (not on the meta device), so a diffusers/transformers change of live module paths shows up here.
    """
    import importlib.util

    from sdlora.arch.tables import table_for_model

    spec = importlib.util.spec_from_file_location("sdlora_test_conftest", ROOT / "tests" / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    table = {
        **table_for_model(conftest.make_tiny_unet()),
        **table_for_model(conftest.make_tiny_text_encoder()),
    }
    header = (
        "# Kohya LoRA names sdlora writes for the tiny live UNet + CLIP text encoder of tests/conftest.py.\n"
        "# columns: kohya name, canonical module, layer, weight shape. Regenerate: scripts/gen_module_tables.py\n"
    )
    rows = sorted(
        f"{kohya_name(name, None)} {name} {info.layer} {'x'.join(map(str, info.shape))}"
        for name, info in table.items()
    )
    return header + "\n".join(rows) + "\n"


def _update(path: Path, text: str, check: bool, stale: list[Path]) -> None:
    current = path.read_text(encoding="utf-8") if path.is_file() else None
    if current == text:
        return
    stale.append(path)
    if not check:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on a difference")
    args = parser.parse_args(argv)
    stale: list[Path] = []
    tables = {family: build_table_from_config_dir(config_dir(family)) for family in ALL_FAMILIES}
    for family, table in tables.items():
        _update(DATA / f"modules_{family}.json", table_json(table, family), args.check, stale)
    embedded = build_table_from_config_dir(weights_dir())
    _update(DATA / "modules_embedded.json", table_json(embedded, embedded.family), args.check, stale)
    family_table.cache_clear()  # kohya_name reads the (new) shipped tables
    for family, table in tables.items():
        _update(
            GOLDEN / f"kohya_keys_{CONFIG_DIRS[family]}.txt", golden_text(table, family), args.check, stale
        )
    _update(GOLDEN / "kohya_keys_tiny.txt", tiny_golden_text(), args.check, stale)
    for path in stale:
        print(("differs: " if args.check else "wrote: ") + str(path.relative_to(ROOT)))
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
