"""What a fine-tune trains: parameter counts, peft adapters. Managed by the copier-lightning template.

`fit` writes `parameter_summary(model)` into the start's entry of record.json (`parameters`), and
the model card says from it how many parameters trained, which adapters (LoRA rank, alpha,
dropout, target layers) and whether checkpoints hold only the trained ones. `export` finds the
adapter model to merge with `adapter_child`.
"""

from __future__ import annotations

import sys
from typing import Any

from torch import nn

from .trainable_checkpoints import saves_only_trainable_weights


def adapter_child(model: nn.Module) -> str | None:
    """The name of the model's direct child that is a peft adapter model, if there is one."""
    if "peft" not in sys.modules:
        return None  # a model holding a PeftModel imported peft to build it; importing it costs ~0.2 s a start
    from peft import PeftModel

    return next((name for name, child in model.named_children() if isinstance(child, PeftModel)), None)


def adapter_settings(model: nn.Module) -> dict[str, Any] | None:
    """The adapters' settings (method, rank, alpha, dropout, targets, fully trained modules), if any."""
    name = adapter_child(model)
    if name is None:
        return None
    config = getattr(model, name).peft_config["default"]
    settings = {"method": str(getattr(config.peft_type, "value", config.peft_type))}
    for key in ("r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save"):
        value = getattr(config, key, None)
        settings[key] = sorted(value) if isinstance(value, set | list | tuple) else value
    return settings


def parameter_summary(model: nn.Module) -> dict[str, Any]:
    """How many parameters train and how many are frozen, what the checkpoints hold, and the adapters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {
        "trainable": trainable,
        "frozen": frozen,
        "checkpoints_hold": "only the trained" if saves_only_trainable_weights(model) else "all",
        "adapters": adapter_settings(model),
    }
