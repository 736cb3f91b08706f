"""FLUX.1 transformer names: the original (Black Forest Labs) layout <-> diffusers' FluxTransformer2DModel.
Standard library only.

sdlora's canonical FLUX names are diffusers paths (`transformer.transformer_blocks.3.attn.to_q`). The original
layout, which sd-scripts' Kohya names (`lora_unet_double_blocks_3_img_attn_qkv`) and the `diffusion_model.` files
spell, fuses several diffusers layers into one: a double block's `img_attn.qkv` is `to_q`, `to_k`, `to_v` stacked
by output rows, a single block's `linear1` is `to_q`, `to_k`, `to_v` and `proj_mlp` stacked, and the final
`adaLN_modulation.1` holds (shift, scale) where diffusers' `norm_out.linear` holds (scale, shift).
A LoRA on a fused layer is therefore exactly a LoRA per part: the same down factor, the up factor's rows of that
part (docs/formats.md §2.14).

`ORIGINAL_PARTS` below gives, per original layer name, its diffusers parts and the rule that splits its output
rows; `row_slices` turns the rule into row ranges from the fused layer's own shape, so the split is the same
for the real model and for a reduced test model.
"""

from __future__ import annotations

import re

# rules: "same" one part, all rows; "thirds" q/k/v, equal thirds; "linear1" q/k/v of width `in`, then the MLP;
# "swap" the two halves exchanged (original shift, scale -> diffusers scale, shift)
_DOUBLE = {
    "img_attn.qkv": (("attn.to_q", "attn.to_k", "attn.to_v"), "thirds"),
    "txt_attn.qkv": (("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), "thirds"),
    "img_attn.proj": (("attn.to_out.0",), "same"),
    "txt_attn.proj": (("attn.to_add_out",), "same"),
    "img_mlp.0": (("ff.net.0.proj",), "same"),
    "img_mlp.2": (("ff.net.2",), "same"),
    "txt_mlp.0": (("ff_context.net.0.proj",), "same"),
    "txt_mlp.2": (("ff_context.net.2",), "same"),
    "img_mod.lin": (("norm1.linear",), "same"),
    "txt_mod.lin": (("norm1_context.linear",), "same"),
}
_SINGLE = {
    "linear1": (("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), "linear1"),
    "linear2": (("proj_out",), "same"),
    "modulation.lin": (("norm.linear",), "same"),
}
_TOP = {
    "img_in": (("x_embedder",), "same"),
    "txt_in": (("context_embedder",), "same"),
    "time_in.in_layer": (("time_text_embed.timestep_embedder.linear_1",), "same"),
    "time_in.out_layer": (("time_text_embed.timestep_embedder.linear_2",), "same"),
    "vector_in.in_layer": (("time_text_embed.text_embedder.linear_1",), "same"),
    "vector_in.out_layer": (("time_text_embed.text_embedder.linear_2",), "same"),
    "guidance_in.in_layer": (("time_text_embed.guidance_embedder.linear_1",), "same"),
    "guidance_in.out_layer": (("time_text_embed.guidance_embedder.linear_2",), "same"),
    "final_layer.linear": (("proj_out",), "same"),
    "final_layer.adaLN_modulation.1": (("norm_out.linear",), "swap"),
}
_BLOCK = re.compile(r"^(single_)?transformer_blocks\.(\d+)\.")


def original_parts(transformer_paths) -> dict[str, tuple[tuple[str, ...], str]]:
    """{original layer path: (diffusers paths of its parts, split rule)} for the original layers whose parts
    are all in `transformer_paths` (diffusers module paths of a FluxTransformer2DModel, no component prefix)."""
    paths = set(transformer_paths)
    doubles = sorted({int(m.group(2)) for m in map(_BLOCK.match, paths) if m and not m.group(1)})
    singles = sorted({int(m.group(2)) for m in map(_BLOCK.match, paths) if m and m.group(1)})
    found = {}
    for name, (parts, rule) in _TOP.items():
        found[name] = (parts, rule)
    for i in doubles:
        for name, (parts, rule) in _DOUBLE.items():
            found[f"double_blocks.{i}.{name}"] = (tuple(f"transformer_blocks.{i}.{p}" for p in parts), rule)
    for i in singles:
        for name, (parts, rule) in _SINGLE.items():
            found[f"single_blocks.{i}.{name}"] = (tuple(f"single_transformer_blocks.{i}.{p}" for p in parts), rule)
    return {name: value for name, value in found.items() if all(p in paths for p in value[0])}


def row_slices(rule: str, out_rows: int, in_width: int) -> list[list[tuple[int, int]]]:
    """Per part, the row ranges of the fused layer (out_rows x in_width) that make that part, in order.

    Raises:
        ValueError: the shape cannot be split by the rule (e.g. rows not divisible by three).
    """
    if rule == "same":
        return [[(0, out_rows)]]
    if rule == "thirds":
        if out_rows % 3:
            raise ValueError(f"a fused q/k/v layer needs rows divisible by 3, not {out_rows}")
        third = out_rows // 3
        return [[(i * third, (i + 1) * third)] for i in range(3)]
    if rule == "linear1":
        if out_rows <= 3 * in_width:
            raise ValueError(f"a single block's linear1 needs more than 3 x {in_width} rows, not {out_rows}")
        return [[(i * in_width, (i + 1) * in_width)] for i in range(3)] + [[(3 * in_width, out_rows)]]
    if rule == "swap":
        if out_rows % 2:
            raise ValueError(f"an adaLN modulation layer needs an even row count, not {out_rows}")
        half = out_rows // 2
        return [[(half, out_rows), (0, half)]]
    raise ValueError(f"unknown split rule {rule!r}")
