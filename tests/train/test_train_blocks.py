"""Per-block ranks, alphas and learning-rate weights (sd-scripts' block_dims / block_alphas / conv_block_dims /
down_lr_weight / mid_lr_weight / up_lr_weight)."""

import json

import pytest
from safetensors import safe_open
from tests_train_helpers import make_tiny_components, tiny_config, write_images

from sdlora.arch.blocks import block_of
from sdlora.errors import ConfigError
from sdlora.lora import inject_lora
from sdlora.settings.config import load_config
from sdlora.train import train
from sdlora.train.block_options import lr_weights, rank_tables, unet_blocks
from sdlora.train.export import _network_args
from sdlora.train.optim import param_groups

# the tiny UNet has two down and two up blocks: IN00..IN05, MID, OUT00..OUT05 (13 blocks)
BLOCKS = ["IN00", "IN01", "IN02", "IN03", "IN04", "IN05", "MID", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04",
          "OUT05"]
DIMS = [0, 2, 2, 2, 3, 0, 5, 1, 2, 3, 4, 4, 4]
ALPHAS = [1, 1, 1, 1, 1.5, 1, 2, 1, 1, 1, 1, 1, 1]


def _vector(values) -> str:
    return "[" + ",".join(str(v) for v in values) + "]"


def _inject(unet, *settings, preset="locon"):
    cfg = load_config(None, [f"lora.targets={preset}", *settings])
    linear, conv = rank_tables(cfg, unet_blocks(unet))
    lc = cfg.lora
    return cfg, inject_lora({"unet": unet}, preset, rank=lc.rank, alpha=lc.alpha, conv_rank=lc.conv_rank,
                            conv_alpha=lc.conv_alpha, block_ranks=linear, conv_block_ranks=conv)


def test_tiny_unet_blocks(tiny_unet):
    assert unet_blocks(tiny_unet) == BLOCKS


def test_module_ranks_and_alphas_follow_the_blocks(tiny_unet):
    _, net = _inject(tiny_unet, f"lora.block_dims={_vector(DIMS)}", f"lora.block_alphas={_vector(ALPHAS)}",
                     "lora.conv_rank=7", "lora.conv_alpha=0.5")
    table = dict(zip(BLOCKS, zip(DIMS, ALPHAS, strict=True), strict=True))
    seen = set()
    for name in net.names:
        layer, block = net.layer(name), block_of(name)
        if layer.down.weight.dim() == 4 and layer.down.weight.shape[-1] > 1:
            assert (layer.rank, layer.alpha) == (7, 0.5)  # 3x3 convs keep conv_rank without conv_block_dims
        else:
            assert (layer.rank, layer.alpha) == table[block], name
            seen.add(block)
    assert {"MID", "OUT02", "IN04"} <= seen


def test_zero_dim_blocks_get_no_lora(tiny_unet):
    _, net = _inject(tiny_unet, f"lora.block_dims={_vector(DIMS)}",
                     f"lora.conv_block_dims={_vector([0] * 6 + [3] * 7)}")
    blocks = {block_of(name) for name in net.names}
    assert "IN05" not in blocks and "IN04" in blocks and "MID" in blocks
    assert all(block_of(name).startswith(("MID", "OUT")) for name in net.names
               if net.layer(name).down.weight.dim() == 4 and net.layer(name).down.weight.shape[-1] == 3)


def test_lr_weights_are_param_groups_and_zero_weight_blocks_are_dropped(tiny_unet):
    cfg, net = _inject(tiny_unet, "optim.lr=1e-3", "optim.down_lr_weight=[1,1,1,1,0.5,0]",
                       "optim.mid_lr_weight=2", "optim.loraplus_ratio=4")
    weights = lr_weights(cfg, unet_blocks(tiny_unet))
    assert "IN05" not in {block_of(name) for name in net.names}  # weight 0: no LoRA, as it would never learn
    groups = {group["name"]: group for group in param_groups(net, cfg, weights)}
    assert groups["unet.MID"]["lr"] == pytest.approx(2e-3) and groups["unet_up.MID"]["lr"] == pytest.approx(8e-3)
    assert groups["unet.IN04"]["lr"] == pytest.approx(5e-4)
    assert groups["unet"]["lr"] == pytest.approx(1e-3)  # OUT blocks: no up_lr_weight
    assert next(iter(groups)) == "unet"
    names = {id(p): name for name in net.names for p in net.layer(name).parameters()}
    assert all(block_of(names[id(p)]) == "MID" for p in groups["unet.MID"]["params"])
    assert sum(len(g["params"]) for g in groups.values()) == len(list(net.parameters()))


def test_off_leaves_groups_and_modules_as_before(tiny_unet):
    cfg, net = _inject(tiny_unet)
    groups = param_groups(net, cfg, lr_weights(cfg, unet_blocks(tiny_unet)))
    assert [g["name"] for g in groups] == ["unet"]
    assert rank_tables(cfg, BLOCKS) == (None, None)


@pytest.mark.parametrize(("settings", "match"), [
    (["lora.block_dims=[1,2,3]"], r"lora.block_dims: has 3 values; this UNet has 13 blocks \(IN00..OUT05\)"),
    ([f"lora.block_dims={_vector(DIMS)}", "lora.block_alphas=[1]"], "lora.block_alphas: has 1 values"),
    (["lora.block_alphas=[1]"], "lora.block_alphas is set but lora.block_dims is not"),
    (["optim.up_lr_weight=[1,1]"], "optim.up_lr_weight: has 2 values; this UNet has 6 OUT blocks"),
    (["optim.mid_lr_weight=-1"], "must be 0 or more"),
    ([f"lora.block_dims={_vector([-1] + DIMS[1:])}"], "ranks must be 0"),
])
def test_bad_block_settings_are_config_errors(settings, match):
    cfg = load_config(None, settings)
    with pytest.raises(ConfigError, match=match):
        rank_tables(cfg, BLOCKS)


def test_network_args_as_sd_scripts_writes_them():
    cfg = load_config(None, ["lora.block_dims=[4,4,8]", "lora.block_alphas=[1,2,0.5]", "optim.mid_lr_weight=0.5",
                             "optim.down_lr_weight=[1,0]"])
    args = _network_args(cfg)
    assert (args["block_dims"], args["block_alphas"]) == ("4,4,8", "1.0,2.0,0.5")
    assert (args["mid_lr_weight"], args["down_lr_weight"]) == ("0.5", "1.0,0.0")
    assert "up_lr_weight" not in args and "conv_block_dims" not in _network_args(load_config(None))


def test_training_with_block_dims_exports_those_ranks(tmp_path):
    cfg = tiny_config(write_images(tmp_path / "data", count=2), tmp_path / "out", "optim.steps=1",
                      "lora.targets=sd-scripts", f"lora.block_dims={_vector(DIMS)}", "optim.mid_lr_weight=0.5")
    result = train(cfg, make_tiny_components(tmp_path))
    with safe_open(str(result.files[0]), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
        mid = [k for k in keys if k.startswith("lora_unet_mid_block") and k.endswith("lora_down.weight")]
        assert mid and all(f.get_tensor(k).shape[0] == 5 for k in mid)
        assert not any(k.startswith("lora_unet_down_blocks_1_attentions_1") for k in keys)  # IN05: dim 0
    args = json.loads(meta["ss_network_args"])
    assert args["block_dims"] == ",".join(str(d) for d in DIMS) and args["mid_lr_weight"] == "0.5"
