"""What a `--base` value means (sdlora.base.ref): verify's check target from a family name, a folder or a
checkpoint header."""

from __future__ import annotations

import pytest

from sdlora.arch.tables import config_dir
from sdlora.base.ref import check_target, parse_base
from sdlora.errors import ConfigError


def test_check_target():
    assert check_target("SDXL") == "sdxl"
    assert check_target("sd15") == "sd1"
    assert check_target(config_dir("sd2")).family == "sd2"
    assert check_target("flux") == check_target("FLUX-dev") == "flux"  # verify only: LoRAs are read, not loaded
    with pytest.raises(ConfigError, match="is not 'embedded', a family"):
        check_target("sd3")
    with pytest.raises(ConfigError, match="is not 'embedded', a family"):
        parse_base("flux")  # not a base a command can load yet


def test_check_target_reads_a_checkpoint_header(tmp_path):
    import torch
    from safetensors.torch import save_file

    from sdlora.errors import SdloraError

    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    save_file({key: torch.zeros(320, 1024, dtype=torch.float16)}, str(tmp_path / "v2.safetensors"))
    assert check_target(tmp_path / "v2.safetensors") == "sd2"
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(4, 4)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ConfigError, match="not an SD1/SD2/SDXL checkpoint"):
        check_target(tmp_path / "other.safetensors")
    (tmp_path / "model.ckpt").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(SdloraError):
        check_target(tmp_path / "model.ckpt")


def test_check_target_of_embedded_is_its_table_and_a_hub_id_is_refused():
    assert check_target("embedded").family is None  # the shipped tiny model: a table, no SD family
    assert parse_base("org/name").kind == "hub"
    with pytest.raises(ConfigError, match="a hub id"):
        check_target("org/name")


def test_check_target_of_embedded_imports_no_diffusers():
    """`verify --base embedded` reads the shipped table; building models on the meta device (diffusers,
    transformers: seconds of imports) is for other folders only."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; from sdlora.base.ref import check_target; table = check_target('embedded'); "
            "print(len(table) > 100, sorted(m for m in ('diffusers', 'transformers') if m in sys.modules))")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "True []"
