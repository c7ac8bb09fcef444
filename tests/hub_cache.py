"""A tiny pretrained model in a Hugging Face hub cache, made here (the hub is not reachable).

The model is a real architecture (LLaMA) with random weights and a few hundred thousand
parameters, saved with `save_pretrained` (safetensors), then laid out as huggingface_hub lays out
a download: `models--org--name/blobs/<content hash>`, `snapshots/<commit>/<file>` linking to the
blob, `refs/main` naming the commit, and `trees/<commit>.json`, the listing of the commit's files
that huggingface_hub 2.x keeps beside a download (its documented format: each file's size and git
blob id, and for LFS files the sha256 and size) and checks a snapshot against offline. Large files
are named by their sha256 (the hub's LFS files), small ones by git's blob sha1, as on the hub.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin")


def tiny_llama(seed: int = 0, vocab_size: int = 96, **size: int):
    """size: LlamaConfig values to change (hidden_size, num_hidden_layers, ...), for a larger model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    shape = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = LlamaConfig(vocab_size=vocab_size, num_key_value_heads=2, max_position_embeddings=64, **{**shape, **size})
    return LlamaForCausalLM(config)


def save_tiny_llama_with_tokenizer(folder: Path, texts: list[str], seed: int = 0, **size: int) -> None:
    """A tiny LLaMA and a word-level tokenizer made from `texts`, saved as a hub repository holds them
    (config, safetensors weights, tokenizer files), for AutoTokenizer and AutoModel*.from_pretrained."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel(unk_token="<unk>"))
    words.normalizer = normalizers.Lowercase()
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")
    tokenizer.save_pretrained(folder)
    model = tiny_llama(seed, vocab_size=-(-len(tokenizer) // 32) * 32, **size)
    model.config.pad_token_id, model.config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    model.save_pretrained(folder, safe_serialization=True)


def put_in_hub_cache(folder: Path, cache: Path, model_id: str, commit: str) -> Path:
    """Lay the files of `folder` (a save_pretrained output) into `cache` as a download of `model_id` at `commit`."""
    repo = cache / f"models--{model_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    listing = {}
    for source in sorted(p for p in folder.rglob("*") if p.is_file()):
        content = source.read_bytes()
        entry = {"size": len(content), "blob_id": _git_blob_id(content)}
        if source.suffix in LFS_SUFFIXES:  # git holds a pointer to the content: its blob id is the pointer's
            name = hashlib.sha256(content).hexdigest()
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{name}\nsize {len(content)}\n"
            entry = {"size": len(content), "blob_id": _git_blob_id(pointer.encode()), "lfs_sha256": name}
            entry["lfs_size"] = len(content)
        else:
            name = entry["blob_id"]
        (repo / "blobs" / name).write_bytes(content)
        link = snapshot / source.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / name, link.parent))
        listing[source.relative_to(folder).as_posix()] = entry
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "trees").mkdir(exist_ok=True)
    (repo / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": listing}, indent=1))
    return snapshot


def _git_blob_id(content: bytes) -> str:
    return hashlib.sha1(f"blob {len(content)}\0".encode() + content, usedforsecurity=False).hexdigest()
