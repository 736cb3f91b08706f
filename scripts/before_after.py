"""Before/after grid for a style LoRA on the embedded model (the quickstart's last step).

    python scripts/before_after.py --lora outputs/quickstart/zqx_style.safetensors \
        --out outputs/quickstart/before_after.png

Draws every prompt of --prompts (columns, labelled with the prompt) with the same seeds at each --strengths
value (rows) and writes one PNG;
prints how far each row is from the style images (--style) on sdlora.embedded.showcase.style_distance,
both from the raw images and from their round trip through the base's VAE (the closest a LoRA can get).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lora", type=Path, required=True, help="the trained LoRA (.safetensors)")
    parser.add_argument("--out", type=Path, required=True, help="grid PNG to write")
    parser.add_argument(
        "--base", type=Path, default=None, help="pipeline folder (default: the embedded model)"
    )
    parser.add_argument("--prompts", type=Path, default=ROOT / "scripts" / "sample_prompts.txt")
    parser.add_argument("--style", type=Path, default=ROOT / "sample_data", help="the style images")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--seed", type=int, default=1, help="seed of the first prompt (then +1 each)")
    parser.add_argument("--steps", type=int, default=20)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from sdlora.embedded import load_pipeline, showcase
    from sdlora.errors import SdloraError

    try:
        prompts = [p.strip() for p in args.prompts.read_text().splitlines() if p.strip()]
        pipe = load_pipeline(folder=args.base)
        seeds = [args.seed + i for i in range(len(prompts))]
        rows = showcase.strength_sweep(pipe, args.lora, prompts, seeds, args.strengths, args.steps)
    except (OSError, SdloraError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    style = showcase.load_images(args.style)
    roundtrip = showcase.autoencoder_roundtrip(pipe.vae, style)
    floor = showcase.style_distance(roundtrip, style)["total"]
    print(f"style distance to {args.style} (raw) and to its VAE round trip (what a perfect LoRA would "
          f"draw; it scores {floor:.3f} on the raw distance, the VAE's own error):")  # fmt: skip
    for strength, images in rows.items():
        d, r = showcase.style_distance(images, style), showcase.style_distance(images, roundtrip)
        print(f"strength {strength:g}: raw {d['total']:.3f} (colour {d['colour']:.3f}, texture "
              f"{d['texture']:.3f}); round trip {r['total']:.3f}")  # fmt: skip
    showcase.save_grid({f"strength {s:g}": images for s, images in rows.items()}, args.out, column_labels=prompts)
    print(f"wrote {args.out} (rows: strength {', '.join(f'{s:g}' for s in rows)}; columns: {args.prompts})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
