"""Validation loss: the split is a function of the seed, the loss is deterministic, measuring it leaves the
training result bit for bit as it was, and it reaches val_loss.csv, loss.png and on_step."""

import csv

import pytest
import torch
from safetensors.torch import load_file
from tests_train_helpers import make_tiny_components, tiny_config, write_images

from sdlora.errors import ConfigError, DatasetError
from sdlora.settings.config import load_config
from sdlora.train import train
from sdlora.train.data import scan_dataset


def _held_out(tmp_path, seed: int) -> list[str]:
    data = write_images(tmp_path / "data", count=10)
    cfg = tiny_config(data, tmp_path / "out", "data.validation_split=0.3").data
    items, summary = scan_dataset(cfg, seed=seed)
    assert len(items) == 7 and len(summary.validation) == 3
    assert not {i.path for i in items} & {v.path for v in summary.validation}
    return sorted(v.path.name for v in summary.validation)


def test_split_holds_out_the_same_files_for_the_same_seed(tmp_path):
    first = _held_out(tmp_path, 1)
    assert _held_out(tmp_path, 1) == first
    assert any(_held_out(tmp_path, seed) != first for seed in range(2, 6))  # the seed does choose them


def test_split_that_leaves_nothing_to_train_is_a_dataset_error(tmp_path):
    cfg = tiny_config(write_images(tmp_path / "data", count=1), tmp_path / "out", "data.validation_split=0.5").data
    with pytest.raises(DatasetError, match="validation_split"):
        scan_dataset(cfg)


def test_missing_validation_folder_and_both_sources_are_errors(tmp_path):
    data = write_images(tmp_path / "data", count=2)
    cfg = tiny_config(data, tmp_path / "out", f"data.validation_path={tmp_path / 'nope'}").data
    with pytest.raises(DatasetError, match=r"data\.validation_path: .*nope"):
        scan_dataset(cfg)
    with pytest.raises(ConfigError, match="both set"):
        load_config(None, [f"data.validation_path={data}", "data.validation_split=0.2"])


def _run(tmp_path, name: str, *extra: str):
    data = write_images(tmp_path / "data", count=4)
    seen = []
    cfg = tiny_config(data, tmp_path / name, "optim.steps=4", "optim.lr=1e-2", "lora.dropout=0.1",
                      "data.flip=true", "data.validation_split=0.25", *extra)
    result = train(cfg, make_tiny_components(tmp_path / f"c{name}"),
                   on_step=lambda info: seen.append((info.step, info.val_loss)))
    return result, load_file(result.files[0]), seen


def test_validation_loss_is_deterministic_and_leaves_training_unchanged(tmp_path):
    first, lora_a, seen = _run(tmp_path, "a", "output.validate_every=2")
    second, _, _ = _run(tmp_path, "b", "output.validate_every=2")
    plain, lora_c, _ = _run(tmp_path, "c")                          # the same split, never measured
    assert [s for s, _ in first.validation] == [2, 4]
    assert first.validation == second.validation
    assert all(torch.equal(lora_a[k], lora_c[k]) for k in lora_a)   # measuring changed nothing
    assert first.history == plain.history
    assert plain.validation == []
    assert [v is not None for _, v in seen] == [False, True, False, True]
    with (tmp_path / "a" / "val_loss.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert first.loss_plot.is_file()
    with (tmp_path / "a" / "loss.csv").open(newline="") as handle:
        assert next(csv.reader(handle)) == ["step", "loss", "lr"]   # loss.csv keeps its columns


def test_validation_loss_follows_the_lora(tmp_path):
    """The loss moves between measurements: it reads the current LoRA, not a value fixed at the start."""
    result, _, _ = _run(tmp_path, "a", "output.validate_every=1", "optim.lr=5e-2")
    values = [v for _, v in result.validation]
    assert len(values) == 4 and len(set(values)) > 1


class Killed(Exception):
    pass


@pytest.mark.slow
def test_resumed_run_logs_the_validation_loss_of_an_uninterrupted_one(tmp_path):
    data = write_images(tmp_path / "data", count=4)

    def cfg(out):
        return tiny_config(data, out, "optim.steps=4", "optim.lr=1e-2", "output.save_every=2",
                           "data.validation_split=0.25", "output.validate_every=1")

    def kill(info):
        if info.step == 3:
            raise Killed

    full = train(cfg(tmp_path / "a"), make_tiny_components(tmp_path / "ca"))
    with pytest.raises(Killed):
        train(cfg(tmp_path / "b"), make_tiny_components(tmp_path / "cb"), on_step=kill)
    resumed = train(cfg(tmp_path / "b"), make_tiny_components(tmp_path / "cc"), resume=True)
    assert [s for s, _ in resumed.validation] == [1, 2, 3, 4]      # step 3's row before the kill was dropped
    # steps 1-2 come back from val_loss.csv (6 significant digits), steps 3-4 are measured again
    assert [v for _, v in resumed.validation] == pytest.approx([v for _, v in full.validation], rel=1e-5)
    assert [v for _, v in resumed.validation[2:]] == pytest.approx([v for _, v in full.validation[2:]], abs=1e-6)
