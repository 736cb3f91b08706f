"""Fixtures of the Civitai tests: the fake server, settings isolated from the user's, a client that does not
wait between retries, and LoRA bytes the loader accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.civitai.fake_civitai import FakeCivitai

WILD = Path(__file__).resolve().parents[1] / "fixtures" / "wild_loras"


@pytest.fixture
def fake():
    server = FakeCivitai()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test reads or writes the user's settings, caches, token or network switch."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("CIVITAI_API_TOKEN", "SDLORA_CIVITAI_URL", "SDLORA_OFFLINE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def make_client(fake):
    from sdlora.civitai.client import CivitaiClient
    from sdlora.civitai.settings import load_settings

    made = []

    def make(**options):
        waits = options.pop("waits", None)
        settings = load_settings(url=options.pop("url", fake.url), timeout=options.pop("timeout", 2.0), **options)
        client = CivitaiClient(settings, backoff=0.01, sleep=(waits.append if waits is not None else lambda s: None))
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def lora_bytes() -> bytes:
    return (WILD / "lycoris_lokr_sd1_d4_f16.safetensors").read_bytes()
