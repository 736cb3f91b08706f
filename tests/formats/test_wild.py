"""Every real file in tests/fixtures/wild_loras: what inspect says, a verdict for every key,
an exact Kohya round trip, the PEFT alpha from its config, and LoKr conv deltas shaped like SD1.5's convs.

Expected values are those recorded in tests/fixtures/README.md (format, SD1.x, rank, alpha).
"""

from __future__ import annotations

import pytest
import torch

from sdlora.arch.tables import family_table
from sdlora.formats import load_lora, save_lora
from sdlora.formats.summary import summarise
from sdlora.header import read_header
from sdlora.report import check_lora

# file -> (format, rank, alpha shown by inspect, module count, tensors)  (tests/fixtures/README.md)
WILD = {
    "diffusers_attnproc_sd15_r4_f32.safetensors": ("diffusers-attnproc", 4, "none (scale 1)", 128, 256),
    "diffusers_unet_sd15_r4_f32.safetensors": ("diffusers-legacy", 4, "none (scale 1)", 128, 256),
    "lycoris_lokr_sd1_d4_f16.safetensors": ("lycoris", 4, "4", 350, 1750),
    "lycoris_lokr_sd1_d16_f16.safetensors": ("lycoris", 16, "16", 350, 1750),
    "cloneofsimo_sd15_r1_pti_f32.safetensors": ("cloneofsimo", 1, "none (scale 1)", 192, 386),
    "cloneofsimo_sd15_r4_f16.safetensors": ("cloneofsimo", 4, "none (scale 1)", 192, 384),
    "peft_te_only_sd15_r8.safetensors": ("peft", 8, "8", 24, 48),
}


def test_fixtures_readme_lists_exactly_these_files(wild_loras):
    assert sorted(p.name for p in wild_loras.glob("*.safetensors")) == sorted(WILD)


@pytest.mark.parametrize("name", sorted(WILD))
def test_inspect_reports_manifest_values(wild_loras, name):
    fmt, rank, alpha, modules, tensors = WILD[name]
    info = summarise(wild_loras / name)
    assert info["format"] == fmt
    assert info["family"] == "sd1"
    assert info["ranks"] == {str(rank): modules}
    assert info["alphas"] == {alpha: modules}
    assert info["modules"] == modules and info["tensors"] == tensors


@pytest.mark.parametrize("name", sorted(WILD))
def test_every_key_has_a_verdict_and_applies_to_sd1(wild_loras, name):
    lora = load_lora(wild_loras / name)
    report = check_lora(lora, "sd1")
    keys = {v.key for v in report.verdicts}
    for key in read_header(wild_loras / name).tensors:
        token_key = f"embeddings:{key}"
        assert key in keys or token_key in keys, f"{key} has no verdict"
    assert {v.verdict for v in report.verdicts} <= {"applied", "extra"}, [
        v for v in report.verdicts if v.verdict not in ("applied", "extra")
    ][:3]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(WILD))
def test_kohya_round_trip_keeps_every_delta(wild_loras, tmp_path, name):
    lora = load_lora(wild_loras / name)
    out = tmp_path / "converted.safetensors"
    save_lora(lora, out, format="kohya")
    back = load_lora(out)
    assert back.format in ("kohya", "lycoris") and back.family == "sd1"
    assert sorted(back.modules) == sorted(lora.modules)
    assert back.extras.keys() == lora.extras.keys()
    for module in lora.modules:
        before, after = lora.delta(module), back.delta(module)
        assert before.dtype == after.dtype == torch.float32 and before.shape == after.shape
        if not torch.equal(before, after):  # identical is the common case; else measure the error
            error = (before - after).norm() / before.norm().clamp_min(1e-30)
            assert error < 1e-6, f"{module}: relative error {error}"


def test_peft_alpha_comes_from_adapter_config(wild_loras, tmp_path):
    """The weights file has no alpha; lora_alpha=8 is only in the .adapter_config.json beside it."""
    lora = load_lora(wild_loras / "peft_te_only_sd15_r8.safetensors")
    assert {m.alpha for m in lora.modules.values()} == {8.0}
    # without the config the same weights read as scale 1 with alpha None: the alpha really is the config's
    lonely = tmp_path / "peft_te_only_sd15_r8.safetensors"
    lonely.write_bytes((wild_loras / "peft_te_only_sd15_r8.safetensors").read_bytes())
    assert {m.alpha for m in load_lora(lonely).modules.values()} == {None}


def test_peft_config_alpha_changes_the_delta(wild_loras, tmp_path):
    """A config with lora_alpha=4 halves the delta: alpha really reaches the math."""
    import json

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(
        (wild_loras / "peft_te_only_sd15_r8.safetensors").read_bytes()
    )
    config = json.loads((wild_loras / "peft_te_only_sd15_r8.adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 4}))
    original = load_lora(wild_loras / "peft_te_only_sd15_r8.safetensors")
    halved = load_lora(folder)
    name = next(iter(original.modules))
    torch.testing.assert_close(halved.delta(name), original.delta(name) / 2)


@pytest.mark.parametrize(
    "name", ["lycoris_lokr_sd1_d4_f16.safetensors", "lycoris_lokr_sd1_d16_f16.safetensors"]
)
def test_lokr_conv_deltas_have_the_sd15_conv_shape(wild_loras, name):
    lora = load_lora(wild_loras / name)
    table = family_table("sd1")
    convs = [
        n
        for n in lora.modules
        if table[n].layer == "conv" and len(table[n].shape) == 4 and table[n].shape[2] == 3
    ]
    assert len(convs) > 20
    for module in convs:
        assert tuple(lora.delta(module).shape) == tuple(table[module].shape)
    # the example from MANIFEST.md: w1 40x192 / w2 32x120 in d4, the other order in d16
    conv1 = lora.modules["unet.up_blocks.0.resnets.0.conv1"]
    w1 = conv1.tensors["w1a"].shape[0], conv1.tensors["w1b"].shape[1]
    assert w1 == ((40, 192) if "d4" in name else (32, 120))
    assert tuple(lora.delta("unet.up_blocks.0.resnets.0.conv1").shape) == (1280, 2560, 3, 3)


def test_lokr_flattened_conv_reshape_matches_kron_formula(wild_loras):
    """ΔW of a flattened LoKr conv = (alpha/r) * reshape(kron(w1a@w1b, w2a@w2b)) to (out,in,3,3), float64."""
    lora = load_lora(wild_loras / "lycoris_lokr_sd1_d4_f16.safetensors")
    module = lora.modules["unet.down_blocks.1.resnets.0.conv2"]
    t = {k: v.double() for k, v in module.tensors.items()}
    w1, w2 = t["w1a"] @ t["w1b"], t["w2a"] @ t["w2b"]
    expected = (module.alpha / t["w1b"].shape[0]) * torch.kron(w1, w2).reshape(640, 640, 3, 3)
    torch.testing.assert_close(
        lora.delta("unet.down_blocks.1.resnets.0.conv2").double(), expected, rtol=1e-5, atol=1e-7
    )


def test_cloneofsimo_embeddings_and_order(wild_loras):
    lora = load_lora(wild_loras / "cloneofsimo_sd15_r1_pti_f32.safetensors")
    assert sorted(lora.extras["embeddings"]) == ["<s1>", "<s2>"]
    assert lora.extras["embeddings"]["<s1>"].shape == (768,)
    # index 4 of each block is the GEGLU projection (320 -> 2560), index 6/7 attn2 to_k/to_v (768 wide)
    block = "unet.down_blocks.0.attentions.0.transformer_blocks.0"
    assert lora.source_keys[f"{block}.ff.net.0.proj"] == ["unet:4:down", "unet:4:up"]
    assert lora.source_keys[f"{block}.attn2.to_k"] == ["unet:6:down", "unet:6:up"]
    assert lora.source_keys["unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q"] == [
        "unet:135:down",
        "unet:135:up",
    ]


def test_wild_files_convert_to_diffusers_where_possible(wild_loras, tmp_path):
    """Plain LoRAs convert to diffusers and back with identical deltas; LoKr is refused, nothing written."""
    from sdlora.errors import FormatError

    lora = load_lora(wild_loras / "diffusers_attnproc_sd15_r4_f32.safetensors")
    out = tmp_path / "d.safetensors"
    save_lora(lora, out, format="diffusers")
    back = load_lora(out)
    assert back.format == "diffusers"
    name = "unet.up_blocks.3.attentions.2.transformer_blocks.0.attn1.to_out.0"
    torch.testing.assert_close(back.delta(name), lora.delta(name), rtol=0, atol=0)
    with pytest.raises(FormatError, match="lokr modules cannot be written in diffusers format.*Kohya"):
        save_lora(
            load_lora(wild_loras / "lycoris_lokr_sd1_d4_f16.safetensors"),
            tmp_path / "x.safetensors",
            format="diffusers",
        )
    assert not (tmp_path / "x.safetensors").exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "d.safetensors"
    ]


def _rewrite(wild_loras, tmp_path, change):
    from safetensors.torch import load_file, save_file

    source = wild_loras / "cloneofsimo_sd15_r4_f16.safetensors"
    tensors = load_file(str(source))
    change(tensors)
    out = tmp_path / "positional.safetensors"
    save_file(tensors, str(out), metadata=read_header(source).metadata)
    return out


def test_cloneofsimo_with_a_missing_index_is_refused(wild_loras, tmp_path):
    from sdlora.errors import FormatError

    path = _rewrite(wild_loras, tmp_path, lambda t: [t.pop("unet:143:down"), t.pop("unet:143:up")])
    with pytest.raises(
        FormatError, match=r"has 143 unet entries.*can map only SD1's 144.*cannot be converted safely"
    ):
        load_lora(path)


def test_cloneofsimo_with_wrong_shapes_is_refused(wild_loras, tmp_path):
    """Index 4 must be the GEGLU projection (out 2560); a file whose order differs is not guessed at."""
    from sdlora.errors import FormatError

    def swap(t):
        t["unet:4:up"], t["unet:5:up"] = t["unet:5:up"], t["unet:4:up"]

    with pytest.raises(
        FormatError, match=r"unet:4 has shapes .* needs in=320, out=2560.*cannot be mapped by position"
    ):
        load_lora(_rewrite(wild_loras, tmp_path, swap))


def test_fixtures_are_the_published_bytes(wild_loras):
    """Every fixture file is listed in tests/fixtures/README.md with the sha256 of the published file."""
    import hashlib
    import re

    readme = (wild_loras.parent / "README.md").read_text(encoding="utf-8")
    listed = dict(re.findall(r"^\| `([^`]+)` \|.*\| `([0-9a-f]{64})` \|$", readme, flags=re.MULTILINE))
    assert sorted(listed) == sorted(p.name for p in wild_loras.iterdir())
    for name, digest in listed.items():
        assert hashlib.sha256((wild_loras / name).read_bytes()).hexdigest() == digest, name
