"""The Train tab's "Caption images with a model" panel: the captioner's captions go into the caption editor,
where the user reads and edits them; nothing is written until the editor's "Save captions" (which keeps
each replaced caption file as `.txt.bak`).

The captioner is a WD14 tagger folder or an image-to-text model folder inside the configured folders (model
folders, data folders, output), or a hub id when the machine is online (docs/webui.md, "Captioning").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from sdlora.caption import CaptionOptions, TaggerOptions, load_captioner, propose_captions
from sdlora.errors import ConfigError
from sdlora_webui.tabs.common import guarded


def _captioner_source(app, text: str) -> str:
    """A typed captioner: a folder inside the configured folders, else a hub id ("owner/name")."""
    text = (text or "").strip()
    if not text:
        raise ConfigError("give a captioner: a WD14 tagger folder (model.onnx + selected_tags.csv) or an "
                          "image-to-text model folder inside the model folders, or a hub id when online")
    is_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~")) and not Path(text).exists()
    return text if is_hub_id else str(app.read_path(text))


def _merge(rows, proposals) -> list[list[str]]:
    """The editor's rows with the proposed captions put in (images not proposed keep their caption)."""
    proposed = {proposal.name: proposal.new for proposal in proposals}
    current = [[str(row[0]), "" if row[1] is None else str(row[1])] for row in (rows or []) if row and row[0]]
    names = {name for name, _ in current}
    merged = [[name, proposed.get(name, caption)] for name, caption in current]
    return merged + [[name, text] for name, text in proposed.items() if name not in names]


def propose(app, dataset: str, model: str, options: dict[str, Any], rows, on_progress=None) -> tuple[list, str]:
    """Caption the loaded data set's images that need it (all with `overwrite`) into the editor's rows."""
    if not dataset:
        raise ConfigError("load a data set first (Load data set), then caption it")
    folder = app.read_path(dataset)
    tagger = TaggerOptions(general_threshold=float(options["general"]), character_threshold=float(options["character"]))
    captioner = load_captioner(_captioner_source(app, model), tagger=tagger)
    caption_options = CaptionOptions(trigger=options["trigger"] or "", prefix=options["prefix"] or "",
                                     suffix=options["suffix"] or "", overwrite=bool(options["overwrite"]))
    result = propose_captions(folder, captioner, caption_options, on_progress=on_progress)
    message = (f"{len(result.proposals)} captions from the {captioner.kind} {captioner.name} are in the editor: "
               "check them, then Save captions")
    if result.skipped:
        message += f" ({result.skipped} images already captioned were kept; tick Overwrite to redo them)"
    if result.failed:
        message += f"; {len(result.failed)} unreadable images skipped"
    return _merge(rows, result.proposals), message


def create_ui(c: dict[str, Any]) -> None:
    """The panel's widgets, inside the Train tab's caption section; they go into `c`."""
    with gr.Accordion("Caption images with a model", open=False, elem_id="train-caption-panel"):
        gr.Markdown("A WD14 tagger folder (model.onnx + selected_tags.csv) or an image-to-text model (BLIP, "
                    "Florence-2, ...) inside the model folders; it runs on this machine. The captions appear in "
                    "the editor above: nothing is written until **Save captions** (replaced captions are kept "
                    "as .txt.bak).")
        with gr.Row():
            c["caption_model"] = gr.Textbox(label="Captioner folder or hub id", scale=3, elem_id="train-caption-model")
            c["caption_trigger"] = gr.Textbox(label="Trigger (first in every caption)", scale=2,
                                              elem_id="train-caption-trigger")
        with gr.Row():
            c["caption_prefix"] = gr.Textbox(label="Prefix")
            c["caption_suffix"] = gr.Textbox(label="Suffix")
            c["caption_general"] = gr.Number(0.35, label="Tagger: general threshold", minimum=0, maximum=1)
            c["caption_character"] = gr.Number(0.85, label="Tagger: character threshold", minimum=0, maximum=1)
        with gr.Row():
            c["caption_overwrite"] = gr.Checkbox(False, label="Overwrite existing captions")
            c["caption_run"] = gr.Button("Caption images", elem_id="train-caption-run")
        c["caption_status"] = gr.Markdown(elem_id="train-caption-status")


def wire(app, c: dict[str, Any]) -> None:
    keys = {"caption_trigger": "trigger", "caption_prefix": "prefix", "caption_suffix": "suffix",
            "caption_general": "general", "caption_character": "character", "caption_overwrite": "overwrite"}

    def run(dataset, model, rows, *values, progress=gr.Progress()):  # noqa: B008 - gradio's progress tracker
        options = dict(zip(keys.values(), values, strict=True))
        return propose(app, dataset, model, options, rows,
                       on_progress=lambda p: progress((p.done, p.total), desc="captioning", unit="images"))

    c["caption_run"].click(guarded(run), [c["dataset"], c["caption_model"], c["captions"], *(c[k] for k in keys)],
                           [c["captions"], c["caption_status"]], api_name="train_caption")
