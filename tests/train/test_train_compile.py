"""optim.compile: the compiled UNet trains the same LoRA as the eager one, leaves the base model and every
state-dict key unchanged, writes checkpoints an eager run resumes from, and fails clearly without a toolchain.

Inductor's C++ code generation takes minutes on the tiny UNet here, so these tests swap in torch's
"aot_eager" backend: the same Dynamo tracing (LoRA hooks included) and AOTAutograd joint forward/backward
graphs that inductor compiles, run without generated code. The inductor speed is measured by
`benchmarks/train.py --compile`, not here."""

import pytest
import torch
from safetensors.torch import load_file
from tests_train_helpers import make_tiny_components, tiny_config, write_images

from sdlora.errors import ConfigError, TrainingError
from sdlora.settings.config import load_config
from sdlora.train import compiling, train

# Eager and traced runs do the same float32 operations; AOTAutograd may order the backward's sums
# differently, so they agree to rounding, not bit for bit.
TOLERANCE = 1e-5


@pytest.fixture
def traced(monkeypatch):
    monkeypatch.setattr(compiling, "BACKEND", "aot_eager")


def _cfg(data, out, *extra):
    return tiny_config(data, out, "optim.steps=3", "output.save_every=2", "optim.lr=1e-3", "data.batch_size=2",
                       "lora.train_text_encoder=false", *extra)


def _worst(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.slow
def test_compiled_run_matches_eager_keeps_base_and_keys(tmp_path, traced):
    data = write_images(tmp_path / "data")
    eager = train(_cfg(data, tmp_path / "eager"), make_tiny_components(tmp_path / "c1"))
    components = make_tiny_components(tmp_path / "c2")
    base = {k: v.clone() for k, v in components.unet.state_dict().items()}
    compiled = train(_cfg(data, tmp_path / "compiled", "optim.compile=true"), components)

    after = components.unet.state_dict()
    assert list(after) == list(base)  # no _orig_mod. prefix, nothing added or removed
    assert all(torch.equal(base[k], after[k]) for k in base)
    assert not components.unet._forward_hooks and all(not m._forward_hooks for m in components.unet.modules())
    exported_eager, exported = load_file(eager.files[0]), load_file(compiled.files[0])
    assert any(exported[k].abs().sum() > 0 for k in exported if "lora_up" in k)  # it did train
    assert _worst(exported_eager, exported) <= TOLERANCE
    assert [r[1] for r in compiled.history] == pytest.approx([r[1] for r in eager.history], abs=TOLERANCE)
    ckpt = compiled.checkpoint / "lora.safetensors"
    assert list(load_file(ckpt)) == list(load_file(eager.checkpoint / "lora.safetensors"))

    # an eager run resumes from the compiled run's checkpoint and ends where the eager run ended
    resumed_out = tmp_path / "resumed"
    resumed = train(_cfg(data, resumed_out), make_tiny_components(tmp_path / "c3"), resume=compiled.checkpoint)
    assert [r[0] for r in resumed.history] == [3]
    assert _worst(exported_eager, load_file(resumed.files[0])) <= TOLERANCE


def test_compile_defaults_off_and_is_type_checked():
    assert load_config(None, []).optim.compile is False
    assert load_config(None, ["optim.compile=true"]).optim.compile is True
    with pytest.raises(ConfigError, match=r"optim\.compile"):
        load_config(None, ["optim.compile=sometimes"])


def test_missing_cpp_compiler_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-sdlora")
    with pytest.raises(ConfigError, match="no-such-compiler-sdlora.*optim.compile=false"):
        compiling.check_toolchain(torch.device("cpu"))
    data = write_images(tmp_path / "data")
    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
        train(_cfg(data, tmp_path / "out", "optim.compile=true"), make_tiny_components(tmp_path / "c"))
    assert not (tmp_path / "out" / "loss.csv").exists()


def test_compiler_failure_becomes_training_error(monkeypatch):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("code generation failed")

    monkeypatch.setattr(compiling, "BACKEND", broken_backend)
    torch._dynamo.reset()
    wrapped = compiling.CompiledUNet(torch.nn.Linear(3, 2))
    with pytest.raises(TrainingError, match="code generation failed.*optim.compile=false"):
        wrapped(torch.ones(1, 3))


def test_failed_recompile_falls_back_to_eager_with_a_warning(monkeypatch, caplog):
    calls = []

    def second_compile_fails(graph, example_inputs):
        calls.append(len(calls))
        if len(calls) > 1:
            raise RuntimeError("dynamic shapes unsupported")
        return graph.forward

    monkeypatch.setattr(compiling, "BACKEND", second_compile_fails)
    torch._dynamo.reset()
    layer = torch.nn.Linear(3, 2)
    wrapped = compiling.CompiledUNet(layer)
    first = torch.randn(4, 3)
    assert torch.allclose(wrapped(first), layer(first))
    other = torch.randn(2, 3)  # a new batch size: compiles again, and that fails
    with caplog.at_level("WARNING", logger="sdlora.train.compiling"):
        out = wrapped(other)
    assert torch.equal(out, layer(other))
    assert not wrapped.compiled and len(calls) == 2
    assert "dynamic shapes unsupported" in caplog.text and "not compiled" in caplog.text
    wrapped(first)
    assert len(calls) == 2  # no more compile attempts
