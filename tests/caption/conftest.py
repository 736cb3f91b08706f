"""Fixtures: the tiny captioners of tiny_captioners.py and a caption-less copy of sample_data/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.caption.tiny_captioners import build_blip, build_tagger
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="session")
def tagger_dir(tmp_path_factory) -> Path:
    return build_tagger(tmp_path_factory.mktemp("wd14-tiny"))


@pytest.fixture(scope="session")
def blip_dir(tmp_path_factory) -> Path:
    return build_blip(tmp_path_factory.mktemp("blip-tiny"))


@pytest.fixture
def bare_data(tmp_path) -> Path:
    """A copy of sample_data/ without its captions."""
    folder = tmp_path / "data"
    folder.mkdir()
    for image in sorted((REPO_ROOT / "sample_data").glob("*.png"))[:8]:
        shutil.copy(image, folder / image.name)
    return folder
