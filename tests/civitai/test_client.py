"""The Civitai client against the fake server: answers, typed one-line errors, retries, timeouts, the token."""

from __future__ import annotations

import time

import pytest

from sdlora.civitai.errors import EarlyAccess, NotOnCivitai, Offline, ServerBusy, TokenNeeded
from sdlora.civitai.settings import load_settings, settings_path, update_user_settings

TOKEN = "tok-SECRET-123"


def test_hit_and_miss(fake, make_client, lora_bytes):
    fake.add_version(11, 1, lora_bytes)
    client = make_client()
    import hashlib

    sha = hashlib.sha256(lora_bytes).hexdigest()
    assert client.version_by_hash(sha)["id"] == 11
    assert client.version_by_hash(sha[:10].upper())["id"] == 11  # AutoV2
    with pytest.raises(NotOnCivitai, match="not on Civitai") as err:
        client.version_by_hash("0" * 64)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("status, kind, words", [(401, TokenNeeded, "API token"), (403, EarlyAccess, "early access")])
def test_401_and_403_are_one_line_errors_without_the_token(fake, make_client, status, kind, words):
    fake.script["/api/v1/model-versions/5"] = [(status, {}, b'{"error": "no"}')]
    client = make_client(token=TOKEN)
    with pytest.raises(kind, match=words) as err:
        client.version(5)
    assert TOKEN not in str(err.value) and "\n" not in str(err.value)
    assert fake.requests[-1][1].get("Authorization") == f"Bearer {TOKEN}"


def test_429_waits_as_long_as_retry_after_says(fake, make_client, lora_bytes):
    fake.add_version(12, 2, lora_bytes)
    fake.script["/api/v1/model-versions/12"] = [(429, {"Retry-After": "3"}, b""), (429, {"Retry-After": "1"}, b"")]
    waits: list[float] = []
    assert make_client(waits=waits).version(12)["id"] == 12
    assert waits == [3.0, 1.0]
    assert fake.paths().count("/api/v1/model-versions/12") == 3


def test_a_retry_after_beyond_the_cap_gives_up_at_once(fake, make_client):
    fake.script["/api/v1/model-versions/12"] = [(429, {"Retry-After": "3600"}, b"")]
    with pytest.raises(ServerBusy, match="wait 3600 s"):
        make_client().version(12)


def test_500_then_success_backs_off_exponentially(fake, make_client, lora_bytes):
    fake.add_version(13, 3, lora_bytes)
    fake.script["/api/v1/model-versions/13"] = [(500, {}, b"oops"), (502, {}, b"oops")]
    waits: list[float] = []
    assert make_client(waits=waits).version(13)["id"] == 13
    assert waits == [0.01, 0.02]


def test_5xx_forever_ends_in_server_busy(fake, make_client):
    fake.script["/api/v1/model-versions/14"] = [(503, {}, b"")] * 5
    with pytest.raises(ServerBusy, match="503 after 5 tries"):
        make_client().version(14)


def test_a_stalled_server_times_out(fake, make_client):
    fake.script["/api/v1/model-versions/15"] = [("stall", 1.0)] * 5
    client = make_client(timeout=0.2)
    client.retries = 1
    began = time.monotonic()
    with pytest.raises(Offline, match="did not answer .* after 2 tries"):
        client.version(15)
    assert time.monotonic() - began < 3


def test_no_server_is_offline_at_once(make_client):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(Offline, match="cannot reach"):
        make_client(url=f"http://127.0.0.1:{port}").version(1)


def test_offline_mode_makes_no_request(fake, make_client, monkeypatch):
    with pytest.raises(Offline, match="offline mode"):
        make_client(offline=True).version(1)
    monkeypatch.setenv("SDLORA_OFFLINE", "1")
    with pytest.raises(Offline):
        make_client().version_by_hash("ab" * 32)
    assert fake.requests == []


def test_the_token_goes_to_the_civitai_host_only(fake, make_client):
    client = make_client(token=TOKEN)
    client.get_bytes(f"{fake.url}/images/preview.png", "image")
    assert fake.requests[-1][1]["Authorization"] == f"Bearer {TOKEN}"
    other = f"http://localhost:{fake.url.rsplit(':', 1)[1]}/images/preview.png"  # same server, another host name
    client.get_bytes(other, "image")
    assert "Authorization" not in fake.requests[-1][1]
    assert TOKEN not in repr(client.settings)


def test_settings_come_from_flag_then_environment_then_the_0600_file(monkeypatch, tmp_path):
    path = update_user_settings(token="from-file", nsfw="r")
    assert path == settings_path() and (path.stat().st_mode & 0o777) == 0o600
    assert load_settings().token == "from-file" and load_settings().nsfw == "r"
    monkeypatch.setenv("CIVITAI_API_TOKEN", "from-env")
    monkeypatch.setenv("SDLORA_CIVITAI_URL", "http://mirror.example:8080/")
    assert load_settings().token == "from-env" and load_settings().base_url == "http://mirror.example:8080"
    assert load_settings(token="from-flag", url="https://x.example").token == "from-flag"
    update_user_settings(token=None)
    assert "token" not in path.read_text()


def test_the_token_is_in_no_log_record(fake, make_client, lora_bytes, caplog):
    import logging

    fake.add_version(16, 6, lora_bytes, token=True)
    fake.script["/api/v1/model-versions/16"] = [(500, {}, b""), (401, {}, b"{}")]
    with caplog.at_level(logging.DEBUG):
        client = make_client(token=TOKEN)
        with pytest.raises(TokenNeeded):
            client.version(16)
        client.get_bytes(f"{fake.url}/api/download/models/16", "download")  # redirected to another host
    assert caplog.records and not [r for r in caplog.records if TOKEN in r.getMessage()]
