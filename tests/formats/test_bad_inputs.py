"""Bad input: each case gives a one-line FormatError naming the file and what to do, the CLI exits 2
without a traceback, and nothing is written (convert's OUT does not exist, no temp files are left)."""

from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from sdlora.cli import main
from sdlora.errors import FormatError
from sdlora.formats import load_lora

GOOD_KEYS = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.ones(
        2, 768
    ),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.ones(320, 2),
}


class _Marker:
    """Unpickling this object would create the marker file: proof that a pickle was never unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _good(tmp_path, name="good.safetensors", tensors=None):
    path = tmp_path / name
    save_file(tensors or GOOD_KEYS, str(path), metadata={"ss_network_dim": "2"})
    return path


def make_pickle_ckpt(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(pickle.dumps(_Marker(tmp_path / "UNPICKLED"), protocol=2))
    return path


def make_pickle_named_safetensors(tmp_path):
    path = tmp_path / "sneaky.safetensors"
    path.write_bytes(pickle.dumps(_Marker(tmp_path / "UNPICKLED"), protocol=4))
    return path


def make_torch_zip_named_safetensors(tmp_path):
    path = tmp_path / "zip.safetensors"
    torch.save({"x": torch.ones(3)}, path)
    return path


def make_truncated(tmp_path):
    good = _good(tmp_path, "full.safetensors").read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(good[:-1000])
    return path


def make_broken_header(tmp_path):
    good = bytearray(_good(tmp_path, "full.safetensors").read_bytes())
    good[8:20] = b"#not json!!#"
    path = tmp_path / "broken.safetensors"
    path.write_bytes(bytes(good))
    return path


def make_huge_length(tmp_path):
    path = tmp_path / "length.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b'{"a": 1}')
    return path


def make_empty(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    return path


def make_too_short(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x05\x00\x00")
    return path


def make_checkpoint(tmp_path):
    tensors = {f"model.diffusion_model.input_blocks.{i}.0.weight": torch.zeros(4, 4) for i in range(3)}
    tensors["first_stage_model.decoder.conv_in.weight"] = torch.zeros(4, 4)
    return _good(tmp_path, "sd15-pruned.safetensors", tensors)


def make_diffusers_unet_weights(tmp_path):
    tensors = {f"down_blocks.0.resnets.{i}.conv1.weight": torch.zeros(4, 4) for i in range(3)}
    return _good(tmp_path, "diffusion_pytorch_model.safetensors", tensors)


def make_nan(tmp_path):
    tensors = dict(GOOD_KEYS)
    up = torch.ones(320, 2)
    up[5, 1] = float("nan")
    tensors["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight"] = up
    return _good(tmp_path, "nan.safetensors", tensors)


def make_inf(tmp_path):
    tensors = dict(GOOD_KEYS)
    tensors["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"] = (
        torch.full((2, 768), float("inf"))
    )
    return _good(tmp_path, "inf.safetensors", tensors)


def make_sd3(tmp_path):
    tensors = {
        "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": torch.ones(2, 1536),
        "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": torch.ones(4608, 2),
    }
    return _good(tmp_path, "sd3.safetensors", tensors)


# maker -> (message pattern, header-only: does `inspect` see it too?)
CASES = {
    make_pickle_ckpt: (r"model\.ckpt: this is a pickled PyTorch file.*only reads \.safetensors", True),
    make_pickle_named_safetensors: (r"sneaky\.safetensors: this is a pickled PyTorch file", True),
    make_torch_zip_named_safetensors: (r"zip\.safetensors: this is a pickled PyTorch file", True),
    make_truncated: (r"truncated\.safetensors: the file is truncated.*get it again", True),
    make_broken_header: (r"broken\.safetensors: broken safetensors header \(invalid JSON", True),
    make_huge_length: (r"length\.safetensors: broken safetensors header: it claims 10000 header bytes", True),
    make_empty: (r"empty\.safetensors: the file is empty \(0 bytes\)", True),
    make_too_short: (r"short\.safetensors: too short to be a safetensors file", True),
    make_checkpoint: (
        r"sd15-pruned\.safetensors: this looks like a full model checkpoint, not a LoRA.*base model",
        True,
    ),
    make_diffusers_unet_weights: (
        r"diffusion_pytorch_model\.safetensors: .*full model checkpoint.*no LoRA keys",
        True,
    ),
    make_nan: (r"nan\.safetensors: tensor '.*attn2_to_k\.lora_up\.weight' contains NaN or Inf", False),
    make_inf: (r"inf\.safetensors: tensor '.*attn2_to_k\.lora_down\.weight' contains NaN or Inf", False),
    make_sd3: (r"sd3\.safetensors: this LoRA is for SD3 / SD3\.5.*SD1, SD2, SDXL and FLUX\.1", True),
}


@pytest.mark.parametrize("maker", list(CASES), ids=lambda m: m.__name__.removeprefix("make_"))
def test_load_lora_refuses_with_a_clear_message(tmp_path, maker):
    path = maker(tmp_path)
    pattern, _ = CASES[maker]
    with pytest.raises(FormatError, match=pattern) as info:
        load_lora(path)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "UNPICKLED").exists()


@pytest.mark.parametrize("maker", list(CASES), ids=lambda m: m.__name__.removeprefix("make_"))
def test_cli_convert_exits_2_and_writes_nothing(tmp_path, capsys, maker):
    path = maker(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "converted.safetensors"
    assert main(["convert", str(path), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("sdlora convert: error: ")
    assert not out.exists() and list(out_dir.iterdir()) == []
    assert not (tmp_path / "UNPICKLED").exists()


@pytest.mark.parametrize("maker", [m for m, (_, header_only) in CASES.items() if header_only],
                         ids=lambda m: m.__name__.removeprefix("make_"))  # fmt: skip
def test_cli_inspect_exits_2(tmp_path, capsys, maker):
    path = maker(tmp_path)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "UNPICKLED").exists()


def test_missing_file_and_folder_without_adapter(tmp_path):
    with pytest.raises(FormatError, match="file not found"):
        load_lora(tmp_path / "nope.safetensors")
    with pytest.raises(FormatError, match="folder has no adapter_model.safetensors"):
        load_lora(tmp_path)


def test_broken_adapter_config(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    save_file({"base_model.model.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 768),
               "base_model.model.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(768, 2)},
              str(folder / "adapter_model.safetensors"))  # fmt: skip
    (folder / "adapter_config.json").write_text("{not json")
    with pytest.raises(FormatError, match="adapter_config.json: cannot read the PEFT adapter config"):
        load_lora(folder)


def test_failed_save_leaves_existing_file_untouched(tmp_path):
    """A LoRA diffusers cannot hold: save fails, the previous file is unchanged, no temp file remains."""
    from sdlora.formats import save_lora
    from sdlora.weights import LoraModule, LoraState

    out = tmp_path / "existing.safetensors"
    out.write_bytes(b"previous content")
    lora = LoraState({"unet.x": LoraModule("loha", {"w1a": torch.ones(2, 1), "w1b": torch.ones(1, 2),
                                                    "w2a": torch.ones(2, 1), "w2b": torch.ones(1, 2)})})  # fmt: skip
    with pytest.raises(FormatError, match="loha modules cannot be written in diffusers format"):
        save_lora(lora, out, format="diffusers")
    assert out.read_bytes() == b"previous content"
    assert [p.name for p in tmp_path.iterdir()] == ["existing.safetensors"]


def test_convert_refuses_to_overwrite_without_force(tmp_path, capsys, wild_loras):
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"keep me")
    assert main(["convert", str(wild_loras / "peft_te_only_sd15_r8.safetensors"), str(out)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert main(["convert", str(wild_loras / "peft_te_only_sd15_r8.safetensors"), str(out), "--force"]) == 0
    assert json.loads(json.dumps(load_lora(out).metadata))["ss_network_alpha"] == "8"


def test_convert_into_a_missing_folder_exits_2(tmp_path, capsys, wild_loras):
    out = tmp_path / "no_such_folder" / "out.safetensors"
    assert main(["convert", str(wild_loras / "peft_te_only_sd15_r8.safetensors"), str(out)]) == 2
    assert "does not exist; create it first" in capsys.readouterr().err
    assert not out.parent.exists()
