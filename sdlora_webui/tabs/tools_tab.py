"""Tools tab: inspect, convert, resize, merge, extract, bake, and a metadata editor that keeps the tensor hash.

Inputs are library names (file stems in the LoRA folder; every LoRA field is a menu of them that also takes
a typed name or path) or paths inside the configured folders (confined by `AppState.read_path`). LoRA
results are written into the library folder under a safe name no library LoRA has yet, so they appear in
the Library (refreshed after each tool); Bake writes a model into `AppConfig.bake_dir` (`<output>/models`),
where the base-model lists look. Each handler is one library call between UI values.

Resize, Merge and Extract run in a worker thread (`ToolRuns`): the page shows "module i/N" with the
elapsed time and an ETA while they run, and Cancel stops the run before the next module (the library's
`should_stop`); a cancelled run writes nothing, since the file is written only after the last module.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr

import sdlora
from sdlora.arch.blocks import check_strength
from sdlora.errors import ConfigError, Interrupted
from sdlora.formats.metaedit import DESCRIPTION, TITLE, TRIGGER, Edits, read_metadata
from sdlora.formats.metaedit import edit_metadata as write_edited
from sdlora.formats.summary import summarise
from sdlora_webui.paths import display_path, safe_filename
from sdlora_webui.state import NotInLibrary
from sdlora_webui.tabs.common import bound, guarded


def resolve_lora(app, text: str) -> Path:
    """A library name ("style") or a path inside the configured folders ("outputs/x.safetensors"), both
    resolved and confined by the app (a library file that links outside the folders is refused)."""
    text = (text or "").strip()
    if not text:
        raise ConfigError("type a LoRA name from the library or a path to a .safetensors file")
    try:
        return app.library_path(text)
    except NotInLibrary:
        return app.read_path(text, default_root=Path(app.config.lora_dir))


DTYPES = ["keep", "fp16", "bf16", "fp32"]
MERGE_SLOTS = 4
BAKE_SLOTS = 4
BAKE_KINDS = {"single": "one .safetensors file (A1111, ComfyUI)", "diffusers": "a diffusers folder"}


def output_path(app, name: str, default: str) -> Path:
    """A new `.safetensors` path in the library folder whose stem no library LoRA has (library names are
    file stems, also in subfolders, so "style" beside "sub/style" would make the name ambiguous)."""
    folder = app.write_path(str(app.config.lora_dir))  # confined like any path
    folder.mkdir(parents=True, exist_ok=True)
    stem = safe_filename(Path(name or default).stem or default, default=default)
    taken = {p.stem for p in folder.rglob("*.safetensors")}
    candidate, n = stem, 2
    while candidate in taken or (folder / f"{candidate}.safetensors").exists():
        candidate, n = f"{stem}-{n}", n + 1
    return folder / f"{candidate}.safetensors"


def bake_path(app, name: str, kind: str) -> Path:
    """A new model path in the bake folder: `<name>.safetensors` (single file) or a `<name>/` folder, with
    `-2`, `-3`, ... when taken (a single file's `<name>.config/` counts: bake may write one beside it)."""
    folder = app.write_path(str(app.config.bake_dir))
    folder.mkdir(parents=True, exist_ok=True)
    stem = safe_filename(Path(name or "baked").stem or "baked", default="baked")
    candidate, n = stem, 2
    while any((folder / f"{candidate}{suffix}").exists() for suffix in ("", ".safetensors", ".config")):
        candidate, n = f"{stem}-{n}", n + 1
    return folder / (f"{candidate}.safetensors" if kind == "single" else candidate)


def _dtype(value: str | None) -> str | None:
    if value in (None, "", "keep"):
        return None
    if value not in DTYPES:
        raise ConfigError(f"dtype {value!r}: choose one of {', '.join(DTYPES)}")
    return value


def library_names(app) -> list[str]:
    return list(app.library())


# ---------------------------------------------------------------- handlers ------------------

def inspect_lora(app, text: str) -> tuple[str, dict]:
    """(summary markdown, metadata) of one LoRA file: `sdlora inspect`'s summary (sdlora.formats.summary,
    from the header alone)."""
    info = summarise(resolve_lora(app, text))
    lines = [
        f"**{Path(info['file']).name}** · format `{info['format']}` · family `{info['family'] or 'unknown'}`",
        f"- modules: {info['modules']} ({', '.join(info['components']) or '-'}); kinds: {_join(info['kinds'])}",
        f"- ranks: {_join(info['ranks'])} · alphas: {_join(info['alphas'])} · dtypes: {_join(info['dtypes'])}",
        f"- trigger words: {', '.join(info['trigger_words']) or '-'}",
        f"- tensor hash (sshs_model_hash): `{info['hashes']['tensor_sha256']}`",
        f"- keys not recognised: {len(info['unrecognised_keys'])}",
    ]
    lines += [f"- warning: {text}" for text in info["warnings"]]
    return "\n".join(lines), dict(info["metadata"])


def convert_lora(app, text: str, to_format: str, dtype: str, out_name: str) -> tuple[str, str]:
    """Write the LoRA in another dialect; returns (output path, message)."""
    if to_format not in ("kohya", "diffusers"):
        raise ConfigError(f"format {to_format!r}: choose kohya or diffusers")
    source = resolve_lora(app, text)
    target = output_path(app, out_name, f"{source.stem}-{to_format}")
    sdlora.save_lora(sdlora.load_lora(source), target, format=to_format, dtype=_dtype(dtype))
    return str(target), f"added {target.stem} ({to_format}) to the library"


def resize_lora(app, text: str, rank: float, energy: float, out_name: str,  # noqa: PLR0913
                dtype: str = "keep", *, on_progress=None, should_stop=None) -> tuple[str, str]:
    """SVD to a fixed rank (rank > 0) or to a retained-energy threshold (0 < energy < 1), written in the
    input's dtype unless `dtype` says otherwise. `on_progress` / `should_stop` go to the library call."""
    from sdlora import tools

    source = resolve_lora(app, text)
    kwargs = {"rank": int(rank)} if rank and rank > 0 else {"energy": float(energy)}
    if "energy" in kwargs and not 0 < kwargs["energy"] <= 1:
        raise ConfigError("give a rank > 0, or an energy between 0 and 1")
    result = tools.resize(sdlora.load_lora(source), dtype=_dtype(dtype), on_progress=on_progress,
                          should_stop=should_stop, **kwargs)
    target = output_path(app, out_name, f"{source.stem}-resized")
    sdlora.save_lora(result.lora, target)
    return str(target), (f"added {target.stem} to the library; least energy kept in a module: "
                         f"{result.min_energy():.1%}")


def merge_loras(app, rows: list[list], rank: float, out_name: str, dtype: str = "keep", *,  # noqa: PLR0913
                on_progress=None, should_stop=None) -> tuple[str, str]:
    """Merge [[name, weight], ...] into one LoRA: exact concatenation (rank 0) or SVD to `rank`; in the
    inputs' dtype unless `dtype` says otherwise. Rows with an empty name (an unused slot) are skipped."""
    from sdlora import tools

    pairs = [(resolve_lora(app, str(r[0])), _weight(r[1])) for r in _table(rows) if _filled(r[0])]
    if len(pairs) < 2:
        raise ConfigError("list at least two LoRAs (name, weight) to merge")
    loras = [(sdlora.load_lora(p), w) for p, w in pairs]
    if rank and rank > 0:
        merged = tools.merge(loras, mode="svd", rank=int(rank), dtype=_dtype(dtype), on_progress=on_progress,
                             should_stop=should_stop)
    else:
        merged = tools.merge(loras, mode="concat", dtype=_dtype(dtype), on_progress=on_progress,
                             should_stop=should_stop)
    target = output_path(app, out_name, "merged")
    sdlora.save_lora(merged.lora, target)
    return str(target), f"merged {len(pairs)} LoRAs into {target.stem}, added to the library"


def extract_lora(app, base: str, tuned: str, rank: float, out_name: str, *,  # noqa: PLR0913
                 on_progress=None, should_stop=None) -> tuple[str, str]:
    """A LoRA from the difference between a fine-tuned model and its base (SVD to `rank`)."""
    from sdlora.extract import extract

    base_path = app.base_model(base)  # 'embedded' by name, any other base inside the configured folders
    tuned_path = app.read_path(tuned)
    result = extract(base_path, str(tuned_path), rank=int(rank), allow_pickle=app.config.allow_pickle,
                     on_progress=on_progress, should_stop=should_stop)
    target = output_path(app, out_name, f"{tuned_path.stem}-extracted")
    sdlora.save_lora(result.lora, target)
    return str(target), f"added {target.stem} to the library"


def bake_model(app, base: str, rows: list[list], kind: str, dtype: str,
               out_name: str) -> tuple[str | None, str]:
    """Merge [[LoRA, strength], ...] into `base` and write a new model into the bake folder (a single
    .safetensors checkpoint or a diffusers folder). Returns (file for download or None, message)."""
    from sdlora.extract import bake

    if kind not in BAKE_KINDS:
        raise ConfigError(f"output {kind!r}: choose one of {', '.join(BAKE_KINDS)}")
    loras = [(str(resolve_lora(app, str(r[0]))), _strength(r[1])) for r in _table(rows) if str(r[0] or "").strip()]
    if not loras:
        raise ConfigError("pick at least one LoRA to bake into the base model")
    target = bake_path(app, out_name, kind)
    out = bake(app.base_model(base), loras, target, dtype=_dtype(dtype) if kind == "single" else None,
               allow_pickle=app.config.allow_pickle)
    shown = display_path(out, app.config.write_roots)
    return (str(out) if kind == "single" else None), f"baked {len(loras)} LoRA(s) into {shown} (a base model now)"


def _strength(value) -> float:
    return check_strength(1.0 if value is None or value == "" else value, "strength")


def edit_metadata(app, text: str, form: dict[str, Any]) -> tuple[str, str, dict]:
    """Write a copy with edited metadata; the tensor hash stays the same. Returns (path, message, metadata)."""
    source = resolve_lora(app, text)
    target = output_path(app, form.get("out_name") or "", f"{source.stem}-edited")  # a copy: into the library
    edits = Edits(strip=bool(form.get("strip")), title=form.get("title"), trigger_words=form.get("trigger"),
                  description=form.get("description"))
    edit = write_edited(source, edits, target)
    written = edit.after
    return str(target), (f"added {target.stem} to the library: {len(edit.before)} → {len(written)} metadata keys; tensor hash "
                         f"{'kept' if edit.hash_kept else 'set'} (`{written['sshs_model_hash'][:12]}`)"), written


def load_metadata_fields(app, text: str) -> tuple[str, str, str]:
    meta = read_metadata(resolve_lora(app, text))
    return meta.get(TITLE, ""), meta.get(TRIGGER, ""), meta.get(DESCRIPTION, "")


def _filled(name) -> bool:
    """Whether a slot names a LoRA: an empty menu gives None (which must not become the name "None")."""
    return name is not None and bool(str(name).strip())


def _weight(value) -> float:
    if value is None or value == "":
        return 1.0
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"weight {value!r}: give a number, e.g. 0.5") from None


# ---------------------------------------------------------------- runs: progress and cancel --

class ToolRuns:
    """The tool runs in progress, by key: a Cancel click sets the run's stop event."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self) -> tuple[str, threading.Event]:
        key, event = uuid.uuid4().hex, threading.Event()
        with self._lock:
            self._events[key] = event
        return key, event

    def cancel(self, key: str | None) -> bool:
        with self._lock:
            event = self._events.get(key or "")
        if event is not None:
            event.set()
        return event is not None

    def finish(self, key: str) -> None:
        with self._lock:
            self._events.pop(key, None)


def progress_line(label: str, progress, elapsed: float) -> str:
    """'resize: module 12/350 · 3 s · ETA 1 min 05 s' (the ETA from the pace so far)."""
    if progress is None:
        return f"{label}: reading the files · {elapsed:.0f} s"
    done, total = progress.done, progress.total
    if done >= total:
        return f"{label}: module {done}/{total} · done in {elapsed:.1f} s"
    eta = elapsed / done * (total - done) if done else None
    return (f"{label}: module {done}/{total} · {elapsed:.0f} s · ETA "
            + (_duration(eta) if eta is not None else "…"))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def stream_run(runs: ToolRuns, label: str, work: Callable, poll: float = 0.3) -> Iterator[tuple]:
    """Run `work(on_progress=..., should_stop=...)` -> (path, message) in a thread, yielding
    (file, message, progress line, run key) while it runs and once at the end. A cancel (Interrupted)
    ends with a message, not an error; other errors are raised as the guarded handlers raise them."""
    key, stop = runs.start()
    box: dict[str, Any] = {"progress": None}
    started = time.monotonic()

    def body() -> None:
        try:
            box["value"] = work(on_progress=lambda p: box.__setitem__("progress", p), should_stop=stop.is_set)
        except Interrupted as err:
            box["cancelled"] = str(err)
        except Exception as err:  # noqa: BLE001 - raised in the handler's thread below, through guarded
            box["error"] = err

    thread = threading.Thread(target=body, name=f"tools-{label}", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            yield gr.skip(), gr.skip(), progress_line(label, box["progress"], time.monotonic() - started), key
            thread.join(poll)
    finally:
        runs.finish(key)
    line = progress_line(label, box["progress"], time.monotonic() - started)
    if "cancelled" in box:
        yield None, f"{label} cancelled: {box['cancelled']}", f"{label}: cancelled", None
        return
    if "error" in box:
        guarded(_reraise)(box["error"])  # a user error becomes its one-line message, a bug a logged one
    path, message = box["value"]
    yield path, message, line, None


def _reraise(err: BaseException) -> None:
    raise err


def cancel_run(runs: ToolRuns, key: str | None) -> str:
    if not runs.cancel(key):
        return "no tool is running in this page"
    return "cancelling: the tool stops before its next module and writes nothing"


def _join(counts: dict) -> str:
    """A summary's {value: how many modules} as "4 (12), 8 (3)"."""
    return ", ".join(f"{value} ({n})" for value, n in counts.items()) or "-"


def _table(rows) -> list[list]:
    if rows is None:
        return []
    if hasattr(rows, "values") and hasattr(rows, "columns"):
        rows = rows.values.tolist()
    return [r for r in rows if r]


# ---------------------------------------------------------------- layout and wiring ----------

def lora_menu(app, label: str, elem_id: str | None = None, **kwargs) -> gr.Dropdown:
    """A library menu that still takes a typed name or a path inside the configured folders."""
    return gr.Dropdown(library_names(app), value=None, label=label, allow_custom_value=True, elem_id=elem_id,
                       info="a library LoRA, or type a name or a path inside the configured folders", **kwargs)


def create_ui(app) -> dict[str, Any]:
    c: dict[str, Any] = {"menus": []}
    gr.Markdown("LoRA results are **added to the library** (a new name when one is taken) and show in the "
                "Library tab; Bake writes a base model to the output folder's `models/`.")
    with gr.Row():
        c["refresh"] = gr.Button("Refresh LoRA menus", size="sm", elem_id="tools-refresh")
    with gr.Tab("Inspect"):
        c["inspect_src"] = _menu(app, c, "LoRA", "tools-inspect-src")
        c["inspect_go"] = gr.Button("Inspect", elem_id="tools-inspect")
        c["inspect_summary"] = gr.Markdown(elem_id="tools-inspect-summary")
        c["inspect_meta"] = gr.JSON(label="Metadata")
    with gr.Tab("Convert"):
        with gr.Row():
            c["conv_src"] = _menu(app, c, "LoRA", "tools-conv-src")
            c["conv_to"] = gr.Dropdown(["kohya", "diffusers"], value="kohya", label="Write as")
            c["conv_dtype"] = gr.Dropdown(DTYPES, value="keep", label="dtype")
            c["conv_out"] = gr.Textbox(label="New library name", elem_id="tools-conv-out")
        c["conv_go"] = gr.Button("Convert into the library", elem_id="tools-convert")
    with gr.Tab("Resize"):
        with gr.Row():
            c["resize_src"] = _menu(app, c, "LoRA", "tools-resize-src")
            c["resize_rank"] = gr.Number(8, label="Rank", precision=0, info="fixed rank; 0 = use energy",
                                         elem_id="tools-resize-rank")
            c["resize_energy"] = gr.Number(0.9, label="Energy", info="fraction of singular-value energy kept")
            c["resize_dtype"] = gr.Dropdown(DTYPES, value="keep", label="dtype", info="keep: the input's")
            c["resize_out"] = gr.Textbox(label="New library name", elem_id="tools-resize-out")
        c["resize_go"] = gr.Button("Resize into the library", elem_id="tools-resize")
    with gr.Tab("Merge"):
        c["merge_slots"] = []
        for i in range(MERGE_SLOTS):
            with gr.Row():
                c["merge_slots"] += [_menu(app, c, f"LoRA {i + 1}", f"tools-merge-{i}", scale=3),
                                     gr.Number(1.0, label="weight", scale=1, elem_id=f"tools-merge-{i}-weight")]
        with gr.Row():
            c["merge_rank"] = gr.Number(0, label="Rank", precision=0, elem_id="tools-merge-rank",
                                        info="0 = exact (ranks concatenated); > 0 = SVD of the exact sum to this rank")
            c["merge_dtype"] = gr.Dropdown(DTYPES, value="keep", label="dtype", info="keep: the inputs'")
            c["merge_out"] = gr.Textbox(label="New library name")
        c["merge_go"] = gr.Button("Merge into the library", elem_id="tools-merge")
    with gr.Tab("Extract"):
        with gr.Row():
            c["extract_base"] = gr.Textbox("embedded", label="Base model",
                                           info="'embedded' or a path inside the configured folders")
            c["extract_tuned"] = gr.Textbox(label="Fine-tuned model", info="path inside the configured folders")
            c["extract_rank"] = gr.Number(16, label="Rank", precision=0)
            c["extract_out"] = gr.Textbox(label="New library name")
        c["extract_go"] = gr.Button("Extract into the library")
    with gr.Tab("Bake"):
        _create_bake_ui(app, c)
    with gr.Tab("Metadata"):
        _create_metadata_ui(app, c)
    _create_run_ui(c)
    c["out_file"] = gr.File(label="Result", interactive=False)
    c["message"] = gr.Markdown(elem_id="tools-message")
    _wire(app, c)
    return c


def _create_run_ui(c: dict[str, Any]) -> None:
    with gr.Row():
        c["progress"] = gr.Markdown(elem_id="tools-progress")
        c["cancel"] = gr.Button("Cancel", variant="stop", size="sm", scale=0, elem_id="tools-cancel")
    c["run_key"] = gr.State(None)  # this page's running resize / merge / extract, for Cancel


def _menu(app, c: dict[str, Any], label: str, elem_id: str, **kwargs) -> gr.Dropdown:
    menu = lora_menu(app, label, elem_id, **kwargs)
    c["menus"].append(menu)
    return menu


def _create_bake_ui(app, c: dict[str, Any]) -> None:
    gr.Markdown("Merge LoRAs into a base model's weights and save it as a new base model in the output "
                "folder's `models/` (it is then offered as a base).")
    c["bake_base"] = gr.Textbox(app.config.base, label="Base model", elem_id="tools-bake-base",
                                info="'embedded' or a model path inside the configured folders")
    c["bake_slots"] = []
    for i in range(BAKE_SLOTS):
        with gr.Row():
            c["bake_slots"] += [_menu(app, c, f"LoRA {i + 1}", f"tools-bake-{i}", scale=3),
                                gr.Number(1.0, label="strength", scale=1, elem_id=f"tools-bake-{i}-strength")]
    with gr.Row():
        c["bake_kind"] = gr.Dropdown([(label, key) for key, label in BAKE_KINDS.items()], value="single",
                                     label="Write as")
        c["bake_dtype"] = gr.Dropdown(DTYPES, value="keep", label="dtype (single file)",
                                      info="keep: the model's own")
        c["bake_out"] = gr.Textbox(label="New model name", elem_id="tools-bake-out")
    c["bake_go"] = gr.Button("Bake into a new base model", elem_id="tools-bake")


def _create_metadata_ui(app, c: dict[str, Any]) -> None:
    with gr.Row():
        c["meta_src"] = _menu(app, c, "LoRA", "tools-meta-src")
        c["meta_load"] = gr.Button("Load fields")
    c["meta_strip"] = gr.Checkbox(label="Strip to the minimum (keep only what loaders need)")
    c["meta_title"] = gr.Textbox(label="Title")
    c["meta_trigger"] = gr.Textbox(label="Trigger words")
    c["meta_description"] = gr.Textbox(label="Description", lines=2)
    c["meta_out"] = gr.Textbox(label="New library name")
    c["meta_go"] = gr.Button("Write a copy with this metadata into the library")
    c["meta_written"] = gr.JSON(label="Metadata written")


def refresh_menus(app, c: dict[str, Any]) -> list[Any]:
    """New choices for every LoRA menu (the values typed or picked stay)."""
    names = library_names(app)
    return [gr.Dropdown(choices=names) for _ in c["menus"]]


def _rows(values: list) -> list[list]:
    """[[name, number], ...] from the flat (menu, number, menu, number, ...) slot values."""
    return [[values[i], values[i + 1]] for i in range(0, len(values), 2)]


def _streamed(runs: ToolRuns, label: str, handler: Callable) -> Callable:
    """A gradio generator running `handler(*values, on_progress=, should_stop=)` through `stream_run`."""

    def run(*values):
        yield from stream_run(runs, label, lambda **hooks: handler(*values, **hooks))

    run.__name__ = f"tools_{label}"
    return run


def _wire(app, c: dict[str, Any]) -> None:
    out = [c["out_file"], c["message"]]
    runs = ToolRuns()
    streamed = [c["out_file"], c["message"], c["progress"], c["run_key"]]
    c["cancel"].click(lambda key: cancel_run(runs, key), c["run_key"], c["progress"], api_name="tools_cancel")
    menus = bound(lambda: refresh_menus(app, c))
    c["refresh"].click(menus, None, c["menus"], api_name="tools_refresh")
    c["inspect_go"].click(bound(inspect_lora, app), c["inspect_src"], [c["inspect_summary"], c["inspect_meta"]],
                          api_name="tools_inspect")
    # every tool that writes into the library refreshes the menus; the app refreshes the Library tab too
    c["library_writes"] = [
        c["conv_go"].click(bound(convert_lora, app), [c["conv_src"], c["conv_to"], c["conv_dtype"], c["conv_out"]],
                           out, api_name="tools_convert"),
        c["resize_go"].click(_streamed(runs, "resize", lambda *v, **h: resize_lora(app, *v, **h)),
                             [c["resize_src"], c["resize_rank"], c["resize_energy"], c["resize_out"],
                              c["resize_dtype"]], streamed, api_name="tools_resize"),
        c["merge_go"].click(_streamed(runs, "merge", lambda *v, **h: merge_loras(app, _rows(list(v[:-3])), *v[-3:], **h)),
                            [*c["merge_slots"], c["merge_rank"], c["merge_out"], c["merge_dtype"]], streamed,
                            api_name="tools_merge"),
        c["extract_go"].click(_streamed(runs, "extract", lambda *v, **h: extract_lora(app, *v, **h)),
                              [c["extract_base"], c["extract_tuned"], c["extract_rank"], c["extract_out"]], streamed,
                              api_name="tools_extract"),
        _wire_metadata(app, c),
    ]
    for event in c["library_writes"]:
        event.success(menus, None, c["menus"])
    c["bake_go"].click(bound(lambda base, *v: bake_model(app, base, _rows(list(v[:-3])), *v[-3:])),
                       [c["bake_base"], *c["bake_slots"], c["bake_kind"], c["bake_dtype"], c["bake_out"]], out,
                       api_name="tools_bake")


def _wire_metadata(app, c: dict[str, Any]):
    c["meta_load"].click(bound(load_metadata_fields, app), c["meta_src"],
                         [c["meta_title"], c["meta_trigger"], c["meta_description"]], api_name="tools_meta_load")
    keys = {c["meta_strip"]: "strip", c["meta_title"]: "title", c["meta_trigger"]: "trigger",
            c["meta_description"]: "description", c["meta_out"]: "out_name"}

    def write(values: dict):
        return edit_metadata(app, values[c["meta_src"]], {k: values[w] for w, k in keys.items()})

    return c["meta_go"].click(bound(write), {c["meta_src"], *keys}, [c["out_file"], c["message"], c["meta_written"]],
                              api_name="tools_metadata")
