"""Per-block LoRA ranks, alphas and learning-rate weights, in sd-scripts' notation (the network_args
block_dims, block_alphas, conv_block_dims, conv_block_alphas, down_lr_weight, mid_lr_weight, up_lr_weight of
its networks/lora.py). Depends on sdlora.arch.blocks and sdlora.errors.

Blocks are sdlora.arch.blocks' names in sd-scripts' order: IN00..IN11, MID, OUT00..OUT11 for SD1/SD2 (25
values), IN00..IN08, MID, OUT00..OUT08 for SDXL (19). Text-encoder modules and UNet modules in no block (time
embedding, conv_out) keep lora.rank / lora.alpha and the plain UNet learning rate.
"""

from __future__ import annotations

from sdlora.arch.blocks import block_names
from sdlora.errors import ConfigError

RankTable = dict[str, tuple[int, float]]  # block -> (rank, alpha); rank 0: the block gets no LoRA


def unet_blocks(unet) -> list[str]:
    """The block names of `unet` (a diffusers UNet2DConditionModel), without the text encoders' BASE."""
    config = unet.config
    return block_names(len(config.down_block_types), len(config.up_block_types))[1:]


def _check_length(key: str, values: list, names: list[str], what: str = "") -> None:
    if len(values) != len(names):
        raise ConfigError(f"{key}: has {len(values)} values; this UNet has {len(names)} {what or 'blocks'} "
                          f"({names[0]}..{names[-1]}), one value each in that order")


def _table(dims_key: str, dims, alphas_key: str, alphas, default_alpha: float, names: list[str]):
    if dims is None:
        if alphas is not None:
            raise ConfigError(f"{alphas_key} is set but {dims_key} is not: give the ranks per block too")
        return None
    _check_length(dims_key, dims, names)
    if any(dim < 0 for dim in dims):
        raise ConfigError(f"{dims_key}: ranks must be 0 (no LoRA in that block) or more, got {dims}")
    alphas = alphas if alphas is not None else [default_alpha] * len(names)  # sd-scripts: network_alpha
    _check_length(alphas_key, alphas, names)
    return {name: (dim, float(alpha)) for name, dim, alpha in zip(names, dims, alphas, strict=True)}


def _no_lora_in(table: RankTable | None, blocks: set[str], rank: int, alpha: float, names: list[str]):
    if not blocks:
        return table
    table = dict(table) if table is not None else {name: (rank, alpha) for name in names}
    table.update({block: (0, table[block][1]) for block in blocks})
    return table


def rank_tables(cfg, names: list[str]) -> tuple[RankTable | None, RankTable | None]:
    """{block: (rank, alpha)} for Linear / 1x1-conv modules and for larger convs (None: the flat lora.rank /
    lora.conv_rank). A block whose learning-rate weight is 0 gets rank 0: a LoRA that never learns would only
    be exported as zeros."""
    lc = cfg.lora
    linear = _table("lora.block_dims", lc.block_dims, "lora.block_alphas", lc.block_alphas, lc.alpha, names)
    conv = _table("lora.conv_block_dims", lc.conv_block_dims, "lora.conv_block_alphas", lc.conv_block_alphas,
                  lc.conv_alpha, names)
    frozen = {block for block, weight in lr_weights(cfg, names).items() if weight == 0}
    return (_no_lora_in(linear, frozen, lc.rank, lc.alpha, names),
            _no_lora_in(conv, frozen, lc.conv_rank, lc.conv_alpha, names))


def lr_weights(cfg, names: list[str]) -> dict[str, float]:
    """{block: factor on the UNet learning rate} from optim.down_lr_weight (the IN blocks), mid_lr_weight and
    up_lr_weight (the OUT blocks); blocks not given are absent (factor 1)."""
    o = cfg.optim
    weights: dict[str, float] = {}
    for key, values, prefix in (("optim.down_lr_weight", o.down_lr_weight, "IN"),
                                ("optim.up_lr_weight", o.up_lr_weight, "OUT")):
        if values is not None:
            blocks = [name for name in names if name.startswith(prefix)]
            _check_length(key, values, blocks, f"{prefix} blocks")
            weights.update(zip(blocks, values, strict=True))
    if o.mid_lr_weight is not None:
        weights["MID"] = o.mid_lr_weight
    bad = {block: weight for block, weight in weights.items() if weight < 0}
    if bad:
        raise ConfigError(f"optim.*_lr_weight: learning-rate weights must be 0 or more, got {bad}")
    return weights


def network_args(cfg) -> dict[str, str]:
    """The per-block options as sd-scripts writes them into ss_network_args (comma-separated strings)."""
    lc, o = cfg.lora, cfg.optim
    values = {"block_dims": lc.block_dims, "block_alphas": lc.block_alphas, "conv_block_dims": lc.conv_block_dims,
              "conv_block_alphas": lc.conv_block_alphas, "down_lr_weight": o.down_lr_weight,
              "up_lr_weight": o.up_lr_weight}
    args = {key: ",".join(str(v) for v in value) for key, value in values.items() if value is not None}
    if o.mid_lr_weight is not None:
        args["mid_lr_weight"] = str(o.mid_lr_weight)
    return args
