"""What a sharded save with staging, checksums and commit costs against Lightning's own sharded save.

Two processes (gloo, CPU) train the example with `--trainer.strategy=fsdp2` and a wider model
(three hidden layers of `--width`: 1,024 gives 2.2 M parameters, 26 MB with Adam's state; 4,096
gives 33.9 M, 407 MB, the size where a model starts to be sharded). At the end of training,
in the same pair of processes, a callback alternates (ABBA) two ways to save the same state:

* Lightning: `ModelParallelStrategy.save_checkpoint` (every rank writes its shard straight into
  the target directory, rank 0 the metadata), after building the checkpoint as Lightning does;
* kit: `trainer.save_checkpoint` with the kit's `ShardedTraining` (staging directory, a checksum
  per shard, the listing, the manifest entry, `previous` kept, one rename).

Rank 0's wall time per save, all ranks started together (a barrier before each), median. On a GPU
machine (bench/gpu_checks.py): `--accelerator gpu --devices N`, one process per GPU, NCCL.

    .venv/bin/python bench/sharded_checkpointing.py [--saves 10] [--width 1024] [--accelerator cpu|gpu] [--devices 2]
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
import time
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.strategies import ModelParallelStrategy


class AlternatingSaves(pl.Callback):
    """At the end of training: `saves` saves each way, ABBA; rank 0 writes the times to $BENCH_OUT."""

    def __init__(self, saves: int = 10) -> None:
        self.saves = saves

    def on_train_end(self, trainer, pl_module) -> None:
        strategy = trainer.strategy
        target = Path(os.environ["BENCH_OUT"]).parent / "bench-saves"
        times: dict[str, list[float]] = {"lightning": [], "kit": []}
        for index in range(self.saves):
            for way in ("lightning", "kit") if index % 2 == 0 else ("kit", "lightning"):
                strategy.barrier()
                started = time.perf_counter()
                if way == "kit":
                    trainer.save_checkpoint(target / "kit.ckpt")
                else:
                    # What trainer.save_checkpoint does, with Lightning's own sharded save at the end.
                    checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
                    ModelParallelStrategy.save_checkpoint(strategy, checkpoint, target / "lightning.ckpt")
                    strategy.barrier()
                times[way].append(time.perf_counter() - started)
        if trainer.is_global_zero:
            Path(os.environ["BENCH_OUT"]).write_text(json.dumps(times))


def run_side(project: Path, saves: int, width: int, accelerator: str, devices: int) -> None:
    os.chdir(project)
    sys.path.insert(0, str(project / "src"))
    from digits_mlp.kit.training.lightning_cli import run_lightning_cli

    wide = f"--model.init_args.hidden_sizes=[{width}, {width}, {width}]"
    args = ["fit", f"--trainer.accelerator={accelerator}", f"--trainer.devices={devices}"]
    args += ["--trainer.strategy=fsdp2", wide]
    args += ["--trainer.max_epochs=1", "--run_name", "sharded-saves", "--early_stopping.patience=null"]
    args += ["--trainer.callbacks+=sharded_checkpointing.AlternatingSaves", f"--trainer.callbacks.saves={saves}"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_lightning_cli(args) == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saves", type=int, default=10)
    parser.add_argument("--width", type=int, default=1024, help="units in each of the three hidden layers")
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--devices", type=int, default=2, help="processes (one per GPU on a GPU machine)")
    parser.add_argument("--project", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.project:
        run_side(args.project, args.saves, args.width, args.accelerator, args.devices)
        return

    from example_project import use_rendered_example

    work, _ = use_rendered_example("bench-sharded-saves-")
    out = work / "saves.json"
    command = [sys.executable, __file__, "--project", str(work / "project"), "--saves", str(args.saves)]
    command += ["--width", str(args.width), "--accelerator", args.accelerator, "--devices", str(args.devices)]
    paths = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "BENCH_OUT": str(out), "PYTHONPATH": paths}
    saves_ran = subprocess.run(command, capture_output=True, text=True, env=env)
    if saves_ran.returncode != 0:
        sys.exit(f"the training processes failed:\n{saves_ran.stderr[-3000:]}")
    times = json.loads(out.read_text())
    lightning, kit = statistics.median(times["lightning"]) * 1e3, statistics.median(times["kit"]) * 1e3
    size = sum(p.stat().st_size for p in (work / "bench-saves" / "kit.ckpt").iterdir())
    where = f"{args.devices}-process fsdp2 ({'NCCL, GPU' if args.accelerator == 'gpu' else 'gloo, CPU'})"
    print(f"{where} save of {size / 1e6:.1f} MB, median of {args.saves} each (ABBA), rank 0's wall time")
    print(f"{'Lightning sharded save':<28} {lightning:>8.1f} ms")
    print(f"{'kit staged + checksummed':<28} {kit:>8.1f} ms")
    print(f"ratio {kit / lightning:.3f}x (+{kit - lightning:.1f} ms per save)")


if __name__ == "__main__":
    main()
