"""The package works when installed from its wheel, not only from a source checkout.

Builds the wheel from a copy of the repository's files, installs it (non-editable, no dependencies, no
index) into a fresh virtual environment that reuses the test environment's installed dependencies, and
runs commands from a folder outside the repository: everything they need (model configs, tokenizers,
presets, the embedded model) must come from the installed package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "wild_loras" / "lycoris_lokr_sd1_d4_f16.safetensors"
# not part of a source distribution's build (large, generated, or the environment itself)
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                    "outputs", "test-artifacts", ".sdlora-cache", ".pytest_cache")

pytestmark = pytest.mark.slow


def _run(args: list, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], check=False, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtual environment with sdlora installed from a freshly built wheel; returns its bin folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=NOT_COPIED)
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                  "-w", tmp / "dist", source], cwd=tmp)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp / "dist").glob("sdlora-*.whl"))
    venv = tmp / "venv"
    made = _run([sys.executable, "-m", "venv", venv], cwd=tmp)
    assert made.returncode == 0, made.stderr
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    done = _run([bin_dir / "python", "-m", "pip", "install", "--no-deps", "--no-index", "--no-cache-dir",
                 "-q", wheel], cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    # reuse the installed dependencies (torch, diffusers, gradio ...) offline: a .pth line puts the test
    # environment's site-packages after the new one's, so the wheel's sdlora is the one imported
    site = _run([bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp)
    (Path(site.stdout.strip()) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return bin_dir


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return env | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_sdlora_is_imported_from_the_installed_wheel(installed, tmp_path):
    code = "import sdlora, sdlora_webui; print(sdlora.__file__); print(sdlora_webui.__file__)"
    out = _run([installed / "python", "-c", code], cwd=tmp_path, env=_env())
    assert out.returncode == 0, out.stderr
    for line in out.stdout.split():
        assert Path(line).is_relative_to(installed.parent), line


def test_the_wheel_installs_only_packages_named_for_sdlora(installed, tmp_path):
    """sdlora and its web UI (sdlora_webui), never a top-level package with a name other tools use
    (A1111 ships a `webui.py`)."""
    code = ("import importlib.metadata as m; print(' '.join(sorted({f.parts[0] for f in m.files('sdlora') "
            "if f.parts[0] != '..' and not f.parts[0].endswith('.dist-info')})))")
    out = _run([installed / "python", "-c", code], cwd=tmp_path, env=_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["sdlora", "sdlora_webui"]


def test_verify_against_a_family_uses_the_packaged_configs(installed, tmp_path):
    out = _run([installed / "sdlora", "verify", FIXTURE, "--base", "sd1"], cwd=tmp_path, env=_env())
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout


def test_train_dry_run_with_a_named_preset(installed, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("000.png", "000.txt", "001.png", "001.txt"):
        shutil.copy(ROOT / "sample_data" / name, data / name)
    out = _run([installed / "sdlora", "train", "--dry-run", "--config", "style", "--data", data],
               cwd=tmp_path, env=_env())
    assert out.returncode == 0, out.stdout + out.stderr
    assert "targets: attn" in out.stdout  # the preset's own value, read from the installed package


def test_web_ui_builds_from_the_installed_package(installed, tmp_path):
    code = ("from sdlora_webui.app import build_app, default_state; "
            "state = default_state('loras', 'outputs'); build_app(state); print('built')")
    out = _run([installed / "python", "-c", code], cwd=tmp_path, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("built")
