"""Cost of crash safety, measured side by side in one process.

1. Writing a checkpoint: the template's AtomicCheckpointIO (temporary file in the target directory,
   fsync, rename, directory fsync) versus Lightning's own TorchCheckpointIO (staged in $TMPDIR, then
   moved), on the same checkpoint dict of a >= 1 M parameter model with its Adam state.
2. Verifying a checkpoint before a resume (its checksum, kit/runs/checksums.py) versus loading it
   (`torch.load`, as Lightning does on resume), on the same file; the issue's target: <= 10 %.
3. Per-step cost of the exact-resume machinery (ResumableDataLoader + RNG states in checkpoints)
   versus the same default `fit` with a plain shuffled DataLoader and no RNG capture.

    .venv/bin/python bench/checkpointing.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]

from example_project import use_rendered_example  # noqa: E402


def checkpoint_write_ratio(repeats: int, directory: Path) -> tuple[float, float, float]:
    import lightning.pytorch as pl
    from digits_mlp.kit import load_model_and_data
    from digits_mlp.kit.runs.checkpoint_io import AtomicCheckpointIO
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    model, data = load_model_and_data(["--model.init_args.hidden_sizes=[1024, 1024]"])
    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(model, datamodule=data)
    checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
    ours, lightnings = AtomicCheckpointIO(), TorchCheckpointIO()
    atomic_times, lightning_times = [], []
    for repeat in range(repeats):
        for name, io_plugin, times in (("ours", ours, atomic_times), ("lightning", lightnings, lightning_times))[
            :: 1 if repeat % 2 == 0 else -1
        ]:
            started = time.perf_counter()
            io_plugin.save_checkpoint(checkpoint, directory / f"{name}.ckpt")
            times.append(time.perf_counter() - started)
    size_mb = (directory / "ours.ckpt").stat().st_size / 1e6
    return statistics.median(atomic_times) * 1e3, statistics.median(lightning_times) * 1e3, size_mb


def checksum_versus_load(repeats: int, path: Path) -> tuple[float, float]:
    """Median ms of checking `path`'s checksum and of torch.load(path), alternating, warm page cache."""
    import torch
    from digits_mlp.kit.runs.checksums import file_checksum

    check_times, load_times = [], []
    for repeat in range(repeats):
        for side in ("check", "load") if repeat % 2 == 0 else ("load", "check"):
            started = time.perf_counter()
            if side == "check":
                file_checksum(path)
            else:
                torch.load(path, map_location="cpu", weights_only=True)
            (check_times if side == "check" else load_times).append(time.perf_counter() - started)
    return statistics.median(check_times) * 1e3, statistics.median(load_times) * 1e3


def resume_machinery_ratio(repeats: int, epochs: int) -> tuple[float, float]:
    import lightning.pytorch as pl
    import overhead
    from digits_mlp.data import DigitsDataModule
    from digits_mlp.kit.training import lightning_cli
    from torch.utils.data import DataLoader

    class PlainLoaderDigits(DigitsDataModule):
        def train_dataloader(self):
            return DataLoader(self.splits["train"], batch_size=self.hparams.batch_size, shuffle=True)

    sys.modules["bench_plain_loader"] = type(sys)("bench_plain_loader")
    sys.modules["bench_plain_loader"].PlainLoaderDigits = PlainLoaderDigits
    PlainLoaderDigits.__module__ = "bench_plain_loader"
    exact_rng = lightning_cli.RandomStateCheckpoint
    with_machinery, without = [], []
    for repeat in range(repeats):
        for variant in ("with", "without") if repeat % 2 == 0 else ("without", "with"):
            if variant == "with":
                lightning_cli.RandomStateCheckpoint = exact_rng
                with_machinery += overhead.per_step(overhead.lightning_fit_epoch_times([], epochs, f"with-{repeat}"))
            else:
                lightning_cli.RandomStateCheckpoint = pl.Callback  # no RNG states in checkpoints
                plain = ["--data.class_path=bench_plain_loader.PlainLoaderDigits"]
                without += overhead.per_step(overhead.lightning_fit_epoch_times(plain, epochs, f"without-{repeat}"))
    lightning_cli.RandomStateCheckpoint = exact_rng
    return statistics.median(with_machinery) * 1e3, statistics.median(without) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    work, _ = use_rendered_example("bench-checkpointing-")

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        ours_ms, lightning_ms, size_mb = checkpoint_write_ratio(args.repeats, work)
    print(
        f"checkpoint write ({size_mb:.1f} MB), median of {args.repeats}: atomic {ours_ms:.1f} ms, "
        f"Lightning's save {lightning_ms:.1f} ms, ratio {ours_ms / lightning_ms:.2f}x"
    )
    check_ms, load_ms = checksum_versus_load(4 * args.repeats, work / "ours.ckpt")  # cheap: more repeats
    print(
        f"before a resume ({size_mb:.1f} MB), median of {4 * args.repeats}: checksum check {check_ms:.2f} ms, "
        f"torch.load {load_ms:.1f} ms: the check costs {100 * check_ms / load_ms:.1f} % of the load"
    )
    with_ms, without_ms = resume_machinery_ratio(max(args.repeats // 3, 2), 8)
    print(
        f"per step, default fit: with the resume machinery {with_ms:.3f} ms, with a plain loader and no RNG "
        f"capture {without_ms:.3f} ms, ratio {with_ms / without_ms:.3f}x"
    )


if __name__ == "__main__":
    main()
