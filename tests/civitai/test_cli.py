"""`sdlora civitai ...` as a user runs it: help says what is sent where; info, scan, download, token; errors in
one line with exit code 2."""

from __future__ import annotations

import io
import json
import sys

from sdlora.cli import main


def run(capsys, *argv):
    code = main(["civitai", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_explains_what_is_sent_where(capsys):
    try:
        main(["civitai", "--help"])
    except SystemExit as done:
        assert done.code == 0
    text = capsys.readouterr().out
    for words in ("SHA-256", "by-hash", "No file content, name or path leaves this machine", "Authorization header",
                  "--offline", "0600"):
        assert words in text


def test_info_scan_and_download(fake, capsys, tmp_path, lora_bytes):
    fake.add_version(51, 5, lora_bytes, words=("fancystyle",))
    library = tmp_path / "loras"
    code, out, _ = run(capsys, "download", "51", "--lora-dir", str(library), "--civitai-url", fake.url)
    assert code == 0 and "saved" in out
    saved = library / "SD 1.5" / "style.safetensors"
    assert saved.read_bytes() == lora_bytes
    code, out, _ = run(capsys, "info", str(saved), "--offline")  # the saved info, no network
    assert code == 0 and "Fancy Style" in out and "fancystyle" in out and "SD 1.5" in out
    (library / "own.safetensors").write_bytes(lora_bytes + b"x")
    requests = len(fake.requests)
    code, out, _ = run(capsys, "scan", str(library), "--civitai-url", fake.url)
    assert code == 0 and "1 not on Civitai" in out and "1 skipped" in out
    assert len(fake.requests) == requests + 1  # the scanned file was skipped, the other asked once


def test_offline_and_errors_are_one_line(fake, capsys, tmp_path, monkeypatch, lora_bytes):
    path = tmp_path / "a.safetensors"
    path.write_bytes(lora_bytes)
    monkeypatch.setenv("SDLORA_OFFLINE", "1")
    code, out, err = run(capsys, "info", str(path), "--civitai-url", fake.url)
    assert code == 2 and "offline mode" in err and err.count("\n") == 1 and fake.requests == []
    monkeypatch.delenv("SDLORA_OFFLINE")
    monkeypatch.setenv("CIVITAI_API_TOKEN", "tok-SECRET-789")
    fake.script["/api/v1/model-versions/99"] = [(401, {}, b"{}")]
    code, out, err = run(capsys, "download", "99", "--lora-dir", str(tmp_path), "--civitai-url", fake.url)
    assert code == 2 and "API token" in err and "tok-SECRET" not in err + out


def test_token_is_saved_readable_by_its_owner_only(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "stdin", io.StringIO("tok-SECRET-000\n"))
    code, out, _ = run(capsys, "token")
    path = tmp_path / "config" / "sdlora" / "civitai.json"
    assert code == 0 and "tok-SECRET" not in out
    assert json.loads(path.read_text())["token"] == "tok-SECRET-000" and path.stat().st_mode & 0o777 == 0o600
    assert run(capsys, "token", "--remove")[0] == 0 and "token" not in json.loads(path.read_text())
