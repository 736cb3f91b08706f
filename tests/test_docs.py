"""The user docs stay true: generated pages match their generator, links resolve, the README stays short,
and the repository refers to nothing outside itself."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 250
# a markdown link or image: [text](target) / ![alt](target); the target ends at whitespace or ")"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SECTION_CITE = re.compile(r"docs/formats\.md §(\d+(?:\.\d+)?)")


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_config_reference", ROOT / "scripts" / "gen_config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _doc_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _without_code(text: str) -> str:
    """Markdown text with fenced code blocks and inline code removed (links there are examples, not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    return re.sub(r"`[^`\n]*`", "", text)


def _git_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p]


def test_config_reference_matches_generator():
    gen = _load_generator()
    written = (ROOT / "docs" / "config-reference.md").read_text(encoding="utf-8")
    assert written == gen.render(), "docs/config-reference.md is stale: run python scripts/gen_config_reference.py"


def test_config_reference_check_mode(tmp_path):
    gen = _load_generator()
    page = tmp_path / "ref.md"
    assert gen.main(["--output", str(page)]) == 0
    assert gen.main(["--check", "--output", str(page)]) == 0
    page.write_text(page.read_text(encoding="utf-8").replace("optimizer steps", "steps"), encoding="utf-8")
    assert gen.main(["--check", "--output", str(page)]) == 1


def test_config_reference_lists_every_key():
    import dataclasses

    from sdlora.settings import TrainConfig, field_spec

    text = (ROOT / "docs" / "config-reference.md").read_text(encoding="utf-8")
    for section in dataclasses.fields(TrainConfig):
        for f in dataclasses.fields(section.default_factory()):
            key = f"{section.name}.{f.name}"
            assert f"| `{key}` |" in text, key
            assert " ".join(field_spec(key).help.split()).replace("|", "\\|") in text, key


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"


def test_readme_keeps_the_test_command():
    assert "bash scripts/test.sh" in (ROOT / "README.md").read_text(encoding="utf-8")  # CI calls it


@pytest.mark.parametrize("page", _doc_pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(_without_code(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http:, https:, mailto: or an anchor in the same page
        path, _, anchor = target.partition("#")
        file = page.parent / path
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in _anchors(file)):
            broken.append(target)
    assert not broken, f"{page.name}: links to missing files or headings: {broken}"


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", _without_code(page.read_text(encoding="utf-8")), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_formats_citations_name_existing_sections():
    headings = set(re.findall(r"^#+ (\d+(?:\.\d+)?)[ .]", (ROOT / "docs" / "formats.md").read_text(encoding="utf-8"),
                              flags=re.MULTILINE))
    missing = []
    for rel in _git_files():
        path = ROOT / rel
        if path.suffix not in {".py", ".md", ".yaml", ".sh", ".toml"} or not path.is_file():
            continue
        for number in SECTION_CITE.findall(path.read_text(encoding="utf-8", errors="replace")):
            if number not in headings:
                missing.append(f"{rel}: §{number}")
    assert not missing, f"citations of sections docs/formats.md does not have: {missing}"


def test_no_file_refers_outside_the_repository():
    needle = b"../" + b"shared"  # spelled in two parts so this file does not match itself
    offenders = [rel for rel in _git_files()
                 if not rel.startswith(".ci/") and (ROOT / rel).is_file() and needle in (ROOT / rel).read_bytes()]
    assert not offenders, f"files that refer to a folder outside the repository: {offenders}"
