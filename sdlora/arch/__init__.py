"""Architecture knowledge: everything sdlora knows about SD1/SD2/SDXL model layouts and module names.

Submodules, lowest layer first; a module imports only modules of lower layers (checked by
tests/test_architecture.py, described in docs/ARCHITECTURE.md):

1. `components` (component names, canonical names of live modules) and `family` (base-family detection)
2. `tables`: module tables {canonical name: ModuleInfo} for a family, a live model or a config folder
3. `naming`: canonical <-> Kohya / LDM / SGM / diffusers names
4. `ldm_keys` (diffusers -> single-file checkpoint keys), `blocks` (A1111 block-weight names),
   `targets` (training target presets)

This package file imports nothing, so `import sdlora.arch.family` stays as cheap as the submodule itself.
"""
