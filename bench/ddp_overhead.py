"""What the template's resume and safety machinery costs under DDP or sharded training (FSDP2):
default `fit` vs Lightning's bare Trainer with the same strategy.

Two processes (by default), gloo on the CPU, launched by Lightning's own launcher on both sides, the
example model, data and batch size:

* bare: `Trainer(strategy="ddp", devices=2)` with a plain `DataLoader(shuffle=True)` (Lightning adds
  its DistributedSampler), no logger, checkpointing, progress bar or model summary;
* fit: the generated project's `fit` as a researcher runs it, with `--trainer.devices=2
  --trainer.strategy=ddp`: resumable loader, RNG states, rolling and best-k checkpoints with the
  per-step save/stop agreement, CSV logger, progress lines, early stopping.

Per-step time = rank 0's training batches of an epoch / steps (validation excluded; the first epoch
of every run is a warm-up). Also printed: each process's CPU time per step (the same epochs), its
own work without the time it spends waiting for the other process at a collective: with two
processes on two shared cores the wall-time ratio moves by several per cent from run to run, the
CPU time much less. Sides alternate in ABBA order over the repeats, in this one run; each
side is its own pair of processes (DDP cannot be torn down and rebuilt in one process).

With `--strategy fsdp2` both sides use the kit's `fsdp2` (FSDP2, the model sharded layer by layer):
the bare side is a plain Trainer with that strategy and nothing else, so the difference is the
template's per-step machinery under sharding.

On a GPU machine (bench/gpu_checks.py): `--accelerator gpu --devices N` (NCCL), both sides in the
kit's automatic precision (bf16 mixed where supported), and `--width W` widens the example's three
hidden layers to W units so that a step is GPU work rather than Python.

    .venv/bin/python bench/ddp_overhead.py [--repeats 4] [--epochs 10] [--strategy ddp|fsdp2]
        [--accelerator cpu|gpu] [--devices 2] [--width W]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]

# The processes both sides run on, set by main() for the side processes it starts.
PROCESSES = {
    "accelerator": os.environ.get("BENCH_ACCELERATOR", "cpu"),
    "devices": int(os.environ.get("BENCH_DEVICES", "2")),
    "strategy": os.environ.get("BENCH_STRATEGY", "ddp"),
}


def model_options() -> list[str]:
    """The example's model, or its three hidden layers widened to $BENCH_WIDTH units."""
    width = os.environ.get("BENCH_WIDTH")
    return [f"--model.init_args.hidden_sizes=[{width}, {width}, {width}]"] if width else []


def precision() -> str:
    """Both sides' precision: what `fit` chooses by itself on this accelerator (fp32 on CPU)."""
    from digits_mlp.kit.training.fit_policies import automatic_precision

    return automatic_precision(PROCESSES["accelerator"])


def bare_lightning(epochs: int, label: str) -> None:
    import lightning.pytorch as pl
    from digits_mlp.kit import load_model_and_data
    from digits_mlp.kit.training.sharded_training import register_sharded_training
    from step_timer import StepTimer
    from torch.utils.data import DataLoader

    pl.seed_everything(42, verbose=False)
    register_sharded_training()  # the name fsdp2, as fit registers it
    model, data = load_model_and_data(model_options())
    data.setup("fit")
    train_loader = DataLoader(data.splits["train"], batch_size=data.hparams.batch_size, shuffle=True)
    trainer = pl.Trainer(
        **PROCESSES,
        precision=precision(),
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[StepTimer(label)],
    )
    trainer.fit(model, train_loader, data.val_dataloader())


def template_fit(epochs: int, label: str) -> None:
    from digits_mlp.kit.training.lightning_cli import run_lightning_cli

    args = [
        "fit",
        *(f"--trainer.{key}={value}" for key, value in PROCESSES.items()),
        f"--trainer.precision={precision()}",
        *model_options(),
        f"--trainer.max_epochs={epochs}",
        "--early_stopping.patience=null",  # both sides train every epoch
        "--run_name",
        label,
        "--trainer.callbacks+=step_timer.StepTimer",
        f"--trainer.callbacks.label={label}",
    ]
    assert run_lightning_cli(args) == 0


def run_side(side: str, project: Path, epochs: int, label: str, out: Path) -> None:
    """One side, in this process and the one Lightning launches for rank 1 (it re-runs this command)."""
    os.chdir(project)
    sys.path.insert(0, str(project / "src"))
    import logging

    import step_timer

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        (template_fit if side == "fit" else bare_lightning)(epochs, label)
    rank = os.environ.get("LOCAL_RANK", "0")
    timed = {"wall": step_timer.EPOCH_TIMES[label], "cpu": step_timer.EPOCH_CPU[label]}
    rank_file(out, rank).write_text(json.dumps(timed))


def rank_file(out: Path, rank: str) -> Path:
    return out.with_name(f"{out.stem}-rank{rank}.json")


def per_step_ms(out: Path, rank: str, kind: str) -> list[float]:
    """Rank `rank`'s per-step `kind` time ("wall" or "cpu"), one value per epoch after the first (a warm-up)."""
    times = json.loads(rank_file(out, rank).read_text())[kind]
    return [seconds / steps * 1e3 for seconds, steps in times[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--strategy", choices=["ddp", "fsdp2"], default="ddp")
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--devices", type=int, default=2, help="processes (one per GPU on a GPU machine)")
    parser.add_argument("--width", type=int, help="units in each of the three hidden layers (the example's by default)")
    parser.add_argument("--side", choices=["fit", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--project", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--label", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        run_side(args.side, args.project, args.epochs, args.label, args.out)
        return

    from example_project import use_rendered_example

    work, _ = use_rendered_example("bench-ddp-")
    env = {**os.environ, "BENCH_STRATEGY": args.strategy, "BENCH_ACCELERATOR": args.accelerator}
    env |= {"BENCH_DEVICES": str(args.devices), "BENCH_WIDTH": str(args.width or "")}
    ranks = [str(rank) for rank in range(args.devices)]
    times: dict[str, list[float]] = {"bare": [], "fit": []}
    cpu: dict[tuple[str, str], list[float]] = {(side, rank): [] for side in times for rank in ranks}
    for repeat in range(args.repeats):
        for side in ("bare", "fit") if repeat % 2 == 0 else ("fit", "bare"):
            label, out = f"{args.strategy}-{side}-{repeat}", work / f"{side}-{repeat}.json"
            command = [sys.executable, __file__, "--side", side, "--project", str(work / "project")]
            command += ["--epochs", str(args.epochs), "--label", label, "--out", str(out)]
            side_ran = subprocess.run(command, capture_output=True, text=True, env=env)
            if side_ran.returncode != 0:
                sys.exit(f"the {side} side failed:\n{side_ran.stderr[-3000:]}")
            times[side] += per_step_ms(out, "0", "wall")
            for rank in ranks:
                cpu[side, rank] += per_step_ms(out, rank, "cpu")
    bare, fit = statistics.median(times["bare"]), statistics.median(times["fit"])
    fastest = min(times["fit"]) / min(times["bare"])
    name = args.strategy
    timed = f"{args.repeats} repeats x {args.epochs - 1} epochs"
    backend = "NCCL, GPU" if args.accelerator == "gpu" else "gloo, CPU"
    model = f"hidden layers of {args.width}" if args.width else "the example's model"
    print(f"{args.devices}-process {name} ({backend}, {model}), per-step time, median over {timed}")
    print(f"{'bare Lightning ' + name:<28} {bare:>8.3f} ms")
    print(f"{'template fit (' + name + ')':<28} {fit:>8.3f} ms")
    print(f"ratio {fit / bare:.3f}x (+{fit - bare:.3f} ms per step); fastest epochs {fastest:.3f}x")
    # CPU time per step of each process: its own work, without the time it waits for the other at a collective.
    for rank in ranks:
        bare_cpu, fit_cpu = statistics.median(cpu["bare", rank]), statistics.median(cpu["fit", rank])
        ratio = fit_cpu / bare_cpu
        print(f"rank {rank} CPU per step: bare {bare_cpu:.3f} ms, fit {fit_cpu:.3f} ms, ratio {ratio:.3f}x")


if __name__ == "__main__":
    main()
