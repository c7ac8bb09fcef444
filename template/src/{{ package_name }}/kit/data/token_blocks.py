"""Token sequences packed into blocks for causal language modelling, stored as the project's shards.

Managed by the copier-lightning template. A language model trains on fixed-length windows of text,
not on documents padded to the longest one: `token_blocks` joins the documents' token ids, an end
token after each, and cuts the stream into rows of `block_size + 1` tokens (a last, shorter piece is
dropped). `pack_token_blocks` writes them with `pack_shards`, per split, as `inputs` (a row's first
`block_size` tokens) and `targets` (the same row shifted by one: the token that follows each input
token), with a `split` column, so that a `ShardedDataModule` reads them memory-mapped and
resumably, and the model's loss is a plain cross-entropy of its logits against `targets`.

Documents are assigned to splits before they are joined, so no text reaches two splits.
Written here: the join-and-cut is a few lines over numpy; the libraries that do it (`datasets`'
map with a grouping function, torchtune's packed datasets) would bring their own storage format
beside the shards the kit already checks and resumes over.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .shards import pack_shards

SPLIT_NAMES = {0: "training", 1: "validation", 2: "test"}


def token_blocks(documents: Iterable[Sequence[int]], block_size: int, end_token: int) -> np.ndarray:
    """Rows of `block_size + 1` token ids cut from the documents joined with `end_token` after each."""
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    stream = [token for document in documents for token in (*document, end_token)]
    rows = len(stream) // (block_size + 1)
    return np.asarray(stream[: rows * (block_size + 1)], dtype=np.int64).reshape(rows, block_size + 1)


def pack_token_blocks(
    directory: Path,
    documents_by_split: dict[int, Sequence[Sequence[int]]],
    block_size: int,
    end_token: int,
    rows_per_shard: int = 8192,
) -> dict[str, Any]:
    """Pack each split's documents (split number 0, 1, 2 -> token id lists) as blocks into shards."""
    inputs, targets, splits = [], [], []
    for split, documents in sorted(documents_by_split.items()):
        blocks = token_blocks(documents, block_size, end_token)
        if len(blocks) == 0:
            tokens = sum(len(document) + 1 for document in documents)
            raise ValueError(
                f"the {SPLIT_NAMES.get(split, split)} split has {tokens} tokens, fewer than one block of "
                f"{block_size + 1}: lower block_size or give that split more text"
            )
        inputs.append(blocks[:, :-1])
        targets.append(blocks[:, 1:])
        splits.append(np.full(len(blocks), split, dtype=np.int64))
    rows = [{"inputs": x, "targets": y} for x, y in zip(inputs, targets, strict=True)]
    return pack_shards(directory, rows, {"split": np.concatenate(splits)}, rows_per_shard)
