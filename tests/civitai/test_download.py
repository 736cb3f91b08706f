"""Downloads against the fake server: redirect to a signed URL, resume after a cut or a cancel, hash check,
refused contents (HTML, pickle, full checkpoint), names from Content-Disposition, folders kept in the library."""

from __future__ import annotations

import hashlib
import pickle
import threading

import pytest

from sdlora.civitai.download import download, parse_target
from sdlora.civitai.errors import EarlyAccess, HashMismatch, TokenNeeded
from sdlora.civitai.info import info_path
from sdlora.civitai.names import clean_name, folder_for
from sdlora.errors import ConfigError, FormatError, Interrupted
from sdlora.filehash import FileHashCache
from tests.civitai.fake_civitai import safetensors_bytes

TOKEN = "tok-SECRET-456"


@pytest.fixture
def library(tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    return folder


def files_in(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_version_id_downloads_through_the_signed_redirect_into_its_base_model_folder(
        fake, make_client, library, lora_bytes):
    fake.add_version(31, 3, lora_bytes, name="style.safetensors", served_name="Fancy_Style_v1.safetensors")
    seen = []
    hashes = FileHashCache(None)
    result = download("31", library, make_client(), hashes=hashes, on_progress=seen.append)
    assert result.path == library / "SD 1.5" / "Fancy_Style_v1.safetensors"
    assert result.path.read_bytes() == lora_bytes and result.sha256 == hashlib.sha256(lora_bytes).hexdigest()
    assert any(p.startswith("/signed/31?sig=") for p in fake.paths())
    assert info_path(result.path).is_file() and (library / "SD 1.5" / "Fancy_Style_v1.preview.png").is_file()
    assert seen[-1].done == seen[-1].total == len(lora_bytes) and seen[-1].speed > 0
    assert hashes.sha256(result.path) == result.sha256 and hashes.files_read == 0
    assert not list(library.rglob("*.part"))


def test_model_ids_and_civitai_urls_name_their_version(fake, make_client, library, lora_bytes):
    fake.add_version(32, 4, lora_bytes)
    client = make_client()
    assert parse_target("32", client) == ("version", 32)
    assert parse_target("model:4", client) == ("model", 4)
    assert parse_target("https://civitai.com/models/4/fancy?modelVersionId=32", client) == ("version", 32)
    assert parse_target("https://civitai.com/models/4/fancy", client) == ("model", 4)
    assert parse_target("https://civitai.com/api/download/models/32", client) == ("version", 32)
    assert parse_target("https://example.org/a.safetensors", client) == ("url", "https://example.org/a.safetensors")
    with pytest.raises(ConfigError, match="https"):
        parse_target("http://example.org/a.safetensors", client)
    with pytest.raises(ConfigError, match="not a URL or an id"):
        parse_target("fancy", client)
    result = download("model:4", library, make_client(), template="{model_name}/{version_id}")
    assert result.path.parent == library / "Fancy Style" / "32"


def test_a_cut_connection_is_resumed_with_a_range_request(fake, make_client, library, lora_bytes):
    fake.add_version(33, 5, lora_bytes)
    fake.script["/signed/33"] = ["cut"]
    result = download("33", library, make_client())
    assert result.path.read_bytes() == lora_bytes
    ranges = [h.get("Range") for p, h in fake.requests if p.startswith("/signed/33")]
    assert len(ranges) == 2 and ranges[0] is None
    assert 0 < int(ranges[1][len("bytes="):-1]) <= len(lora_bytes) // 2  # from what arrived before the cut


def test_cancel_keeps_only_the_part_and_the_next_call_resumes_it(fake, make_client, library, lora_bytes):
    fake.add_version(34, 6, lora_bytes)
    cancel = threading.Event()

    def stop_midway(progress):
        if progress.done:
            cancel.set()

    fake.script["/signed/34"] = ["cut"]  # the first answer stops at half, so the cancel lands on a partial file
    with pytest.raises(Interrupted, match="cancelled; style.safetensors.part is kept"):
        download("34", library, make_client(), cancel=cancel, on_progress=stop_midway)
    assert files_in(library) == ["SD 1.5/style.safetensors.part"]
    kept = (library / "SD 1.5" / "style.safetensors.part").stat().st_size
    assert 0 < kept < len(lora_bytes)
    result = download("34", library, make_client())
    assert result.path.read_bytes() == lora_bytes
    assert [h.get("Range") for p, h in fake.requests if p.startswith("/signed/34")][-1] == f"bytes={kept}-"


def test_a_wrong_hash_keeps_nothing(fake, make_client, library, lora_bytes):
    fake.add_version(35, 7, lora_bytes, listed_sha="0" * 64)
    with pytest.raises(HashMismatch, match="nothing was kept"):
        download("35", library, make_client())
    assert files_in(library) == []


def test_an_html_page_instead_of_the_file_is_refused(fake, make_client, library):
    page = b"<!DOCTYPE html><html><body>Please log in</body></html>"
    fake.add_version(36, 8, page)
    with pytest.raises(FormatError, match="web page"):
        download("36", library, make_client())
    assert files_in(library) == []


def test_a_pickle_and_a_full_checkpoint_are_refused_and_removed(fake, make_client, library):
    fake.add_version(37, 9, pickle.dumps({"state_dict": 1}, protocol=2) + b"\0" * 64)
    with pytest.raises(FormatError, match="pickled .* removed"):
        download("37", library, make_client())
    checkpoint = safetensors_bytes({"model.diffusion_model.input_blocks.0.0.weight": ("F16", [4, 4])})
    fake.add_version(38, 10, checkpoint, name="ckpt.safetensors")
    with pytest.raises(FormatError, match="removed"):
        download("38", library, make_client())
    assert files_in(library) == []


def test_a_pickled_file_offered_by_the_api_is_not_downloaded(fake, make_client, library, lora_bytes):
    fake.add_version(39, 11, lora_bytes, name="old.pt")
    with pytest.raises(FormatError, match="only a pickled file"):
        download("39", library, make_client())
    assert not [p for p in fake.paths() if p.startswith("/signed/")]


def test_a_content_disposition_with_path_parts_stays_in_its_folder(fake, make_client, library, lora_bytes):
    fake.add_version(40, 12, lora_bytes, served_name="../../x.safetensors")
    result = download("40", library, make_client())
    assert result.path == library / "SD 1.5" / "x.safetensors"
    again = download("40", library, make_client())
    assert again.path == library / "SD 1.5" / "x-2.safetensors"  # never over an existing file


def test_a_unicode_name_is_kept_and_a_long_one_cut(fake, make_client, library, lora_bytes):
    fake.add_version(41, 13, lora_bytes,
                     served_name="attachment; filename*=UTF-8''%E6%97%A5%E6%9C%AC%E3%81%AE%E7%94%BB%E9%A2%A8.safetensors")
    assert download("41", library, make_client()).path.name == "日本の画風.safetensors"
    long_name = "風" * 200 + ".safetensors"
    assert len(clean_name(long_name).encode()) <= 250 and clean_name(long_name).endswith(".safetensors")


def test_token_needed_and_early_access(fake, make_client, library, lora_bytes):
    fake.add_version(42, 14, lora_bytes, token=True)
    with pytest.raises(TokenNeeded, match="API token"):
        download("42", library, make_client())
    result = download("42", library, make_client(token=TOKEN))
    assert result.path.is_file()
    signed = [h for p, h in fake.requests if p.startswith("/signed/42")]
    assert signed and all(h["Host"].startswith("localhost") and "Authorization" not in h for h in signed)
    assert TOKEN not in result.path.read_bytes().decode("latin-1") and TOKEN not in info_path(result.path).read_text()
    fake.add_version(43, 15, lora_bytes, early=True)
    with pytest.raises(EarlyAccess):
        download("43", library, make_client(token=TOKEN))


def test_folder_templates_never_leave_the_library(library):
    assert folder_for(library, "{base_model}/", {"base_model": "../../etc"}) == library / "_.._etc"
    assert folder_for(library, "{base_model}/", {"base_model": None}) == library
    for bad in ("../outside", "/abs/{base_model}", "a/../../b"):
        with pytest.raises(ConfigError):
            folder_for(library, bad, {})
    with pytest.raises(ConfigError, match="unknown field"):
        folder_for(library, "{secret}", {})
    (library.parent / "elsewhere").mkdir()
    (library / "link").symlink_to(library.parent / "elsewhere")
    with pytest.raises(ConfigError, match="outside the library"):
        folder_for(library, "link", {})


def test_a_plain_url_is_downloaded_checked_and_looked_up_by_hash(fake, make_client, library, lora_bytes):
    fake.add_version(44, 16, lora_bytes, served_name="")
    url = f"{fake.url}/signed/44?sig=abc"
    result = download(url, library, make_client())
    assert result.path == library / "44.safetensors" and result.path.read_bytes() == lora_bytes
    assert result.version["id"] == 44 and info_path(result.path).is_file()  # found by its SHA-256
    page = b"<html><body>404</body></html>"
    fake.add_version(45, 17, page)
    with pytest.raises(FormatError, match="web page"):
        download(f"{fake.url}/signed/45", library, make_client(), lookup_by_hash=False)
    quiet = download(url, library, make_client(), lookup_by_hash=False)
    assert quiet.version is None and not info_path(quiet.path).exists()


@pytest.mark.parametrize(("raw", "clean"), [
    ("../../x.safetensors", "x.safetensors"), ("..\\..\\evil.safetensors", "evil.safetensors"),
    (".hidden.safetensors", "hidden.safetensors"), ("a\x00b\x1fc.safetensors", "abc.safetensors"),
    ('what?*:"<>|.safetensors', "what_______.safetensors"), ("   ", "download.safetensors"),
    ("/etc/passwd", "passwd"), ("name. ", "name"),
])
def test_server_names_become_one_safe_file_name(raw, clean):
    assert clean_name(raw) == clean
