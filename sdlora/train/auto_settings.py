"""Settings a config leaves unset, taken from the data set once it is scanned: the trigger (the tag every
caption starts with) and the sample prompts (a few of the captions), each with a note for the run summary;
and when samples are due (`output.sample_every`, else `output.sample_points` through the run)."""

from __future__ import annotations

import copy
import math

from sdlora.train.captions import split_tags, with_trigger

SAMPLE_PROMPTS = 2  # captions drawn as samples when output.sample_prompts is empty


def common_leading_tag(captions: list[str]) -> str:
    """The first tag of every caption when it is the same in all of them (two captions at least), else ""."""
    firsts = {(split_tags(caption) or [""])[0] for caption in captions}
    return firsts.pop() if len(captions) > 1 and len(firsts) == 1 else ""


def sampling_on(out) -> bool:
    return bool(out.sample_every or out.sample_points)


def samples_due(out, step: int, steps: int) -> bool:
    """Whether step `step` of `steps` draws samples (`out` is the OutputConfig; prompts are checked elsewhere)."""
    if out.sample_every:
        return step % out.sample_every == 0
    if out.sample_points:
        return step == steps or step % math.ceil(steps / out.sample_points) == 0
    return False


def fill_from_captions(cfg, captions: list[str]) -> tuple[object, list[str]]:
    """A copy of `cfg` with data.trigger and output.sample_prompts filled from the training `captions` where
    they are unset, and a note for each value filled in."""
    out, notes = copy.deepcopy(cfg), []
    if not out.data.trigger:
        out.data.trigger = common_leading_tag(captions)
        if out.data.trigger:
            notes.append(f"data.trigger: '{out.data.trigger}', the tag every caption starts with (it is stored as "
                         "the LoRA's trigger phrase; set data.trigger to choose another)")
    if sampling_on(out.output) and not out.output.sample_prompts:
        out.output.sample_prompts = _caption_prompts(captions, out.data.trigger)
        if out.output.sample_prompts:
            notes.append(f"output.sample_prompts: {len(out.output.sample_prompts)} of the data set's captions ("
                         + "; ".join(out.output.sample_prompts) + ")")
    return out, notes


def _caption_prompts(captions: list[str], trigger: str) -> list[str]:
    """`SAMPLE_PROMPTS` distinct non-empty captions spread over the sorted list, each led by the trigger."""
    found = sorted({caption.strip() for caption in captions if caption.strip()})
    picks = [found[i * len(found) // SAMPLE_PROMPTS] for i in range(min(SAMPLE_PROMPTS, len(found)))]
    return [with_trigger(caption, trigger) for caption in dict.fromkeys(picks)]
