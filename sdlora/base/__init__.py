"""The base model: the one home of everything about the Stable Diffusion model a LoRA is trained on or
applied to. Nothing is imported here (each module says what it loads; `ref` and `native` are standard
library only, so the CLI's quick paths can use them).

- `ref`: what a `--base` value means (`parse_base` -> `BaseRef`), its config folder, a checkpoint's family
  from its header, what `verify --base` checks against (`check_target`);
- `native`: what follows from the base without weights: native image side, far-from-native warning,
  default preset;
- `listing`: the bases in model folders for menus (`list_bases`, `describe_base` -> `BaseModel`) and a
  base's layer widths;
- `fit`: does a LoRA fit a base (`check_fit`, `fit_shape` -> `Fit`), from headers only;
- `load`: loading the weights (`load_components` -> `Components`, `load_base` -> pipeline, `pipeline_from`).

The family rule itself (context width -> sd1/sd2/sdxl) lives in `sdlora.arch.family`.
"""
