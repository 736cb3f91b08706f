"""`sdlora train` under DeepSpeed (accelerate's DeepSpeed launcher, ZeRO 0-2).

The launches run one process on this CPU machine (DeepSpeed's CPU accelerator, gloo): accelerate 1.x counts
a multi-process DeepSpeed launch on CPUs as one process (checked below: sdlora refuses it with a message).
One process still goes through everything sdlora does differently under DeepSpeed: the engine over the LoRA
network, DeepSpeed's gradient accumulation and clipping, ZeRO's flat float32 partitions and its own
optimizer-state checkpoints, and exports from the float32 master weights.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from tests_train_helpers import save_tiny_pipeline, write_images

from sdlora.errors import ConfigError, TrainingError
from sdlora.settings.config import load_config
from sdlora.train import deepspeed_run, train

REPO = Path(__file__).resolve().parents[2]
SETTINGS = ["data.resolution=32", "data.min_bucket=32", "data.max_bucket=64", "data.bucket_step=32",
            "lora.rank=2", "optim.steps=3", "output.save_every=2", "output.save_dtype=fp32"]


def _cfg(**over):
    return SimpleNamespace(data=SimpleNamespace(batch_size=over.get("batch", 2)),
                           optim=SimpleNamespace(grad_accum=over.get("accum", 1), max_grad_norm=over.get("norm", 1.0)))


def test_fill_config_takes_auto_and_absent_values_from_sdlora():
    ds = {"zero_optimization": {"stage": 2}, "gradient_accumulation_steps": "auto", "train_batch_size": "auto"}
    deepspeed_run.fill_config(ds, _cfg(batch=4, accum=3, norm=0.5))
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 3
    assert ds["gradient_clipping"] == 0.5
    assert "train_batch_size" not in ds  # DeepSpeed derives it from the three and the process count


@pytest.mark.parametrize(("ds", "words"), [
    ({"gradient_accumulation_steps": 4}, ["gradient_accumulation_steps=4", "optim.grad_accum=1", '"auto"']),
    ({"gradient_clipping": 2.0}, ["gradient_clipping=2.0", "optim.max_grad_norm=1.0"]),
    ({"train_micro_batch_size_per_gpu": 8}, ["train_micro_batch_size_per_gpu=8", "data.batch_size=2"]),
    ({"zero_optimization": {"stage": 3}}, ["stage=3", "stages 0, 1 and 2", "--zero_stage 2"]),
    ({"optimizer": {"type": "Adam"}}, ["'optimizer' section", "optim.*"]),
    ({"scheduler": {"type": "WarmupLR"}}, ["'scheduler' section"]),
], ids=["accumulation", "clipping", "batch", "zero3", "optimizer", "scheduler"])
def test_fill_config_refuses_what_disagrees_or_cannot_work(ds, words):
    with pytest.raises(ConfigError) as err:
        deepspeed_run.fill_config(ds, _cfg())
    assert all(w in str(err.value) for w in words), str(err.value)


def test_resume_of_a_plain_checkpoint_under_deepspeed_is_refused(tmp_path):
    with pytest.raises(TrainingError, match="written without DeepSpeed"):
        deepspeed_run.load(engine=None, folder=tmp_path)


# --- real launches -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    return save_tiny_pipeline(root / "tiny-sd", root), write_images(root / "data", count=4)


def _launch(setup, out: Path, *extra: str, zero: int = 2, processes: int = 1, accum: int = 1, resume=False):
    base, data = setup
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--use_deepspeed", "--zero_stage", str(zero), "--num_processes",
           str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--gradient_accumulation_steps", str(accum), "--gradient_clipping", "1.0",
           "--offload_optimizer_device", "none", "--offload_param_device", "none", "--zero3_init_flag", "false",
           "-m", "sdlora", "train", "--base", str(base), "--data", str(data), "--output", str(out),
           *(["--resume"] if resume else [])]
    for setting in [*SETTINGS, *extra]:
        cmd += ["--set", setting]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)


def _plain(setup, out: Path, *extra: str, resume=False):
    base, data = setup
    cfg = load_config(None, [*SETTINGS, *extra, f"model.base={base}", f"data.path={data}", f"output.dir={out}"])
    return train(cfg, resume=resume)


def _difference(a: Path, b: Path) -> float:
    """Largest difference between two LoRA files of the same run settings (both must be trained)."""
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys()
    ups = [k for k in x if "lora_up" in k]
    assert min(x[k].abs().max().item() for k in ups) > 0  # trained: the up projections start at zero
    return max((x[k] - y[k]).abs().max().item() for k in x)


@pytest.mark.slow
def test_zero2_run_equals_the_plain_run_and_resumes_exactly(setup, tmp_path):
    ds = tmp_path / "ds"
    proc = _launch(setup, ds)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1
    plain = _plain(setup, tmp_path / "plain")
    # measured: identical (ZeRO-2 runs the same float32 AdamW on a flat copy of the LoRA)
    assert _difference(ds / "lora.safetensors", plain.files[0]) <= 1e-6
    checkpoint = ds / "checkpoints" / "step-000002"
    assert (checkpoint / deepspeed_run.CHECKPOINT_FOLDER).is_dir()

    resumed = tmp_path / "resumed"  # killed after step 2: only the checkpoint is left
    shutil.copytree(ds / "checkpoints", resumed / "checkpoints")
    proc = _launch(setup, resumed, resume=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr
    assert _difference(resumed / "lora.safetensors", ds / "lora.safetensors") <= 1e-7  # measured: identical

    # the optimizer state of a DeepSpeed checkpoint is DeepSpeed's: a plain run cannot continue it
    shutil.copytree(ds / "checkpoints", tmp_path / "again" / "checkpoints")
    with pytest.raises(TrainingError, match="written under DeepSpeed"):
        _plain(setup, tmp_path / "again", resume=True)


@pytest.mark.slow
def test_zero1_gradient_accumulation_equals_the_plain_run(setup, tmp_path):
    extra = ("optim.grad_accum=2", "data.batch_size=2")
    proc = _launch(setup, tmp_path / "ds", *extra, zero=1, accum=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = _plain(setup, tmp_path / "plain", *extra)
    assert _difference(tmp_path / "ds" / "lora.safetensors", plain.files[0]) <= 1e-6  # measured: identical


@pytest.mark.slow
def test_bf16_run_exports_the_float32_master_weights(setup, tmp_path):
    proc = _launch(setup, tmp_path / "ds", "optim.mixed_precision=bf16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # DeepSpeed trained a bf16 copy of the LoRA (its own checkpoint holds that module state) ...
    engine_state = next((tmp_path / "ds" / "checkpoints").glob("step-*/deepspeed/*/mp_rank_00_model_states.pt"))
    module = torch.load(engine_state, weights_only=False, map_location="cpu")["module"]
    assert module and all(t.dtype == torch.bfloat16 for t in module.values())
    # ... and the exported and checkpointed LoRA files hold its float32 master weights
    for path in (tmp_path / "ds" / "lora.safetensors", tmp_path / "ds" / "checkpoints" / "step-000002" / "lora.safetensors"):
        ds = load_file(str(path))
        assert all(t.dtype == torch.float32 for t in ds.values())
        assert any(not torch.equal(t, t.bfloat16().float()) for t in ds.values()), path
    plain = _plain(setup, tmp_path / "plain", "optim.mixed_precision=bf16")
    # bf16 gradients differ in rounding; AdamW's first steps move each weight by about lr (1e-4) per step
    assert _difference(tmp_path / "ds" / "lora.safetensors", plain.files[0]) <= 3 * 2 * 1e-4 + 1e-5


@pytest.mark.slow
def test_two_deepspeed_processes_on_cpu_are_refused_with_a_way_out(setup, tmp_path):
    proc = _launch(setup, tmp_path / "ds", processes=2)
    assert proc.returncode != 0
    assert "accelerate counts 1" in proc.stderr and "ACCELERATE_USE_CPU=true" in proc.stderr
    assert not (tmp_path / "ds" / "lora.safetensors").exists()
