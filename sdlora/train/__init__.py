"""Training: `train(cfg, components=None, *, on_step=None, on_progress=None, cancel=None, resume=False)`.

The entry and the run live in `session`; this package face only hands the public names on. Modules: session
(train: settings checks, data, base, setup, resume, the step loop, export), data (scan, buckets, order),
images (safe decoding), captions, conditioning (text/VAE + caches), loss (pure math), optim, loop (setup +
one step), checkpoint (resume), export (metadata + files), result (TrainResult, TrainRun), monitor (StepInfo,
StageInfo, Stages, the loss CSV/plot), samples (preview grids), runs (run.yaml/run.json of every run).

>>> from sdlora.settings import load_config
>>> from sdlora.train import train
>>> cfg = load_config("quick", ["data.path=sample_data"])  # doctest: +SKIP
>>> result = train(cfg, on_step=lambda info: print(info.step, info.loss))   # doctest: +SKIP
>>> result.files                                                             # doctest: +SKIP
[PosixPath('output/lora.safetensors')]
"""

from sdlora.train.monitor import StageInfo, StepInfo
from sdlora.train.result import TrainResult

__all__ = ["StageInfo", "StepInfo", "TrainResult", "train"]


def __getattr__(name: str):
    # `train` imports torch: loaded on first use, so that `from sdlora.train import StepInfo` stays light
    if name == "train":
        from sdlora.train.session import train

        return train
    raise AttributeError(f"module 'sdlora.train' has no attribute {name!r}")
