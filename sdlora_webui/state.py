"""The per-app state object: configured folders, the job queue, the generation pipeline and its stack.

One `AppState` is created by whoever builds the app (the CLI, a test) and passed to `build_app`;
handlers receive it explicitly. Nothing here is module-level: two apps in one process (as in the
tests) never share anything. Per-session values (the caption table, the current job id, the stack
slots a user set up) live in gradio components and `gr.State`, not here.
"""

from __future__ import annotations

import glob
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdlora.base.fit import Fit, check_fit, fit_shape, read_lora_shape
from sdlora.base.listing import describe_base, list_bases
from sdlora.base.load import load_base
from sdlora.errors import ConfigError, SdloraError
from sdlora.library import TRASH, library_files
from sdlora.library import scan as scan_library
from sdlora_webui.jobs import JobQueue
from sdlora_webui.paths import AccessError, check_name_lengths, resolve_within
from sdlora_webui.uploads import UploadLimits

log = logging.getLogger(__name__)
DEFAULT_MAX_WORK = 1024 * 1024 * 100  # a 1024x1024 image at 100 steps (or 512x512 at 400)


class NotInLibrary(AccessError):
    """No LoRA of that name in the library folder."""


@dataclass(frozen=True)
class AppConfig:
    """Where the app may read and write, and which base model it uses.

    lora_dir: the LoRA library (read and write: uploads, results added to the library).
    extra_lora_dirs: more library roots (`sdlora webui --lora-dir A --lora-dir B`: B onwards), read and write
        (moves between roots, duplicates to each root's .trash/); uploads go to lora_dir.
    output_dir: training runs, tool outputs, uploaded data sets (read and write).
    data_dirs: extra folders the user may train from (read only; e.g. the repository's sample_data/).
    model_dirs: extra folders holding base models (read only).
    base: the default base model: "embedded" or a path inside model_dirs / output_dir.
    allow_pickle: let .ckpt/.pt/.pth/.bin models be loaded (`sdlora webui --allow-pickle`).
    max_work: the most work one generation request may ask for, in pixels x steps x images (0: no limit);
        generation holds a lock, so one huge request would stall every other user.
    """

    lora_dir: Path
    output_dir: Path
    extra_lora_dirs: tuple[Path, ...] = ()
    base: str = "embedded"
    data_dirs: tuple[Path, ...] = ()
    model_dirs: tuple[Path, ...] = ()
    limits: UploadLimits = field(default_factory=UploadLimits)
    allow_pickle: bool = False
    max_work: int = DEFAULT_MAX_WORK

    @property
    def lora_dirs(self) -> list[Path]:
        """Every library root, lora_dir first."""
        return [Path(self.lora_dir), *map(Path, self.extra_lora_dirs)]

    @property
    def write_roots(self) -> list[Path]:
        return [*self.lora_dirs, Path(self.output_dir)]

    @property
    def bake_dir(self) -> Path:
        """Where the Tools tab's Bake writes models: `<output>/models` (the app writes only inside lora_dir
        and output_dir, so never into the read-only model_dirs). Lists of base models include it."""
        return Path(self.output_dir) / "models"

    @property
    def model_search_dirs(self) -> list[Path]:
        """The folders a base-model menu searches: model_dirs, then bake_dir (baked models)."""
        return [*map(Path, self.model_dirs), self.bake_dir]

    @property
    def read_roots(self) -> list[Path]:
        return [*self.write_roots, *map(Path, self.data_dirs), *map(Path, self.model_dirs)]


class AppState:
    """Shared by every session of one app: folders, jobs, and the lazily loaded generation pipeline."""

    def __init__(self, config: AppConfig, *, pipeline_factory: Callable[[str], Any] | None = None):
        self.config = config
        for folder in config.write_roots:
            folder.mkdir(parents=True, exist_ok=True)
        self.jobs = JobQueue()
        # generation holds this lock: one image at a time, and the stack is synced under it
        self.generate_lock = threading.Lock()
        self._pipeline_factory = pipeline_factory
        self._pipeline: Any = None
        self._stack: Any = None
        self._pipeline_base: str | None = None
        self.model_name = ""
        self.current_base: str | None = None  # the Base menu's choice; None: config.base (one pipeline per app)
        self.stop_requested = threading.Event()  # the Interrupt button; generation checks it after every step
        self._base_info: dict[str, Any] = {}

    # -- paths ------------------------------------------------------------------------------
    def read_path(self, user_path: str, *, default_root: Path | None = None) -> Path:
        """A user-typed path the app may read (inside any configured folder); raises AccessError."""
        return resolve_within(user_path, self.config.read_roots, default_root=default_root)

    def write_path(self, user_path: str, *, default_root: Path | None = None) -> Path:
        """A user-typed path the app may write (inside lora_dir or output_dir); raises AccessError."""
        root = default_root or Path(self.config.output_dir)
        return resolve_within(user_path, self.config.write_roots, default_root=root, must_exist=False)

    def library(self) -> dict[str, Path]:
        """{name (file stem): resolved path} of the library's LoRAs; names whose file resolves outside the
        allowed folders (a symlink pointing elsewhere) are left out, with a log line."""
        found = {}
        for path in [p for root in self.config.lora_dirs for p in library_files(root)]:
            if path.stem in found:
                continue  # the first root wins, as in the Library tab
            try:
                found[path.stem] = self.read_path(str(path))
            except AccessError as err:
                log.warning("library: %s left out: %s", path.name, err)
        return found

    @property
    def library_cache(self) -> Path:
        """The library's header cache, kept in the output folder (one per app)."""
        return Path(self.config.output_dir) / ".cache" / "library-cache.json"

    def library_scan(self) -> Any:
        """The `sdlora.library` scan of the library roots (headers, cached), less the files `library()` leaves
        out: a file linking outside the allowed folders is never read, listed or offered."""
        return scan_library(self.config.lora_dirs, cache_path=self.library_cache, keep=self._inside)

    def _inside(self, path: Path) -> bool:
        """Whether a library file resolves inside the allowed folders (a symlink may point elsewhere)."""
        try:
            self.read_path(str(path))
        except AccessError as err:
            log.warning("library: %s left out: %s", path.name, err)
            return False
        return True

    def library_path(self, name: str) -> Path:
        """The file of the library LoRA `name`, resolved and confined like a typed path; raises AccessError."""
        name = (name or "").strip()
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise NotInLibrary(f"{name!r} is not a library name (a file stem in the LoRA folder)")
        check_name_lengths(f"{name}.safetensors")
        found = [p for root in self.config.lora_dirs
                 for p in sorted(root.rglob(f"{glob.escape(name)}.safetensors"))
                 if p.stem == name and not p.is_relative_to(root / TRASH)]
        if not found:
            raise NotInLibrary(f"no LoRA named {name!r} in the library")
        return self.read_path(str(found[0]))

    def check_work(self, width: int, height: int, steps: int, images: int = 1) -> None:
        """Refuse a generation request over `config.max_work` (pixels x steps x images), with the numbers."""
        work = width * height * steps * images
        limit = self.config.max_work
        if limit and work > limit:
            raise ConfigError(f"this request is too large for this server: {width}x{height} x {steps} steps x "
                              f"{images} image(s) = {work:,} pixel-steps, the limit is {limit:,}; lower the size "
                              "or the steps (the limit is set with sdlora webui --max-work)")

    def is_writable(self, path: Path) -> bool:
        try:
            resolve_within(str(path), self.config.write_roots, must_exist=False)
        except AccessError:
            return False
        return True

    def base_model(self, user_value: str | None) -> str:
        """'embedded' stays a name; anything else must be a path inside the configured folders.
        Empty means the Base menu's current choice (else the configured default)."""
        value = (user_value or "").strip() or self.current_base or self.config.base
        if value == "embedded":
            return value
        return str(self.read_path(value))

    # -- base models ----------------------------------------------------------------------
    def bases(self) -> list[Any]:
        """The Base menu: the configured default first, "embedded", then every model in the model folders and
        the bake folder (`model_search_dirs`; `sdlora.base.listing.BaseModel`s, read from configs and headers
        only)."""
        return list_bases(self.config.model_search_dirs, default=self.base_model(self.config.base))

    def base_info(self, base: str | None = None) -> Any:
        """The `BaseModel` of `base` (default: the current one), described once per path."""
        value = self.base_model(base)
        if value not in self._base_info:
            self._base_info[value] = describe_base(value)
        return self._base_info[value]

    def fit(self, name: str, base: str | None = None) -> Any:
        """Whether library LoRA `name` fits `base` (default: the current one): a `sdlora.base.fit.Fit`, from
        headers only (for a Library column and the stack's add check)."""
        return check_fit(self.library_path(name), self.base_info(base))

    def library_fits(self, base: str | None = None) -> dict[str, Any]:
        """{library name: `sdlora.base.fit.Fit`} against `base` (default: the current one), headers only: for a
        Library "fits" column (`fit.short` is the cell, `fit.reason` the tooltip/detail)."""
        info = self.base_info(base)
        fits = {}
        for name, path in self.library().items():
            try:
                fits[name] = fit_shape(read_lora_shape(path), info)
            except (SdloraError, OSError) as err:
                fits[name] = Fit(False, None, f"cannot be used: {err}")
        return fits

    def select_base(self, user_value: str) -> str:
        """Make `user_value` the base generation uses (checked like a typed path); the pipeline is loaded
        by the next `pipeline_and_stack` (call it with generate_lock held to switch now)."""
        value = self.base_model(user_value)
        self.base_info(value)  # refuse what is no base model before anything changes
        self.current_base = value
        return value

    # -- generation pipeline ---------------------------------------------------------------
    def pipeline_and_stack(self, base: str | None = None) -> tuple[Any, Any]:
        """The generation pipeline and its LoraStack, loaded once (call with generate_lock held).

        A different base reloads the pipeline; the old one and its stack are freed first (two SDXL models
        would not fit in memory together).
        """
        base = self.base_model(base)
        if self._pipeline is None or base != self._pipeline_base:
            self._free_pipeline()
            log.info("loading base model %s for generation", base)
            if self._pipeline_factory is not None:
                self._pipeline = self._pipeline_factory(base)
            else:
                self._pipeline = _default_pipeline(base, self.config.allow_pickle)
            self.model_name = "embedded" if base == "embedded" else Path(base).stem
            from sdlora.stack import LoraStack

            # exact: a moved slider recomputes that LoRA's layers from W0 (about the cost of an in-place update), so
            # an image depends only on the strengths, never on the slider's path: grid cells equal single images
            self._stack = LoraStack(self._pipeline, exact=True)
            self._pipeline_base = base
        return self._pipeline, self._stack

    def _free_pipeline(self) -> None:
        if self._pipeline is None:
            return
        self._pipeline = self._stack = self._pipeline_base = None
        import gc

        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def close(self) -> None:
        self.jobs.close()


def _default_pipeline(base: str, allow_pickle: bool) -> Any:
    return load_base(base, allow_pickle=allow_pickle)[0]
