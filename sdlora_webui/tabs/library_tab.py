"""Library tab: the LoRAs in the library folders as cards (thumbnails) and a table, search and sort, filters
(folder, tag, base model, favourites), their details, previews, load report, uploads, user notes; bulk
actions on the LoRAs picked in "Selected" (move with side files, add/remove tags, favourite); duplicates
(files with equal tensor hashes: keep one, the others go to `.trash/` in their library folder).

Listing, search, sort, previews and notes come from `sdlora.library` (header-only scan, cached, so a
refresh of hundreds of files is fast); the load report comes from `sdlora.report.check_lora` against the
generation pipeline's base model, loaded only when the user asks for a report.

The details panel belongs to one LoRA: every output it shows (metadata, summary, preview, notes, load
report) is replaced together when the pick changes, and a load report still running for the previous
pick is cancelled, so nothing of the previous LoRA can be left on screen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

import sdlora
from sdlora.arch.tables import table_for_model
from sdlora.atomic import atomic_path
from sdlora.errors import SdloraError
from sdlora.header import read_header
from sdlora.library import file_hash, preview_path, search, set_preview, write_notes
from sdlora.library.dupes import find_duplicates, keep_one
from sdlora.library.organise import facets, filter_entries, move_loras, parse_tags, set_favourite, tag_files
from sdlora.report import check_lora
from sdlora.suffixes import IMAGE_SUFFIXES
from sdlora_webui.paths import display_path
from sdlora_webui.tabs import civitai_panel
from sdlora_webui.tabs.common import bound, guarded
from sdlora_webui.uploads import check_lora_upload, store_upload, upload_name

COLUMNS = ["name", "fits base", "family", "rank", "size", "date", "hash", "trigger words", "top tags", "notes",
           "folder", "base model", "tags", "favourite"]
ALL = "(all)"  # the filter menus' "no filter" choice
MESSAGE_AT = 3  # the message's place in refresh_outputs
SAMPLE_LIMIT = 24  # training samples offered as previews
SORTS = {"name": "name (A-Z)", "date": "date (newest first)", "size": "size (largest first)"}


def cache_path(app) -> Path:
    """The library's header cache (`AppState.library_cache`)."""
    return app.library_cache


def scan(app):
    """The library scan (`AppState.library_scan`)."""
    return app.library_scan()


def list_entries(app) -> list:
    """Readable library entries, sorted by name."""
    return list(scan(app).entries)


@dataclass(frozen=True)
class Filters:
    """The list's filters, as the filter widgets give them (folder with its subfolders, tag, base model,
    favourites only; "" or ALL: any)."""

    folder: str = ""
    tag: str = ""
    base_model: str = ""
    favourites: bool = False

    @property
    def active(self) -> bool:
        return any(_any(v) for v in (self.folder, self.tag, self.base_model)) or bool(self.favourites)

    def apply(self, entries) -> list:
        return filter_entries(entries, _any(self.folder), _any(self.tag), _any(self.base_model), bool(self.favourites))


def refresh(app, query: str = "", sort: str = "name",
            filters: Filters = Filters()) -> tuple[list[list], list, list[str], str]:
    """(table rows, card gallery items, names, message) of the library entries matching `query` and `filters`,
    sorted by `sort` (name, date, size); the message counts them and names damaged files."""
    result = scan(app)
    entries = filters.apply(search(result.entries, query, sort))
    fits = {name: fit.short for name, fit in app.library_fits().items()}  # headers only, against the current base
    rows = [_row(e, fits.get(e.name, "?")) for e in entries]
    placeholder = no_preview_image(app)
    cards = [(str(e.preview or placeholder), _caption(e, fits.get(e.name, "?"))) for e in entries]
    shown = len(entries)
    filtered = query.strip() or filters.active
    message = f"{len(result.entries)} LoRA(s) in the library" + (f", {shown} match" if filtered else "")
    if result.errors:
        message += "; not readable: " + "; ".join(f"{Path(e.path).name} ({e.error})" for e in result.errors[:5])
    return rows, cards, [e.name for e in entries], message


def _any(value) -> str:
    return "" if value in (None, ALL) else str(value)


def filter_choices(app) -> tuple[list[str], list[str], list[str]]:
    """The folder, tag and base-model menus' choices (ALL first)."""
    found = facets(scan(app).entries)
    return ([ALL, *[f for f in found["folders"] if f]], [ALL, *found["tags"]], [ALL, *found["base_models"]])


def _row(entry, fits: str) -> list:
    return [entry.name, fits, entry.family or "?", entry.rank if entry.rank is not None else "?", human_size(entry.size),
            _date(entry.mtime), entry.short_hash or "-", ", ".join(entry.trigger_words[:8]), ", ".join(entry.top_tags[:5]),
            _short(entry.notes.get("notes") or entry.notes.get("activation text")), entry.folder or "/",
            entry.base_model or "?", ", ".join(entry.tags[:8]), "★" if entry.favourite else ""]


def _caption(entry, fits: str) -> str:
    family = (entry.family or "?").split(":")[0]
    star = "★ " if entry.favourite else ""
    caption = f"{star}{entry.name} · {entry.base_model or family} · r{entry.rank if entry.rank is not None else '?'}"
    return caption if fits == "fits" else f"{caption} · {fits}"


def human_size(size: int) -> str:
    for unit in ("B", "KB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.2f} GB"


def _date(mtime: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(mtime).strftime("%Y-%m-%d %H:%M") if mtime else "?"


def no_preview_image(app) -> Path:
    """A plain grey card for LoRAs without a preview (made once in the output folder's cache, which the
    app may serve), as A1111 shows a card without a thumbnail."""
    target = app.write_path(".cache/no-preview.png")
    if not target.is_file():
        from PIL import Image

        target.parent.mkdir(parents=True, exist_ok=True)

        with atomic_path(target, fsync=False) as tmp:
            Image.new("RGB", (64, 64), (72, 72, 80)).save(tmp, format="PNG")
    return target


def find_entry(app, name: str):
    if not (name or "").strip():
        raise SdloraError("pick a LoRA in the list first")
    for entry in list_entries(app):
        if entry.name == name:
            return entry
    raise SdloraError(f"no LoRA named {name!r} in the library; press Refresh")


def details(app, name: str) -> tuple[str, dict, str, str, float, str, str | None, str, list, list, list]:
    """Everything the details panel shows, for LoRA `name` only: (name, metadata, summary markdown,
    activation text, preferred weight, notes, preview path, load report summary, load report rows,
    training-sample gallery items, their paths).

    The load report is cleared (it belongs to the LoRA it was asked for); the short hash is computed here
    when the header did not hold it (one file, cached), never during the list's refresh.
    """
    if not name:
        raise SdloraError("pick a LoRA in the list first")
    entry = find_entry(app, name)

    app.library_path(entry.name)  # confined like any path: a link leading outside the folders is refused
    header = read_header(entry.path)
    file_hash(entry, cache_path=cache_path(app))
    notes = entry.notes
    summary = (f"**{entry.name}** · family {entry.family or 'unknown'} · rank {entry.rank or '?'} · "
               f"{len(header.tensors)} tensors · {human_size(entry.size)} · {_date(entry.mtime)} · "
               f"hash `{entry.short_hash}`")
    samples = training_samples(app, entry.name)
    return (entry.name, dict(header.metadata), summary, notes.get("activation text", ""),
            _weight(notes.get("preferred weight")), notes.get("notes", ""), entry.preview, "", [],
            [(path, Path(path).parent.parent.name) for path in samples], samples)


def training_samples(app, name: str, limit: int = SAMPLE_LIMIT) -> list[str]:
    """Sample images of the training runs in the output folder (`runs/*/samples/`), those of runs named
    after LoRA `name` first (a run folder is `<output name>-<date>`), then the newest."""
    runs = app.write_path("runs")
    if not runs.is_dir():
        return []
    found = [p for p in runs.glob("*/samples/*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    found.sort(key=lambda p: (not p.parent.parent.name.startswith(f"{name}-"), -p.stat().st_mtime, p.name))
    return [str(p) for p in found[:limit]]


def preview_from_sample(app, name: str, paths: list[str], evt: gr.SelectData) -> tuple[str, str]:
    """Clicking a training sample makes it the shown LoRA's preview (one click, as A1111's "replace
    preview"); the path goes through the app's confinement again."""
    index = evt.index if isinstance(evt.index, int) else -1
    if not 0 <= index < len(paths or []):
        raise SdloraError("pick a sample image first")
    return set_preview_from_path(app, name, paths[index])


def set_preview_from_image(app, name: str, image) -> tuple[str, str]:
    """Make `image` (a PIL image, e.g. the Generate tab's result) the preview of library LoRA `name`.

    Written as `<stem>.preview.png` beside the LoRA's file (A1111 naming), downscaled. Returns
    (preview path, message). The Generate tab may call this too.
    """
    if not name:
        raise SdloraError("pick a LoRA in the list first")
    if image is None:
        raise SdloraError("no image: generate one, upload one, or give an image path")
    entry = find_entry(app, name)
    app.library_path(entry.name)  # the LoRA itself must be inside the folders
    target = app.write_path(str(preview_path(entry.path)))  # and so must the preview written beside it
    set_preview(entry.path, image)
    return str(target), f"set the preview of {entry.name} ({target.name})"


def set_preview_from_path(app, name: str, text: str) -> tuple[str, str]:
    """The preview of `name` from an image file inside the configured folders (e.g. a training sample)."""
    if not (text or "").strip():
        raise SdloraError("type the path of an image inside the configured folders (e.g. a training sample)")
    return set_preview_from_image(app, name, app.read_path(text, default_root=Path(app.config.output_dir)))


def load_report(app, name: str) -> tuple[str, list[list]]:
    """The load report of LoRA `name` against the current base: (summary line naming the LoRA, rows
    problems first)."""
    entry = find_entry(app, name)
    lora = sdlora.load_lora(entry.path)
    with app.generate_lock:
        pipe, _ = app.pipeline_and_stack()
        report = check_lora(lora, table_for_model(pipe))
    summary, rows = report_view(report)
    return f"**{entry.name}**: {summary}", rows


def report_view(report, limit: int = 500) -> tuple[str, list[list]]:
    """(markdown summary, [[key, verdict, detail]]) with the keys that did not apply listed first."""
    summary = ("OK: " if report.ok else "NOT OK: ") + report.summary()
    if report.family_mismatch:
        summary += f" · {report.family_mismatch}"
    ordered = sorted(report.verdicts, key=lambda v: v.verdict == "applied")
    rows = [[v.key, v.verdict, v.detail or (f"nearest: {v.nearest}" if v.nearest else "")] for v in ordered]
    return summary, rows[:limit]


def save_notes(app, name: str, activation: str, weight: float, notes: str) -> str:
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


# ---------------------------------------------------------------- organising ----------------

def selected_paths(app, names: list[str]) -> list[Path]:
    """The confined files of the LoRAs picked in "Selected"."""
    if not names:
        raise SdloraError("pick one or more LoRAs in \"Selected\" first")
    return [app.library_path(name) for name in names]


def move_selected(app, names: list[str], folder: str) -> str:
    """Move the selected LoRAs, with their side files, into `folder` (relative to the first library folder, or
    a path inside any library folder)."""
    if not (folder or "").strip():
        raise SdloraError("type the folder to move them to (inside a library folder, e.g. styles/ink)")
    target = app.write_path(folder, default_root=Path(app.config.lora_dir))
    return move_loras(selected_paths(app, names), target, app.config.lora_dirs).message()


def tag_selected(app, names: list[str], add: str, remove: str) -> str:
    changed = tag_files(selected_paths(app, names), parse_tags(add), parse_tags(remove))
    return f"tags changed on {changed} of {len(names)} LoRA(s)"


def favourite_selected(app, names: list[str], favourite: bool) -> str:
    for path in selected_paths(app, names):
        set_favourite(path, favourite)
    return f"{'marked' if favourite else 'unmarked'} {len(names)} LoRA(s) as favourite"


def find_dupes(app) -> tuple[list[list], list, str]:
    """(rows [group, hash, file], the group menu's choices, message) of the library's duplicates."""
    groups = find_duplicates(scan(app).entries, cache_path=cache_path(app))
    rows = [[n, g.short_hash, _shown_path(app, e.path)] for n, g in enumerate(groups, 1) for e in g.entries]
    choices = [(_shown_path(app, e.path), e.path) for g in groups for e in g.entries]
    message = (f"{len(groups)} group(s) of duplicates ({sum(len(g.entries) for g in groups)} files)" if groups
               else "no duplicates: no two files hold the same tensors")
    return rows, choices, message


def keep_duplicate(app, keep: str) -> str:
    """Keep the file `keep`; the others of its group go, with their side files, to `.trash/` in their library
    folder (nothing is deleted)."""
    if not keep:
        raise SdloraError("pick the file to keep first (Find duplicates, then a file of a group)")
    app.read_path(keep)  # confined like any path
    for group in find_duplicates(scan(app).entries, cache_path=cache_path(app)):
        if keep in [e.path for e in group.entries]:
            return keep_one(group, keep, app.config.lora_dirs).message() + f"; kept {_shown_path(app, keep)}"
    raise SdloraError(f"{keep} has no duplicate now; press Find duplicates again")


def _shown_path(app, path: str) -> str:
    return display_path(Path(path), app.config.lora_dirs)


# ---------------------------------------------------------------- layout and wiring ----------

def create_ui(app) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row():
        c["refresh"] = gr.Button("Refresh", elem_id="lib-refresh", scale=1)
        c["search"] = gr.Textbox(label="Search", placeholder="name, trigger words, notes", scale=3,
                                 elem_id="lib-search")
        c["sort"] = gr.Dropdown([(label, key) for key, label in SORTS.items()], value="name", label="Sort by",
                                scale=1, elem_id="lib-sort")
        c["upload"] = gr.File(label="Upload a LoRA (.safetensors)", file_types=[".safetensors"], scale=2,
                              elem_id="lib-upload")
    with gr.Row():
        c["folder"] = gr.Dropdown([ALL], value=ALL, label="Folder", elem_id="lib-folder", scale=2,
                                  info="with its subfolders")
        c["tag"] = gr.Dropdown([ALL], value=ALL, label="Tag", elem_id="lib-tag", scale=2)
        c["base_model"] = gr.Dropdown([ALL], value=ALL, label="Base model", elem_id="lib-base-model", scale=2,
                                      info="Civitai's, else the file's family")
        c["favourites"] = gr.Checkbox(False, label="Favourites only", elem_id="lib-favourites", scale=1)
    c["message"] = gr.Markdown(elem_id="lib-message")
    c["names"] = gr.State([])  # the names in the order the cards and rows show them
    with gr.Tab("Cards"):
        c["cards"] = gr.Gallery(label="LoRAs (click a card for its details)", columns=6, height=420,
                                object_fit="cover", allow_preview=False, fit_columns=False,
                                elem_id="lib-cards")
    with gr.Tab("Table"):
        c["table"] = gr.Dataframe(headers=COLUMNS, interactive=False, label="LoRAs", elem_id="lib-table")
    with gr.Tab("Duplicates", elem_id="lib-dupes-tab"):
        _create_dupes_ui(c)
    _create_bulk_ui(c)
    _create_details_ui(c)
    c["refresh_outputs"] = [c["table"], c["cards"], c["pick"], c["message"], c["names"], c["selected"],
                            c["folder"], c["tag"], c["base_model"]]
    c["listing"] = listing(c)  # the inputs of a list refresh (search, sort, filters), for the Civitai panel too
    c["relist"], c["show_details"] = refresh_outputs, details  # for the Civitai panel, which updates both
    _wire(app, c)
    _wire_organising(app, c)
    c["civitai"] = civitai_panel.create_ui(app, c)
    return c


def _create_dupes_ui(c: dict[str, Any]) -> None:
    c["dupes_find"] = gr.Button("Find duplicates (same tensors, any name)", elem_id="lib-dupes-find")
    c["dupes"] = gr.Dataframe(headers=["group", "hash", "file"], interactive=False, elem_id="lib-dupes")
    with gr.Row():
        c["dupes_keep"] = gr.Dropdown([], label="File to keep", elem_id="lib-dupes-keep", scale=3)
        c["dupes_keep_button"] = gr.Button("Keep it, move the others to .trash/", elem_id="lib-dupes-keep-button",
                                           scale=1)


def _create_bulk_ui(c: dict[str, Any]) -> None:
    with gr.Accordion("Organise: move, tag, favourite several LoRAs", open=False, elem_id="lib-bulk"):
        c["selected"] = gr.Dropdown([], multiselect=True, label="Selected", elem_id="lib-selected",
                                    info="the LoRAs the buttons below act on")
        with gr.Row():
            c["move_to"] = gr.Textbox(label="Move to folder", placeholder="styles/ink", elem_id="lib-move-to",
                                      info="inside a library folder; side files (.json, .civitai.info, previews) "
                                           "move too; a name taken there is never overwritten")
            c["move"] = gr.Button("Move", elem_id="lib-move")
        with gr.Row():
            c["tags_add"] = gr.Textbox(label="Add tags", placeholder="style, ink", elem_id="lib-tags-add")
            c["tags_remove"] = gr.Textbox(label="Remove tags", elem_id="lib-tags-remove")
            c["tag_button"] = gr.Button("Apply tags", elem_id="lib-tag-button")
        with gr.Row():
            c["favourite"] = gr.Button("★ Favourite", elem_id="lib-favourite")
            c["unfavourite"] = gr.Button("Not favourite", elem_id="lib-unfavourite")


def _create_details_ui(c: dict[str, Any]) -> None:
    c["shown"] = gr.State("")  # the LoRA the details panel shows; notes and previews are saved to it
    with gr.Row():
        c["pick"] = gr.Dropdown([], label="Details for", elem_id="lib-pick", scale=3)
        c["report_button"] = gr.Button("Load report against the current base", scale=1)
    c["summary"] = gr.Markdown(elem_id="lib-summary")
    with gr.Row():
        c["preview"] = gr.Image(label="Preview", type="filepath", interactive=False, height=220,
                                elem_id="lib-preview")
        with gr.Column():
            c["new_preview"] = gr.Image(label="New preview (upload or paste an image)", type="pil",
                                        sources=["upload", "clipboard"], height=160, elem_id="lib-new-preview")
            c["preview_path"] = gr.Textbox(label="...or an image path (e.g. a training sample)",
                                           elem_id="lib-preview-path",
                                           info="inside the configured folders; relative to the output folder")
            with gr.Row():
                c["set_preview"] = gr.Button("Set as preview", elem_id="lib-set-preview")
                c["use_generated"] = gr.Button("Use the Generate tab's image", elem_id="lib-use-generated")
    c["samples"] = gr.Gallery(label="Training samples (click one to make it the preview)", columns=8, height=150,
                              allow_preview=False, fit_columns=False, elem_id="lib-samples")
    c["sample_paths"] = gr.State([])
    with gr.Row():
        c["metadata"] = gr.JSON(label="Metadata")
        with gr.Column():
            c["report_summary"] = gr.Markdown(elem_id="lib-report-summary")
            c["report"] = gr.Dataframe(headers=["key", "verdict", "detail"], interactive=False,
                                       label="Load report")
    with gr.Group():
        c["activation"] = gr.Textbox(label="Activation text", info="words to add to the prompt with this LoRA",
                                     elem_id="lib-activation")
        c["weight"] = gr.Number(1.0, label="Preferred weight")
        c["notes"] = gr.Textbox(label="Notes", lines=3)
        c["save_notes"] = gr.Button("Save notes")
    c["details_outputs"] = [c["shown"], c["metadata"], c["summary"], c["activation"], c["weight"], c["notes"],
                            c["preview"], c["report_summary"], c["report"], c["samples"], c["sample_paths"]]


def refresh_outputs(app, query: str = "", sort: str = "name", *filters):
    """Every output of a list refresh; `filters` are the filter widgets' values (see `listing`)."""
    rows, cards, names, message = refresh(app, query or "", sort or "name", Filters(*filters))
    folders, tags, bases = filter_choices(app)
    return (rows, cards, gr.Dropdown(choices=names), message, names, gr.Dropdown(choices=names),
            gr.Dropdown(choices=folders), gr.Dropdown(choices=tags), gr.Dropdown(choices=bases))


def pick_from_table(evt: gr.SelectData):
    """Clicking a row of the list shows that LoRA's details."""
    row = evt.row_value or []
    return gr.Dropdown(value=row[0]) if row else gr.Dropdown()


def pick_from_cards(names: list[str], evt: gr.SelectData):
    """Clicking a card shows that LoRA's details (the cards are in the order of `names`)."""
    index = evt.index if isinstance(evt.index, int) else None
    return gr.Dropdown(value=names[index]) if index is not None and 0 <= index < len(names or []) else gr.Dropdown()


def listing(c: dict[str, Any]) -> list[Any]:
    """The inputs of a list refresh: search, sort and the filters."""
    return [c["search"], c["sort"], c["folder"], c["tag"], c["base_model"], c["favourites"]]


def _wire_organising(app, c: dict[str, Any]) -> None:
    """Filters, bulk actions and duplicates; after an action the list is refreshed and its message kept."""
    relist = bound(refresh_outputs, app)
    quiet = bound(lambda *values: [v for n, v in enumerate(refresh_outputs(app, *values)) if n != MESSAGE_AT])
    c["quiet_outputs"] = [o for n, o in enumerate(c["refresh_outputs"]) if n != MESSAGE_AT]
    for widget in (c["folder"], c["tag"], c["base_model"], c["favourites"]):
        widget.input(relist, listing(c), c["refresh_outputs"])
    actions = [(c["move"], move_selected, [c["selected"], c["move_to"]], "library_move"),
               (c["tag_button"], tag_selected, [c["selected"], c["tags_add"], c["tags_remove"]], "library_tag"),
               (c["favourite"], lambda app, names: favourite_selected(app, names, True), [c["selected"]],
                "library_favourite"),
               (c["unfavourite"], lambda app, names: favourite_selected(app, names, False), [c["selected"]],
                "library_unfavourite")]
    for button, fn, inputs, name in actions:
        button.click(bound(fn, app), inputs, c["message"], api_name=name).then(quiet, listing(c), c["quiet_outputs"])

    def found() -> tuple[list[list], Any, str]:
        rows, choices, message = find_dupes(app)
        return rows, gr.Dropdown(choices=choices, value=None), message

    c["dupes_find"].click(bound(found), None, [c["dupes"], c["dupes_keep"], c["message"]], api_name="library_dupes")
    c["dupes_keep_button"].click(bound(keep_duplicate, app), c["dupes_keep"], c["message"],
                                 api_name="library_keep_duplicate").then(
        bound(lambda: found()[:2]), None, [c["dupes"], c["dupes_keep"]]).then(
        quiet, listing(c), c["quiet_outputs"])


def _wire(app, c: dict[str, Any]) -> None:
    listed = listing(c)
    relist = bound(refresh_outputs, app)
    c["table"].select(guarded(pick_from_table), None, c["pick"], api_name="library_pick_row")
    c["cards"].select(guarded(pick_from_cards), c["names"], c["pick"], api_name="library_pick_card")
    c["refresh"].click(relist, listed, c["refresh_outputs"], api_name="library_refresh")
    c["search"].change(relist, listed, c["refresh_outputs"], trigger_mode="always_last",
                       api_name="library_search")
    c["sort"].change(relist, listed, c["refresh_outputs"], api_name="library_sort")
    c["upload"].upload(bound(upload_lora, app), c["upload"], c["message"], api_name="library_upload").then(
        relist, listed, c["refresh_outputs"])
    report = c["report_button"].click(bound(load_report, app), c["shown"], [c["report_summary"], c["report"]],
                                      api_name="library_report")
    # a report still running for the previous pick is cancelled: it must not land under the new LoRA
    c["pick"].change(bound(details, app), c["pick"], c["details_outputs"], cancels=[report],
                     api_name="library_details")
    c["save_notes"].click(bound(save_notes, app), [c["shown"], c["activation"], c["weight"], c["notes"]],
                          c["message"], api_name="library_save_notes")
    preview_outputs = [c["preview"], c["message"]]
    c["set_preview"].click(bound(set_preview_from_upload_or_path, app),
                           [c["shown"], c["new_preview"], c["preview_path"]], preview_outputs,
                           api_name="library_set_preview").then(relist, listed, c["refresh_outputs"])
    c["samples"].select(bound(preview_from_sample, app), [c["shown"], c["sample_paths"]], preview_outputs,
                        api_name="library_preview_from_sample").then(relist, listed, c["refresh_outputs"])


def wire_generated_preview(app, c: dict[str, Any], generated_image) -> None:
    """"Use the Generate tab's image": the Generate tab's current image becomes the shown LoRA's preview
    (wired by the app, which holds both tabs)."""
    c["use_generated"].click(bound(set_preview_from_image, app), [c["shown"], generated_image],
                             [c["preview"], c["message"]], api_name="library_use_generated").then(
        bound(refresh_outputs, app), listing(c), c["refresh_outputs"])


def set_preview_from_upload_or_path(app, name: str, image, text: str) -> tuple[str, str]:
    """The "Set as preview" button: the uploaded/pasted image when there is one, else the typed path."""
    if image is not None:
        return set_preview_from_image(app, name, image)
    return set_preview_from_path(app, name, text)
