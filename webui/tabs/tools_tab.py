"""Tools tab: inspect, convert, resize, merge, extract, and a metadata editor that keeps the tensor hash.

Inputs are library names (file stems in the LoRA folder) or paths inside the configured folders
(confined by `AppState.read_path`); outputs always go to `<output>/tools/` under a safe, unique name.
Each handler is one library call between UI values.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import gradio as gr

from sdlora.errors import ConfigError
from webui.metadata_edit import edited_metadata, write_with_metadata
from webui.paths import safe_filename, unique_path
from webui.tabs.common import bound


def resolve_lora(app, text: str) -> Path:
    """A library name ("style") or a path inside the configured folders ("outputs/x.safetensors")."""
    text = (text or "").strip()
    if not text:
        raise ConfigError("type a LoRA name from the library or a path to a .safetensors file")
    library = Path(app.config.lora_dir)
    candidate = library / f"{text}.safetensors"
    if "/" not in text and candidate.is_file():
        return candidate.resolve()
    return app.read_path(text, default_root=library)


def output_path(app, name: str, default: str) -> Path:
    folder = Path(app.config.output_dir) / "tools"
    folder.mkdir(parents=True, exist_ok=True)
    stem = safe_filename(Path(name or default).stem or default, default=default)
    return unique_path(folder, f"{stem}.safetensors")


# ---------------------------------------------------------------- handlers ------------------

def inspect_lora(app, text: str) -> tuple[str, dict]:
    """(summary markdown, metadata) of one LoRA file."""
    import sdlora
    from sdlora.header import read_header, tensor_data_sha256

    path = resolve_lora(app, text)
    header = read_header(path)
    lora = sdlora.load_lora(path)
    kinds = Counter(m.kind for m in lora.modules.values())
    ranks = sorted({m.rank for m in lora.modules.values() if m.rank is not None})
    alphas = sorted({m.alpha for m in lora.modules.values() if m.alpha is not None})
    components = Counter(name.split(".", 1)[0] for name in lora.modules)
    lines = [
        f"**{path.name}** · format `{lora.format}` · family `{lora.family or 'unknown'}`",
        (f"- modules: {len(lora.modules)} ({_counts(components)}); kinds: {_counts(kinds)}"),
        (f"- ranks: {_short_list(ranks)} · alphas: {_short_list(alphas)} · dtypes: {_counts(header.dtypes())}"),
        f"- tensor hash (sshs_model_hash): `{tensor_data_sha256(path, header.data_offset)}`",
        f"- keys that could not be read: {len(lora.issues)}",
    ]
    return "\n".join(lines), dict(header.metadata)


def convert_lora(app, text: str, to_format: str, dtype: str, out_name: str) -> tuple[str, str]:
    """Write the LoRA in another dialect; returns (output path, message)."""
    import sdlora

    if to_format not in ("kohya", "diffusers"):
        raise ConfigError(f"format {to_format!r}: choose kohya or diffusers")
    source = resolve_lora(app, text)
    target = output_path(app, out_name, f"{source.stem}-{to_format}")
    sdlora.save_lora(sdlora.load_lora(source), target, format=to_format, dtype=None if dtype == "keep" else dtype)
    return str(target), f"wrote {target.name} ({to_format})"


def resize_lora(app, text: str, rank: float, energy: float, out_name: str) -> tuple[str, str]:
    """SVD to a fixed rank (rank > 0) or to a retained-energy threshold (0 < energy < 1)."""
    import sdlora
    from sdlora import tools

    source = resolve_lora(app, text)
    kwargs = {"rank": int(rank)} if rank and rank > 0 else {"energy": float(energy)}
    if "energy" in kwargs and not 0 < kwargs["energy"] <= 1:
        raise ConfigError("give a rank > 0, or an energy between 0 and 1")
    result = tools.resize(sdlora.load_lora(source), **kwargs)
    target = output_path(app, out_name, f"{source.stem}-resized")
    sdlora.save_lora(result.lora, target)
    return str(target), f"wrote {target.name}; least energy kept in a module: {result.min_energy():.1%}"


def merge_loras(app, rows: list[list], rank: float, out_name: str) -> tuple[str, str]:
    """Merge [[name, weight], ...] into one LoRA: exact concatenation (rank 0) or SVD to `rank`."""
    import sdlora
    from sdlora import tools

    pairs = [(resolve_lora(app, str(r[0])), float(r[1])) for r in _table(rows) if str(r[0]).strip()]
    if len(pairs) < 2:
        raise ConfigError("list at least two LoRAs (name, weight) to merge")
    loras = [(sdlora.load_lora(p), w) for p, w in pairs]
    if rank and rank > 0:
        merged = tools.merge(loras, mode="svd", rank=int(rank))
    else:
        merged = tools.merge(loras, mode="concat")
    target = output_path(app, out_name, "merged")
    sdlora.save_lora(merged.lora, target)
    return str(target), f"merged {len(pairs)} LoRAs into {target.name}"


def extract_lora(app, base: str, tuned: str, rank: float, out_name: str) -> tuple[str, str]:
    """A LoRA from the difference between a fine-tuned model and its base (SVD to `rank`)."""
    import sdlora
    from sdlora.extract import extract

    base_path = app.base_model(base)  # 'embedded' by name, any other base inside the configured folders
    tuned_path = app.read_path(tuned)
    result = extract(base_path, str(tuned_path), rank=int(rank))
    target = output_path(app, out_name, f"{tuned_path.stem}-extracted")
    sdlora.save_lora(result.lora, target)
    return str(target), f"wrote {target.name}"


def edit_metadata(app, text: str, form: dict[str, Any]) -> tuple[str, str, dict]:
    """Write a copy with edited metadata; the tensor hash stays the same. Returns (path, message, metadata)."""
    from sdlora.header import read_header

    source = resolve_lora(app, text)
    old = read_header(source).metadata
    meta = edited_metadata(old, strip=bool(form.get("strip")), title=form.get("title"),
                           trigger_words=form.get("trigger"), description=form.get("description"))
    target = output_path(app, form.get("out_name") or "", f"{source.stem}-edited")
    written = write_with_metadata(source, target, meta)
    kept = "kept" if written["sshs_model_hash"] == old.get("sshs_model_hash", written["sshs_model_hash"]) else "set"
    return str(target), (f"wrote {target.name}: {len(old)} → {len(written)} metadata keys; tensor hash {kept} "
                         f"(`{written['sshs_model_hash'][:12]}`)"), written


def load_metadata_fields(app, text: str) -> tuple[str, str, str]:
    from sdlora.header import read_header

    meta = read_header(resolve_lora(app, text)).metadata
    return meta.get("modelspec.title", ""), meta.get("modelspec.trigger_phrase", ""), meta.get(
        "modelspec.description", "")


def _counts(counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items()))


def _short_list(values: list, limit: int = 6) -> str:
    if not values:
        return "-"
    shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values[:limit])
    return shown + (" …" if len(values) > limit else "")


def _table(rows) -> list[list]:
    if rows is None:
        return []
    if hasattr(rows, "values") and hasattr(rows, "columns"):
        rows = rows.values.tolist()
    return [r for r in rows if r]


# ---------------------------------------------------------------- layout and wiring ----------

def create_ui(app) -> dict[str, Any]:
    c: dict[str, Any] = {}
    source_info = "a library name (file stem) or a path inside the configured folders"
    with gr.Tab("Inspect"):
        c["inspect_src"] = gr.Textbox(label="LoRA", info=source_info, elem_id="tools-inspect-src")
        c["inspect_go"] = gr.Button("Inspect", elem_id="tools-inspect")
        c["inspect_summary"] = gr.Markdown(elem_id="tools-inspect-summary")
        c["inspect_meta"] = gr.JSON(label="Metadata")
    with gr.Tab("Convert"):
        with gr.Row():
            c["conv_src"] = gr.Textbox(label="LoRA", info=source_info)
            c["conv_to"] = gr.Dropdown(["kohya", "diffusers"], value="kohya", label="Write as")
            c["conv_dtype"] = gr.Dropdown(["keep", "fp16", "bf16", "fp32"], value="keep", label="dtype")
            c["conv_out"] = gr.Textbox(label="Output name", info="written to the output folder's tools/")
        c["conv_go"] = gr.Button("Convert")
    with gr.Tab("Resize"):
        with gr.Row():
            c["resize_src"] = gr.Textbox(label="LoRA", info=source_info)
            c["resize_rank"] = gr.Number(8, label="Rank", precision=0, info="fixed rank; 0 = use energy")
            c["resize_energy"] = gr.Number(0.9, label="Energy", info="fraction of singular-value energy kept")
            c["resize_out"] = gr.Textbox(label="Output name")
        c["resize_go"] = gr.Button("Resize")
    with gr.Tab("Merge"):
        c["merge_rows"] = gr.Dataframe(headers=["LoRA", "weight"], datatype=["str", "number"], type="array",
                                       value=[["", 1.0], ["", 1.0]], interactive=True, row_count=2)
        with gr.Row():
            c["merge_rank"] = gr.Number(0, label="Rank", precision=0,
                                        info="0 = exact (ranks concatenated); > 0 = SVD of the exact sum to this rank")
            c["merge_out"] = gr.Textbox(label="Output name")
        c["merge_go"] = gr.Button("Merge")
    with gr.Tab("Extract"):
        with gr.Row():
            c["extract_base"] = gr.Textbox("embedded", label="Base model",
                                           info="'embedded' or a path inside the configured folders")
            c["extract_tuned"] = gr.Textbox(label="Fine-tuned model", info="path inside the configured folders")
            c["extract_rank"] = gr.Number(16, label="Rank", precision=0)
            c["extract_out"] = gr.Textbox(label="Output name")
        c["extract_go"] = gr.Button("Extract")
    with gr.Tab("Metadata"):
        _create_metadata_ui(c, source_info)
    c["out_file"] = gr.File(label="Result", interactive=False)
    c["message"] = gr.Markdown(elem_id="tools-message")
    _wire(app, c)
    return c


def _create_metadata_ui(c: dict[str, Any], source_info: str) -> None:
    with gr.Row():
        c["meta_src"] = gr.Textbox(label="LoRA", info=source_info, elem_id="tools-meta-src")
        c["meta_load"] = gr.Button("Load fields")
    c["meta_strip"] = gr.Checkbox(label="Strip to the minimum (keep only what loaders need)")
    c["meta_title"] = gr.Textbox(label="Title")
    c["meta_trigger"] = gr.Textbox(label="Trigger words")
    c["meta_description"] = gr.Textbox(label="Description", lines=2)
    c["meta_out"] = gr.Textbox(label="Output name")
    c["meta_go"] = gr.Button("Write a copy with this metadata")
    c["meta_written"] = gr.JSON(label="Metadata written")


def _wire(app, c: dict[str, Any]) -> None:
    out = [c["out_file"], c["message"]]
    c["inspect_go"].click(bound(inspect_lora, app), c["inspect_src"], [c["inspect_summary"], c["inspect_meta"]],
                          api_name="tools_inspect")
    c["conv_go"].click(bound(convert_lora, app), [c["conv_src"], c["conv_to"], c["conv_dtype"], c["conv_out"]],
                       out, api_name="tools_convert")
    c["resize_go"].click(bound(resize_lora, app), [c["resize_src"], c["resize_rank"], c["resize_energy"],
                                                   c["resize_out"]], out, api_name="tools_resize")
    c["merge_go"].click(bound(merge_loras, app), [c["merge_rows"], c["merge_rank"], c["merge_out"]], out,
                        api_name="tools_merge")
    c["extract_go"].click(bound(extract_lora, app), [c["extract_base"], c["extract_tuned"], c["extract_rank"],
                                                     c["extract_out"]], out, api_name="tools_extract")
    c["meta_load"].click(bound(load_metadata_fields, app), c["meta_src"],
                         [c["meta_title"], c["meta_trigger"], c["meta_description"]], api_name="tools_meta_load")
    keys = {c["meta_strip"]: "strip", c["meta_title"]: "title", c["meta_trigger"]: "trigger",
            c["meta_description"]: "description", c["meta_out"]: "out_name"}

    def write(values: dict):
        return edit_metadata(app, values[c["meta_src"]], {k: values[w] for w, k in keys.items()})

    c["meta_go"].click(bound(write), {c["meta_src"], *keys}, [c["out_file"], c["message"], c["meta_written"]],
                       api_name="tools_metadata")
