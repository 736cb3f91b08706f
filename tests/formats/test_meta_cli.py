"""`sdlora meta`, in-process: show, edit to a new file, edit in place, and the user errors (exit code 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from sdlora.cli import main
from sdlora.header import legacy_hash, read_header, tensor_data_sha256

DOWN = "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"


@pytest.fixture
def lora(tmp_path):
    path = tmp_path / "style.safetensors"
    save_file({DOWN: np.arange(4 * 320, dtype=np.float32).reshape(4, 320)}, str(path),
              metadata={"ss_network_dim": "4", "ss_training_comment": "line one\nline two",
                        "ss_tag_frequency": "x" * 500})
    return path


def test_show_prints_text_and_json(lora, capsys):
    assert main(["meta", str(lora)]) == 0
    text = capsys.readouterr().out
    assert "ss_network_dim:" in text and "line one\\nline two" in text
    assert "(500 characters; --json shows all)" in text
    assert main(["meta", str(lora), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ss_tag_frequency"] == "x" * 500


def test_edit_to_output_keeps_the_tensor_hash(lora, tmp_path, capsys):
    out = tmp_path / "out.safetensors"
    args = ["meta", str(lora), "--set", "modelspec.author=a=b", "--unset", "ss_training_comment",
            "--title", "My style", "--output", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "1 removed (ss_training_comment)" in printed
    assert f"sshs_model_hash added: {tensor_data_sha256(lora)}" in printed
    meta = read_header(out).metadata
    assert meta["modelspec.author"] == "a=b" and meta["modelspec.title"] == "My style"
    assert "ss_training_comment" not in meta and "ss_training_comment" in read_header(lora).metadata
    assert meta["sshs_model_hash"] == tensor_data_sha256(lora) and meta["sshs_legacy_hash"] == legacy_hash(out)
    assert main(args) == 2  # OUT exists now
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main([*args, "--force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["modelspec.title"] == "My style"


def test_edit_in_place_needs_the_flag(lora, capsys):
    before = lora.read_bytes()
    assert main(["meta", str(lora), "--strip"]) == 2
    assert "--output OUT" in capsys.readouterr().err and lora.read_bytes() == before
    assert main(["meta", str(lora), "--strip", "--trigger", "sks", "--in-place"]) == 0
    assert "sshs_model_hash added" in capsys.readouterr().out
    assert main(["meta", str(lora), "--set", "sshs=x", "--in-place"]) == 0
    assert "sshs_model_hash kept" in capsys.readouterr().out
    meta = read_header(lora).metadata
    assert set(meta) == {"sshs", "ss_network_dim", "modelspec.trigger_phrase", "sshs_model_hash", "sshs_legacy_hash"}


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "novalue"], "give KEY=VALUE"),
    (["--unset", "nope"], "'nope': not in the file"),
    (["--set", "sshs_model_hash=x"], "computed from the file"),
])
def test_bad_edits_exit_2_and_change_nothing(lora, args, message, capsys):
    before = lora.read_bytes()
    assert main(["meta", str(lora), *args, "--in-place"]) == 2
    assert message in capsys.readouterr().err
    assert lora.read_bytes() == before


def test_a_missing_file_exits_2(tmp_path, capsys):
    assert main(["meta", str(tmp_path / "none.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err


def test_a_stale_stored_hash_is_reported_corrected(tmp_path, capsys):
    path = tmp_path / "stale.safetensors"
    save_file({DOWN: np.ones((4, 320), dtype=np.float32)}, str(path), metadata={"sshs_model_hash": "0" * 64})
    assert main(["meta", str(path), "--title", "t", "--in-place"]) == 0
    assert "sshs_model_hash corrected (the file stored 0000000000000000..." in capsys.readouterr().out
    assert read_header(path).metadata["sshs_model_hash"] == tensor_data_sha256(path)
