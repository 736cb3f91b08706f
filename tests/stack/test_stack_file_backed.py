"""LoraStack with W0 read back from the model file (sdlora.weight_source): no copy kept, restores bit-exact,
fallback to a copy when the file is unknown or changed, a typed error when it changes under a patch."""

from __future__ import annotations

import os

import pytest
import torch
from stack_helpers import assert_bit_identical, pick, random_lora, snapshot

from sdlora.errors import SourceChangedError
from sdlora.stack import LoraStack
from sdlora.weight_source import ParamSource, record_folder, record_single_file, source_of
from tests.conftest import make_tiny_text_encoder, make_tiny_unet

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def save_folder(folder, stored=torch.float32):
    """The tiny UNet and text encoder saved as a diffusers folder (weights in `stored` dtype)."""
    make_tiny_unet().to(stored).save_pretrained(folder / "unet")
    make_tiny_text_encoder().to(stored).save_pretrained(folder / "text_encoder")
    return folder


def load_folder(folder, dtype=torch.float32) -> dict:
    """Loaded as a user would (from_pretrained), converted to `dtype` by the loaders."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype)
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=dtype)
    return {"unet": unet.eval(), "text_encoder": text_encoder.eval()}


def targets(components) -> list[str]:
    return [n for n in pick(components, "unet", 0) if ".attentions." in n] + pick(components, "text_encoder", 6)


def loras(components, count=3):
    names = targets(components)
    return [random_lora(components, names, seed=i, scale=0.3) for i in range(count)]


@pytest.fixture
def folder(tmp_path):
    return save_folder(tmp_path / "model")


@pytest.mark.parametrize("stored", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("runs", ["float32", "float16", "bfloat16"])
def test_clear_restores_bit_exact_from_the_file(tmp_path, stored, runs, monkeypatch):
    components = load_folder(save_folder(tmp_path / "m", DTYPES[stored]), DTYPES[runs])
    before = snapshot(components)
    reads = []
    original_read = ParamSource.read
    monkeypatch.setattr(ParamSource, "read", lambda self, *a: reads.append(self.key) or original_read(self, *a))
    stack = LoraStack(components)
    for lora in loras(components):
        stack.add(lora, strength=0.7)
    assert stack.mode == "file" and stack.fallbacks == {}
    assert stack.kept_bytes().weight_copies == 0 and stack.kept_bytes().factors > 0
    stack.set_strength("lora2", -0.4)
    changed = [k for k, v in snapshot(components).items() if not torch.equal(v, before[k])]
    assert changed, "the LoRAs changed nothing"
    stack.clear()
    assert_bit_identical(components, before)
    assert reads, "W0 was not read from the file"


def test_half_precision_recompute_equals_copy_mode(folder):
    """Every strength change of a float16 weight recomputes from W0: from the file it must give the very
    same bits as from a copy."""
    by_mode = {}
    for mode in ("auto", "copy"):
        components = load_folder(folder, torch.float16)
        stack = LoraStack(components, w0=mode)
        names = [stack.add(lora, strength=0.5) for lora in loras(components)]
        for step in range(20):
            stack.set_strength(names[step % 3], round(-1.0 + 0.13 * step, 3))
        assert stack.mode == ("file" if mode == "auto" else "copy")
        by_mode[mode] = snapshot(components)
    assert by_mode["auto"].keys() == by_mode["copy"].keys()
    assert all(torch.equal(by_mode["auto"][k], by_mode["copy"][k]) for k in by_mode["auto"])


def test_float32_stays_exact_after_20_changes(folder):
    components = load_folder(folder)
    base = {n: m.weight.detach().double().clone() for n, m in _live(components).items()}
    states = loras(components)
    stack = LoraStack(components)
    names = [stack.add(lora, strength=0.5) for lora in states]
    strengths = dict.fromkeys(names, 0.5)
    for step in range(20):  # more than MAX_SHIFTS on each layer: recomputes read W0 from the file
        name = names[step % 3]
        strengths[name] = round(1.4 - 0.17 * step, 3)
        stack.set_strength(name, strengths[name])
    worst = 0.0
    for canonical, module in _live(components).items():
        want = base[canonical].clone()
        for name, state in zip(names, states, strict=True):
            if canonical in state.modules:
                want += (strengths[name] * _delta(state, canonical)).reshape(want.shape)
        worst = max(worst, float((module.weight.detach().double() - want).abs().max() / want.abs().max()))
    assert stack.mode == "file"
    assert worst <= 1e-5


def _delta(state, canonical):
    module = state.modules[canonical]
    up = module.tensors["up"].double().reshape(module.tensors["up"].shape[0], -1)
    down = module.tensors["down"].double().reshape(up.shape[1], -1)
    return module.scale * (up @ down)


def _live(components):
    from stack_helpers import live_modules

    return {n: m for n, m in live_modules(components).items() if n in set(targets(components))}


def test_in_memory_model_keeps_a_copy(components):
    before = snapshot(components)
    stack = LoraStack(components)
    stack.add(loras(components, 1)[0])
    assert stack.mode == "copy"
    assert any(reason.startswith("no model file") for reason in stack.fallbacks)
    assert stack.kept_bytes().weight_copies > 0
    stack.clear()
    assert_bit_identical(components, before)


def test_file_changed_before_the_first_patch_falls_back_to_a_copy(folder, caplog):
    components = load_folder(folder)
    record_folder(components["unet"], folder / "unet")  # as sdlora.base.load does: identity at load time
    record_folder(components["text_encoder"], folder / "text_encoder")
    before = snapshot(components)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: another file for all we know
    stack = LoraStack(components)
    stack.add(loras(components, 1)[0])
    assert stack.mode == "mixed"  # the text encoder's file is unchanged
    assert any("changed since the model was loaded" in reason for reason in stack.fallbacks)
    assert "keeps a copy of W0" in caplog.text
    stack.clear()
    assert_bit_identical(components, before)


def test_file_changed_under_a_patch_raises_and_changes_nothing(folder):
    components = load_folder(folder)
    stack = LoraStack(components)
    stack.add(loras(components, 1)[0])
    patched = snapshot(components)
    make_tiny_unet().save_pretrained(folder / "unet")  # rewritten (same content even): size/mtime differ
    with pytest.raises(SourceChangedError, match="diffusion_pytorch_model.safetensors changed"):
        stack.clear()
    with pytest.raises(SourceChangedError, match="can't be\\s+restored exactly"):
        stack.set_strength("lora1", 0.3)
    assert_bit_identical(components, patched)


def test_weights_changed_in_memory_keep_a_copy(folder):
    components = load_folder(folder)
    name = targets(components)[0]
    module = _live(components)[name]
    with torch.no_grad():
        module.weight[0] += 1.0  # no longer what the file holds
    before = snapshot(components)
    stack = LoraStack(components)
    stack.add(loras(components, 1)[0])
    assert stack.mode == "mixed"
    assert stack.fallbacks == {f"the weights in memory differ from {folder / 'unet' / 'diffusion_pytorch_model.safetensors'} "
                               "(changed after loading)": 1}
    stack.clear()
    assert_bit_identical(components, before)


def test_copy_mode_on_request(folder):
    components = load_folder(folder)
    stack = LoraStack(components, w0="copy")
    stack.add(loras(components, 1)[0])
    assert stack.mode == "copy" and stack.fallbacks == {}


def test_sharded_folder(tmp_path):
    from safetensors.torch import save_file

    unet = make_tiny_unet()
    state = {k: v.contiguous() for k, v in unet.state_dict().items()}
    keys = sorted(state)
    folder = tmp_path / "unet"
    folder.mkdir()
    halves = {"a.safetensors": keys[: len(keys) // 2], "b.safetensors": keys[len(keys) // 2 :]}
    for file, part in halves.items():
        save_file({k: state[k] for k in part}, folder / file)
    index = {"weight_map": {k: file for file, part in halves.items() for k in part}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(__import__("json").dumps(index))
    source = record_folder(unet, folder)
    weights = [n for n, _ in unet.named_parameters()]
    assert set(source.params) == set(weights)
    assert {p.file.path.name for p in source.params.values()} == {"a.safetensors", "b.safetensors"}


def test_single_file_checkpoint(tmp_path, components):
    """LDM keys map onto the live UNet and CLIP weights 1:1; the stack restores from the checkpoint."""
    from safetensors.torch import save_file

    from sdlora.arch.ldm_keys import clip_to_ldm, unet_to_ldm

    checkpoint = {f"model.diffusion_model.{k}": v for k, v in unet_to_ldm(components["unet"].state_dict()).items()}
    text = clip_to_ldm(components["text_encoder"].state_dict())
    checkpoint.update({f"cond_stage_model.transformer.{k}": v for k, v in text.items()})
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in checkpoint.items()}, path)
    record_single_file(components, path, "sd1")
    for component, model in components.items():
        params = {n for n, _ in model.named_parameters()}
        assert set(source_of(model).params) == params, component
    before = snapshot(components)
    stack = LoraStack(components)
    stack.add(loras(components, 1)[0])
    assert stack.mode == "file"
    stack.clear()
    assert_bit_identical(components, before)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_reads_w0_straight_to_the_device(folder, monkeypatch):
    components = {k: v.to("cuda") for k, v in load_folder(folder).items()}
    before = snapshot(components)
    devices = []
    original_read = ParamSource.read
    monkeypatch.setattr(ParamSource, "read", lambda self, dtype, device: devices.append(device.type)
                        or original_read(self, dtype, device))
    stack = LoraStack(components, exact=True)
    stack.add(loras(components, 1)[0])
    stack.set_strength("lora1", 0.3)
    assert stack.mode == "file" and stack.kept_bytes().weight_copies == 0
    stack.clear()
    assert_bit_identical(components, before)
    assert devices and set(devices) == {"cuda"}


def test_load_components_records_the_folder_it_read():
    """sdlora's loader records each component's file with its identity at load time."""
    from sdlora.base.load import load_components

    loaded = load_components("embedded")
    components = {"unet": loaded.unet, "text_encoder": loaded.text_encoder}
    for model in components.values():
        source = source_of(model)
        assert source.params and all(file.identity is not None for file in source.files)
    before = snapshot(components)
    stack = LoraStack(components)
    stack.add(loras(components, 1)[0])
    assert stack.mode == "file" and stack.kept_bytes().weight_copies == 0
    stack.clear()
    assert_bit_identical(components, before)


def test_single_file_open_clip_fused_weights_keep_a_copy(tmp_path):
    """SDXL's OpenCLIP encoder is stored with q/k/v fused (in_proj_weight): those layers keep a copy, the
    ones stored 1:1 (out_proj, fc1, fc2) are read back from the checkpoint."""
    from safetensors.torch import save_file
    from stack_helpers import live_modules
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from sdlora.arch.ldm_keys import open_clip_to_ldm

    torch.manual_seed(0)
    config = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                            vocab_size=1000, projection_dim=32)
    components = {"text_encoder_2": CLIPTextModelWithProjection(config).eval()}
    stored = open_clip_to_ldm(components["text_encoder_2"].state_dict())
    path = tmp_path / "sdxl.safetensors"
    save_file({f"conditioner.embedders.1.model.{k}": v.contiguous() for k, v in stored.items()}, path)
    record_single_file(components, path, "sdxl")
    params = source_of(components["text_encoder_2"]).params
    assert "text_model.encoder.layers.0.self_attn.out_proj.weight" in params or \
        "encoder.layers.0.self_attn.out_proj.weight" in params
    assert not any("q_proj" in name or "text_projection" in name for name in params)
    names = [n for n in live_modules(components) if n.endswith(("q_proj", "out_proj", "fc1"))]
    before = snapshot(components)
    stack = LoraStack(components)
    stack.add(random_lora(components, names, scale=0.3))
    assert stack.mode == "mixed"
    assert list(stack.fallbacks.values()) == [sum(n.endswith("q_proj") for n in names)]
    stack.clear()
    assert_bit_identical(components, before)


def test_file_mapped_weights_get_a_new_tensor_then_patch_in_place(folder):
    """diffusers leaves safetensors weights mapped from the file: the first patch writes a new tensor (no
    copy-on-write of the mapping, W0 not kept); once restored from the file, that tensor is patched in place."""
    from sdlora.weight_source import file_mapped_ranges, is_file_mapped

    components = load_folder(folder)
    module = _live(components)[targets(components)[0]]
    assert is_file_mapped(module.weight, file_mapped_ranges())
    mapped, old = module.weight.data_ptr(), module.weight.data
    before = snapshot(components)
    stack = LoraStack(components)
    stack.add(loras(components, 1)[0])
    ours = module.weight.data_ptr()
    assert ours != mapped and stack.kept_bytes().weight_copies == 0
    # its pages were released from memory: still readable, from the file, with the same bytes
    assert torch.equal(old, before[f"unet.{_param_name(components, module)}"])
    stack.clear()
    stack.add(loras(components, 1)[0])
    assert module.weight.data_ptr() == ours
    stack.clear()
    assert_bit_identical(components, before)


def _param_name(components, module) -> str:
    return next(f"{name}.weight" for name, m in components["unet"].named_modules() if m is module)
