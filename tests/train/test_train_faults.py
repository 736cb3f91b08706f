"""Trainer faults (issue 15, item 6): odd files in the data set are named and skipped (never followed into
loops, never doubled); the output folder is checked before the model loads; a failed write names the last
good checkpoint; temporary files are cleaned when a run starts; a resume repairs loss.csv and re-exports a
step file that a kill interrupted."""

from __future__ import annotations

import builtins
import errno
import os
from pathlib import Path

import pytest
from tests_train_helpers import make_tiny_components, tiny_config, write_images

import sdlora.train.data as data_module
from sdlora.errors import ConfigError, TrainingError
from sdlora.train import export, train
from sdlora.train.checkpoint import list_checkpoints
from sdlora.train.data import scan_dataset


class Killed(BaseException):
    """A simulated kill -9: not an Exception, so nothing on the way may turn it into an error message."""


def _data_cfg(path):
    return tiny_config(path, path.parent / "out").data


def _skipped(summary) -> dict[str, str]:
    return {Path(path).name: reason for path, reason in summary.skipped}


def test_unreadable_caption_is_named_and_skipped(tmp_path, monkeypatch):
    folder = write_images(tmp_path / "data", count=3)
    real = data_module.read_caption

    def locked(path):
        if path.name == "img1.txt":  # tests run as root, where chmod 000 still reads: simulate EACCES
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(data_module, "read_caption", locked)
    items, summary = scan_dataset(_data_cfg(folder))
    assert sorted(item.path.name for item in items) == ["img0.png", "img2.png"]
    assert "unreadable (Permission denied); its image img1.png is skipped too" in _skipped(summary)["img1.txt"]


def test_unreadable_image_is_called_unreadable_not_corrupt(tmp_path, monkeypatch):
    folder = write_images(tmp_path / "data", count=2)
    real_open = builtins.open

    def locked(file, *args, **kwargs):
        if str(file).endswith("img1.png"):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", locked)
    items, summary = scan_dataset(_data_cfg(folder))
    assert [item.path.name for item in items] == ["img0.png"]
    assert _skipped(summary)["img1.png"] == "unreadable (Permission denied)"


def test_odd_entries_are_named_and_skipped(tmp_path):
    folder = write_images(tmp_path / "data", count=2)
    os.symlink("loop.png", folder / "loop.png")         # a link to itself
    os.symlink("missing.png", folder / "gone.png")       # a dangling link
    os.mkfifo(folder / "pipe.png")                       # opening it would block the scan forever
    (folder / "x.png").mkdir()
    (folder / "orphan.txt").write_text("no image has this name")
    os.symlink("img0.png", folder / "twin.png")          # the same image twice
    items, summary = scan_dataset(_data_cfg(folder))
    assert sorted(item.path.name for item in items) == ["img0.png", "img1.png"]
    skipped = _skipped(summary)
    assert skipped["loop.png"] == "symbolic link loop"
    assert skipped["gone.png"] == "broken symbolic link (to missing.png)"
    assert skipped["pipe.png"] == "not a regular file (a FIFO, socket or device)"
    assert skipped["x.png"] == "a folder, not a file"
    assert skipped["orphan.txt"] == "a caption without an image of the same name"
    assert skipped["twin.png"].startswith("the same file as ") and skipped["twin.png"].endswith("img0.png")
    lines = "\n".join(summary.lines())
    assert all(f"skipped {folder / name}: " in lines for name in skipped)


def test_folder_linked_to_itself_does_not_double_the_data_set(tmp_path):
    folder = write_images(tmp_path / "data", count=2)
    os.symlink(".", folder / "1_x")                       # a Kohya folder that is the root again
    os.symlink("2_loop", folder / "2_loop")              # a Kohya-named link loop
    items, summary = scan_dataset(_data_cfg(folder))
    assert summary.image_count == 2 and len(items) == 2 and list(summary.folders) == ["data"]
    skipped = _skipped(summary)
    assert skipped["1_x"] == f"the same folder as {folder}; its images are used once"
    assert skipped["2_loop"] == "symbolic link loop"


def test_unwritable_output_fails_before_the_model_loads(tmp_path, monkeypatch):
    import sdlora.train.session as train_module

    folder = write_images(tmp_path / "data", count=1)
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")

    def load_base(cfg):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(train_module, "_load_base", load_base)
    with pytest.raises(ConfigError, match=r"output.dir: cannot write to .*a-file/out"):
        train(tiny_config(folder, blocker / "out"))


@pytest.mark.parametrize("writer", ["safetensors ENOSPC", "torch.save RuntimeError"])
def test_disk_full_during_a_checkpoint_names_the_last_good_one(tmp_path, monkeypatch, writer):
    import safetensors.torch

    import sdlora.train.checkpoint as ckpt

    folder = write_images(tmp_path / "data", count=2)
    real_save_file, real_torch_save = safetensors.torch.save_file, ckpt.torch.save

    def full_save_file(tensors, path, *args, **kwargs):
        if ".tmp-step-000004" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save_file(tensors, path, *args, **kwargs)

    def full_torch_save(obj, path, *args, **kwargs):
        if ".tmp-step-000004" in str(path):  # what torch reports when the disk fills mid-file
            raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 448 vs 342")
        return real_torch_save(obj, path, *args, **kwargs)

    if writer.startswith("safetensors"):
        monkeypatch.setattr(safetensors.torch, "save_file", full_save_file)
    else:
        monkeypatch.setattr(ckpt.torch, "save", full_torch_save)
    cfg = tiny_config(folder, tmp_path / "out", "optim.steps=6", "output.save_every=2")
    with pytest.raises(TrainingError, match=r"could not write .*step-000004.*last good checkpoint: .*step-000002"):
        train(cfg, make_tiny_components(tmp_path / "c"))
    assert [p.name for p in (tmp_path / "out" / "checkpoints").iterdir()] == ["step-000002"]


def test_leftover_temporary_files_are_cleaned_when_a_run_starts(tmp_path):
    folder = write_images(tmp_path / "data", count=1)
    out = tmp_path / "out"
    leftovers = [out / ".lora.safetensors.k2j4.tmp", out / ".loss.csv.x81q.tmp", out / "samples" / ".s.png.a.tmp",
                 out / "checkpoints" / ".tmp-step-000007" / "state.pt"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half written")
    (out / "notes.tmp").write_text("a user's file, not ours")
    train(tiny_config(folder, out, "optim.steps=1"), make_tiny_components(tmp_path / "c"))
    assert [p for p in leftovers if p.exists()] == []
    assert not (out / "checkpoints" / ".tmp-step-000007").exists()
    assert (out / "notes.tmp").exists()


def _killed_between_checkpoint_and_step_export(tmp_path, monkeypatch):
    """Train 6 steps with a checkpoint every 3, killed after step 3's checkpoint, before its step file."""
    folder = write_images(tmp_path / "data", count=3)
    cfg = tiny_config(folder, tmp_path / "out", "optim.steps=6", "output.save_every=3")
    real_save = export.save_lora

    def kill_at_step_file(state, path, *args, **kwargs):
        if "step000003" in str(path):
            raise Killed("kill -9 after the checkpoint of step 3")
        return real_save(state, path, *args, **kwargs)

    monkeypatch.setattr(export, "save_lora", kill_at_step_file)
    with pytest.raises(Killed):
        train(cfg, make_tiny_components(tmp_path / "c"))
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path / "out")] == ["step-000003"]
    assert not (tmp_path / "out" / "lora-step000003.safetensors").exists()
    return cfg


def _loss_steps(out: Path) -> list[int]:
    lines = (out / "loss.csv").read_text().splitlines()
    assert lines[0] == "step,loss,lr"
    return [int(line.split(",")[0]) for line in lines[1:]]


def test_resume_after_a_kill_re_exports_the_step_file_and_logs_every_step(tmp_path, monkeypatch):
    cfg = _killed_between_checkpoint_and_step_export(tmp_path, monkeypatch)
    resumed = train(cfg, make_tiny_components(tmp_path / "c2"), resume=True)
    out = tmp_path / "out"
    assert (out / "lora-step000003.safetensors").is_file()
    assert _loss_steps(out) == [1, 2, 3, 4, 5, 6]
    assert [row[0] for row in resumed.history] == [1, 2, 3, 4, 5, 6]


def test_resume_repairs_a_loss_csv_missing_rows_or_cut_short(tmp_path, monkeypatch):
    cfg = _killed_between_checkpoint_and_step_export(tmp_path, monkeypatch)
    out = tmp_path / "out"
    lines = (out / "loss.csv").read_text().splitlines()
    # step 3's row lost (a kill before its append, as older versions ordered it) and a torn last line
    (out / "loss.csv").write_text("\n".join(line for line in lines if not line.startswith("3,")) + "\n4,0.1")
    train(cfg, make_tiny_components(tmp_path / "c2"), resume=True)
    assert _loss_steps(out) == [1, 2, 3, 4, 5, 6]
