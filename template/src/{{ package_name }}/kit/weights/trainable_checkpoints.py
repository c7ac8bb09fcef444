"""Checkpoints that hold what training changes, not the frozen base. Managed by the copier-lightning template.

A LoRA fine-tune of a 7B model trains a few million parameters: a checkpoint with the frozen base
in it is 14 GB per save where 40 MB would do, and every rolling save, `previous.ckpt` and best
checkpoint pays it. `save_only_trainable_weights(model)`, called at the end of a model's
`__init__` once the base is loaded and frozen, makes the model's `state_dict` leave out every
parameter with `requires_grad=False`, and makes loading (a resume, `evaluate`, `export`, ...)
accept a checkpoint without them while still refusing one that lacks a trainable parameter or
holds a parameter the model does not have.

That is safe only because the frozen parameters come back identical when the model is built
again: they are the base weights, loaded from the weight cache at the pinned revision, whose file
hashes the run's record keeps (a resume or evaluation on other base weights is refused, see
cache.py). Do not call it on a model whose frozen parameters were trained in this run.

Written with torch's public module hooks (`register_state_dict_post_hook`,
`register_load_state_dict_post_hook`): Lightning's checkpointing, DDP and `load_from_checkpoint`
all go through `state_dict` / `load_state_dict`, so nothing else needs to know.
"""

from __future__ import annotations

import weakref

from torch import nn

_TRAINABLE_ONLY: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # the modules save_only_trainable_weights set up


class CheckpointMismatch(RuntimeError):
    """A checkpoint that lacks a trainable parameter or holds one the model does not have."""


def frozen_parameter_names(module: nn.Module, prefix: str = "") -> set[str]:
    return {prefix + name for name, parameter in module.named_parameters() if not parameter.requires_grad}


def save_only_trainable_weights(module: nn.Module) -> nn.Module:
    """Leave frozen parameters out of `module`'s checkpoints (see the module docstring); returns `module`."""

    def drop_frozen(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
        for name in frozen_parameter_names(module, prefix):
            state_dict.pop(name, None)

    def check_trainable_loaded(module: nn.Module, incompatible) -> None:
        frozen = frozen_parameter_names(module)
        lacking = [name for name in incompatible.missing_keys if name not in frozen]
        if lacking or incompatible.unexpected_keys:
            problems = []
            if lacking:
                problems.append(f"it lacks {len(lacking)} trainable tensor(s) ({', '.join(lacking[:3])})")
            if incompatible.unexpected_keys:
                extra = incompatible.unexpected_keys
                problems.append(f"it holds {len(extra)} the model does not have ({', '.join(extra[:3])})")
            raise CheckpointMismatch(
                f"the checkpoint does not fit {type(module).__name__}: {'; '.join(problems)}: a checkpoint of "
                "another model, or of other adapter settings"
            )
        # The frozen ones were left out on purpose: a strict load must not count them as missing.
        incompatible.missing_keys[:] = []

    module.register_state_dict_post_hook(drop_frozen)
    module.register_load_state_dict_post_hook(check_trainable_loaded)
    _TRAINABLE_ONLY.add(module)
    return module


def saves_only_trainable_weights(module: nn.Module) -> bool:
    return module in _TRAINABLE_ONLY
