"""Library tab: the LoRAs in the library folder, their details and load report, uploads, user notes.

Listing and notes come from `sdlora.library` (header data cached by file hash, so a rescan of
hundreds of files is fast); the load report comes from `sdlora.report.check_lora` against the
generation pipeline's base model, loaded only when the user asks for a report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from sdlora.errors import SdloraError
from webui.tabs.common import bound, guarded
from webui.uploads import check_lora_upload, store_upload, upload_name

COLUMNS = ["name", "family", "rank", "trigger words", "top tags", "notes"]


def scan(app):
    """The library scan (sdlora.library), with its header cache kept in the output folder."""
    from sdlora.library import scan as scan_library

    cache = Path(app.config.output_dir) / ".cache" / "library-cache.json"
    return scan_library(app.config.lora_dir, cache_path=cache)


def list_entries(app) -> list:
    """Readable library entries, sorted by name."""
    return list(scan(app).entries)


def refresh(app) -> tuple[list[list], list, list[str], str]:
    """(table rows, preview gallery items, names, message naming damaged files) for the library folder."""
    result = scan(app)
    entries = result.entries
    rows = [[e.name, e.family or "?", e.rank if e.rank is not None else "?", ", ".join(e.trigger_words[:8]),
             ", ".join(e.top_tags[:5]), _short(e.notes.get("notes") or e.notes.get("activation text"))] for e in entries]
    previews = [(str(e.preview), e.name) for e in entries if e.preview]
    message = f"{len(entries)} LoRA(s) in the library"
    if result.errors:
        message += "; not readable: " + "; ".join(f"{Path(e.path).name} ({e.error})" for e in result.errors[:5])
    return rows, previews, [e.name for e in entries], message


def find_entry(app, name: str):
    for entry in list_entries(app):
        if entry.name == name:
            return entry
    raise SdloraError(f"no LoRA named {name!r} in the library; press Refresh")


def details(app, name: str) -> tuple[dict, str, str, float, str]:
    """(metadata, summary markdown, activation text, preferred weight, notes) for one LoRA."""
    if not name:
        raise SdloraError("pick a LoRA in the list first")
    entry = find_entry(app, name)
    from sdlora.header import read_header

    header = read_header(entry.path)
    notes = entry.notes
    summary = (f"**{entry.name}** · family {entry.family or 'unknown'} · rank {entry.rank or '?'} · "
               f"{len(header.tensors)} tensors · {Path(entry.path).stat().st_size / 1e6:.1f} MB")
    return (dict(header.metadata), summary, notes.get("activation text", ""),
            _weight(notes.get("preferred weight")), notes.get("notes", ""))


def load_report(app, name: str) -> tuple[str, list[list]]:
    """The load report of LoRA `name` against the current base: (summary line, rows problems first)."""
    import sdlora
    from sdlora.arch import table_for_model
    from sdlora.report import check_lora

    entry = find_entry(app, name)
    lora = sdlora.load_lora(entry.path)
    with app.generate_lock:
        pipe, _ = app.pipeline_and_stack()
        report = check_lora(lora, table_for_model(pipe))
    return report_view(report)


def report_view(report, limit: int = 500) -> tuple[str, list[list]]:
    """(markdown summary, [[key, verdict, detail]]) with the keys that did not apply listed first."""
    summary = ("OK: " if report.ok else "NOT OK: ") + report.summary()
    if report.family_mismatch:
        summary += f" · {report.family_mismatch}"
    ordered = sorted(report.verdicts, key=lambda v: v.verdict == "applied")
    rows = [[v.key, v.verdict, v.detail or (f"nearest: {v.nearest}" if v.nearest else "")] for v in ordered]
    return summary, rows[:limit]


def save_notes(app, name: str, activation: str, weight: float, notes: str) -> str:
    from sdlora.library import write_notes

    entry = find_entry(app, name)
    write_notes(entry.path, {"activation text": activation or "", "preferred weight": weight,
                             "notes": notes or ""})
    return f"saved notes for {entry.name}"


def upload_lora(app, file) -> str:
    """Check an uploaded LoRA (type, size, header) and copy it into the library folder."""
    if file is None:
        raise SdloraError("choose a .safetensors file to upload")
    path, name = upload_name(file)
    check_lora_upload(path, app.config.limits)
    import sdlora

    sdlora.load_lora(path)  # refuse files that are safetensors but not a LoRA sdlora can read
    target = store_upload(path, Path(app.config.lora_dir), name)
    return f"added {target.name} to the library"


def _weight(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 1.0


def _short(text, limit: int = 60) -> str:
    text = str(text or "")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------- layout and wiring ----------

def create_ui(app) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row():
        c["refresh"] = gr.Button("Refresh", elem_id="lib-refresh", scale=1)
        c["upload"] = gr.File(label="Upload a LoRA (.safetensors)", file_types=[".safetensors"], scale=3,
                              elem_id="lib-upload")
    c["message"] = gr.Markdown(elem_id="lib-message")
    c["table"] = gr.Dataframe(headers=COLUMNS, interactive=False, label="LoRAs", elem_id="lib-table")
    c["previews"] = gr.Gallery(label="Previews", columns=6, height=180)
    with gr.Row():
        c["pick"] = gr.Dropdown([], label="Details for", elem_id="lib-pick", scale=3)
        c["report_button"] = gr.Button("Load report against the current base", scale=1)
    c["summary"] = gr.Markdown()
    with gr.Row():
        c["metadata"] = gr.JSON(label="Metadata")
        with gr.Column():
            c["report_summary"] = gr.Markdown(elem_id="lib-report-summary")
            c["report"] = gr.Dataframe(headers=["key", "verdict", "detail"], interactive=False,
                                       label="Load report")
    with gr.Group():
        c["activation"] = gr.Textbox(label="Activation text", info="words to add to the prompt with this LoRA")
        c["weight"] = gr.Number(1.0, label="Preferred weight")
        c["notes"] = gr.Textbox(label="Notes", lines=3)
        c["save_notes"] = gr.Button("Save notes")
    c["refresh_outputs"] = [c["table"], c["previews"], c["pick"], c["message"]]
    _wire(app, c)
    return c


def refresh_outputs(app):
    rows, previews, names, message = refresh(app)
    return rows, previews, gr.Dropdown(choices=names), message


def pick_from_table(evt: gr.SelectData):
    """Clicking a row of the list shows that LoRA's details."""
    row = evt.row_value or []
    return gr.Dropdown(value=row[0]) if row else gr.Dropdown()


def _wire(app, c: dict[str, Any]) -> None:
    c["table"].select(guarded(pick_from_table), None, c["pick"], api_name="library_pick_row")
    c["refresh"].click(bound(refresh_outputs, app), None, c["refresh_outputs"], api_name="library_refresh")
    c["upload"].upload(bound(upload_lora, app), c["upload"], c["message"], api_name="library_upload").then(
        bound(refresh_outputs, app), None, c["refresh_outputs"])
    c["pick"].change(bound(details, app), c["pick"],
                     [c["metadata"], c["summary"], c["activation"], c["weight"], c["notes"]],
                     api_name="library_details")
    c["report_button"].click(bound(load_report, app), c["pick"], [c["report_summary"], c["report"]],
                             api_name="library_report")
    c["save_notes"].click(bound(save_notes, app), [c["pick"], c["activation"], c["weight"], c["notes"]],
                          c["message"], api_name="library_save_notes")
