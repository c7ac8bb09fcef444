"""A fine-tuned model exported in Hugging Face format: adapters merged, loadable with `from_pretrained`.

Managed by the copier-lightning template. `export` calls this for a model that holds a `peft`
adapter model as one of its direct children (the fine-tune example's `self.network`): a deep copy
is merged (`merge_and_unload`: the adapters folded into the base weights, so serving needs neither
peft nor the base model) and saved with `save_pretrained` as safetensors into `export/merged/`,
with the data module's `tokenizer` when it has one. The folder is written beside its place and
renamed into it, so an interrupted export never leaves half a model there.

It is then checked: reloaded from disk with its class's `from_pretrained`, put in the adapters'
place inside the LightningModule, and run on the validation inputs; the largest difference from the
LightningModule's own outputs is recorded (and refused above PARITY_TOLERANCE).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import torch

from ..base.file_hashes import file_sha256
from ..weights.adapters import adapter_child

PARITY_TOLERANCE = 1e-4  # float32: merging adds B @ A to W once instead of at every call


def export_merged(model: torch.nn.Module, data: Any, inputs: torch.Tensor, directory: Path) -> dict[str, Any] | None:
    """Write `directory/merged/` (see the module docstring) and return its record; None without adapters."""
    name = adapter_child(model)
    if name is None:
        return None
    adapters = getattr(model, name)
    merged = copy.deepcopy(adapters).merge_and_unload()
    target, staging = directory / "merged", directory / "merged.partial"
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(staging, safe_serialization=True)
    tokenizer = getattr(data, "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(staging)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)

    reloaded = type(merged).from_pretrained(target).eval()
    largest = 0.0
    with torch.inference_mode():
        for start in range(0, len(inputs), 256):
            chunk = inputs[start : start + 256]
            expected = model(chunk).float()
            setattr(model, name, reloaded)
            try:
                got = model(chunk).float()
            finally:
                setattr(model, name, adapters)
            largest = max(largest, float((got - expected).abs().max()))
    return {
        "directory": "merged",
        "class": type(merged).__name__,
        "files": {path.name: file_sha256(path) for path in sorted(target.iterdir()) if path.is_file()},
        "parity": {"examples": len(inputs), "max_abs_difference": largest, "tolerance": PARITY_TOLERANCE},
    }
