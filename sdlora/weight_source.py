"""Where a live weight came from (file, key, dtype), so that LoraStack can read W0 back from the model file
instead of keeping a copy of every patched weight.

Depends on torch and safetensors; sdlora.arch.ldm_keys names the keys of single-file checkpoints.

A component (UNet, text encoder) gets a `ComponentSource` in one of two ways:
* `record_folder` / `record_single_file`, called by `sdlora.base.load` right after it loaded the weights: the
  file's identity is taken then, so a file changed between load and the first patch is noticed;
* `source_of` finds it for a pipeline loaded elsewhere (`diffusers` `from_pretrained` of a local folder):
  the component's `config._name_or_path` names its folder. The identity is then taken at the first patch.

A parameter is file-backed only when its file key maps 1:1 onto it with the same shape: weights the loader
fuses or splits (OpenCLIP's `in_proj_weight`) are not, and LoraStack keeps a copy of those. W0 is
`file[key].to(live dtype)`: the conversion the loaders apply (`tensor.to(dtype)` is deterministic), so a
restore is bit-exact. `ParamSource.matches` compares sampled rows of the live weight with the file before
the stack relies on it, which catches a wrong mapping or a model changed after loading.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from sdlora.arch.ldm_keys import CHECKPOINT_LAYOUT, clip_to_ldm, open_clip_to_ldm, unet_to_ldm
from sdlora.errors import FormatError

log = logging.getLogger(__name__)

SOURCE_ATTR = "_sdlora_weight_source"  # set on a component module by record_* (a plain attribute)
SAMPLE_BLOCK = 64 * 1024
SAMPLE_BLOCKS = 4
# the single weights file, or the index of its shards, that diffusers / transformers read from a folder
_FOLDER_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")
_INDEX_SUFFIX = ".index.json"


class FileIdentity(NamedTuple):
    """What tells a model file apart from a changed one: size, mtime and a hash of a few sampled blocks
    (the whole file is never read: a rewrite that keeps size and mtime is caught when it touches the samples)."""

    size: int
    mtime_ns: int
    sample: str


def file_identity(path: Path) -> FileIdentity:
    stat = path.stat()
    digest = hashlib.blake2b(digest_size=16)
    last = max(stat.st_size - SAMPLE_BLOCK, 0)
    offsets = sorted({last * i // (SAMPLE_BLOCKS - 1) for i in range(SAMPLE_BLOCKS)})
    with path.open("rb") as handle:
        for offset in offsets:
            handle.seek(offset)
            digest.update(handle.read(SAMPLE_BLOCK))
    return FileIdentity(stat.st_size, stat.st_mtime_ns, digest.hexdigest())


@dataclass(eq=False)
class SourceFile:
    """One safetensors file that weights were loaded from, with its identity at load time (None: not known
    yet; taken when the stack first relies on the file)."""

    path: Path
    identity: FileIdentity | None = None
    _shapes: dict[str, tuple[int, ...]] | None = field(default=None, repr=False)
    _handles: dict[str, object] = field(default_factory=dict, repr=False)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """{key: shape} from the header (read once; no tensor is read)."""
        if self._shapes is None:
            from safetensors import safe_open

            with safe_open(str(self.path), framework="pt") as handle:
                self._shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118
        return self._shapes

    def unchanged(self) -> bool:
        """Whether the file is still the one the weights came from (recording its identity if unknown)."""
        try:
            now = file_identity(self.path)
        except OSError:
            return False
        if self.identity is None:
            self.identity = now
        return now == self.identity

    def handle(self, device: torch.device):
        """An open `safe_open` on `device` (memory-mapped), kept until `close`: LoraStack closes it after
        each operation, so that a file replaced later is never read through a stale mapping."""
        key = str(device)
        if key not in self._handles:
            from safetensors import safe_open

            self._handles[key] = safe_open(str(self.path), framework="pt", device=key)
        return self._handles[key]

    def close(self) -> None:
        self._handles.clear()


@dataclass(frozen=True, eq=False)
class ParamSource:
    """Where one parameter's pristine value lives: `file[key]`, converted to the live dtype."""

    file: SourceFile
    key: str

    def read(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """W0, read from the file straight to `device` and converted like the loader did."""
        return self.file.handle(device).get_tensor(self.key).to(dtype)

    def matches(self, weight: torch.Tensor) -> bool:
        """Whether the first and last rows of the live `weight` equal the file's, bit for bit (a wrong key
        or conversion, or a model changed after loading, shows there; reading two rows is cheap)."""
        stored = self.file.handle(torch.device("cpu")).get_slice(self.key)
        last = weight.shape[0] - 1
        for row in sorted({0, last}):
            if not torch.equal(stored[row : row + 1].to(weight.dtype), weight[row : row + 1].detach().to("cpu")):
                return False
        return True


@dataclass(eq=False)
class ComponentSource:
    """{live parameter name: (file, key)} for one component (only the 1:1, same-shape ones)."""

    where: str  # for messages: the folder or checkpoint
    params: dict[str, ParamSource]

    @property
    def files(self) -> list[SourceFile]:
        return list({id(p.file): p.file for p in self.params.values()}.values())


def _build(model: torch.nn.Module, where: str, key_of: Callable[[str], str | None], files: dict[str, SourceFile]):
    """A ComponentSource over `model`'s parameters whose mapped key exists in `files` with the same shape."""
    params = {}
    for name, param in model.named_parameters():
        key = key_of(name)
        file = files.get(key) if key is not None else None
        if file is not None and file.shapes().get(key) == tuple(param.shape):
            params[name] = ParamSource(file, key)
    return ComponentSource(where, params)


# ----- diffusers / transformers folders ----------------------------------------------------------


def folder_files(folder: Path) -> dict[str, SourceFile] | None:
    """{key: SourceFile} of a component folder's safetensors weights (single file or shards), or None."""
    for name in _FOLDER_FILES:
        single = folder / name
        if single.is_file():
            file = SourceFile(single)
            return dict.fromkeys(file.shapes(), file)
        index = folder / (name + _INDEX_SUFFIX)
        if index.is_file():
            return _sharded(folder, index)
    return None


def _sharded(folder: Path, index: Path) -> dict[str, SourceFile] | None:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    shards = {name: SourceFile(folder / name) for name in set(weight_map.values())}
    if not all(shard.path.is_file() for shard in shards.values()):
        return None
    return {key: shards[name] for key, name in weight_map.items()}


def _folder_key(files: dict[str, SourceFile]) -> Callable[[str], str | None]:
    """Live name -> file key: equal, or with/without CLIP's `text_model.` level (transformers 5 drops it)."""

    def key_of(name: str) -> str | None:
        for key in (name, "text_model." + name, name.removeprefix("text_model.")):
            if key in files:
                return key
        return None

    return key_of


def record_folder(model: torch.nn.Module, folder: Path, identity: bool = True) -> ComponentSource | None:
    """Record that `model`'s weights were just loaded from the diffusers/transformers `folder`."""
    try:
        files = folder_files(Path(folder))
    except (OSError, FormatError, ValueError, RuntimeError):  # an unreadable header: no source
        return None
    if not files:
        return None
    source = _build(model, str(folder), _folder_key(files), files)
    if identity:
        for file in source.files:
            file.unchanged()  # takes the identity now, right after the load
    _attach(model, source)
    return source


# ----- single-file (LDM/SGM) checkpoints ------------------------------------------------------


def record_single_file(components: dict[str, torch.nn.Module], path: Path, family: str) -> None:
    """Record, for each component loaded from the single-file checkpoint `path`, which keys hold its
    weights unchanged (the LDM names of sdlora.arch.ldm_keys); call right after the load."""
    file = SourceFile(Path(path))
    try:
        files = dict.fromkeys(file.shapes(), file)
        file.unchanged()
    except (OSError, ValueError, RuntimeError):
        return
    for name, place in CHECKPOINT_LAYOUT.get(family, {}).items():
        model = components.get(name)
        if model is None or name == "vae":
            continue
        mapping = _ldm_mapping(model, place)
        if mapping:
            _attach(model, _build(model, str(path), mapping.get, files))


def _ldm_mapping(model: torch.nn.Module, place) -> dict[str, str]:
    """{live parameter name: checkpoint key} for the parameters the checkpoint stores unchanged. The
    ldm_keys converters rename a state dict; run on {name: name} they give {checkpoint key: live name}."""
    names = [name for name, _ in model.named_parameters()]
    try:
        if isinstance(place, str):  # the UNet
            renamed, prefix = unet_to_ldm({n: n for n in names}), place
        else:
            prefix, kind = place
            if kind == "clip":
                renamed = clip_to_ldm({n: n for n in names})
            else:  # OpenCLIP fuses q/k/v and transposes the projection: those are not stored 1:1
                kept = [n for n in names if not any(p in n for p in ("_proj.", "text_projection"))
                        or "out_proj" in n]
                renamed = open_clip_to_ldm({n: n for n in kept})
    except FormatError:
        return {}
    return {name: prefix + key for key, name in renamed.items() if isinstance(name, str)}


# ----- lookup ---------------------------------------------------------------------------------


def _attach(model: torch.nn.Module, source: ComponentSource) -> None:
    # object.__setattr__: nn.Module.__setattr__ would try to register it
    object.__setattr__(model, SOURCE_ATTR, source)


def source_of(model: torch.nn.Module) -> ComponentSource | None:
    """The recorded source of a component, else one found from its config's local folder, else None."""
    source = getattr(model, SOURCE_ATTR, None)
    if source is not None:
        return source
    folder = _config_folder(model)
    if folder is None:
        return None
    return record_folder(model, folder, identity=False)


def _config_folder(model) -> Path | None:
    """The local folder a diffusers/transformers model was loaded from (`config._name_or_path`), or None."""
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None)
    if name is None and isinstance(config, dict):
        name = config.get("_name_or_path")
    if not name or not isinstance(name, str | os.PathLike):
        return None
    folder = Path(name).expanduser()
    return folder if folder.is_dir() else None


# ----- file-mapped memory -------------------------------------------------------------------


def file_mapped_ranges() -> list[tuple[int, int]]:
    """Sorted (start, end) addresses of this process's writable private mappings of files: where diffusers
    leaves safetensors weights it loaded on the CPU (read lazily from the page cache). Linux only ([]
    elsewhere: every tensor then counts as ordinary memory)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[1] == "rw-p" and fields[5].startswith("/"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return sorted(ranges)


def is_file_mapped(tensor: torch.Tensor, ranges: list[tuple[int, int]]) -> bool:
    """Whether the tensor's memory lies in one of `ranges` (see file_mapped_ranges)."""
    address = tensor.data_ptr()
    index = bisect.bisect_right(ranges, (address, float("inf"))) - 1
    return index >= 0 and ranges[index][0] <= address < ranges[index][1]


_PAGE = 4096
_MADV_DONTNEED = 4


def release_mapped(tensor: torch.Tensor) -> None:
    """Drop this process's pages of a file-mapped tensor nobody will write (LoraStack swapped a patched copy
    in): they were never written, so a later read maps them from the file again, with the same bytes.
    Only whole pages inside the tensor are released (its neighbours in the mapping are left alone); a
    no-op where madvise is unavailable."""
    import ctypes

    start = -(-tensor.data_ptr() // _PAGE) * _PAGE
    end = (tensor.data_ptr() + tensor.nbytes) // _PAGE * _PAGE
    if end <= start:
        return
    madvise = _madvise()
    if madvise is not None:
        madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


@functools.cache
def _madvise():
    """libc's madvise, looked up once (a lookup per layer cost 0.25 ms x 264 on SD1.5), or None."""
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):  # no libc madvise (not Linux): the pages stay until reclaimed
        return None
