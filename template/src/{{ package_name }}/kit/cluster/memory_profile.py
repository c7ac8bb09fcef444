"""Measure a run's GPU memory and pick the smallest MIG slice that holds it.

Managed by the copier-lightning template. `<package> profile [config options]` trains a few real
steps and a validation pass with the configured model, data, batch size and precision, then takes

    needed = peak memory held by PyTorch's allocator (torch.cuda.max_memory_reserved)
           + what the CUDA context and libraries hold outside it (from torch.cuda.mem_get_info),

and prints every MIG profile of the A100 40 GB / 80 GB, H100 and H200 with its usable memory and
whether `needed` fits with the headroom (15 % by default; 10-20 % is the usual advice, since fewer
SMs can change kernel choices and workspaces). It recommends the smallest profile this site offers
(configs/slurm/site.yaml, mig_types) and `--write` makes it the site's default for `submit`.

For a model too large for one GPU it also estimates sharded training (`--trainer.strategy=fsdp2`):
the model states (weights, gradients, optimizer state: counted from the model and optimizer after
the measured steps) are split N ways, the rest of the peak (activations, workspaces, one layer's
gathered weights) stays per GPU, so per GPU = states / N + (peak - states) + context, and it names
the fewest full GPUs that hold that.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..base.project_package import CONSOLE_SCRIPT

GIB = 1024**3

# Usable memory per slice, GiB: nominal size less what the driver keeps (measured on an A100 80 GB:
# 1g.10gb ~9.5, 2g.20gb ~20, 3g.40gb ~40 of 10.2 / 20.9 / 42.4 GB raw); other profiles scaled alike.
MIG_PROFILES: dict[str, list[tuple[str, float]]] = {
    "A100 40GB": [("1g.5gb", 4.4), ("1g.10gb", 9.0), ("2g.10gb", 9.0), ("3g.20gb", 18.5), ("4g.20gb", 18.5),
                  ("7g.40gb", 37.5)],
    "A100 80GB": [("1g.10gb", 9.0), ("1g.20gb", 18.5), ("2g.20gb", 18.5), ("3g.40gb", 37.5), ("4g.40gb", 37.5),
                  ("7g.80gb", 76.0)],
    "H100 80GB": [("1g.10gb", 9.0), ("1g.20gb", 18.5), ("2g.20gb", 18.5), ("3g.40gb", 37.5), ("4g.40gb", 37.5),
                  ("7g.80gb", 76.0)],
    "H200 141GB": [("1g.18gb", 16.5), ("1g.35gb", 32.5), ("2g.35gb", 32.5), ("3g.71gb", 66.0), ("4g.71gb", 66.0),
                   ("7g.141gb", 131.0)],
}  # fmt: skip


FULL_GPUS_GIB = {"A100 40GB": 37.5, "A100 80GB / H100 80GB": 76.0, "H200 141GB": 131.0}  # usable, as above
SHARDED_PROCESS_COUNTS = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class MemoryProfile:
    peak_reserved_bytes: int
    context_overhead_bytes: int
    model_state_bytes: int = 0  # weights + gradients + optimizer state: what sharding splits

    @property
    def needed_gib(self) -> float:
        return (self.peak_reserved_bytes + self.context_overhead_bytes) / GIB

    def sharded_gib(self, processes: int) -> float:
        """Per-GPU memory with the model states sharded over `processes` GPUs (see the module's docstring)."""
        states = min(self.model_state_bytes, self.peak_reserved_bytes)
        rest = self.peak_reserved_bytes - states
        return (states / processes + rest + self.context_overhead_bytes) / GIB


def model_state_bytes(model, optimizers) -> int:
    """Bytes of the model's weights, its trainable weights' gradients and the optimizers' state tensors."""
    import torch

    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    gradients = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    states = sum(
        value.numel() * value.element_size()
        for optimizer in optimizers
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )
    return weights + gradients + states


def fewest_gpus(profile: MemoryProfile, usable_gib: float, headroom: float) -> int | None:
    """The fewest GPUs of `usable_gib` whose sharded share fits, or None if none of the counts tried does."""
    for processes in SHARDED_PROCESS_COUNTS:
        if fits(profile.sharded_gib(processes), usable_gib, headroom):
            return processes
    return None


def format_sharding(profile: MemoryProfile, headroom: float) -> str:
    lines = [
        f"sharded training (--trainer.strategy=fsdp2): model states {profile.model_state_bytes / GIB:.2f} GiB "
        "split over the GPUs, the rest per GPU",
        "  per GPU: " + ", ".join(f"{n} GPUs {profile.sharded_gib(n):.2f} GiB" for n in (1, 2, 4, 8)),
    ]
    for gpu, usable in FULL_GPUS_GIB.items():
        count = fewest_gpus(profile, usable, headroom)
        needs = f"{count} GPU(s)" if count else f"more than {SHARDED_PROCESS_COUNTS[-1]} GPUs"
        lines.append(f"  on {gpu}: {needs}")
    return "\n".join(lines)


def fits(needed_gib: float, usable_gib: float, headroom: float) -> bool:
    return needed_gib * (1 + headroom) <= usable_gib


def slice_table(needed_gib: float, headroom: float) -> list[tuple[str, str, float, bool]]:
    """(GPU, profile, usable GiB, fits) for every known MIG profile."""
    return [
        (gpu, name, usable, fits(needed_gib, usable, headroom))
        for gpu, profiles in MIG_PROFILES.items()
        for name, usable in profiles
    ]


def smallest_site_slice(needed_gib: float, headroom: float, site_types: list[str]) -> str | None:
    """The site's MIG type with the least usable memory that still fits.

    Site type names may carry a prefix (`a100_1g.10gb`): a type matches a profile it ends with; its
    usable memory is the smallest among the GPUs that have that profile (the conservative choice).
    """
    candidates = []
    for site_type in site_types:
        usable = [
            usable_gib
            for _, name, usable_gib, _ in slice_table(needed_gib, headroom)
            if re.search(rf"(^|_){re.escape(name)}$", site_type)
        ]
        if usable and fits(needed_gib, min(usable), headroom):
            candidates.append((min(usable), site_type))
    return min(candidates)[1] if candidates else None


def format_table(profile: MemoryProfile, headroom: float) -> str:
    lines = [
        f"peak reserved by PyTorch {profile.peak_reserved_bytes / GIB:.2f} GiB + CUDA context and libraries "
        f"{profile.context_overhead_bytes / GIB:.2f} GiB = {profile.needed_gib:.2f} GiB needed; "
        f"with {100 * headroom:.0f} % headroom: {profile.needed_gib * (1 + headroom):.2f} GiB",
        f"{'GPU':<12} {'profile':<10} {'usable GiB':>10}  fits",
    ]
    for gpu, name, usable, ok in slice_table(profile.needed_gib, headroom):
        lines.append(f"{gpu:<12} {name:<10} {usable:>10.1f}  {'yes' if ok else 'no'}")
    return "\n".join(lines)


def measure(options: list[str], steps: int, accelerator: str = "gpu") -> MemoryProfile:
    """Train `steps` steps, then validate a few batches; the allocator's peak and the context overhead."""
    import torch

    from ..training.fit_policies import automatic_precision
    from ..training.project_loading import load_model_and_data
    from ..training.scratch_trainer import scratch_trainer

    model, data = load_model_and_data(options)
    torch.cuda.init()
    torch.cuda.reset_peak_memory_stats()
    trainer = scratch_trainer(
        accelerator=accelerator,
        precision=automatic_precision(accelerator),
        max_steps=steps,
        limit_val_batches=3,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=data)
    states = model_state_bytes(model, trainer.optimizers)
    trainer.validate(model, datamodule=data, verbose=False)  # validation can peak higher (larger batches)
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    overhead = (total - free) - torch.cuda.memory_reserved()
    return MemoryProfile(int(torch.cuda.max_memory_reserved()), max(int(overhead), 0), states)


def set_default_gpu(site_path: Path, mig_type: str) -> None:
    text = site_path.read_text()
    line = f"default_gpu: mig:{mig_type}"
    text, count = re.subn(r"(?m)^default_gpu:.*$", line, text)
    site_path.write_text(text if count else text.rstrip() + f"\n{line}\n")


def profile_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="profile", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20, help="training steps to measure (default 20)")
    parser.add_argument("--headroom", type=float, default=0.15, help="spare fraction to keep free (default 0.15)")
    parser.add_argument("--write", action="store_true", help="make the recommended slice the site's default_gpu")
    parser.add_argument("--site", type=Path, default=Path("configs/slurm/site.yaml"))
    args, options = parser.parse_known_args(argv)
    import torch

    if not torch.cuda.is_available():  # a refusal like the others (exit 2): nothing was measured or written
        print(
            "error: no CUDA GPU is visible here, and `profile` measures GPU memory: run it where a GPU is, e.g. "
            f"`srun --gres=gpu:1 --pty {CONSOLE_SCRIPT} profile` or in a job from `{CONSOLE_SCRIPT} submit --gpu "
            "full:1`.",
            file=sys.stderr,
        )
        return 2
    profile = measure(options, args.steps)
    print(format_table(profile, args.headroom))
    print(format_sharding(profile, args.headroom))
    from .slurm import load_site

    site = load_site(args.site)
    choice = smallest_site_slice(profile.needed_gib, args.headroom, site["mig_types"])
    if choice is None:
        print("No MIG slice of this site fits: use a full GPU (`submit --gpu full:1`).")
        return 0
    print(f"Recommended: the smallest slice this site offers that fits is {choice} (submit --gpu mig:{choice}).")
    if args.write:
        set_default_gpu(args.site, choice)
        print(f"Wrote default_gpu: mig:{choice} into {args.site}")
    return 0
