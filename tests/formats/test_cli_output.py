"""CLI output never crashes (issue 15, item 5): a closed pipe ends quietly, undecodable metadata prints
escaped, full disks and names too long give one line and exit 2, a renamed pickle is a typed error, and
every command that can read a pickled base accepts --allow-pickle (a .bin diffusers folder needs it)."""

from __future__ import annotations

import errno
import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from sdlora.cli import build_parser, main
from sdlora.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
LORA = REPO / "tests" / "fixtures" / "wild_loras" / "cloneofsimo_sd15_r4_f16.safetensors"


def _sdlora(*args: str, stdout=subprocess.PIPE, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m sdlora ARGS` as a user would (real stdout file descriptor, real exit code)."""
    environ = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "sdlora", *args], stdout=stdout, stderr=subprocess.PIPE,
                          env=environ, cwd=REPO, timeout=120, check=False)


def _with_metadata(source: Path, target: Path, extra: dict[str, str]) -> Path:
    """A copy of `source` with `extra` metadata (the header is rewritten; tensor offsets do not move)."""
    blob = source.read_bytes()
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + length])
    header.setdefault("__metadata__", {}).update(extra)
    raw = json.dumps(header).encode()  # ensure_ascii: a lone surrogate is written as the escape \udc80
    raw += b" " * (-len(raw) % 8)
    target.write_bytes(struct.pack("<Q", len(raw)) + raw + blob[8 + length:])
    return target


def test_closed_pipe_ends_quietly():
    """`sdlora inspect FILE | head -1`: the reader is gone; no BrokenPipeError traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = _sdlora("inspect", str(LORA), stdout=write_end)
    finally:
        os.close(write_end)
    assert result.stderr.decode() == ""
    assert result.returncode == 141


def test_lone_surrogate_metadata_is_one_escaped_error_line(tmp_path):
    # such a header is not valid JSON text for the safetensors library either: refused, never a traceback
    path = _with_metadata(LORA, tmp_path / "odd.safetensors", {"note": "bad \udc80 byte"})
    result = _sdlora("inspect", str(path), env={"PYTHONIOENCODING": "utf-8"})
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr.decode()
    assert "odd.safetensors" in lines[0] and "bad \\udc80 byte" in lines[0]


def test_an_undecodable_file_name_prints_escaped(tmp_path):
    # a file name that is not UTF-8 reaches Python as lone surrogates (surrogateescape)
    folder = Path(os.fsdecode(bytes(tmp_path) + b"/odd-\xff"))
    folder.mkdir()
    path = folder / "lora.safetensors"
    path.write_bytes(LORA.read_bytes())
    result = _sdlora("inspect", str(path), env={"PYTHONIOENCODING": "utf-8"})
    assert result.returncode == 0, result.stderr.decode()
    assert "odd-\\udcff" in result.stdout.decode()


def test_full_disk_gives_one_line_and_exit_2():
    with open("/dev/full", "w") as full:  # every write fails with ENOSPC
        result = _sdlora("inspect", str(LORA), stdout=full)
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 2
    assert len(lines) == 1 and "No space left on device" in lines[0] and "free some disk space" in lines[0]


def test_name_too_long_gives_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / ("x" * 300 + ".safetensors")
    assert main(["convert", str(LORA), str(out)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "File name too long" in lines[0] and "shorter file name" in lines[0]


def test_extract_of_a_renamed_pickle_is_a_typed_error(tmp_path, capsys):
    import torch

    tuned = tmp_path / "tuned.safetensors"
    torch.save({"model.diffusion_model.x.weight": torch.ones(2, 2)}, tuned)
    out = tmp_path / "out.safetensors"
    assert main(["extract", "--base", "embedded", "--tuned", str(tuned), "--rank", "2", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{tuned}: not a readable .safetensors file" in err and not out.exists()


@pytest.mark.parametrize("command", [
    ["generate", "--prompt", "x", "--out", "a.png"],
    ["bake", "out", "--base", "m.ckpt", "--lora", "a.safetensors"],
    ["extract", "out.safetensors", "--base", "m.ckpt", "--tuned", "t.ckpt", "--rank", "2"],
    ["webui"],
    ["train", "--config", "c.yaml"],
])
def test_every_command_that_reads_a_base_takes_allow_pickle(command):
    """The loader's message says "pass --allow-pickle": each command that can reach it must accept it."""
    assert build_parser().parse_args([*command, "--allow-pickle"]).allow_pickle is True


def test_generate_without_allow_pickle_names_the_flag(tmp_path, capsys):
    base = tmp_path / "model.ckpt"
    base.write_bytes(b"not read")
    assert main(["generate", "--prompt", "x", "--base", str(base), "--out", str(tmp_path / "a.png")]) == 2
    assert "--allow-pickle" in capsys.readouterr().err


def test_diffusers_folder_of_bin_files_needs_allow_pickle(tmp_path):
    from sdlora.base.load import load_components

    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "unet" / "config.json").write_text("{}")
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(ConfigError, match="unet are pickle files.*--allow-pickle"):
        load_components(str(folder))


class _FullDisk(io.RawIOBase):
    """A stdout whose every write fails with ENOSPC while `full` is set."""

    full = True

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return len(data)


def test_output_that_fails_only_when_flushed_gives_one_line_and_exit_2(monkeypatch, capsys):
    """Short output sits in stdout's buffer until the end; main flushes it itself, so a full disk is
    reported as one line (not "Exception ignored ..." at interpreter exit)."""
    raw = _FullDisk()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BufferedWriter(raw, buffer_size=1 << 20)))
    try:
        code = main(["inspect", "--no-hash", str(LORA)])
    finally:
        raw.full = False  # let the stand-in close quietly
    lines = capsys.readouterr().err.splitlines()
    assert code == 2
    assert len(lines) == 1 and "No space left on device" in lines[0]
