"""Train tab: base model, data set (folder or upload), caption editor, settings, Start/Cancel, live progress.

Handlers are plain functions: `app` (the AppState) first, then UI values; they return UI values.
The settings form is gathered into one dict keyed by config keys ("lora.rank", ...) and turned into a
`TrainConfig` once, by `config_from_form` with `sdlora.settings.apply_values` (no 289-parameter handlers);
each widget comes from its setting's `field_spec`. Training runs in the app's job queue as
`sdlora_webui.training_job.training_job`; the page polls the job with a timer, so generation stays usable meanwhile.
"""

from __future__ import annotations

import html
import re
import shutil
import time
from pathlib import Path
from typing import Any

import gradio as gr

from sdlora.atomic import write_bytes_atomic
from sdlora.errors import ConfigError, DatasetError, SdloraError
from sdlora.settings.config import DataConfig, TrainConfig, config_to_dict, load_config
from sdlora.settings.fields import apply_values, field_spec
from sdlora.settings.kohya_import import read_kohya
from sdlora.settings.presets import base_preset, preset_names, preset_path
from sdlora.settings.resolution import resolve_base_settings
from sdlora.train.data import caption_pairs, scan_dataset, write_captions
from sdlora_webui.jobs import DONE
from sdlora_webui.paths import safe_filename, unique_path
from sdlora_webui.tabs import caption_panel, runs_view
from sdlora_webui.tabs.common import bound, gather
from sdlora_webui.tabs.generate_runs import base_choices
from sdlora_webui.training_job import training_job
from sdlora_webui.uploads import (
    IMAGE_SUFFIXES,
    KOHYA_SUFFIXES,
    check_config_upload,
    check_image_upload,
    discard_upload,
    store_upload,
    upload_name,
)

# the settings the tab shows, in order: config key -> label (the widget, its help and choices come from the
# field's spec, sdlora.settings.field_spec)
SETTINGS: dict[str, str] = {
    "lora.targets": "Targets",
    "lora.rank": "Rank",
    "lora.alpha": "Alpha",
    "optim.steps": "Steps",
    "optim.lr": "Learning rate",
    "data.resolution": "Resolution",
    "lora.train_text_encoder": "Train the text encoder",
    "data.trigger": "Trigger word",
    "output.name": "Output name",
    "output.sample_every": "Sample every N steps",
    "output.sample_prompts": "Sample prompts (one per line)",
}
# The "Advanced settings" accordion: group title -> config keys. A field is added by naming it here; its
# label, widget (dropdown for choices, checkbox, number, text) and help text come from its field_spec.
ADVANCED: dict[str, list[str]] = {
    "Optimizer & schedule": ["optim.optimizer", "optim.optimizer_args", "optim.weight_decay", "optim.scheduler",
                             "optim.warmup_steps", "optim.lr_cycles", "optim.lr_power", "optim.loraplus_ratio",
                             "optim.ema_decay", "optim.ema_every"],
    "Regularization & validation": ["data.reg_path", "optim.prior_loss_weight", "data.validation_path",
                                    "data.validation_split", "output.validate_every"],
    "Loss & noise": ["optim.loss_type", "optim.huber_schedule", "optim.huber_c", "optim.min_timestep",
                     "optim.max_timestep", "optim.noise_offset", "optim.min_snr_gamma", "optim.ip_noise_gamma",
                     "optim.multires_noise_iterations", "optim.multires_noise_discount",
                     "optim.debiased_estimation", "optim.zero_terminal_snr"],
    "LoRA variants": ["lora.rank_stabilized", "lora.rank_dropout", "lora.module_dropout"],
    "Captions & masks": ["data.max_token_length", "data.alpha_mask", "data.mask_path"],
    "Tracking": ["output.log_with"],
}
# folders typed into the form: confined to the configured folders like the data set (AppState.read_path)
PATH_KEYS = frozenset({"data.reg_path", "data.validation_path", "data.mask_path"})
# where a kohya config points on the machine it was written on: this tab chooses them itself
KOHYA_SKIPPED = frozenset({"model.base", "data.path", "output.dir"})
DEFAULT_PRESET = "(defaults)"  # the base's own recipe when it has one (embedded: the 'embedded' preset)
MAX_CAPTION_ROWS = 500
_KOHYA_NAME = re.compile(r"^\d+_")  # a Kohya image folder (N_name), as sdlora.train.data reads them


# ---------------------------------------------------------------- presets and config ---------

def user_presets_dir(app) -> Path:
    """The presets a user saved from the form (`<output>/presets/`), listed after the shipped ones."""
    return Path(app.config.output_dir) / "presets"


def list_presets(user: Path | None = None) -> list[str]:
    """The Preset menu: the defaults, the shipped presets, then the ones saved in `user`."""
    saved = sorted(p.stem for p in user.glob("*.yaml")) if user is not None and user.is_dir() else []
    return [DEFAULT_PRESET, *preset_names(), *(name for name in saved if name not in preset_names())]


def preset_values(preset: str, base: str | None = None, user: Path | None = None) -> dict[str, Any]:
    """The shown settings' values under `preset` for `base` (what the form is filled with): the default
    preset is the base's own recipe when it has one, and an unset resolution shows the size the trainer
    takes for the base (sdlora.settings.resolve_base_settings), when it is known before the base loads."""
    cfg = load_config(_preset_file(preset, base, user))
    if base:
        cfg = _for_base(cfg, base)[0] or cfg
    return {key: _form_value(key, _get(cfg, key)) for key in form_keys()}


def form_keys() -> list[str]:
    """Every config key the form shows, basic then advanced (the order of the settings widgets)."""
    return [*SETTINGS, *(key for keys in ADVANCED.values() for key in keys)]


def setting_kind(key: str) -> str:
    """The widget kind of a form key: "path" for a folder, else the field's kind (choice, bool, int, float,
    text, list)."""
    return "path" if key in PATH_KEYS else field_spec(key).kind


def setting_label(key: str) -> str:
    if key in SETTINGS:
        return SETTINGS[key]
    # the config key itself: the name the docs, the CLI's --set and the kohya import report use
    return f"{key} (one per line)" if setting_kind(key) == "list" else key


def setting_help(key: str) -> str:
    return field_spec(key).help


def setting_choices(key: str) -> list[str]:
    return list(field_spec(key).choices)


def _for_base(cfg, base: str) -> tuple[Any, list[str]]:
    """`cfg` with `base`'s sizes filled in as the trainer fills them, and the notes on them (a far-off size's
    warning); (None, []) when the base's size is unknown until it loads, or the base is unusable (Start
    says why)."""
    try:
        resolved, notes, native = resolve_base_settings(apply_values(cfg, {"model.base": base}))
    except SdloraError:
        return None, []
    return (resolved if native else None), notes


def base_changed(app, base: str, preset: str) -> list[Any]:
    """New values for the settings when the base changes: the base's recipe (default preset) and its native
    resolution. An unusable path leaves the form as it is (Start reports it)."""
    try:
        resolved = app.base_model(base)
    except SdloraError:
        return [gr.update() for _ in form_keys()]
    return list(preset_values(preset or DEFAULT_PRESET, base=resolved, user=user_presets_dir(app)).values())


def resolution_note(app, base: str, resolution) -> str:
    """A warning under the settings when the resolution is far from the base's native size ('' otherwise)."""
    try:
        cfg = apply_values(TrainConfig(), {"data.resolution": _typed("data.resolution", resolution)})
        notes = _for_base(cfg, app.base_model(base))[1] if resolution else []
    except SdloraError:
        return ""
    return "".join(f"⚠️ {n.removeprefix('warning: ')}" for n in notes if n.startswith("warning"))


def config_from_form(app, form: dict[str, Any]):
    """Turn the form (config keys -> values, plus 'preset', 'model.base', 'data.path') into a TrainConfig.

    Paths are confined: the base and the data set must lie in the configured folders, and the
    output always goes under the app's output folder.
    """
    base = app.base_model(form.get("model.base"))
    data_path = str(form.get("data.path") or "").strip()
    if not data_path:
        raise DatasetError("no data set: type a folder and press 'Load data set', or upload images")
    values = {"model.base": base, "model.allow_pickle": app.config.allow_pickle,
              "data.path": str(app.read_path(data_path, default_root=data_root(app)))}
    # a loaded kohya config's keys that have no field here (batch size, conv rank, ...); the form's own win
    values.update(_fieldless(form.get("kohya") or {}))
    values.update({key: _typed(key, _confined(app, key, form[key])) for key in form_keys()
                   if form.get(key) is not None})
    cfg = apply_values(load_config(_preset_file(form.get("preset"), base, user_presets_dir(app))), values)
    name = safe_filename(cfg.output.name, default="lora")
    cfg.output.name = name
    cfg.output.dir = str(unique_path(Path(app.config.output_dir) / "runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"))
    return cfg


def _confined(app, key: str, value):
    """A folder typed into a path setting, resolved inside the configured folders ('' stays: none)."""
    if key not in PATH_KEYS or not str(value).strip():
        return value
    return str(app.read_path(str(value).strip(), default_root=data_root(app)))


def _preset_file(preset: str | None, base: str | None, user: Path | None = None) -> Path | None:
    """The YAML file of `preset` (shipped, else saved in `user`); for DEFAULT_PRESET the base's own recipe
    (None: the defaults)."""
    if not preset or preset == DEFAULT_PRESET:
        own = base_preset(base)
        return preset_path(own) if own else None
    saved = user / f"{safe_filename(preset)}.yaml" if user is not None else None
    if preset not in preset_names() and saved is not None and saved.is_file():
        return saved
    return preset_path(preset)


# what a saved preset leaves out: where things are on this machine, which the form chooses each time
PRESET_SKIPPED = frozenset({"model.base", "model.allow_pickle", "data.path", "output.dir"})


def save_preset(app, name: str, form: dict[str, Any]) -> tuple[str, Any]:
    """Save the form's settings (over the chosen preset, with a loaded kohya config's extra values) as preset
    `name` in `user_presets_dir`; returns (message, the preset menu's new choices and value)."""
    import yaml

    stem = safe_filename((name or "").strip(), default="")
    if not stem or stem == DEFAULT_PRESET:
        raise ConfigError("type a name for the preset")
    if stem in preset_names():
        raise ConfigError(f"{stem!r} is a shipped preset; choose another name")
    user = user_presets_dir(app)
    base = app.base_model(form.get("model.base"))
    values = _fieldless(form.get("kohya") or {})
    values.update({key: _typed(key, form[key]) for key in form_keys()
                   if form.get(key) is not None and key not in PATH_KEYS})
    cfg = apply_values(load_config(_preset_file(form.get("preset"), base, user)), values)
    data = {section: {key: value for key, value in fields.items() if f"{section}.{key}" not in PRESET_SKIPPED}
            for section, fields in config_to_dict(cfg).items()}
    user.mkdir(parents=True, exist_ok=True)
    path = user / f"{stem}.yaml"
    text = f"# saved from the web UI's Train tab on {time.strftime('%Y-%m-%d %H:%M')}\n"
    write_bytes_atomic(path, (text + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)).encode("utf-8"))
    return f"saved the settings as preset '{stem}' ({path})", gr.Dropdown(choices=list_presets(user), value=stem)


def _get(cfg, key: str):
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section), name)


def _form_value(key: str, value):
    """A setting's value as its widget shows it (a list: one item per line)."""
    if setting_kind(key) == "list":
        return "\n".join(value or [])
    return value


def _typed(key: str, value):
    """A widget's value as the setting's own type (what `apply_values` checks): a box of lines -> a list of
    the non-empty lines; a whole number typed into a number box (a float) -> an int."""
    kind = setting_kind(key)
    if kind == "list":
        return [line.strip() for line in str(value).splitlines() if line.strip()]
    if field_spec(key).type is int and isinstance(value, float):  # data.max_token_length's 75/150/225 too
        if not value.is_integer():
            raise ConfigError(f"{key}: expected a whole number, got {value}")
        return int(value)
    return value


# ---------------------------------------------------------------- kohya configs --------------

def load_kohya(app, path_text: str, upload) -> list[Any]:
    """Fill the form from a kohya_ss GUI preset (.json) or sd-scripts config (.toml): an upload or a file in
    the configured folders. Returns a value per form key (gr.update() where the file has none), the status,
    and the mapped values that have no field here (kept for Start, see `kohya_extras`)."""
    path = _kohya_file(app, path_text, upload)
    try:
        imported = read_kohya(path)
    except ConfigError as err:
        if upload:
            discard_upload(path)  # refused like an upload of the wrong type: not kept in gradio's folder
        raise ConfigError(f"{_kohya_name(path, upload)}: {str(err).removeprefix(f'{path}: ')}") from None
    values = imported.values
    fills = [_form_value(key, values[key]) if key in values else gr.update() for key in form_keys()]
    return [*fills, kohya_status(imported, _kohya_name(path, upload)), kohya_extras(imported)]


def kohya_extras(imported) -> dict[str, Any]:
    """The imported values with no field in this tab, which Start applies (the machine-specific paths aside)."""
    return _fieldless(imported.values)


def _fieldless(values: dict[str, Any]) -> dict[str, Any]:
    shown = set(form_keys())
    return {key: value for key, value in values.items()
            if key not in shown and key not in KOHYA_SKIPPED and key not in PATH_KEYS}


def _kohya_file(app, path_text: str, upload) -> Path:
    if upload:
        path, _ = upload_name(upload)
        return check_config_upload(path, app.config.limits)
    if not str(path_text or "").strip():
        raise ConfigError("no kohya config: type a .json/.toml path inside the configured folders or upload one")
    path = app.read_path(str(path_text).strip(), default_root=data_root(app))
    if not path.is_file():
        raise ConfigError(f"{path_text!r} is not a file; pick a kohya_ss .json preset or an sd-scripts .toml")
    return path


def _kohya_name(path: Path, upload) -> str:
    return upload_name(upload)[1] if upload else path.name


def kohya_status(imported, name: str) -> str:
    """What the import did, as the CLI prints it: the counts, the mapped keys the form has no field for
    (applied when the run starts), the paths left to this tab, and one line per ignored key with its reason."""
    shown = set(form_keys())
    left_out = [key for key in imported.values if key not in shown]
    extras = kohya_extras(imported)
    paths = [key for key in left_out if key not in extras]
    head = (f"kohya import of {html.escape(name)}: {len(imported.mapped)} keys mapped, "
            f"{len(imported.ignored)} ignored; {len(imported.values) - len(left_out)} form fields filled")
    lines = [head, ""]  # a blank line: the list below starts on its own
    if extras:
        lines.append(f"- mapped, no field in this form, applied when you start: {html.escape(', '.join(extras))}")
    if paths:
        lines.append(f"- paths of the machine the file came from, not used (choose them here): "
                     f"{html.escape(', '.join(paths))}")
    lines += [f"- {html.escape(line)}" for line in imported.lines()]
    return "\n".join(lines)


# ---------------------------------------------------------------- data set and captions ------

def load_dataset(app, folder_text: str, uploads: list | None) -> tuple[str, list, list, str]:
    """Pick the data set: uploaded files (copied into output/datasets/) or a folder in the allowed roots.

    Returns (data set path, gallery items, caption rows [[file, caption]], summary line).
    """
    if uploads:
        folder = _store_dataset_upload(app, uploads)
    else:
        folder = app.read_path(folder_text, default_root=data_root(app))
        if not folder.is_dir():
            raise DatasetError(f"{folder_text!r} is not a folder; pick the folder that holds the images")
    rows = scan_captions(folder)
    if not rows:
        raise DatasetError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    gallery = [(str(folder / name), caption or "(no caption)") for name, caption in rows]
    missing = sum(1 for _, caption in rows if not caption)
    summary = f"{len(rows)} images in {folder.name}/; {len(rows) - missing} with captions, {missing} without"
    details = "\n".join(f"- {html.escape(line.strip())}" for line in dataset_report(folder))
    return str(folder), gallery, [list(row) for row in rows], f"{summary}\n\n{details}"


def dataset_report(folder: Path) -> list[str]:
    """The trainer's own data set summary (folders, caption coverage, top tags, skipped/converted files).

    Buckets depend on the resolution chosen later, so that line is left out here.
    """
    _, report = scan_dataset(DataConfig(path=str(folder)))
    return [line for line in report.lines() if not line.startswith("buckets:")]


DATASET_DEPTH = 2  # how deep under a data folder the data set menu looks


def find_datasets(app) -> list[tuple[str, str]]:
    """(label, path) of the data sets under the data folders and the uploaded ones (output/datasets/): the
    folders holding images, or Kohya `N_name` subfolders of images, `DATASET_DEPTH` levels deep. The data set
    box offers them, so a first Start needs no typed path."""
    roots = [*map(Path, app.config.data_dirs), Path(app.config.output_dir) / "datasets"]
    found: list[tuple[str, str]] = []
    for root in roots:
        for folder in _dataset_folders(root, DATASET_DEPTH):
            label = folder.name if folder == root else f"{root.name}/{folder.relative_to(root)}"
            found.append((label, str(folder)))
    return found


def _dataset_folders(folder: Path, depth: int) -> list[Path]:
    if not folder.is_dir() or folder.name.startswith("."):
        return []
    children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if _holds_images(folder) or any(_KOHYA_NAME.match(c.name) and _holds_images(c) for c in children):
        return [folder]
    if depth == 0:
        return []
    return [found for child in children for found in _dataset_folders(child, depth - 1)]


def _holds_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for p in folder.iterdir())


def drop_vanished(uploads: list | None) -> list | None:
    """The upload box's files that still exist: a refused upload is deleted at once (webui.uploads), and a box
    still naming it would fail every later load, even of a typed folder."""
    kept = [file for file in uploads or [] if upload_name(file)[0].is_file()]
    return kept or None


def data_root(app) -> Path:
    """Where relative data set paths start: the first data folder, else the output folder."""
    return Path(app.config.data_dirs[0]) if app.config.data_dirs else Path(app.config.output_dir)


def _store_dataset_upload(app, uploads: list) -> Path:
    folder = unique_path(Path(app.config.output_dir) / "datasets", f"upload-{time.strftime('%Y%m%d-%H%M%S')}")
    for file in uploads:
        path, name = upload_name(file)
        check_image_upload(path, app.config.limits)
        store_upload(path, folder, name)
    return folder


def scan_captions(folder: Path) -> list[tuple[str, str]]:
    """[(image path relative to folder, caption)] for the images the trainer reads (sdlora.train.data)."""
    pairs = caption_pairs(folder)[:MAX_CAPTION_ROWS]
    return [(str(p.image.relative_to(folder)), p.caption or "") for p in pairs]


def add_trigger(rows: list[list[str]] | None, trigger: str) -> list[list[str]]:
    """Put `trigger` first in every caption that does not already start with it."""
    trigger = (trigger or "").strip()
    if not trigger:
        raise ConfigError("type a trigger word first")
    out = []
    for name, caption in _rows(rows):
        tags = [t.strip() for t in str(caption or "").split(",") if t.strip()]
        if not tags or tags[0] != trigger:
            tags = [trigger, *[t for t in tags if t != trigger]]
        out.append([name, ", ".join(tags)])
    return out


def save_captions(app, dataset: str, rows: list[list[str]] | None) -> tuple[str, str]:
    """Write each caption to its same-stem .txt file. Returns (data set path, message).

    A data set in a read-only folder (e.g. sample_data/) is first copied under output/datasets/,
    so the original is never changed; the copy becomes the data set.
    """
    folder = app.read_path(dataset, default_root=data_root(app))
    copied = ""
    if not app.is_writable(folder):
        target = unique_path(Path(app.config.output_dir) / "datasets", f"{folder.name}-edited")
        shutil.copytree(folder, target)
        folder, copied = target, f" (copied to {target.name}/ first: the original folder is read-only)"
    written = write_captions(folder, dict(_rows(rows)), backup=True)
    return str(folder), f"saved {len(written)} captions{copied}"


def _rows(rows) -> list[tuple[str, str]]:
    if rows is None:
        return []
    if hasattr(rows, "values") and hasattr(rows, "columns"):  # a pandas DataFrame
        rows = rows.values.tolist()
    return [(str(r[0]), "" if r[1] is None else str(r[1])) for r in rows if r and str(r[0]).strip()]


# ---------------------------------------------------------------- the training job -----------

def start_training(app, form: dict[str, Any]) -> tuple[int, str]:
    """Validate the form, queue a training job; returns (job id, status line)."""
    cfg = config_from_form(app, form)
    _, notes, _ = resolve_base_settings(cfg)  # from the base's config files: a far-off size is said up front
    job = app.jobs.submit(cfg.output.name, lambda ctx: training_job(cfg, ctx))
    ahead = sum(1 for j in app.jobs.snapshot() if j["status"] in ("queued", "running") and j["id"] != job.id)
    where = f"queued behind {ahead} job(s)" if ahead else "starting"
    warnings = "".join(f"\n\n⚠️ {n.removeprefix('warning: ')}" for n in notes if n.startswith("warning"))
    own = _preset_file(form.get("preset"), cfg.model.base, user_presets_dir(app))
    recipe = f"; settings: the '{own.stem}' preset (this base's recipe) and the form" if (
        own is not None and (form.get("preset") or DEFAULT_PRESET) == DEFAULT_PRESET) else ""
    return job.id, f"job {job.id} ({cfg.output.name}): {where}{recipe}{warnings}"


def cancel_training(app, job_id: int | None) -> str:
    if job_id is None:
        raise SdloraError("no training job in this session to cancel")
    job = app.jobs.cancel(job_id)
    return (f"job {job.id} ({job.name}): cancelling; it stops within a step (or an image, while caching) and "
            "saves a checkpoint (none before the first step)")


def poll(app, job_id: int | None) -> dict[str, Any]:
    """What the page shows about this session's job and the queue (called by the timer)."""
    queue = queue_rows(app)
    if job_id is None:
        return {"progress": progress_html(0, 0, "no job yet"), "losses": [], "val_losses": [], "samples": [],
                "queue": queue,
                "result": None, "status": "", "finished": True}
    state = app.jobs.job_state(job_id)
    status = f"job {state['id']} ({state['name']}): {state['status']}"
    if state["error"]:
        status += f": {state['error']}"
    elif state["message"]:
        status += f": {state['message']}"
    finished = state["status"] in ("done", "failed", "cancelled")
    result = state["result"] if state["status"] == DONE else None
    return {"progress": progress_html(state["step"], state["total"], state["status"], state.get("stages")),
            "losses": state["losses"], "val_losses": state.get("val_losses", []), "samples": state["samples"],
            "queue": queue,
            "result": result, "status": status, "finished": finished}


def queue_rows(app) -> list[list]:
    """Every job of the app (all sessions), oldest first: [id, name, status, step/total, message]."""
    return [[j["id"], j["name"], j["status"], f"{j['step']}/{j['total']}", j["error"] or j["message"]]
            for j in app.jobs.snapshot()]


def progress_html(step: int, total: int, status: str, stages: dict[str, str] | None = None) -> str:
    """A native <progress> bar with the step count (tests read its value and max), and below it every stage
    the run went through with its latest line (counts, elapsed, ETA), so a short stage is not missed."""
    total = max(int(total), 0)
    pct = 100.0 * step / total if total else 0.0
    items = "".join(f"<li>{html.escape(line)}</li>" for line in (stages or {}).values())
    stage_list = f'<ol class="sdlora-stages" id="train-stages">{items}</ol>' if items else ""
    return (f'<div class="sdlora-progress"><progress id="train-progress" value="{int(step)}" max="{total or 1}">'
            f"</progress> <span>step {int(step)} / {total} ({pct:.0f}%) · {html.escape(status)}</span>"
            f"{stage_list}</div>")


def smoothed(values: list[float]) -> list[float]:
    """Moving average over a tenth of the run so far (the loss plot's thick line; loss.png uses the same)."""
    window = max(1, len(values) // 10)
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(window, i + 1))
    return out


def loss_frame(losses: list[tuple[int, float]], validation: list[tuple[int, float]] | None = None):
    """The loss plot's data in long form: each step twice, as `loss` (raw) and `smoothed` (series), and
    the validation loss (output.validate_every) as `validation` at the steps that measured it."""
    import pandas as pd

    # explicit dtypes: an empty object-typed frame would make the plot's y axis categorical for good
    steps = [int(s) for s, _ in losses or []]
    values = [float(v) for _, v in losses or []]
    val_steps = [int(s) for s, _ in validation or []]
    val_values = [float(v) for _, v in validation or []]
    if not values:
        # one empty (NaN) point per series: a plot first drawn with no series draws no line for the series
        # that arrive later (gradio 6.31, seen in a browser), so all are named from the start
        steps, values = [0], [float("nan")]
        val_steps, val_values = val_steps or [0], val_values or [float("nan")]
    return pd.DataFrame({"step": pd.Series(steps * 2 + val_steps, dtype="int64"),
                         "loss": pd.Series(values + smoothed(values) + val_values, dtype="float64"),
                         "series": pd.Series(["loss"] * len(values) + ["smoothed"] * len(values)
                                             + ["validation"] * len(val_values), dtype="str")})


def add_result_to_library(app, job_id: int | None) -> tuple[str, str]:
    """Copy the finished job's LoRA into the library folder. Returns (library name, message)."""
    if job_id is None:
        raise SdloraError("no finished training in this session yet")
    state = app.jobs.job_state(job_id)
    if state["status"] != DONE or not state["result"]:
        raise SdloraError(f"job {job_id} is {state['status']}; wait until it is done")
    source = Path(state["result"])
    target = unique_path(Path(app.config.lora_dir), safe_filename(source.name))
    shutil.copyfile(source, target)
    return target.stem, f"added {target.name} to the library"


# ---------------------------------------------------------------- layout and wiring ----------

def create_ui(app) -> dict[str, Any]:
    """Build the Train tab inside the current gr.Blocks; returns its components for cross-tab wiring."""
    c: dict[str, Any] = {"job_id": gr.State(None), "dataset": gr.State("")}
    with gr.Row():
        c["base"] = gr.Dropdown(base_choices(app), value=app.base_model(app.config.base), label="Base model",
                                allow_custom_value=True,  # a typed path inside the configured folders still works
                                info="the Generate tab's Base menu list, or a model path inside the folders")
        c["preset"] = gr.Dropdown(list_presets(user_presets_dir(app)), value=DEFAULT_PRESET, label="Preset",
                                  info=f"a shipped preset, or one you saved; the fields below show its values. "
                                       f"{DEFAULT_PRESET}: the base's own recipe when it has one (embedded: the "
                                       "quickstart's)")
    _create_dataset_ui(app, c)
    with gr.Group():
        values = _initial_values(app)
        c["settings"] = _create_settings_ui(values)
        c["resolution_note"] = gr.Markdown(elem_id="train-resolution-note")
    c["settings"].update(_create_advanced_ui(values))
    _create_kohya_ui(c)
    with gr.Row():
        c["preset_name"] = gr.Textbox(label="Save these settings as a preset named", scale=3,
                                      elem_id="train-preset-name",
                                      info="listed in the Preset menu from then on (kept in the output folder)")
        c["save_preset"] = gr.Button("Save preset", scale=1, elem_id="train-save-preset")
    with gr.Row():
        c["start"] = gr.Button("Start training", variant="primary", elem_id="train-start")
        c["cancel"] = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
    c["status"] = gr.Markdown(elem_id="train-status")
    c["progress"] = gr.HTML(progress_html(0, 0, "no job yet"), elem_id="train-progress-box")
    with gr.Row():
        c["loss_plot"] = gr.LinePlot(loss_frame([]), x="step", y="loss", color="series", title="Training loss",
                                     elem_id="train-loss-plot", height=260)
        c["samples"] = gr.Gallery(label="Sample images", columns=4, height=260, elem_id="train-samples")
    c["queue"] = gr.Dataframe(headers=["job", "name", "status", "step", "message"], label="Training queue",
                              interactive=False, elem_id="train-queue")
    with gr.Row():
        c["result"] = gr.File(label="Trained LoRA (.safetensors)", interactive=False, elem_id="train-result")
        c["add_to_stack"] = gr.Button("Add to library and stack", elem_id="train-add-to-stack")

    runs_view.create_ui(app, c)
    c["timer"] = gr.Timer(0.5, active=False)  # this session's job: progress, loss, samples
    c["queue_timer"] = gr.Timer(3.0)  # the shared queue, so jobs other sessions started are visible too
    _wire(app, c)
    return c


def _create_dataset_ui(app, c: dict[str, Any]) -> None:
    datasets = find_datasets(app)
    default_data = datasets[0][1] if datasets else (str(app.config.data_dirs[0]) if app.config.data_dirs else "")
    with gr.Row():
        c["data_path"] = gr.Dropdown(datasets, value=default_data, label="Data set folder", elem_id="train-data-path",
                                     allow_custom_value=True,  # a typed folder inside the configured folders
                                     info="the data sets found in the data folders, or a typed folder of images "
                                          "with same-stem .txt captions, or of Kohya N_name subfolders")
        c["upload"] = gr.File(label="...or upload images and captions", file_count="multiple",
                              file_types=sorted(IMAGE_SUFFIXES | {".txt"}), elem_id="train-upload")
    c["load"] = gr.Button("Load data set", elem_id="train-load-data")
    c["data_summary"] = gr.Markdown(elem_id="train-data-summary")
    with gr.Accordion("Captions", open=True):
        c["thumbs"] = gr.Gallery(label="Images", columns=8, height=200, allow_preview=True)
        c["captions"] = gr.Dataframe(headers=["image", "caption"], datatype=["str", "str"], type="array",
                                     interactive=True, label="Captions (edit in place)", wrap=True,
                                     elem_id="train-captions")
        with gr.Row():
            c["bulk_trigger"] = gr.Textbox(label="Trigger word to add to every caption", scale=3)
            c["add_trigger"] = gr.Button("Add to all captions", scale=1)
            c["save_captions"] = gr.Button("Save captions", scale=1, elem_id="train-save-captions")
        caption_panel.create_ui(c)


def _initial_values(app) -> dict[str, Any]:
    try:
        return preset_values(DEFAULT_PRESET, base=app.base_model(None))
    except SdloraError:  # a configured base outside the folders: Start says so
        return preset_values(DEFAULT_PRESET)


def _create_settings_ui(values: dict[str, Any]) -> dict[Any, str]:
    """One widget per setting, labelled and with the config field's own help text; {widget: key}."""
    keys = list(SETTINGS)
    return _widget_rows([keys[:6], keys[6:]], values)  # two rows keep each help text readable


def _create_advanced_ui(values: dict[str, Any]) -> dict[Any, str]:
    """The ADVANCED groups in a closed accordion, four widgets a row; {widget: key} in form_keys() order."""
    widgets: dict[Any, str] = {}
    with gr.Accordion("Advanced settings", open=False, elem_id="train-advanced"):
        for title, keys in ADVANCED.items():
            gr.Markdown(f"**{title}**")
            widgets.update(_widget_rows([keys[i:i + 4] for i in range(0, len(keys), 4)], values))
    return widgets


def _widget_rows(rows: list[list[str]], values: dict[str, Any]) -> dict[Any, str]:
    widgets: dict[Any, str] = {}
    for row in rows:
        with gr.Row(equal_height=False):
            for key in row:
                widgets[_setting_widget(key, setting_label(key), setting_kind(key), values[key])] = key
    return widgets


def _create_kohya_ui(c: dict[str, Any]) -> None:
    with gr.Accordion("Load a kohya config", open=False, elem_id="train-kohya"):
        with gr.Row():
            c["kohya_path"] = gr.Textbox(label="kohya config file", elem_id="train-kohya-path",
                                         info="a kohya_ss GUI preset (.json) or sd-scripts config (.toml) "
                                              "inside the configured folders")
            c["kohya_upload"] = gr.File(label="...or upload one", file_types=sorted(KOHYA_SUFFIXES),
                                        elem_id="train-kohya-upload")
        c["kohya_load"] = gr.Button("Fill the form from the kohya config", elem_id="train-kohya-load")
        c["kohya_status"] = gr.Markdown(elem_id="train-kohya-status")
        c["kohya_extra"] = gr.State({})  # the loaded config's values that have no field here


def _setting_widget(key: str, label: str, kind: str, value):
    info = setting_help(key)
    elem_id = "train-" + key.replace(".", "-").replace("_", "-")
    if kind == "choice":
        return gr.Dropdown(setting_choices(key), value=value, label=label, info=info, elem_id=elem_id)
    if kind == "bool":
        return gr.Checkbox(value=value, label=label, info=info, elem_id=elem_id)
    if kind in ("int", "float"):
        return gr.Number(value=value, label=label, info=info, precision=0 if kind == "int" else None,
                         elem_id=elem_id, min_width=140)
    lines = 3 if kind == "list" else 1
    return gr.Textbox(value=value, label=label, info=info, lines=lines, elem_id=elem_id)


def _form(values: dict, c: dict[str, Any]) -> dict[str, Any]:
    form = gather(values, c["settings"])
    form.update(gather(values, {c["base"]: "model.base", c["preset"]: "preset", c["dataset"]: "data.path",
                                c["kohya_extra"]: "kohya"}))
    if not form.get("data.path"):
        form["data.path"] = values.get(c["data_path"], "")
    return form


def _poll_outputs(app, job_id):
    view = poll(app, job_id)
    result = gr.File(value=view["result"]) if view["result"] else gr.File(value=None)
    return (view["progress"], loss_frame(view["losses"], view["val_losses"]), view["samples"], view["queue"], result,
            view["status"], gr.Timer(active=not view["finished"]))


def _wire(app, c: dict[str, Any]) -> None:
    settings = list(c["settings"])
    # a preset starts the form over: a kohya config loaded before no longer adds its field-less values
    c["preset"].change(bound(lambda preset, base: [*preset_values(preset, base=app.base_model(base),
                                                                  user=user_presets_dir(app)).values(), {}]),
                       [c["preset"], c["base"]], [*settings, c["kohya_extra"]], api_name="train_preset")
    c["base"].change(bound(base_changed, app), [c["base"], c["preset"]], settings, api_name="train_base")
    resolution = next(w for w, key in c["settings"].items() if key == "data.resolution")
    resolution.change(bound(resolution_note, app), [c["base"], resolution], c["resolution_note"],
                      api_name="train_resolution_note", show_progress="hidden")
    c["load"].click(bound(load_dataset, app), [c["data_path"], c["upload"]],
                    [c["dataset"], c["thumbs"], c["captions"], c["data_summary"]], api_name="train_load_data"
                    ).failure(drop_vanished, c["upload"], c["upload"])
    c["add_trigger"].click(bound(add_trigger), [c["captions"], c["bulk_trigger"]], c["captions"],
                           api_name="train_add_trigger")
    c["save_captions"].click(bound(save_captions, app), [c["dataset"], c["captions"]],
                             [c["dataset"], c["data_summary"]], api_name="train_save_captions")
    form_inputs = {*settings, c["base"], c["preset"], c["dataset"], c["data_path"], c["kohya_extra"]}
    start = bound(lambda values: start_training(app, _form(values, c)))
    c["start"].click(start, form_inputs, [c["job_id"], c["status"]], api_name="train_start").success(
        lambda: gr.Timer(active=True), None, c["timer"])
    c["cancel"].click(bound(cancel_training, app), c["job_id"], c["status"], api_name="train_cancel")
    save = bound(lambda values: save_preset(app, values[c["preset_name"]], _form(values, c)))
    c["save_preset"].click(save, {*form_inputs, c["preset_name"]}, [c["status"], c["preset"]],
                           api_name="train_save_preset")
    c["kohya_load"].click(bound(load_kohya, app), [c["kohya_path"], c["kohya_upload"]],
                          [*settings, c["kohya_status"], c["kohya_extra"]], api_name="train_load_kohya")
    poll_outputs = [c["progress"], c["loss_plot"], c["samples"], c["queue"], c["result"], c["status"], c["timer"]]
    c["timer"].tick(bound(_poll_outputs, app), c["job_id"], poll_outputs, api_name="train_poll",
                    show_progress="hidden")
    c["queue_timer"].tick(bound(queue_rows, app), None, c["queue"], api_name="train_queue",
                          show_progress="hidden")
    runs_view.wire(app, c)
    caption_panel.wire(app, c)
