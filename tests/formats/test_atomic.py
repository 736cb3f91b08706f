"""sdlora.atomic: outputs replace targets only on success and get the user's usual permissions."""

from __future__ import annotations

import os
import stat

import pytest

from sdlora.atomic import atomic_folder, atomic_path, write_bytes_atomic


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_file_gets_umask_permissions_not_tempfiles_0600(tmp_path, umask_027):
    target = tmp_path / "out.safetensors"
    write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "lora.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["lora.safetensors"]


def test_folder_is_renamed_into_place_with_usual_permissions(tmp_path, umask_027):
    target = tmp_path / "baked"
    with atomic_folder(target) as tmp:
        (tmp / "model_index.json").write_text("{}")
    assert (target / "model_index.json").read_text() == "{}"
    assert stat.S_IMODE(target.stat().st_mode) == 0o750


def test_failed_folder_leaves_nothing(tmp_path):
    with pytest.raises(ValueError), atomic_folder(tmp_path / "baked") as tmp:
        (tmp / "partial.bin").write_bytes(b"x")
        raise ValueError("stop")
    assert list(tmp_path.iterdir()) == []
