"""Issue 22 item 1: a base stored in fp16 (as most downloaded models are) generates on a CPU: it is loaded in
float32 unless another dtype is asked for, and the CLI says which dtype it computes in."""

from __future__ import annotations

import numpy as np
import torch

from sdlora.base.load import load_base, load_components
from sdlora.generate import GenerateSettings, generate


def _fp16_folder(pipe, folder):
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    return folder


def test_an_fp16_folder_loads_in_float32_and_generates_on_the_cpu(pipe, tmp_path):
    folder = _fp16_folder(pipe, tmp_path / "fp16-base")
    pipeline, name = load_base(str(folder))
    assert name == "fp16-base"
    assert pipeline.unet.dtype == torch.float32 and pipeline.text_encoder.dtype == torch.float32
    result = generate(pipeline, GenerateSettings(prompt="a cat", seed=1, steps=2, cfg=5.0, width=16, height=16))
    assert np.asarray(result.image).std() > 0


def test_a_dtype_asked_for_is_kept(pipe, tmp_path):
    folder = _fp16_folder(pipe, tmp_path / "fp16-base")
    assert load_components(str(folder), dtype=torch.float16).unet.dtype == torch.float16


def test_the_embedded_model_is_named_embedded_not_by_its_folder():
    assert load_components("embedded").name == "embedded"
    assert load_base(None)[1] == "embedded"
