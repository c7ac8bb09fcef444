"""The fine-tune example's `fit` against a bare transformers + peft training loop, and its checkpoints.

Per step: the template's default `fit` of the fine-tune example (progress lines, CSV logging,
rolling and best checkpoints, random-state capture, the resumable loader, all as shipped) against
the loop one writes with transformers and peft alone: the same base model loaded the same way,
the same LoRA settings, the same tokenized training split in a plain shuffled DataLoader, AdamW
on the trainable parameters. Both in this one process, alternating ABBA over the repeats; the first
epoch of every run is a warm-up. Two base models, both random-weight LLaMAs put in a hub cache
made here (the hub is not reachable): the tests' tiny one, and a larger one whose steps take long
enough that per-step overheads show at the size they have on a real model.

Checkpoints: the bytes of the run's last.ckpt (adapters, head and optimizer state) against the
same checkpoint with the frozen base weights in it, and the time `torch.load` takes for each.

    .venv/bin/python bench/finetune_overhead.py [--repeats 4] [--epochs 4]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOP / "tests"))

from hub_cache import put_in_hub_cache, save_tiny_llama_with_tokenizer  # noqa: E402
from overhead import per_step  # noqa: E402

from template_dev import render, snapshot_template  # noqa: E402

BASE_MODEL, REVISION = "HuggingFaceTB/SmolLM2-135M", "93efa2f097d58c2a74874c7e644dbc9b0cee75a2"
BASES = {  # name -> the LLaMA's size (what the cache holds under BASE_MODEL for that round)
    "tiny LLaMA (the tests')": {},
    "LLaMA, 4 layers x 256": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4},
}


def render_finetune_project(work: Path) -> None:
    render(snapshot_template(work / "template"), work / "project", example="finetune",
           project_name="Ticket Topics", package_name="ticket_topics")  # fmt: skip
    os.chdir(work / "project")
    os.environ.update(RUNS_DIR=str(work / "runs"), HF_HUB_OFFLINE="1")
    sys.path.insert(0, str(work / "project" / "src"))
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # the fine-tune's new head is "missing" from the base: known
    transformers_logging.disable_progress_bar()


def fill_cache(work: Path, name: str, size: dict) -> None:
    """The base model of this round, in its own cache; the data module's cached features go with it."""
    from ticket_topics.data import write_example_tickets

    folder = work / name.split()[0]
    write_example_tickets(work / "tickets.jsonl")
    texts = [json.loads(line)["text"] for line in (work / "tickets.jsonl").read_text().splitlines()]
    save_tiny_llama_with_tokenizer(folder / "saved", texts, **size)
    put_in_hub_cache(folder / "saved", folder / "hub", BASE_MODEL, REVISION)
    os.environ["HF_HUB_CACHE"] = str(folder / "hub")


def bare_loop_epoch_times(epochs: int) -> list[tuple[float, int]]:
    """transformers + peft alone: no Lightning, no kit."""
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from ticket_topics.data import TicketTopicsDataModule, load_tokenizer
    from ticket_topics.kit import PretrainedSource
    from torch.utils.data import DataLoader
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(42)
    pad = load_tokenizer(BASE_MODEL, REVISION).pad_token_id
    backbone = AutoModelForSequenceClassification.from_pretrained(
        PretrainedSource(BASE_MODEL, REVISION).local_path(), num_labels=4, pad_token_id=pad, dtype=torch.float32
    )
    adapters = LoraConfig(
        task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"]
    )
    model = get_peft_model(backbone, adapters).train()
    data = TicketTopicsDataModule()
    data.setup("fit")
    loader = DataLoader(data.splits["train"], batch_size=16, shuffle=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3, weight_decay=0.0)
    times = []
    for _ in range(epochs):
        started, steps = time.perf_counter(), 0
        for token_ids, labels in loader:
            logits = model(input_ids=token_ids, attention_mask=token_ids.ne(pad).long()).logits
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
        times.append((time.perf_counter() - started, steps))
    return times


def fit_epoch_times(epochs: int, label: str, run_name: str) -> list[tuple[float, int]]:
    import step_timer
    from ticket_topics.kit.training.lightning_cli import run_lightning_cli

    step_timer.EPOCH_TIMES.pop(label, None)
    args = ["fit", f"--trainer.max_epochs={epochs}", "--run_name", run_name, "--early_stopping.patience=null",
            "--trainer.callbacks+=step_timer.StepTimer", f"--trainer.callbacks.label={label}"]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert run_lightning_cli(args) == 0
    return step_timer.EPOCH_TIMES[label]


def checkpoint_sizes(run: Path) -> dict[str, float]:
    """last.ckpt as saved, and the same with the frozen base weights added; bytes and load seconds."""
    import torch
    from ticket_topics.kit import load_model_and_data

    saved = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(saved, map_location="cpu", weights_only=True)
    model, _ = load_model_and_data()
    everything = {name: tensor for name, tensor in model.named_parameters()}
    full = run / "checkpoints" / "with-frozen-base.ckpt"
    torch.save({**checkpoint, "state_dict": {**everything, **checkpoint["state_dict"]}}, full)
    result = {}
    for side, path in (("adapters only", saved), ("with the frozen base", full)):
        started = time.perf_counter()
        for _ in range(5):
            torch.load(path, map_location="cpu", weights_only=True)
        result[side] = (path.stat().st_size, (time.perf_counter() - started) / 5)
    full.unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    render_finetune_project(work)
    print(f"per-step time, median over {args.repeats} repeats x {args.epochs - 1} timed epochs (53 steps each)")
    for name, size in BASES.items():
        fill_cache(work, name, size)
        times: dict[str, list[float]] = {"transformers + peft": [], "fit": []}
        last_run = None
        for repeat in range(args.repeats):
            for side in list(times) if repeat % 2 == 0 else list(reversed(times)):
                if side == "fit":
                    last_run = f"bench-{name.split()[0]}-{repeat}"
                    times[side] += per_step(fit_epoch_times(args.epochs, f"{name}-{repeat}", last_run))
                else:
                    times[side] += per_step(bare_loop_epoch_times(args.epochs))
        bare, fit = (statistics.median(times[side]) for side in times)
        fastest = min(times["fit"]) / min(times["transformers + peft"])
        print(f"  {name:<26} transformers + peft {bare * 1e3:7.2f} ms   fit {fit * 1e3:7.2f} ms   "
              f"{fit / bare:.3f}x (fastest epochs {fastest:.3f}x)")  # fmt: skip
        sizes = checkpoint_sizes(work / "runs" / last_run)
        (small, small_load), (large, large_load) = sizes.values()
        print(f"    last.ckpt: adapters only {small / 1e3:.1f} kB (load {small_load * 1e3:.1f} ms), with the frozen "
              f"base {large / 1e3:.1f} kB (load {large_load * 1e3:.1f} ms): {large / small:.1f}x the size")  # fmt: skip


if __name__ == "__main__":
    main()
