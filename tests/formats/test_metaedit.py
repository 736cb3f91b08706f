"""Metadata editing (sdlora.formats.metaedit): tensors byte for byte, sshs hashes recomputed, atomic writes."""

from __future__ import annotations

import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from sdlora.errors import ConfigError, FormatError
from sdlora.formats import metaedit
from sdlora.formats.metaedit import Edits, edit_metadata, edited_metadata, read_metadata
from sdlora.header import legacy_hash, read_header, tensor_data_sha256

DOWN = "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"
UP = "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight"
METADATA = {"ss_network_dim": "4", "ss_network_alpha": "2", "ss_training_comment": "private",
            "ss_tag_frequency": '{"shapes": {"sks": 3}}', "modelspec.title": "Old title",
            "sshs_model_hash": "stale", "sshs_legacy_hash": "stale000"}


@pytest.fixture
def lora(tmp_path):
    """A Kohya file bigger than 1.1 MiB, so that sshs_legacy_hash covers real tensor bytes."""
    rng = np.random.default_rng(0)
    path = tmp_path / "style.safetensors"
    save_file({DOWN: rng.standard_normal((4, 80_000), dtype=np.float32),
               UP: rng.standard_normal((320, 4), dtype=np.float32)}, str(path), metadata=METADATA)
    assert path.stat().st_size > 0x110000
    return path


def _same_tensors(a, b) -> bool:
    old, new = load_file(str(a)), load_file(str(b))
    return old.keys() == new.keys() and all(np.array_equal(old[k], new[k]) for k in old)


def test_edit_to_a_new_file_keeps_tensors_and_computes_both_hashes(lora, tmp_path):
    out = tmp_path / "clean.safetensors"
    edit = edit_metadata(lora, Edits(strip=True, title="My style", trigger_words="sks"), out)
    after = read_header(out).metadata
    assert after == edit.after
    assert after["sshs_model_hash"] == tensor_data_sha256(out) == tensor_data_sha256(lora)
    assert after["sshs_legacy_hash"] == legacy_hash(out) != legacy_hash(lora)
    assert after["modelspec.title"] == "My style" and after["modelspec.trigger_phrase"] == "sks"
    assert "ss_training_comment" not in after and after["ss_network_dim"] == "4"
    assert _same_tensors(lora, out)
    assert read_metadata(lora) == METADATA  # the source is untouched
    assert not edit.hash_kept  # the source stored a stale hash; the written one is the real one
    assert edit.changes() == (["modelspec.trigger_phrase"], ["ss_tag_frequency", "ss_training_comment"],
                              ["modelspec.title"])


def test_edit_in_place_replaces_the_file_and_keeps_its_permissions(lora):
    os.chmod(lora, 0o600)
    data_hash = tensor_data_sha256(lora)
    edit = edit_metadata(lora, Edits(set_keys={"modelspec.author": "me", "ss_network_dim": "4"},
                                     unset=["ss_training_comment"]))
    assert edit.path == lora.resolve()
    after = read_metadata(lora)
    assert after["modelspec.author"] == "me" and "ss_training_comment" not in after
    assert after["sshs_model_hash"] == data_hash and after["sshs_legacy_hash"] == legacy_hash(lora)
    assert lora.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in lora.parent.iterdir()] == [lora.name]  # no temporary file left
    again = edit_metadata(lora, Edits(set_keys={"modelspec.author": "me"}))
    assert again.hash_kept and again.changes() == ([], [], [])


def test_edit_in_place_through_a_symlink_edits_the_target(lora, tmp_path):
    link = tmp_path / "link.safetensors"
    link.symlink_to(lora)
    edit_metadata(link, Edits(title="Via link"))
    assert link.is_symlink() and read_metadata(lora)["modelspec.title"] == "Via link"


def test_a_failed_write_leaves_the_original_untouched(lora, monkeypatch):
    before = lora.read_bytes()

    def broken(src, dst, header, metadata):
        dst.write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(metaedit, "_write", broken)
    with pytest.raises(OSError, match="disk full"):
        edit_metadata(lora, Edits(title="x"))
    assert lora.read_bytes() == before
    assert [p.name for p in lora.parent.iterdir()] == [lora.name]


def test_fields_blank_removes_none_keeps():
    meta = {"modelspec.title": "t", "modelspec.description": "d", "sshs_model_hash": "h"}
    out = edited_metadata(meta, Edits(title="", description=None, trigger_words="  sks  "))
    assert out == {"modelspec.description": "d", "modelspec.trigger_phrase": "sks"}
    assert edited_metadata(meta, Edits(set_keys={"k": ""})) == {"modelspec.title": "t", "modelspec.description": "d",
                                                         "k": ""}


@pytest.mark.parametrize(("edits", "message"), [
    ({"unset": ["nope"]}, "'nope': not in the file"),
    ({"set_keys": {"sshs_model_hash": "x"}}, "computed from the file"),
    ({"unset": ["sshs_legacy_hash"]}, "computed from the file"),
    ({"set_keys": {"a": "1"}, "unset": ["a"]}, "both set and unset"),
    ({"set_keys": {" ": "1"}}, "empty"),
])
def test_bad_edits_are_config_errors(edits, message):
    with pytest.raises(ConfigError, match=message):
        edited_metadata({"a": "1", "sshs_legacy_hash": "x"}, Edits(**edits))


def test_missing_folder_and_damaged_file_are_format_errors(lora, tmp_path):
    with pytest.raises(FormatError, match="does not exist; create it first"):
        edit_metadata(lora, Edits(title="x"), tmp_path / "no" / "out.safetensors")
    with pytest.raises(FormatError, match="is a folder"):
        edit_metadata(lora, Edits(title="x"), tmp_path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(FormatError):
        edit_metadata(bad, Edits(title="x"), tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
