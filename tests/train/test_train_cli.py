"""`sdlora train` in-process, and under `accelerate launch --num_processes 2 --cpu`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open
from tests_train_helpers import save_tiny_pipeline, write_images

from sdlora.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    return save_tiny_pipeline(root / "tiny-sd", root)


def _args(base, data, out, *extra):
    return ["train", "--base", str(base), "--data", str(data), "--output", str(out), "--steps", "2",
            "--set", "data.resolution=32", "--set", "data.min_bucket=32", "--set", "data.max_bucket=64",
            "--set", "data.bucket_step=32", "--set", "lora.rank=2", *extra]


def test_cli_trains_from_folder_base_and_reports(base, tmp_path, capsys, caplog):
    data = write_images(tmp_path / "data", count=2)
    caplog.set_level("INFO", logger="sdlora")
    code = main(_args(base, data, tmp_path / "out"))
    out = capsys.readouterr()
    assert code == 0, out.err
    assert f"wrote {tmp_path / 'out' / 'lora.safetensors'}" in out.out
    assert "2/2 [" in out.err and "loss=" in out.err  # the progress bar
    # the data set summary is logged (the CLI sends INFO logs to stderr) before training starts
    assert "2 images in 1 folder(s)" in caplog.messages[0]
    with safe_open(str(tmp_path / "out" / "lora.safetensors"), "pt") as f:
        assert f.metadata()["ss_sd_model_name"] == "tiny-sd"
    assert (tmp_path / "out" / "lora.yaml").is_file() and (tmp_path / "out" / "loss.png").is_file()


def test_cli_dry_run_prints_summary_and_config(tmp_path, capsys):
    data = write_images(tmp_path / "data", count=2)
    assert main(["train", "--data", str(data), "--dry-run", "--set", "lora.rank=3"]) == 0
    out = capsys.readouterr().out
    assert "2 images in 1 folder(s)" in out and "rank: 3" in out


def test_cli_bad_key_is_one_line_error(tmp_path, capsys):
    assert main(["train", "--set", "optim.lrate=1", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'optim.lr'" in err and len(err.strip().splitlines()) == 1


def test_cli_refuses_pickle_base_without_flag(tmp_path, capsys):
    data = write_images(tmp_path / "data", count=1)
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\x80\x04K\x01.")
    assert main(["train", "--data", str(data), "--base", str(ckpt), "--output", str(tmp_path / "o")]) == 2
    assert "--allow-pickle" in capsys.readouterr().err


def _launch(launch_args, env_extra, base, data, out):
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", *launch_args, "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "sdlora", *_args(base, data, out, "--set", "output.save_every=1")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env_extra}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)


# `accelerate launch --num_processes 2 --cpu` (the command): accelerate 1.x starts ONE process for
# --cpu unless an MPI hostfile is given (commands/launch.py simple_launcher). Two real CPU processes come
# from the multi-GPU launcher with ACCELERATE_USE_CPU=true (torchrun + gloo); both are checked.
@pytest.mark.slow
@pytest.mark.parametrize(("launch_args", "env_extra", "processes"), [
    (["--num_processes", "2", "--cpu"], {}, 1),
    (["--multi_gpu", "--num_processes", "2"], {"ACCELERATE_USE_CPU": "true"}, 2),
], ids=["cpu-flag", "two-cpu-processes"])
def test_accelerate_launch_writes_one_file(base, tmp_path, launch_args, env_extra, processes):
    data = write_images(tmp_path / "data", count=4)
    out = tmp_path / "out"
    proc = _launch(launch_args, env_extra, base, data, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["lora-step000001.safetensors", "lora.safetensors"]
    with safe_open(str(out / "lora.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["ss_total_batch_size"] == str(processes)   # 1 image per process per step
    assert proc.stdout.count("wrote ") == 1                 # only the main process exports
