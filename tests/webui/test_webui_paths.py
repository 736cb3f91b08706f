"""Path confinement: `..`, absolute paths and symlinks that leave the allowed folders are refused."""

from __future__ import annotations

import os

import pytest

from sdlora_webui.paths import AccessError, resolve_within, safe_filename, unique_path


@pytest.fixture
def roots(tmp_path):
    allowed = tmp_path / "allowed"
    (allowed / "sub").mkdir(parents=True)
    (allowed / "sub" / "a.txt").write_text("ok")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    return allowed, outside


def test_relative_path_inside_root_is_resolved(roots):
    allowed, _ = roots
    assert resolve_within("sub/a.txt", [allowed]) == (allowed / "sub" / "a.txt").resolve()


def test_absolute_path_inside_root_is_accepted(roots):
    allowed, _ = roots
    path = allowed / "sub" / "a.txt"
    assert resolve_within(str(path), [allowed]) == path.resolve()


@pytest.mark.parametrize(
    "attempt",
    [
        "../outside/secret.txt",
        "sub/../../outside/secret.txt",
        "/etc/passwd",
        "~/.bashrc",
        "..",
    ],
)
def test_paths_leaving_the_roots_are_refused(roots, attempt):
    allowed, _ = roots
    with pytest.raises(AccessError, match="outside the folders"):
        resolve_within(attempt, [allowed], must_exist=False)


def test_absolute_path_to_other_folder_is_refused(roots):
    allowed, outside = roots
    with pytest.raises(AccessError, match="outside"):
        resolve_within(str(outside / "secret.txt"), [allowed])


def test_symlink_pointing_outside_is_refused(roots):
    allowed, outside = roots
    os.symlink(outside / "secret.txt", allowed / "link.txt")
    os.symlink(outside, allowed / "linkdir")
    with pytest.raises(AccessError, match="outside"):
        resolve_within("link.txt", [allowed])
    with pytest.raises(AccessError, match="outside"):
        resolve_within("linkdir/secret.txt", [allowed])


def test_prefix_sibling_is_not_inside(tmp_path):
    """/x/allowed2 must not count as inside /x/allowed (string-prefix bug)."""
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed2").mkdir()
    with pytest.raises(AccessError):
        resolve_within(str(tmp_path / "allowed2"), [tmp_path / "allowed"])


def test_second_root_and_default_root(roots, tmp_path):
    allowed, outside = roots
    assert resolve_within("secret.txt", [allowed, outside], default_root=outside) == (
        outside / "secret.txt"
    ).resolve()


@pytest.mark.parametrize("bad", ["", "   ", "a\x00b"])
def test_empty_or_nul_path_is_refused(roots, bad):
    with pytest.raises(AccessError):
        resolve_within(bad, [roots[0]])


def test_missing_file_is_reported_when_required(roots):
    with pytest.raises(AccessError, match="does not exist"):
        resolve_within("nope.txt", [roots[0]])
    assert resolve_within("nope.txt", [roots[0]], must_exist=False).name == "nope.txt"


@pytest.mark.parametrize(
    ("name", "expected"),
    [("../../evil.safetensors", "evil.safetensors"), ("a/b\\c.png", "c.png"), ("..", "file"), ("x;rm -rf.txt", "x_rm -rf.txt")],
)
def test_safe_filename_drops_folders_and_odd_characters(name, expected):
    assert safe_filename(name) == expected


def test_unique_path_never_overwrites(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"x")
    assert unique_path(tmp_path, "a.safetensors").name == "a-2.safetensors"
    assert unique_path(tmp_path, "b.safetensors").name == "b.safetensors"


# ---- issue 15, item 7: one confinement function for library names too; long names; work limit; uploads ----


def _form(name, **settings):
    values = {"prompt": "a red circle", "negative": "", "seed": 3, "steps": 2, "cfg": 5.0, "width": 32, "height": 32,
              "stack": [{"name": name, "strength": 1.0, "enabled": True, "separate": False, "te": 1.0, "unet": 1.0}]}
    return values | settings


def test_library_name_whose_file_links_outside_is_refused_in_tools_and_generate(gen_app, tmp_path):
    from sdlora_webui.tabs import generate_tab, tools_tab

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    secret = elsewhere / "secret.safetensors"
    secret.write_bytes((tmp_path / "loras" / "a.safetensors").read_bytes())  # a real LoRA, readable if followed
    os.symlink(secret, tmp_path / "loras" / "evil.safetensors")
    with pytest.raises(AccessError, match="outside the folders this app may use"):
        tools_tab.inspect_lora(gen_app, "evil")
    with pytest.raises(AccessError, match="outside the folders this app may use"):
        generate_tab.generate(gen_app, _form("evil"))
    assert "evil" not in generate_tab.library_choices(gen_app)
    assert sorted(gen_app.library()) == ["a", "b"]


def test_names_over_255_bytes_are_refused_with_a_message(app, roots):
    from sdlora_webui.tabs import tools_tab
    from sdlora_webui.tabs.common import bound

    allowed, _ = roots
    long = "x" * 300
    with pytest.raises(AccessError, match="name too long"):
        resolve_within(long, [allowed])
    with pytest.raises(AccessError, match="name too long"):
        tools_tab.resolve_lora(app, long)
    with pytest.raises(AccessError, match="name too long"):
        tools_tab.output_path(app, long, "merged")
    with pytest.raises(Exception, match="name too long") as err:  # what the UI shows: no "internal error"
        bound(tools_tab.inspect_lora, app)(long)
    assert "internal error" not in str(err.value)


def test_generation_work_limit_is_configurable_and_refuses_with_the_numbers(gen_app, tmp_path):
    from sdlora.cli import build_parser
    from sdlora.errors import ConfigError
    from sdlora_webui.state import AppConfig, AppState
    from sdlora_webui.tabs import generate_tab

    with pytest.raises(ConfigError, match=r"2048x2048 x 100 steps x 1 image\(s\) = 419,430,400 pixel-steps"):
        gen_app.check_work(2048, 2048, 100)
    small = AppState(AppConfig(lora_dir=tmp_path / "loras", output_dir=tmp_path / "out", max_work=32 * 32 * 2),
                     pipeline_factory=lambda base: pytest.fail("the model was loaded for a refused request"))
    try:
        small.check_work(32, 32, 2)  # exactly at the limit: allowed
        with pytest.raises(ConfigError, match="limit is 2,048.*--max-work"):
            generate_tab.generate(small, _form("a", steps=3))
    finally:
        small.close()
    assert build_parser().parse_args(["webui", "--max-work", "5"]).max_work == 5


def test_refused_uploads_are_deleted_from_gradios_folder(tmp_path, monkeypatch):
    from sdlora_webui.uploads import UploadError, UploadLimits, check_image_upload, check_lora_upload

    gradio_tmp = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(gradio_tmp))
    pickle = gradio_tmp / "3f9a" / "model.safetensors"
    pickle.parent.mkdir(parents=True)
    pickle.write_bytes(b"\x80\x04\x95 a pickle renamed")
    html = gradio_tmp / "77c1" / "photo.png"
    html.parent.mkdir()
    html.write_text("<html>not a picture</html>")
    kept = tmp_path / "mine.png"  # refused too, but not in gradio's folder: not the app's to delete
    kept.write_text("<html></html>")
    for check, path in ((check_lora_upload, pickle), (check_image_upload, html), (check_image_upload, kept)):
        with pytest.raises(UploadError):
            check(path, UploadLimits())
    assert not pickle.exists() and not pickle.parent.exists()
    assert not html.exists() and not html.parent.exists()
    assert kept.exists() and gradio_tmp.is_dir()
