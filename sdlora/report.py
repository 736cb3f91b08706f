"""Load report: every file key of a LoRA gets a verdict against a model family or a live model's module table.

Standard library only at import time (the LoRA object is passed in; shapes come from its modules).

Verdicts (per file key):
- "applied": the key's module exists in the target and its ΔW has the module's weight shape (a flattened conv
  ΔW, or a Linear ΔW for a 1x1 conv, counts when it reshapes exactly);
- "unknown_module": no such module in the target (with the nearest module name);
- "shape_mismatch": the module exists but ΔW has another shape (both shapes given);
- "unsupported_kind": the reader or this check does not support the adapter kind (OFT, IA3, GLoRA, ...);
- "ignored": a key the reader skipped on purpose because it carries no weights (reported, never hidden);
- "extra": bundled data that is not a module, e.g. a textual-inversion embedding.
The first four are the contract of docs/ARCHITECTURE.md; a report is `ok` when no key is unknown,
mismatched or unsupported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from math import prod

from sdlora.arch.family import EMBEDDED, FAMILY_NAMES, describe_family
from sdlora.arch.naming import nearest_name
from sdlora.arch.tables import ModuleInfo, ModuleTable, family_table
from sdlora.errors import SdloraError

# a raw key's component by its prefix, in any dialect (Kohya lora_te1_/lora_te2_, diffusers, PEFT, LDM), the
# second text encoder first
_KEY_COMPONENTS = (
    (re.compile(r"^lora_te2_|text_encoder_2|conditioner\.embedders\.1"), "text_encoder_2"),
    (re.compile(r"^lora_te1?_|text_encoder|text_model|cond_stage_model|conditioner"), "text_encoder"),
    (re.compile(r"^lora_unet_|unet|diffusion_model"), "unet"),
)
VERDICTS = ("applied", "unknown_module", "shape_mismatch", "unsupported_kind", "ignored", "extra")
FAILURES = frozenset({"unknown_module", "shape_mismatch", "unsupported_kind"})
SUPPORTED_KINDS = ("lora", "loha", "lokr", "full")


@dataclass(frozen=True)
class KeyVerdict:
    """The verdict on one file key.

    Attributes:
        key: the key as stored in the file.
        verdict: one of VERDICTS.
        module: the canonical module name the key belongs to (None when the reader could not name one).
        detail: a sentence for the user.
        nearest: for "unknown_module", the closest module name of the target.
        expected_shape: for "shape_mismatch", the target's weight shape.
        found_shape: for "shape_mismatch", the LoRA's ΔW shape.
    """

    key: str
    verdict: str
    module: str | None = None
    detail: str = ""
    nearest: str | None = None
    expected_shape: tuple[int, ...] | None = None
    found_shape: tuple[int, ...] | None = None

    @property
    def component(self) -> str:
        """ "unet", "text_encoder", "text_encoder_2", or "other" (extras, keys of no component); a key the
        reader could not name a module for counts under the component its prefix names."""
        if self.module and "." in self.module:
            return self.module.split(".", 1)[0]
        if self.verdict == "extra":
            return "other"
        return next((component for pattern, component in _KEY_COMPONENTS if pattern.search(self.key)), "other")


@dataclass
class LoadReport:
    """Verdicts for every key of one LoRA against one target."""

    verdicts: list[KeyVerdict]
    target: str
    target_family: str | None = None
    lora_family: str | None = None
    path: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every key was applied (or is an ignored placeholder / extra)."""
        return not any(v.verdict in FAILURES for v in self.verdicts)

    @property
    def family_mismatch(self) -> str | None:
        """A sentence when the LoRA's family differs from the target's, else None."""
        if self.lora_family and self.target_family and self.lora_family != self.target_family:
            return (
                f"family mismatch: this LoRA is for {family_label(self.lora_family)}, "
                f"the target is {family_label(self.target_family)}"
            )
        return None

    def problems(self) -> list[KeyVerdict]:
        return [v for v in self.verdicts if v.verdict in FAILURES]

    def counts(self) -> dict[str, dict[str, int]]:
        """{component: {verdict: number of keys}} (only verdicts that occur)."""
        table: dict[str, dict[str, int]] = {}
        for v in self.verdicts:
            row = table.setdefault(v.component, {})
            row[v.verdict] = row.get(v.verdict, 0) + 1
        return table

    def summary(self) -> str:
        applied = sum(v.verdict == "applied" for v in self.verdicts)
        return f"{applied} of {len(self.verdicts)} keys applied" + (
            "" if self.ok else f", {len(self.problems())} not"
        )

    def to_dict(self) -> dict:
        """A JSON-ready dict (for `sdlora verify --json`)."""
        return {
            "path": self.path,
            "target": self.target,
            "target_family": self.target_family,
            "lora_family": self.lora_family,
            "ok": self.ok,
            "family_mismatch": self.family_mismatch,
            "summary": self.summary(),
            "notes": list(self.notes),
            "counts": self.counts(),
            "keys": [_verdict_dict(v) for v in self.verdicts],
        }

    def format_table(self, all_keys: bool = False) -> str:
        """Human-readable report: header, counts per component, then every problem key (or every key)."""
        lines = [f"target: {self.target}", f"LoRA family: {_family_text(self.lora_family)}"]
        lines += [f"note: {note}" for note in self.notes]
        lines.append("")
        lines += _counts_lines(self.counts())
        shown = self.verdicts if all_keys else [v for v in self.verdicts if v.verdict != "applied"]
        if shown:
            width = max(len(v.key) for v in shown)
            lines += ["", f"{'key':<{width}}  verdict           detail"]
            lines += [f"{v.key:<{width}}  {v.verdict:<16}  {_detail(v)}" for v in shown]
        lines += ["", ("OK: " if self.ok else "NOT OK: ") + self.summary()]
        return "\n".join(lines)


def family_label(family: str) -> str:
    """SD1.x / SD2.x / SDXL, or "the embedded model"."""
    return "the embedded model" if family == EMBEDDED else FAMILY_NAMES[family]


def _family_text(family: str | None) -> str:
    return family_label(family) if family else "unknown (custom model)"


def _verdict_dict(v: KeyVerdict) -> dict:
    data = {k: val for k, val in asdict(v).items() if val not in (None, "")}
    for name in ("expected_shape", "found_shape"):
        if name in data:
            data[name] = list(data[name])
    return data


def _counts_lines(counts: Mapping[str, Mapping[str, int]]) -> list[str]:
    present = [verdict for verdict in VERDICTS if any(verdict in row for row in counts.values())]
    header = f"{'component':<16}" + "".join(f"{verdict:>18}" for verdict in present)
    rows = [
        f"{comp:<16}" + "".join(f"{row.get(verdict, 0):>18}" for verdict in present)
        for comp, row in counts.items()
    ]
    return [header, *rows]


def _detail(v: KeyVerdict) -> str:
    parts = [v.detail] if v.detail else []
    if v.nearest:
        parts.append(f"nearest module: {v.nearest}")
    return "; ".join(parts)


# ----------------------------------------------------------------------------------------------------------


def _resolve_target(target) -> tuple[Mapping[str, ModuleInfo], str, str | None]:
    """(table, description, family) for a family name or a module table."""
    if isinstance(target, str):
        return family_table(target), f"{FAMILY_NAMES[target]} ({target})", target
    if isinstance(target, Mapping):
        family = getattr(target, "family", None)
        components = (
            target.components()
            if isinstance(target, ModuleTable)
            else sorted({n.split(".")[0] for n in target})
        )
        text = f"model with {len(target)} modules ({', '.join(components)})"
        return target, text + (f", {FAMILY_NAMES[family]}" if family else ""), family
    raise TypeError(f"target must be a family name or a module table, not {type(target).__name__}")


def _shapes_fit(found: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Equal, or the same out dim and element count (flattened conv ΔW, Linear ΔW for a 1x1 conv)."""
    if tuple(found) == tuple(expected):
        return True
    return bool(found) and found[0] == expected[0] and prod(found) == prod(expected)


def _missing_detail(name: str, table: Mapping[str, ModuleInfo]) -> str:
    component = name.split(".", 1)[0]
    if not any(key.startswith(component + ".") for key in table):
        return f"the target has no {component}"
    return f"the target has no module {name}"


def module_verdict(name: str, module, table: Mapping[str, ModuleInfo]) -> KeyVerdict:
    """The verdict for canonical module `name` (a LoraModule) against `table`; `key` is left as the name."""
    if module.kind not in SUPPORTED_KINDS:
        return KeyVerdict(name, "unsupported_kind", name, f"adapter kind {module.kind!r} is not supported")
    info = table.get(name)
    if info is None:
        return KeyVerdict(
            name, "unknown_module", name, _missing_detail(name, table), nearest_name(name, table)
        )
    try:
        found = tuple(module.delta_shape())
    except (KeyError, ValueError, IndexError) as err:
        return KeyVerdict(
            name, "shape_mismatch", name, f"the factors do not combine ({err})", None, info.shape
        )
    if not _shapes_fit(found, info.shape):
        detail = f"ΔW is {_shape_text(found)}, the {info.layer} weight is {_shape_text(info.shape)}"
        return KeyVerdict(name, "shape_mismatch", name, detail, None, tuple(info.shape), found)
    return KeyVerdict(name, "applied", name)


def _shape_text(shape) -> str:
    return "x".join(str(d) for d in shape) if shape else "a scalar"


def _family_from_modules(lora) -> str | None:
    """The LoRA's family from its ΔW shapes (a loader given a model table may have adopted the table's family)."""
    shapes = {}
    for name, module in lora.modules.items():
        try:
            shape = tuple(module.delta_shape())
        except (KeyError, ValueError, IndexError):
            continue
        if len(shape) == 2:  # pseudo full-diff keys: detect_family reads their input width
            shapes[f"{name}.diff"] = shape
    try:
        return describe_family(shapes) or lora.family
    except SdloraError:
        return lora.family


def check_lora(lora, target, target_family: str | None = None) -> LoadReport:
    """Give every key of `lora` (a LoraState) a verdict against `target`.

    Args:
        lora: the LoRA as read by `sdlora.load_lora` (uses modules, source_keys, issues, extras, family).
        target: a family name ("sd1", "sd2", "sdxl") or a module table (`tables.table_for_model(...)`,
            `tables.build_table_from_config_dir(...)`).
        target_family: the target's family when its table cannot tell: "embedded" for the embedded model.

    Returns:
        The report; nothing is left out: keys the reader could not read keep the reader's verdict.
    """
    table, description, table_family = _resolve_target(target)
    target_family = target_family or table_family
    if target_family == EMBEDDED:
        description = description.replace("model with", "the embedded model with", 1)
    verdicts = []
    for name, module in lora.modules.items():
        verdict = module_verdict(name, module, table)
        for key in lora.source_keys.get(name) or [name]:
            verdicts.append(replace(verdict, key=key))
    for issue in lora.issues:
        verdicts.append(KeyVerdict(issue.key, issue.verdict, None, issue.detail))
    for group, items in (lora.extras or {}).items():
        for token in items:
            detail = f"bundled {group.removesuffix('s')} {token!r}, not a module"
            verdicts.append(KeyVerdict(f"{group}:{token}", "extra", None, detail))
    lora_family = lora.family if isinstance(target, str) else _family_from_modules(lora)
    report = LoadReport(verdicts, description, target_family, lora_family, getattr(lora, "path", None))
    report.notes.extend(getattr(lora, "notes", ()))
    if report.family_mismatch:
        report.notes.append(report.family_mismatch + "; use a base model of the LoRA's family")
    return report
