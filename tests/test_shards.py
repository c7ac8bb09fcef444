"""Packed shards (kit/data/shards.py): exact round trip, storage-level filtering, damaged shards refused,
and the resumable order over them (0 and 2 data-loading workers), on many small generated files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch


@pytest.fixture(scope="module")
def packed(example_package, tmp_path_factory):
    from digits_mlp.kit.data.many_files_example import pack_sample_files, write_sample_files

    work = tmp_path_factory.mktemp("shards")
    files = write_sample_files(work / "files", 5000, seed=1)
    manifest = pack_sample_files(files, work / "shards", rows_per_shard=1000)
    return files, work / "shards", manifest


def test_every_sample_comes_back_exactly(packed) -> None:
    from digits_mlp.kit.data.many_files_example import OneFilePerSample
    from digits_mlp.kit.data.shards import ShardDataset

    files, directory, manifest = packed
    assert manifest["rows"] == 5000 and len(manifest["shards"]) == 5
    assert len(list(directory.glob("shard-*.npy"))) == 10  # inputs and targets per shard: 10 files for 5,000 samples
    shards, originals = ShardDataset(directory), OneFilePerSample(files)
    assert len(shards) == len(originals) == 5000
    for index in range(5000):
        (image, label), (raw_image, raw_label) = shards[index], originals[index]
        assert torch.equal(image, raw_image) and int(label) == int(raw_label)


def test_a_batch_read_at_once_equals_the_samples_read_one_by_one(packed) -> None:
    """`__getitems__` (what a DataLoader calls for a batch): one gather per shard, samples in the order asked."""
    import numpy as np
    from digits_mlp.kit.data.shards import ShardDataset
    from torch.utils.data import default_collate

    _, directory, _ = packed
    shards = ShardDataset(directory, where={"split": [0, 2]})
    order = [int(i) for i in np.random.default_rng(3).permutation(len(shards))[:300]]  # rows from every shard
    batch = shards.__getitems__(order)
    assert shards.rows_read == 300 and len(shards.shards_opened) == 5
    one_by_one = [shards[i] for i in order]
    for (image, label), (expected_image, expected_label) in zip(batch, one_by_one, strict=True):
        assert torch.equal(image, expected_image) and torch.equal(label, expected_label)
    images, labels = default_collate(batch)
    assert images.shape == (300, 8, 8) and labels.dtype == torch.int64


def test_a_filter_reads_only_the_rows_and_shards_it_needs(packed) -> None:
    from digits_mlp.kit.data.many_files_example import label_of, split_of
    from digits_mlp.kit.data.shards import ShardDataset, ShardError

    files, directory, _ = packed
    threes = ShardDataset(directory, where={"label": 3})
    expected = [index for index, path in enumerate(files) if label_of(path) == 3]
    assert list(threes.rows) == expected and all(int(threes[i][1]) == 3 for i in range(len(threes)))
    assert threes.rows_read == len(expected)
    # Samples arrive day by day (a `day` column): two days live in the first shard, and only it is read.
    two_days = ShardDataset(directory, where={"day": [0, 1]})
    assert two_days.shards_needed() == ["shard-00000"] and len(two_days) == 1000
    assert all(split_of(int(row)) in (0, 1, 2) for row in two_days.rows)
    for index in range(len(two_days)):
        two_days[index]
    assert two_days.shards_opened == {"shard-00000"} and two_days.rows_read == 1000  # 1 of 5 shards mapped
    with pytest.raises(ShardError, match="selects no rows"):
        ShardDataset(directory, where={"label": 11})
    with pytest.raises(ShardError, match="no column 'date'"):
        ShardDataset(directory, where={"date": 2024})


def test_a_damaged_or_truncated_shard_is_refused_naming_it(packed, tmp_path) -> None:
    import shutil

    from digits_mlp.kit.data.shards import ShardDataset, ShardError

    _, directory, _ = packed
    copy = tmp_path / "shards"
    shutil.copytree(directory, copy)
    damaged = copy / "shard-00003.inputs.npy"
    data = bytearray(damaged.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte, same size
    damaged.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="shard .*shard-00003.inputs.npy is damaged or truncated"):
        ShardDataset(copy)
    assert len(ShardDataset(copy, where={"day": [0, 1]})) == 1000  # a filter that never reads shard 3 still works
    truncated = copy / "shard-00001.targets.npy"
    truncated.write_bytes(truncated.read_bytes()[:-100])
    with pytest.raises(ShardError, match="shard-00001.targets.npy is damaged or truncated"):
        ShardDataset(copy, where={"split": 2})
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["format"] == "numpy-shards/1"


@pytest.mark.parametrize("workers", [0, 2])
def test_the_resumable_order_survives_a_restart_on_shards(packed, workers) -> None:
    from digits_mlp.kit import ResumableDataLoader
    from digits_mlp.kit.data.shards import ShardDataset

    _, directory, _ = packed
    dataset = ShardDataset(directory, where={"split": 0})

    def loader():
        return ResumableDataLoader(dataset, batch_size=128, seed=7, num_workers=workers)

    whole = [batch[1].tolist() for batch in loader()]
    interrupted = loader()
    seen = []
    for batch in interrupted:
        seen.append(batch[1].tolist())
        if len(seen) == 9:
            break
    state = interrupted.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    seen += [batch[1].tolist() for batch in resumed]
    assert seen == whole and len(whole) == -(-len(dataset) // 128)


def test_token_blocks_join_documents_and_shift_targets_by_one(example_package, tmp_path) -> None:
    from digits_mlp.kit.data.shards import ShardDataset
    from digits_mlp.kit.data.token_blocks import pack_token_blocks, token_blocks

    assert token_blocks([[5, 6], [7], [8, 9, 10]], 2, end_token=0).tolist() == [[5, 6, 0], [7, 0, 8], [9, 10, 0]]
    assert token_blocks([[5, 6], [7]], 2, end_token=0).tolist() == [[5, 6, 0]]  # the short rest is dropped
    documents = {0: [list(range(1, 40))] * 3, 1: [[41, 42, 43, 44, 45, 46, 47]], 2: [[51, 52, 53, 54, 55]]}
    manifest = pack_token_blocks(tmp_path / "blocks", documents, block_size=4, end_token=99, rows_per_shard=7)
    assert manifest["fields"]["inputs"] == {"dtype": "int64", "shape": [4]} and len(manifest["shards"]) == 4
    for split, texts in documents.items():
        rows = ShardDataset(tmp_path / "blocks", ("inputs", "targets"), where={"split": split})
        stream = [token for text in texts for token in (*text, 99)]
        assert len(rows) == len(stream) // 5 > 0
        for number in range(len(rows)):
            inputs, targets = rows[number]
            assert inputs.tolist() == stream[5 * number : 5 * number + 4]  # no block crosses into another split
            assert targets.tolist() == stream[5 * number + 1 : 5 * number + 5]
    with pytest.raises(ValueError, match="the validation split has 3 tokens, fewer than one block of 5"):
        pack_token_blocks(tmp_path / "short", {0: [[1] * 9], 1: [[1, 2]]}, block_size=4, end_token=99)


def test_a_shard_size_below_one_row_is_refused_before_anything_is_written(example_package, tmp_path) -> None:
    """rows_per_shard=0 once wrote empty shards until the disk was full (a run that never ended)."""
    import numpy as np
    from digits_mlp.kit.data.shards import pack_shards

    rows = [{"inputs": np.zeros((4, 2))}]
    for rows_per_shard in (0, -1):
        with pytest.raises(ValueError, match=f"rows_per_shard must be positive, got {rows_per_shard}"):
            pack_shards(tmp_path / "shards", iter(rows), {}, rows_per_shard)
    assert list(tmp_path.iterdir()) == []  # no staging folder left behind
    assert pack_shards(tmp_path / "shards", iter(rows), {}, 3)["rows"] == 4


KILLED_PACK = """
import sys, time
from pathlib import Path
import numpy as np
sys.path.insert(0, sys.argv[1])
from digits_mlp.kit.data.shards import pack_shards

def rows():
    yield {"inputs": np.zeros((8, 2))}  # two shards of 4 rows are written before the next is asked
    print("packing", flush=True)
    time.sleep(600)

pack_shards(Path(sys.argv[2]), rows(), {}, 4)
"""


def test_a_pack_killed_outright_leaves_no_copy_behind_once_the_next_pack_runs(example_package, tmp_path) -> None:
    import numpy as np
    from digits_mlp.kit.data.shards import pack_shards

    target = tmp_path / "shards"
    packing = subprocess.Popen(
        [sys.executable, "-c", KILLED_PACK, str(example_package / "src"), str(target)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert packing.stdout.readline() == "packing\n"
    packing.send_signal(signal.SIGKILL)  # no handler, no finally: as a node's reboot or the OOM killer
    packing.wait()
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(f".shards.{socket.gethostname()}-{packing.pid}.")
    assert len(list(left.glob("shard-*.npy"))) == 2  # what it had written, a copy of the data on disk
    running = tmp_path / f".shards.{socket.gethostname()}-{os.getpid()}.abc"  # a pack still running here
    elsewhere = tmp_path / ".shards.another-host-12345.abc"  # whose process this host cannot see
    running.mkdir()
    elsewhere.mkdir()

    assert pack_shards(target, iter([{"inputs": np.ones((3, 2))}]), {}, 2)["rows"] == 3
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([elsewhere.name, running.name, "shards"])
