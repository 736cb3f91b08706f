"""FLUX.1 fused layers: split a LoRA on an original-layout layer into LoRAs on its diffusers parts, and join them
back for the Kohya writer (docs/formats.md §2.14). Both are exact: the parts' ΔW are the fused ΔW's rows.

Split: ΔW = s·B·A with the fused up factor B; part i keeps A and the rows of B in its row ranges
(`sdlora.arch.flux.row_slices`), so its ΔW is exactly the fused ΔW's rows (ComfyUI applies a fused LoRA to
split q/k/v the same way). Join: when every present part has the same down factor and scale, the fused LoRA
keeps that A and stacks the up rows (zero rows for a part the LoRA does not train); otherwise A is the parts'
down factors stacked and B is block-diagonal, each block scaled by its part's alpha/rank, with alpha = the
summed rank (scale 1), as sd-scripts' diffusers-to-Kohya FLUX conversion does.
"""

from __future__ import annotations

from sdlora.arch.flux import row_slices
from sdlora.errors import FormatError
from sdlora.weights import LoraModule


def splittable(module: LoraModule) -> bool:
    """Only plain LoRA pairs split by rows (LoHa/LoKr/Tucker/DoRA on a fused layer are reported, not guessed)."""
    return module.kind == "lora" and set(module.tensors) == {"down", "up"}


def split(module: LoraModule, parts: tuple[str, ...], rule: str, where: str) -> dict[str, LoraModule]:
    """{part canonical name: LoraModule} for a plain LoRA on a fused layer.

    Raises:
        FormatError: the up factor's rows cannot be split by `rule` (names `where`).
    """
    down, up = module.tensors["down"], module.tensors["up"]
    up2 = up.reshape(up.shape[0], -1)
    try:
        slices = row_slices(rule, int(up2.shape[0]), int(down.reshape(down.shape[0], -1).shape[1]))
    except ValueError as err:
        raise FormatError(f"{where}: {err}") from None
    import torch  # only when a fused layer is read

    result = {}
    for name, ranges in zip(parts, slices, strict=True):
        rows = torch.cat([up[start:stop] for start, stop in ranges])
        # own copies: tensors that share memory cannot be written to one safetensors file
        result[name] = LoraModule("lora", {"down": down.clone(), "up": rows.contiguous()}, alpha=module.alpha)
    return result


def join(modules: dict[str, LoraModule], parts: tuple[str, ...], rule: str, sizes: dict[str, int],
         where: str) -> LoraModule:  # fmt: skip
    """One LoRA on the fused layer from the LoRAs on (some of) its `parts`; `sizes` gives each part's row count.

    Raises:
        FormatError: a part is not a plain LoRA, or a missing part's size is unknown.
    """
    import torch

    present = {p: modules[p] for p in parts if p in modules}
    for name, module in present.items():
        if not splittable(module):
            raise FormatError(f"{name}: a {module.kind} module on a part of {where} cannot be joined into the fused "
                              "layer Kohya FLUX files use; write the LoRA as diffusers instead")
    in_width = int(next(iter(present.values())).tensors["down"].shape[1])
    sizes = {**sizes, **_implied_sizes(parts, rule, present, in_width)}
    missing = [p for p in parts if p not in sizes]
    if missing:
        raise FormatError(f"{where}: the size of {missing[0]} is unknown; cannot build the fused layer")
    out_rows = sum(sizes[p] for p in parts)
    slices = row_slices(rule, out_rows, in_width)
    first = next(iter(present.values()))
    downs = [m.tensors["down"] for m in present.values()]
    shared = all(torch.equal(d, downs[0]) for d in downs) and len({m.scale for m in present.values()}) == 1
    rank = first.rank if shared else sum(m.rank for m in present.values())
    dtype = first.tensors["up"].dtype
    up = torch.zeros(out_rows, rank, dtype=dtype)
    column = 0
    for part, ranges in zip(parts, slices, strict=True):
        module = present.get(part)
        if module is None:
            continue
        block = module.tensors["up"] if shared else module.tensors["up"].float() * module.scale
        width = block.shape[1]
        offset = 0
        for start, stop in ranges:
            up[start:stop, column : column + width] = block[offset : offset + stop - start].to(dtype)
            offset += stop - start
        column += 0 if shared else width
    if shared:
        return LoraModule("lora", {"down": downs[0], "up": up}, alpha=first.alpha)
    return LoraModule("lora", {"down": torch.cat(downs), "up": up}, alpha=float(rank))


def _implied_sizes(parts: tuple[str, ...], rule: str, present: dict[str, LoraModule], in_width: int) -> dict:
    """Row counts the rule itself fixes: q/k/v thirds are equal, a single block's q/k/v are `in_width` wide."""
    if rule == "thirds":
        rows = int(next(iter(present.values())).tensors["up"].shape[0])
        return dict.fromkeys(parts, rows)
    if rule == "linear1":
        return dict.fromkeys(parts[:3], in_width)
    return {}
