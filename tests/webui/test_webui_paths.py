"""Path confinement: `..`, absolute paths and symlinks that leave the allowed folders are refused."""

from __future__ import annotations

import os

import pytest

from webui.paths import AccessError, resolve_within, safe_filename, unique_path


@pytest.fixture
def roots(tmp_path):
    allowed = tmp_path / "allowed"
    (allowed / "sub").mkdir(parents=True)
    (allowed / "sub" / "a.txt").write_text("ok")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    return allowed, outside


def test_relative_path_inside_root_is_resolved(roots):
    allowed, _ = roots
    assert resolve_within("sub/a.txt", [allowed]) == (allowed / "sub" / "a.txt").resolve()


def test_absolute_path_inside_root_is_accepted(roots):
    allowed, _ = roots
    path = allowed / "sub" / "a.txt"
    assert resolve_within(str(path), [allowed]) == path.resolve()


@pytest.mark.parametrize(
    "attempt",
    [
        "../outside/secret.txt",
        "sub/../../outside/secret.txt",
        "/etc/passwd",
        "~/.bashrc",
        "..",
    ],
)
def test_paths_leaving_the_roots_are_refused(roots, attempt):
    allowed, _ = roots
    with pytest.raises(AccessError, match="outside the folders"):
        resolve_within(attempt, [allowed], must_exist=False)


def test_absolute_path_to_other_folder_is_refused(roots):
    allowed, outside = roots
    with pytest.raises(AccessError, match="outside"):
        resolve_within(str(outside / "secret.txt"), [allowed])


def test_symlink_pointing_outside_is_refused(roots):
    allowed, outside = roots
    os.symlink(outside / "secret.txt", allowed / "link.txt")
    os.symlink(outside, allowed / "linkdir")
    with pytest.raises(AccessError, match="outside"):
        resolve_within("link.txt", [allowed])
    with pytest.raises(AccessError, match="outside"):
        resolve_within("linkdir/secret.txt", [allowed])


def test_prefix_sibling_is_not_inside(tmp_path):
    """/x/allowed2 must not count as inside /x/allowed (string-prefix bug)."""
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed2").mkdir()
    with pytest.raises(AccessError):
        resolve_within(str(tmp_path / "allowed2"), [tmp_path / "allowed"])


def test_second_root_and_default_root(roots, tmp_path):
    allowed, outside = roots
    assert resolve_within("secret.txt", [allowed, outside], default_root=outside) == (
        outside / "secret.txt"
    ).resolve()


@pytest.mark.parametrize("bad", ["", "   ", "a\x00b"])
def test_empty_or_nul_path_is_refused(roots, bad):
    with pytest.raises(AccessError):
        resolve_within(bad, [roots[0]])


def test_missing_file_is_reported_when_required(roots):
    with pytest.raises(AccessError, match="does not exist"):
        resolve_within("nope.txt", [roots[0]])
    assert resolve_within("nope.txt", [roots[0]], must_exist=False).name == "nope.txt"


@pytest.mark.parametrize(
    ("name", "expected"),
    [("../../evil.safetensors", "evil.safetensors"), ("a/b\\c.png", "c.png"), ("..", "file"), ("x;rm -rf.txt", "x_rm -rf.txt")],
)
def test_safe_filename_drops_folders_and_odd_characters(name, expected):
    assert safe_filename(name) == expected


def test_unique_path_never_overwrites(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"x")
    assert unique_path(tmp_path, "a.safetensors").name == "a-2.safetensors"
    assert unique_path(tmp_path, "b.safetensors").name == "b.safetensors"
