"""Issue 13: settings that follow the base (resolution, preset), visible and cancellable stages, cheap
mistakes that fail before torch loads, one meaning of `--base`, and the thread count."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from safetensors.torch import save_file
from tests_train_helpers import save_tiny_pipeline, write_images

from sdlora.base.native import far_from_native, native_resolution
from sdlora.base.ref import parse_base
from sdlora.cli import main
from sdlora.settings.config import load_config

REPO = Path(__file__).resolve().parents[2]


def _cfg(data: Path, out: Path, *extra: str):
    return load_config(None, [f"data.path={data}", f"output.dir={out}", "optim.steps=1", "lora.rank=2",
                              "lora.alpha=2", "output.save_dtype=fp32", *extra])


# ---------------------------------------------------------------- 1. base-aware sizes ---------------

def test_native_resolution_of_the_shipped_bases_without_weights():
    assert [native_resolution(b) for b in ("embedded", "sd1", "sd15", "sd2", "sdxl")] == [32, 512, 512, 768, 1024]
    assert load_config(None).data.resolution is None  # unset until the base is known
    assert load_config(None, ["data.resolution=auto"]).data.resolution is None


def test_far_from_native_warns_only_far_off():
    assert far_from_native(64, 32) is None and far_from_native(512, 512) is None
    assert "16x the pixels" in far_from_native(128, 32) and "1/16 of the pixels" in far_from_native(128, 512)


def test_embedded_base_trains_at_32_px_when_no_resolution_is_given(tmp_path):
    from sdlora.train import train

    cfg = _cfg(write_images(tmp_path / "data", count=2, size=(96, 64)), tmp_path / "out")
    result = train(cfg)
    assert result.steps == 1 and result.config.data.resolution == 32
    assert set(result.summary.buckets) == {"32x32"}, result.summary.buckets
    assert cfg.data.resolution is None  # the caller's config is left unset (reusable with another base)
    assert any("32 px, the base's native size" in n for n in result.notes)


@pytest.fixture
def tiny_single_file(tmp_path, caplog):
    """A tiny SD1-architecture model as an original-keyed single file, with its <stem>.config/ beside it."""
    from diffusers import StableDiffusionPipeline

    try:  # sdlora/ldm_keys.py moves into the sdlora.arch package
        from sdlora.arch.ldm_keys import models_to_ldm
    except ImportError:
        from sdlora.ldm_keys import models_to_ldm

    caplog.set_level(logging.ERROR)
    folder = save_tiny_pipeline(tmp_path / "tiny-sd", tmp_path)
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    path = tmp_path / "ckpt" / "tiny.safetensors"
    path.parent.mkdir()
    save_file(models_to_ldm(pipe.unet, pipe.vae, pipe.text_encoder), str(path))
    shutil.copytree(folder, path.with_suffix(".config"))
    return path


def test_single_file_base_trains_at_its_own_size(tiny_single_file, tmp_path):
    from sdlora.train import train

    assert native_resolution(tiny_single_file) == 16  # tiny UNet sample_size 8 x VAE factor 2
    cfg = _cfg(write_images(tmp_path / "data", count=2), tmp_path / "out", f"model.base={tiny_single_file}")
    result = train(cfg)
    assert result.steps == 1 and result.config.data.resolution == 16
    assert set(result.summary.buckets) == {"16x16"}


def test_dry_run_warns_for_a_far_off_resolution(tmp_path, capsys):
    data = write_images(tmp_path / "data", count=2)
    assert main(["train", "--data", str(data), "--base", "embedded", "--dry-run", "--set", "data.resolution=512"]) == 0
    out = capsys.readouterr().out
    assert "warning: data.resolution=512 is 256x the pixels of the base's native 32 px" in out
    assert main(["train", "--data", str(data), "--base", "embedded", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "warning" not in out and "resolution: 32" in out and "buckets: 32x32 (2)" in out


# ---------------------------------------------------------------- 2. the base's own preset ----------

def test_embedded_base_without_config_uses_the_embedded_preset(tmp_path, capsys):
    data = write_images(tmp_path / "data", count=2)
    assert main(["train", "--data", str(data), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "the 'embedded' preset" in out and "targets: locon-io" in out and "steps: 600" in out
    assert main(["train", "--data", str(data), "--config", "quick", "--dry-run"]) == 0
    assert "embedded' preset" not in capsys.readouterr().out
    assert load_config("embedded").lora.targets == "locon-io"
    assert not (REPO / "scripts" / "quickstart.yaml").exists()  # one copy of the recipe
    assert "--config embedded" in (REPO / "scripts" / "quickstart.sh").read_text()


# ---------------------------------------------------------------- 6. stages and cancel --------------

def test_every_stage_is_reported_in_order(tiny_components, tmp_path):
    from sdlora.train import train

    seen = []
    cfg = _cfg(write_images(tmp_path / "data", count=3), tmp_path / "out", "lora.train_text_encoder=false",
               "output.sample_every=1", "output.sample_prompts=[a b]", "output.sample_steps=1")
    result = train(cfg, tiny_components, on_progress=seen.append)
    names = list(dict.fromkeys(i.message for i in seen))
    assert names == ["scanning images", "caching latents", "caching text", "sampling", "saving"], names
    latents = [(i.done, i.total) for i in seen if i.message == "caching latents"]
    assert latents == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert [(i.done, i.total) for i in seen if i.message == "sampling"] == [(0, 1), (1, 1)]
    assert all(i.line().startswith(i.message) and "elapsed" in i.line() for i in seen)
    assert result.stages == names


def test_cancel_during_latent_caching_stops_within_an_image(tiny_components, tmp_path):
    from sdlora.train import train

    cancel, seen = threading.Event(), []

    def on_progress(info):
        seen.append((info.message, info.done))
        if info.message == "caching latents" and info.done == 3:
            cancel.set()  # as the web UI's Cancel or the first Ctrl-C would, while images are encoded

    cfg = _cfg(write_images(tmp_path / "data", count=40), tmp_path / "out", "optim.steps=5")
    result = train(cfg, tiny_components, on_progress=on_progress, cancel=cancel)
    assert result.cancelled and result.steps == 0 and result.checkpoint is None and not result.files
    assert max(done for stage, done in seen if stage == "caching latents") == 3  # not one image more
    assert result.stages[-1] == "caching latents" and "caching text" not in result.stages
    assert not any("lora" in name.lower() for name, _ in tiny_components.unet.named_modules())


def test_cancel_while_caching_a_resumed_run_keeps_its_checkpoint(tiny_components, tmp_path):
    from sdlora.train import train

    data, out = write_images(tmp_path / "data", count=6), tmp_path / "out"
    first = train(_cfg(data, out, "optim.steps=2", "output.save_every=1", "output.keep_last=5"), tiny_components)
    assert first.steps == 2
    cancel = threading.Event()
    resumed = train(_cfg(data, out, "optim.steps=4"), tiny_components, resume=True, cancel=cancel,
                    on_progress=lambda i: cancel.set() if i.message == "caching latents" and i.done == 1 else None)
    # save_every=1 checkpoints every step but the last (which is the export): the newest is step 1
    assert resumed.cancelled and resumed.checkpoint is not None and resumed.checkpoint.name == "step-000001"
    assert resumed.steps == 1 and resumed.checkpoint.is_dir()


# ---------------------------------------------------------------- 3. cheap mistakes fail fast ------

def _cli_without_torch(*argv: str) -> tuple[int, str, bool]:
    """Run the CLI in a fresh interpreter; (exit code, stderr, whether torch got imported)."""
    code = ("import sys\nfrom sdlora.cli import main\nrc = main(sys.argv[1:])\n"
            "sys.stderr.write('TORCH=%s' % ('torch' in sys.modules))\nsys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], check=False, capture_output=True, text=True,
                          cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)
    return proc.returncode, proc.stderr, "TORCH=True" in proc.stderr


def test_unknown_set_key_fails_before_torch_loads(tmp_path):
    data = write_images(tmp_path / "data", count=1)
    rc, err, torch_loaded = _cli_without_torch("train", "--data", str(data), "--set", "optim.lrr=1e-4")
    assert rc == 2 and "unknown key 'optim.lrr'; did you mean 'optim.lr'?" in err and not torch_loaded


def test_bad_sampler_and_unknown_lora_tag_fail_before_torch_loads(tmp_path):
    rc, err, torch_loaded = _cli_without_torch("generate", "--prompt", "a", "--sampler", "Eular a",
                                               "--out", str(tmp_path / "x.png"))
    assert rc == 2 and "Eular a" in err and not torch_loaded
    rc, err, torch_loaded = _cli_without_torch("generate", "--prompt", "a <lora:nosuch:1>",
                                               "--out", str(tmp_path / "x.png"))
    assert rc == 2 and "no LoRA named 'nosuch'" in err and not torch_loaded


# ---------------------------------------------------------------- 4. --base means the same --------

def test_parse_base_kinds(tiny_single_file, tmp_path):
    assert parse_base("embedded").kind == "embedded" and parse_base("SD15").value == "sd1"
    assert parse_base(tiny_single_file).kind == "file" and parse_base(tmp_path).kind == "folder"
    assert parse_base("org/model").kind == "hub"
    from sdlora.errors import ConfigError

    with pytest.raises(ConfigError, match="does not exist"):
        parse_base(tmp_path / "missing.safetensors")


def test_verify_accepts_base_embedded(tmp_path, capsys):
    from sdlora.embedded import weights_dir

    # a LoRA on the embedded model's own modules: one kohya key pair on its first attention's to_q
    unet = json.loads((weights_dir() / "unet" / "config.json").read_text())
    import torch

    assert unet["down_block_types"][1] == "CrossAttnDownBlock2D"
    width, key = unet["block_out_channels"][1], "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    lora = {f"{key}.lora_down.weight": torch.zeros(2, width), f"{key}.lora_up.weight": torch.zeros(width, 2)}
    path = tmp_path / "e.safetensors"
    save_file(lora, str(path))
    assert main(["verify", str(path), "--base", "embedded", "--json"]) == 0, capsys.readouterr()
    assert main(["verify", str(path), "--base", "sd1", "--json"]) == 1  # SD1.5's to_q there is 640 wide


# ---------------------------------------------------------------- 5. threads -----------------------

def test_threads_follow_the_cgroup_quota_and_the_request(tmp_path):
    from sdlora import threads

    quota = tmp_path / "cpu.max"
    quota.write_text("max 100000\n")
    assert threads.cgroup_quota(quota) is None
    quota.write_text("150000 100000\n")
    assert threads.cgroup_quota(quota) == 1.5
    assert threads.available_cpus(quota) == min(2, threads.affinity_cpus())
    assert threads.choose_threads(None, quota) == 1  # 2 CPUs or fewer: one thread
    assert threads.choose_threads(3, quota) == 3  # an explicit request is taken as given
    assert [threads.auto_threads(n) for n in (1, 2, 3, 4, 8, 16)] == [1, 1, 2, 3, 7, 14]
    assert load_config(None, ["optim.threads=2"]).optim.threads == 2


def test_cancel_while_the_base_loads_returns_before_the_load_ends(tmp_path, monkeypatch):
    """diffusers' load cannot be interrupted: train() waits for it in another thread and returns on cancel."""
    import sdlora.train.session as train_module
    from sdlora.train import train

    release, started = threading.Event(), threading.Event()

    def slow_load(*args, **kwargs):
        started.set()
        release.wait(60)  # a big base on a slow disk
        raise AssertionError("the load's result must not be used after a cancel")

    monkeypatch.setattr(train_module, "load_components", slow_load)
    cancel = threading.Event()

    def on_progress(info):
        if info.message == "loading the base" and started.is_set():
            cancel.set()  # Cancel pressed while the load runs

    cfg = _cfg(write_images(tmp_path / "data", count=2), tmp_path / "out")
    result = train(cfg, on_progress=on_progress, cancel=cancel)
    assert not release.is_set()  # returned while the load was still blocked
    release.set()
    assert result.cancelled and result.stages == ["scanning images", "loading the base"]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "cancelled"


def test_first_ctrl_c_in_the_cli_stops_latent_caching(tmp_path, monkeypatch, capsys):
    """The real SIGINT handler of `sdlora train`, with Ctrl-C pressed while the 4th image is encoded."""
    import os
    import signal

    from sdlora.cli import train as train_cli

    draw = train_cli._StageLines.__call__
    seen = []

    def pressing_ctrl_c(self, info):
        seen.append((info.message, info.done))
        if info.message == "caching latents" and info.done == 3:
            os.kill(os.getpid(), signal.SIGINT)  # delivered to the CLI's handler in this (main) thread
        draw(self, info)

    monkeypatch.setattr(train_cli._StageLines, "__call__", pressing_ctrl_c)
    data = write_images(tmp_path / "data", count=12)
    assert main(["train", "--data", str(data), "--steps", "5", "--output", str(tmp_path / "out")]) == 0
    assert "cancelled at step 0 during caching latents; checkpoint: none" in capsys.readouterr().out
    assert max(done for stage, done in seen if stage == "caching latents") == 3
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "cancelled"
