"""Feeding a model from many small files, from packed shards, and from memory: samples per second.

`.venv/bin/python bench/loader_formats.py [COUNT]` (default 100,000). Generates COUNT synthetic 8x8
samples as one .npy file each (kit/data/many_files_example.py), packs them into shards of 16,384
rows (kit/data/shards.py), and times a shuffled DataLoader (batch size 256) drawing SAMPLES_PER_ROUND
samples from each of: one file per sample, the shards read row by row, the shards read a batch at a
time (`ShardDataset.__getitems__`, what training uses), and an in-memory tensor data set, at 0 and 2
data-loading workers. Rounds are interleaved (every loader once per round) so
the machine's noise hits all alike; the figure is the median over rounds. The files sit on local
disk in the page cache: on a network filesystem, one file per sample is slower still.
Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from example_project import use_rendered_example  # noqa: E402

BATCH_SIZE, SAMPLES_PER_ROUND, ROUNDS = 256, 25_600, 5


class RowByRow:
    """The shards without their batched read (`__getitems__`): one `__getitem__` per sample, as before."""

    def __init__(self, shards) -> None:
        self.shards = shards

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, index: int):
        return self.shards[index]


def samples_per_second(loader) -> float:
    started, seen = time.perf_counter(), 0
    for inputs, _ in loader:
        seen += len(inputs)
        if seen >= SAMPLES_PER_ROUND:
            break
    return seen / (time.perf_counter() - started)


def main() -> None:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    use_rendered_example("bench-loaders-")
    from digits_mlp.kit.data.many_files_example import OneFilePerSample, pack_sample_files, write_sample_files
    from digits_mlp.kit.data.shards import ShardDataset

    work = Path(tempfile.mkdtemp(prefix="bench-loader-formats-"))
    started = time.perf_counter()
    files = write_sample_files(work / "files", count)
    written = time.perf_counter() - started
    started = time.perf_counter()
    pack_sample_files(files, work / "shards", rows_per_shard=16_384)
    packed = time.perf_counter() - started
    shards = ShardDataset(work / "shards")
    samples = [shards[i] for i in range(len(shards))]
    images, labels = (torch.stack([sample[field] for sample in samples]) for field in (0, 1))
    in_memory = TensorDataset(images, labels)
    datasets = {
        "one file per sample": OneFilePerSample(files),
        "shards, row by row": RowByRow(shards),
        "packed shards": shards,
        "in memory": in_memory,
    }
    print(f"{count:,} samples: wrote {count:,} files in {written:.1f} s, packed them into "
          f"{len(shards.manifest['shards'])} shards in {packed:.1f} s")  # fmt: skip
    for workers in (0, 2):
        loaders = {
            name: DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=workers,
                             persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
            for name, dataset in datasets.items()
        }  # fmt: skip
        for loader in loaders.values():
            samples_per_second(loader)  # warm-up: workers started, pages cached
        rounds = {name: [] for name in loaders}
        for _ in range(ROUNDS):
            for name, loader in loaders.items():
                rounds[name].append(samples_per_second(loader))
        rates = {name: statistics.median(values) for name, values in rounds.items()}
        print(f"num_workers={workers}:")
        for name, rate in rates.items():
            print(f"  {name:20} {rate:12,.0f} samples/s   {rate / rates['one file per sample']:6.1f}x files   "
                  f"in-memory/this {rates['in memory'] / rate:5.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
