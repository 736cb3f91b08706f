"""Settings checked before the model loads (a one-line error at --dry-run time, exit 2), and an allocation
failure during setup or training as a TrainingError naming the setting to lower, with no traceback."""

import pytest
import torch
from tests_train_helpers import make_tiny_components, tiny_config, write_images

import sdlora.train.session
from sdlora.cli import main
from sdlora.errors import ConfigError, TrainingError
from sdlora.settings.config import load_config
from sdlora.train import train
from sdlora.train.preflight import check_base_settings


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("data"), count=1)


def _dry_run(capsys, data, *args):
    """The exit code and the error: one line, the last on stderr (after the CLI's stage line)."""
    code = main(["train", "--base", "embedded", "--data", str(data), "--dry-run", *args])
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("sdlora train: error: ")]
    assert errors in ([], lines[-1:]), lines
    return code, "\n".join(errors)


@pytest.mark.parametrize(("setting", "message"), [
    ("lora.rank=300", "lora.rank: rank 300 is above both sides of"),  # the embedded text encoder is 128 wide
    ("lora.rank=100000", "lora.rank=100000: above 1280"),
    ("lora.conv_rank=5000", "lora.conv_rank=5000: above 1280"),
    ("data.bucket_step=12;data.buckets=true", "data.bucket_step=12: this base needs image sides in multiples of 8"),
    ("lora.block_dims=[4,4,4]", "lora.block_dims: has 3 values; this UNet has 19 blocks"),
    ("optim.up_lr_weight=[1,1]", "optim.up_lr_weight: has 2 values; this UNet has 9 OUT blocks"),
])
def test_dry_run_fails_in_one_line_where_the_run_would(capsys, data, setting, message):
    code, err = _dry_run(capsys, data, *[arg for part in setting.split(";") for arg in ("--set", part)])
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err, err


def test_dry_run_of_a_lokr_sized_kohya_config_fails_before_loading(capsys, tmp_path, data):
    config = tmp_path / "train.toml"
    config.write_text('network_module = "networks.lora"\nnetwork_dim = 100000\n', encoding="utf-8")
    code, err = _dry_run(capsys, data, "--from-kohya", str(config))
    assert code == 2 and len(err.splitlines()) == 1 and "lora.rank=100000" in err


def test_the_shipped_presets_pass_on_their_bases():
    for preset, base in (("embedded", "embedded"), ("style", "sd1"), ("sdxl", "sdxl"), ("locon", "sd1")):
        check_base_settings(load_config(preset, [f"model.base={base}"]))


def test_sd1_needs_64_and_sdxl_32_as_sd_scripts_says():
    check_base_settings(load_config(None, ["model.base=sdxl", "data.bucket_step=32"]))
    with pytest.raises(ConfigError, match="multiples of 64"):
        check_base_settings(load_config(None, ["model.base=sd1", "data.bucket_step=32"]))


def test_the_real_run_stops_before_the_base_loads(monkeypatch, tmp_path, data):
    def load(*args, **kwargs):
        raise AssertionError("the base was loaded")

    monkeypatch.setattr(sdlora.train.session, "_load_base", load)
    cfg = load_config(None, ["model.base=embedded", f"data.path={data}", f"output.dir={tmp_path / 'out'}",
                             "lora.rank=300"])
    with pytest.raises(ConfigError, match="lora.rank: rank 300"):
        train(cfg)


def test_the_loaded_components_are_checked_too(tmp_path, data):
    cfg = tiny_config(data, tmp_path / "out", "lora.block_dims=[4,4]")
    with pytest.raises(ConfigError, match="lora.block_dims: has 2 values"):
        train(cfg, make_tiny_components(tmp_path))


# ---------------------------------------------------------------- allocation failures ---------

def _raise(err):
    def fail(*args, **kwargs):
        raise err
    return fail


def test_allocation_failure_while_adding_layers_names_the_rank(monkeypatch, tmp_path, data):
    monkeypatch.setattr("sdlora.train.loop.inject_lora",
                        _raise(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")))
    cfg = tiny_config(data, tmp_path / "out")
    with pytest.raises(TrainingError) as err:
        train(cfg, make_tiny_components(tmp_path))
    text = str(err.value)
    assert text.startswith("out of memory while adding the LoRA layers (CUDA out of memory. Tried to allocate")
    assert "lower lora.rank (now 4) or lora.conv_rank (now 4)" in text and "\n" not in text


def test_cpu_allocation_failure_during_steps_names_batch_and_resolution(monkeypatch, tmp_path, data):
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:116] . DefaultCPUAllocator: can't allocate memory: you "
                       "tried to allocate 8589934592 bytes. Error code 12 (Cannot allocate memory)")
    monkeypatch.setattr("sdlora.train.session._step_loop", _raise(cpu))
    cfg = tiny_config(data, tmp_path / "out")
    with pytest.raises(TrainingError) as err:
        train(cfg, make_tiny_components(tmp_path))
    text = str(err.value)
    assert text.startswith("out of memory while training (")
    assert "lower data.batch_size (now 1), data.resolution (now 32) or lora.rank (now 4)" in text
    assert "\n" not in text


def test_other_runtime_errors_pass_unchanged(monkeypatch, tmp_path, data):
    monkeypatch.setattr("sdlora.train.session._step_loop", _raise(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="^shape mismatch$"):
        train(tiny_config(data, tmp_path / "out"), make_tiny_components(tmp_path))


def test_cli_reports_an_allocation_failure_in_one_line(monkeypatch, capsys, tmp_path, data):
    monkeypatch.setattr("sdlora.train.loop.inject_lora", _raise(RuntimeError("DefaultCPUAllocator: not enough "
                                                                             "memory: you tried to allocate 1 TB")))
    code = main(["train", "--base", "embedded", "--data", str(data), "--output", str(tmp_path / "out"),
                 "--steps", "1"])
    err = capsys.readouterr().err.strip()  # the stage lines, then the error
    assert code == 2 and "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("sdlora train: error: out of memory while adding the LoRA layers") and \
        "lower lora.rank (now 8)" in last
