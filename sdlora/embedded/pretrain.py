"""Pretrain the embedded model from scratch on the shapes data set (sdlora.embedded.shapes).

    python -m sdlora.embedded.pretrain --out sdlora/embedded/weights --seed 0

Four phases, all on CPU by default and reproducible from `--seed`:
1. the VAE (AutoencoderKL) learns to reconstruct 32 px images (shapes, half of them with random
   textures so it can also encode textured styles later);
2. the VAE is frozen and every training image is encoded once (latent mean and std are cached, and a
   fresh latent is sampled from them each step), which makes phase 3 several times cheaper;
3. the UNet and the CLIP text encoder are trained together with SD 1.x's noise schedule and epsilon
   objective, min-SNR loss weighting, 10% empty captions (so classifier-free guidance works) and a
   cosine learning-rate schedule; an exponential moving average (EMA) of the weights is what ships;
4. the VAE's gamut is widened (sdlora.embedded.widen): encoder and decoder are fine-tuned on images in
   arbitrary RGB colours while the latents of the pretraining images stay anchored to the phase-1
   encoder's, so the UNet of phase 3 keeps working (without it, a style LoRA cannot draw colours
   outside the pretraining palette). `--widen-steps 0 --widen-detail-steps 0` skips it;
   `--widen-vae FOLDER` runs it alone on a finished folder.

Every `--eval-every` steps the EMA model draws the 24 fixed prompts of `judge.eval_prompts()` and
the log records how often `judge.classify` finds the prompted colour and shape.
The result is a diffusers StableDiffusionPipeline folder (safetensors) plus `pretrain.json` with the
settings, timings and final scores.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sdlora.embedded import configs, judge, shapes, tokenizer, widen
from sdlora.embedded.training import cosine_lr, random_crop, to_tensor
from sdlora.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    out: Path
    seed: int = 0
    threads: int = 1
    vae_steps: int = 300
    vae_batch: int = 32
    vae_lr: float = 2e-3
    vae_images: int = 6000
    vae_crop: int = 16
    vae_crop_fraction: float = 0.85  # first 85% of VAE steps on random crops (4x cheaper), then full images
    decoder_steps: int = 600  # phase 1b: decoder-only refinement on full images (encoder frozen)
    decoder_lr: float = 1e-3
    steps: int = 3000
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    images: int = 10000
    cond_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.998
    eval_every: int = 200
    eval_steps: int = 12
    guidance: float = 5.0
    widen_steps: int = 1200  # phase 4a (sdlora.embedded.widen): colours; 0 skips it
    widen_batch: int = 32
    widen_lr: float = 1e-3
    widen_images: int = 4000
    widen_anchor: float = 1.0
    widen_crop_fraction: float = 0.5
    widen_detail_steps: int = 450  # phase 4b: fine detail (full images, detail loss); 0 skips it
    widen_detail_lr: float = 5e-4
    widen_detail: float = 1.0
    widen_eval_images: int = 256  # held-out images per stream for the phase-4 scores
    timings: dict = field(default_factory=dict)


def constant_lr(step: int, warmup: int) -> float:
    """Learning-rate multiplier for the UNet: linear warm-up, then constant.

    Constant (with the EMA doing the averaging) so that a run stopped after N steps equals a run
    started with `--steps N`: a long run can be cut short and still be reproduced exactly.
    """
    return min(1.0, (step + 1) / warmup)


def train_vae(cfg: PretrainConfig):
    images, _ = shapes.make_dataset(cfg.vae_images, seed=cfg.seed * 1000 + 1, texture=0.5)
    data = to_tensor(images)
    torch.manual_seed(cfg.seed)
    vae = configs.make_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + 2)
    for step in range(cfg.vae_steps):
        for group in opt.param_groups:
            group["lr"] = cfg.vae_lr * cosine_lr(step, cfg.vae_steps, 50)
        x = data[torch.randint(len(data), (cfg.vae_batch,), generator=gen)]
        if step < cfg.vae_crop_fraction * cfg.vae_steps:
            x = random_crop(x, cfg.vae_crop, gen)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        mse = F.mse_loss(recon, x)
        loss = mse + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == cfg.vae_steps - 1:
            log.info("vae step %d/%d mse %.5f", step, cfg.vae_steps, mse.item())
    return vae.eval().requires_grad_(False)


def refine_decoder(cfg: PretrainConfig, vae):
    """Phase 1b: train only the decoder (encoder frozen) on full images with MSE + L1.

    The crops of phase 1 are cheap but leave the decoder blurry; the latents (encoder) do not change
    here, so this phase is independent of phases 2-3 and can even run beside them
    (`--refine-decoder FOLDER`).
    """
    images, _ = shapes.make_dataset(cfg.vae_images, seed=cfg.seed * 1000 + 6, texture=0.5)
    data = to_tensor(images)
    vae.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.decoder_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + 7)
    vae.train()
    for step in range(cfg.decoder_steps):
        for group in opt.param_groups:
            group["lr"] = cfg.decoder_lr * cosine_lr(step, cfg.decoder_steps, 20)
        x = data[torch.randint(len(data), (cfg.vae_batch,), generator=gen)]
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.sample(generator=gen)
        recon = vae.decode(latents).sample
        mse = F.mse_loss(recon, x)
        loss = mse + 0.5 * F.l1_loss(recon, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == cfg.decoder_steps - 1:
            log.info("decoder step %d/%d mse %.5f", step, cfg.decoder_steps, mse.item())
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_all(vae, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent mean and std of every image (unscaled), in batches."""
    means, stds = [], []
    for start in range(0, len(images), 256):
        dist = vae.encode(to_tensor(images[start : start + 256])).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def tokenize(tok, captions: list[str]) -> torch.Tensor:
    return tok(
        captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def min_snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float) -> torch.Tensor:
    snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
    return torch.clamp(snr, max=gamma) / snr


class Ema:
    """Exponential moving average of a model's parameters (what gets evaluated and shipped)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p, 1 - decay)


def make_pipeline(vae, text_encoder, tok, unet):
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    scheduler = DPMSolverMultistepScheduler.from_config(configs.SCHEDULER)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@torch.no_grad()
def prompt_adherence(pipe, steps: int, guidance: float, seed: int = 0) -> tuple[float, float]:
    """Fraction of the 24 eval prompts whose colour / shape the judge finds (seeded)."""
    triples = judge.eval_prompts()
    prompts = [judge.prompt_for(*t) for t in triples]
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    images = pipe(
        prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generators, output_type="np"
    ).images
    verdicts = [judge.classify((img * 255).round().astype(np.uint8)) for img in images]
    colour = np.mean([v.colour == t[0] for v, t in zip(verdicts, triples, strict=True)])
    shape = np.mean([v.shape == t[1] for v, t in zip(verdicts, triples, strict=True)])
    return float(colour), float(shape)


def train_denoiser(cfg: PretrainConfig, vae, tok, started: float) -> dict:
    """Phase 2 + 3: cache latents, train UNet + text encoder, evaluate and save every `eval_every`."""
    from diffusers import DDPMScheduler

    images, captions = shapes.make_dataset(cfg.images, seed=cfg.seed * 1000 + 3)
    mean, std = encode_all(vae, images)
    scaling = float(1.0 / mean.std())
    vae.register_to_config(scaling_factor=scaling)
    mean, std = mean * scaling, std * scaling  # the UNet sees unit-variance latents, as in SD
    cfg.timings["vae_and_encode_s"] = round(time.monotonic() - started, 1)
    log.info("encoded %d images; latent scaling factor %.4f", len(images), scaling)
    data = (mean, std, tokenize(tok, captions), tokenize(tok, [""])[0])
    torch.manual_seed(cfg.seed * 1000 + 4)
    unet = configs.make_unet()
    text_encoder = configs.make_text_encoder(len(tok), tok.bos_token_id, tok.eos_token_id)
    ema_unet, ema_text = Ema(unet, cfg.ema_decay), Ema(text_encoder, cfg.ema_decay)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    noise_schedule = DDPMScheduler.from_config(configs.SCHEDULER)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + 5)
    scores: dict = {}
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * constant_lr(step, cfg.warmup)
        loss = denoiser_step(unet, text_encoder, data, noise_schedule, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_unet.update(unet, step)
        ema_text.update(text_encoder, step)
        if step % 25 == 0:
            log.info("unet step %d/%d loss %.4f", step, cfg.steps, loss.item())
        done = step + 1
        if done == cfg.steps or (cfg.eval_every and done % cfg.eval_every == 0):
            cfg.timings["train_s"] = round(time.monotonic() - started, 1)
            pipe = make_pipeline(vae, ema_text.model, tok, ema_unet.model)
            scores = checkpoint(cfg, pipe, done)
    return scores


def checkpoint(cfg: PretrainConfig, pipe, steps_done: int) -> dict:
    """Score the EMA model on the eval prompts, log it and save it (a long run can stop any time)."""
    colour, shape = prompt_adherence(pipe, cfg.eval_steps, cfg.guidance)
    scores = {"steps_done": steps_done, "colour": colour, "shape": shape}
    log.info(
        "eval step %d: colour %.2f shape %.2f (%.0f s)", steps_done, colour, shape, cfg.timings["train_s"]
    )
    save(cfg, pipe, scores)
    return scores


def denoiser_step(unet, text_encoder, data, noise_schedule, cfg: PretrainConfig, gen):
    """One batch: noised latents, (sometimes empty) captions, min-SNR weighted epsilon loss."""
    mean, std, ids, empty = data
    pick = torch.randint(len(mean), (cfg.batch,), generator=gen)
    latents = mean[pick] + std[pick] * torch.randn(mean[pick].shape, generator=gen)
    tokens = ids[pick].clone()
    drop = torch.rand(cfg.batch, generator=gen) < cfg.cond_dropout
    tokens[drop] = empty
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.randint(0, noise_schedule.config.num_train_timesteps, (cfg.batch,), generator=gen)
    noisy = noise_schedule.add_noise(latents, noise, t)
    context = text_encoder(tokens).last_hidden_state
    pred = unet(noisy, t, encoder_hidden_states=context).sample
    per_item = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
    return (per_item * min_snr_weights(noise_schedule.alphas_cumprod, t, cfg.min_snr_gamma)).mean()


def save(cfg: PretrainConfig, pipe, scores: dict) -> None:
    """Write the pipeline folder atomically: into `<out>.partial`, then rename over `out`."""
    out = Path(cfg.out)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    pipe.save_pretrained(partial, safe_serialization=True)
    tokenizer.write_tokenizer_files(partial / "tokenizer", configs.MAX_TOKENS)
    record = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    record["scores"] = scores
    (partial / "pretrain.json").write_text(json.dumps(record, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)


def pretrain(cfg: PretrainConfig) -> dict:
    """Run all phases, saving to `cfg.out` at every evaluation; returns the last scores."""
    from transformers import CLIPTokenizer

    torch.set_num_threads(cfg.threads)
    started = time.monotonic()
    tok_dir = Path(cfg.out).with_name(Path(cfg.out).name + ".tokenizer")
    tokenizer.write_tokenizer_files(tok_dir, configs.MAX_TOKENS)
    tok = CLIPTokenizer.from_pretrained(tok_dir)
    shutil.rmtree(tok_dir)
    vae = train_vae(cfg)
    if cfg.decoder_steps:
        vae = refine_decoder(cfg, vae)
    cfg.timings["vae_s"] = round(time.monotonic() - started, 1)
    scores = train_denoiser(cfg, vae, tok, started)
    if cfg.widen_steps or cfg.widen_detail_steps:
        widen_saved_vae(cfg, Path(cfg.out))
    return scores


def widen_stages(cfg: PretrainConfig) -> list[widen.WidenSettings]:
    """Phase 4's two stages: 4a learns the colours (crops, then full images), 4b the fine detail.

    4b starts from 4a's VAE and anchors to it (4a is anchored to the phase-1 VAE; the drift of both
    together is what `widen_saved_vae` scores). A stage with 0 steps is left out.
    """
    common = {
        "seed": cfg.seed,
        "batch": cfg.widen_batch,
        "images": cfg.widen_images,
        "anchor": cfg.widen_anchor,
    }
    stages = [
        widen.WidenSettings(steps=cfg.widen_steps, lr=cfg.widen_lr, crop_fraction=cfg.widen_crop_fraction,
                            detail=0.0, **common),
        widen.WidenSettings(steps=cfg.widen_detail_steps, lr=cfg.widen_detail_lr, crop_fraction=0.0,
                            detail=cfg.widen_detail, **common),
    ]  # fmt: skip
    return [stage for stage in stages if stage.steps]


def _log_widen_step(total: int):
    def on_step(step: int, parts: dict, _vae) -> None:
        if step % 50 == 0 or step == total - 1:
            log.info("widen step %d/%d %s", step, total, " ".join(f"{k} {v:.5f}" for k, v in parts.items()))

    return on_step


def widen_saved_vae(cfg: PretrainConfig, folder: Path) -> dict:
    """Run phase 4 on `folder`/vae, write the VAE back atomically and record it in pretrain.json.

    Scores compare with the VAE found in `folder` (the one the UNet was trained with).
    """
    from diffusers import AutoencoderKL

    if not widen_stages(cfg):
        raise ConfigError("--widen-vae: --widen-steps and --widen-detail-steps are both 0, nothing to do; "
                          "the measured recipe is --widen-steps 1200 --widen-detail-steps 450")  # fmt: skip
    if not (folder / "vae" / "config.json").is_file():
        raise ConfigError(f"--widen-vae {folder}: no vae/config.json there; pass a pretraining output folder")
    torch.set_num_threads(cfg.threads)
    original = AutoencoderKL.from_pretrained(folder / "vae").eval()
    n = cfg.widen_eval_images
    vae, runs = original, []
    for settings in widen_stages(cfg):
        started = time.monotonic()
        vae = widen.widen_vae(vae, settings, on_step=_log_widen_step(settings.steps))
        seconds = round(time.monotonic() - started, 1)
        runs.append({**asdict(settings), "threads": cfg.threads, "seconds": seconds,
                     "scores": widen.evaluate(vae, original, cfg.seed, n)})  # fmt: skip
        log.info("VAE widening stage done in %.0f s: %s", seconds, runs[-1]["scores"])
    partial = folder / "vae.partial"
    shutil.rmtree(partial, ignore_errors=True)
    vae.save_pretrained(partial, safe_serialization=True)
    shutil.rmtree(folder / "vae")
    partial.rename(folder / "vae")
    before = widen.evaluate(original, original, cfg.seed, n)
    record_widening(folder / "pretrain.json", runs, before)
    return runs[-1]["scores"] if runs else before


def record_widening(path: Path, runs: list[dict], before: dict) -> None:
    """Add phase 4's stages (settings, time, scores) to the pretrain.json at `path` (atomically)."""
    record = json.loads(path.read_text()) if path.is_file() else {}
    record["widen"] = {"scores_before": before, "stages": runs}
    record.setdefault("timings", {})["widen_s"] = round(sum(r["seconds"] for r in runs), 1)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=1) + "\n")
    partial.replace(path)


def refine_saved_decoder(cfg: PretrainConfig, folder: Path) -> None:
    """Run phase 1b on the VAE saved in `folder`/vae and write it back (atomically)."""
    from diffusers import AutoencoderKL

    torch.set_num_threads(cfg.threads)
    started = time.monotonic()
    vae = refine_decoder(cfg, AutoencoderKL.from_pretrained(folder / "vae"))
    partial = folder / "vae.partial"
    shutil.rmtree(partial, ignore_errors=True)
    vae.save_pretrained(partial, safe_serialization=True)
    log.info("decoder refined in %.0f s; saved to %s", time.monotonic() - started, folder / "vae")
    shutil.rmtree(folder / "vae")
    partial.rename(folder / "vae")


def parse_args(argv=None) -> tuple[PretrainConfig, Path | None, Path | None]:
    defaults = PretrainConfig(out=Path("sdlora/embedded/weights"))
    parser = argparse.ArgumentParser(
        prog="python -m sdlora.embedded.pretrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--refine-decoder", type=Path, default=None, metavar="FOLDER",
                        help="only run phase 1b on the VAE in FOLDER/vae (see refine_decoder)")  # fmt: skip
    parser.add_argument("--widen-vae", type=Path, default=None, metavar="FOLDER",
                        help="only run phase 4 on the VAE in FOLDER/vae (see sdlora.embedded.widen)")  # fmt: skip
    for name, value in asdict(defaults).items():
        if name == "timings":
            continue
        kind = Path if name == "out" else type(value)
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=value)
    args = vars(parser.parse_args(argv))
    refine, widen_folder = args.pop("refine_decoder"), args.pop("widen_vae")
    return PretrainConfig(**args), refine, widen_folder


def main(argv=None) -> int:
    cfg, refine, widen_folder = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if refine is not None:
        refine_saved_decoder(cfg, refine)
    elif widen_folder is not None:
        widen_saved_vae(cfg, widen_folder)
    else:
        pretrain(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
