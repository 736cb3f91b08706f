"""Fused backward pass (`optim.fused_backward`): each LoRA parameter is updated from a post-accumulate-grad
hook as soon as its gradient is complete, and the gradient is freed there. Depends on torch.

Without it, backward keeps every LoRA gradient until the optimizer step; with it, at most the gradients of
the tensors being finished at that moment exist, so the peak holds no full set of gradients
(docs/training.md, "Fitting your GPU"). The updates are the ones the ordinary step makes:

- The run's one optimizer does the work: its `step()` is called with its parameter groups narrowed to the
  one parameter (the group's settings, including the lr the schedule set, are read at that moment). The
  optimizer's state is the same object as in an ordinary run, so checkpoints and `--resume` are unchanged.
- AdamW and Adafactor update each tensor from its own gradient and state only, so stepping them one tensor
  at a time is the same arithmetic; the others are refused (Prodigy and schedule-free AdamW keep sums over
  all parameters, Lion and 8-bit AdamW are left out until tested).
- Gradient clipping (`optim.max_grad_norm`) clips each tensor's gradient to the norm on its own, as
  sd-scripts' `--fused_backward_pass` does: the global norm over all tensors is not known until backward
  ends, when the first tensors are already updated. Set max_grad_norm=0 to train without clipping.
- The loss is checked for NaN/Inf before backward (the hooks update during it), so a bad step still changes
  nothing.

Refused: gradient accumulation (the gradient must be complete after one backward), fp16 loss scaling (a
step skipped for an overflow cannot be undone once the first tensors are updated; use bf16), DeepSpeed (its
engine owns the gradients and the step) and several processes (the gradients would have to be averaged
tensor by tensor inside backward).
"""

from __future__ import annotations

import torch

from sdlora.errors import ConfigError

OPTIMIZERS = ("adamw", "adafactor")


def check(cfg) -> None:
    """The settings fused backward cannot combine with (before the model loads). Raises ConfigError."""
    o = cfg.optim
    if not o.fused_backward:
        return
    if o.optimizer not in OPTIMIZERS:
        raise ConfigError(f"optim.fused_backward: works with {' or '.join(OPTIMIZERS)}, not {o.optimizer} "
                          "(its update needs all gradients at once); choose one of them or turn it off")
    if o.grad_accum != 1:
        raise ConfigError(f"optim.fused_backward: needs optim.grad_accum=1 (got {o.grad_accum}): each tensor is "
                          "updated during backward, so gradients cannot add up over micro-batches")
    if o.mixed_precision == "fp16":
        raise ConfigError("optim.fused_backward: fp16 loss scaling cannot skip a step once tensors are updated "
                          "during backward; use optim.mixed_precision=bf16 (or no)")


def check_launch(accelerator, uses_deepspeed: bool) -> None:
    """What only the launch shows: DeepSpeed and several processes are refused."""
    if uses_deepspeed:
        raise ConfigError("optim.fused_backward: not with DeepSpeed (its engine owns the gradients and the "
                          "step); turn one of them off")
    if accelerator.num_processes > 1:
        raise ConfigError(f"optim.fused_backward: runs in one process (this launch has "
                          f"{accelerator.num_processes}); turn it off for multi-process training")


class FusedSteps:
    """Post-accumulate-grad hooks that step `optimizer` for one parameter each and free its gradient."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_grad_norm: float):
        self.optimizer, self.max_grad_norm = optimizer, max_grad_norm
        # group index per parameter: load_state_dict replaces the group dicts, never their order
        self.group_of = {id(p): i for i, group in enumerate(optimizer.param_groups) for p in group["params"]}
        self.handles = [p.register_post_accumulate_grad_hook(self._hook)
                        for group in optimizer.param_groups for p in group["params"] if p.requires_grad]

    def _hook(self, param: torch.Tensor) -> None:
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([param], self.max_grad_norm)
        self.step_one(param)
        param.grad = None

    def step_one(self, param: torch.Tensor) -> None:
        """The optimizer's own step over `param` alone, with its group's current settings."""
        opt = self.optimizer
        groups = opt.param_groups
        opt.param_groups = [{**groups[self.group_of[id(param)]], "params": [param]}]
        try:
            opt.step()
        finally:
            opt.param_groups = groups

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
