"""The fine-tune example (`example: finetune`): a pretrained LLaMA-style model adapted with LoRA to sort
support tickets, rendered, installed and driven through its commands as a researcher would.

The base model is a tiny LLaMA with random weights and a word-level tokenizer, saved by
transformers and laid out in a hub cache under the id and commit the project's config names (the
hub is not reachable here): the project loads it through its real offline path. Checked: the
project's own tests (a SIGKILL with one and two processes resumes exactly); a stop by SIGTERM
(one process, two with DDP, two sharded with fsdp2) or USR1 resumes to the uninterrupted run's
weights exactly; gradient checkpointing recomputes and changes nothing; continued pretraining (a
causal language model on token blocks packed into shards) resumes exactly; checkpoints hold only
the adapters and the head;
`reproduce --all` exports a merged model that `from_pretrained` loads and that predicts as the
adapters do, and ONNX; `predict-files`, `evaluate` and `budget` work on it; a run on other base
weights and bad inputs end in one line with exit code 2.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_cache import put_in_hub_cache, save_tiny_llama_with_tokenizer
from servers import post, serving
from training_runs import checkpoint_weights, max_abs_difference, train

import preloaded_commands
from template_dev import commit_all, make_project_venv, render

PACKAGE = "ticket_topics"
BASE_MODEL = "HuggingFaceTB/SmolLM2-135M"
REVISION = "93efa2f097d58c2a74874c7e644dbc9b0cee75a2"
OTHER_REVISION = "fedcba9876543210fedcba9876543210fedcba98"
# 8 batches of 16 tickets an epoch, 3 epochs; the rolling checkpoint every 3 steps.
SHORT_RUN = [
    "--trainer.max_epochs=3",
    "--trainer.limit_train_batches=8",
    "--trainer.limit_val_batches=2",
    "--checkpointing.every_n_steps=3",
    "--checkpointing.every_n_minutes=null",
    "--early_stopping.patience=null",
]
TWO_PROCESSES = ["--trainer.devices=2", "--trainer.strategy=ddp"]
TWO_SHARDED = ["--trainer.devices=2", "--trainer.strategy=fsdp2"]  # FSDP2: each decoder layer sharded
FULL_SHARDED = [*TWO_SHARDED, "--config=configs/experiments/full-fine-tune.yaml"]  # no adapters: every weight


@pytest.fixture(scope="module")
def finetune(template_repo: Path, tmp_path_factory) -> tuple[Path, list[str], dict[str, str]]:
    return finetune_project(template_repo, tmp_path_factory.mktemp("finetune"))


def finetune_project(template_repo: Path, root: Path) -> tuple[Path, list[str], dict[str, str]]:
    """The fine-tune project rendered in `root`, its command, and the environment that points it at a weight
    cache in `root/hub` holding the tiny base under the config's id and commit (and under OTHER_REVISION)."""
    project = root / "ticket-topics"
    render(template_repo, project, example="finetune", project_name="Ticket Topics", package_name=PACKAGE)
    commit_all(project, "Start from copier-lightning")
    venv = make_project_venv(project, standalone=False)

    sys.path.insert(0, str(project / "src"))
    try:
        from ticket_topics.data import write_example_tickets
    finally:
        sys.path.remove(str(project / "src"))
    write_example_tickets(root / "tickets.jsonl")
    texts = [json.loads(line)["text"] for line in (root / "tickets.jsonl").read_text().splitlines()]
    save_tiny_llama_with_tokenizer(root / "saved", texts)
    for revision in (REVISION, OTHER_REVISION):  # the same files at another commit: a second base model
        put_in_hub_cache(root / "saved", root / "hub", BASE_MODEL, revision)
    env = {"HF_HUB_CACHE": str(root / "hub"), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return project, [str(venv.script(PACKAGE))], env


def run(finetune, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    project, command, env = finetune
    return preloaded_commands.run(
        [*command, *args], cwd=project, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout
    )


def fit(finetune, run_name: str, *options: str, kill: dict | None = None) -> subprocess.CompletedProcess:
    project, command, env = finetune
    callbacks = [{"class_path": f"{PACKAGE}.kit.ProgressLines"}]
    if kill:
        marker = project / "runs" / f"{run_name}.killed"
        callbacks.append({"class_path": f"{PACKAGE}.kit.KillAt", "init_args": {"marker_file": str(marker), **kill}})
    config = project / f"{run_name}.json"
    config.write_text(json.dumps({"trainer": {"callbacks": callbacks}}))
    return train(command, project, config, run_name, *SHORT_RUN, *options, env=env)


def final_state(project: Path, run_name: str) -> dict[str, torch.Tensor]:
    return checkpoint_weights(project / "runs" / run_name / "checkpoints" / "final.ckpt")


def test_the_projects_own_tests_pass(finetune) -> None:
    project, _, env = finetune
    python = project / ".venv" / "bin" / "python"
    done = preloaded_commands.run(
        # -m "slow or not slow": the two-process SIGKILL test too
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow or not slow"],
        cwd=project, env={**os.environ, **env},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " skipped" not in done.stdout


@pytest.mark.parametrize(
    ("case", "kill", "processes"),
    [
        ("sigterm", {"hook": "train_batch_end", "global_step": 11, "signal": "SIGTERM"}, []),
        ("usr1", {"hook": "train_epoch_end", "epoch": 1, "signal": "SIGUSR1"}, []),
        ("sigterm-2", {"hook": "train_batch_end", "global_step": 10, "signal": "SIGTERM"}, TWO_PROCESSES),
        ("sigterm-2-sharded", {"hook": "train_batch_end", "global_step": 10, "signal": "SIGTERM"}, TWO_SHARDED),
        ("sigterm-2-sharded-full", {"hook": "train_batch_end", "global_step": 10, "signal": "SIGTERM"}, FULL_SHARDED),
    ],
)
def test_a_stopped_fine_tune_resumes_to_identical_adapters(finetune, case, kill, processes) -> None:
    project, _, _ = finetune
    reference = reference_run(finetune, processes)
    stopped = fit(finetune, case, *processes, kill=kill)
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    assert f"Run '{case}' stopped on {kill['signal']}" in stopped.stdout
    resumed = fit(finetune, case, *processes, kill=kill)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Run '{case}': resuming from last.ckpt" in resumed.stdout

    expected, got = final_state(project, reference), final_state(project, case)
    assert set(got) == set(expected)
    if processes == FULL_SHARDED:  # every weight trained, and every weight is in the checkpoint
        assert "network.model.embed_tokens.weight" in got and not any("lora_" in name for name in got)
    else:
        assert all("lora_" in name or "modules_to_save" in name for name in got)
    assert max_abs_difference(got, expected) == 0.0


def reference_run(finetune, processes: list[str]) -> str:
    """The uninterrupted run the stopped ones must end equal to (made once per process count and strategy)."""
    project, _, _ = finetune
    values = [Path(option.split("=")[1]).stem for option in processes]  # 2, fsdp2, full-fine-tune
    name = "uninterrupted-" + ("-".join(values) or "one-process")
    if not (project / "runs" / name / "checkpoints" / "final.ckpt").exists():
        done = fit(finetune, name, *processes)
        assert done.returncode == 0, done.stderr[-3000:]
    return name


def test_gradient_checkpointing_recomputes_and_changes_nothing(finetune, monkeypatch) -> None:
    project, _, env = finetune
    done = fit(finetune, "checkpointed", "--model.gradient_checkpointing=true")
    assert done.returncode == 0, done.stderr[-3000:]
    reference = final_state(project, reference_run(finetune, []))
    assert max_abs_difference(final_state(project, "checkpointed"), reference) == 0.0

    # ... and it is on: a decoder layer's attention runs twice a step, the second time in the backward pass.
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(project / "src"))
    from ticket_topics.model import TicketTopicClassifier

    for enabled, forwards in ((False, 1), (True, 2)):
        model = TicketTopicClassifier(gradient_checkpointing=enabled).train()
        attention = model.network.base_model.model.model.layers[0].self_attn
        calls: list[int] = []
        attention.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        model(torch.randint(3, 20, (2, 12))).sum().backward()
        assert len(calls) == forwards, (enabled, len(calls))


def test_continued_pretraining_on_packed_token_blocks_resumes_exactly(finetune) -> None:
    """configs/experiments/language-model.yaml: the same base as a causal language model, on the tickets
    tokenized, joined and cut into blocks packed as shards; killed mid-epoch, it resumes to the same adapters."""
    project, _, _ = finetune
    language_model = ["--config", "configs/experiments/language-model.yaml"]
    whole = fit(finetune, "lm-whole", *language_model)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = fit(finetune, "lm-killed", *language_model, kill={"hook": "train_batch_end", "global_step": 10})
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = fit(finetune, "lm-killed", *language_model, kill={"hook": "train_batch_end", "global_step": 10})
    assert resumed.returncode == 0 and "Run 'lm-killed': resuming from last.ckpt" in resumed.stdout, resumed.stderr
    assert max_abs_difference(final_state(project, "lm-killed"), final_state(project, "lm-whole")) == 0.0

    (packed,) = (project / "data" / "processed").glob("pack-*/manifest.json")
    manifest = json.loads(packed.read_text())
    assert manifest["fields"]["inputs"]["shape"] == [32] and manifest["fields"]["targets"]["shape"] == [32]
    record = json.loads((project / "runs" / "lm-whole" / "record.json").read_text())
    assert record["starts"][0]["parameters"]["adapters"]["target_modules"] == ["q_proj", "v_proj"]
    metrics = (project / "runs" / "lm-whole" / "logs" / "metrics.csv").read_text()
    assert "val/loss" in metrics.splitlines()[0]


def test_checkpoints_hold_the_adapters_not_the_frozen_base(finetune) -> None:
    from safetensors.torch import load_file

    project, _, _ = finetune
    done = fit(finetune, "sizes")
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = torch.load(project / "runs" / "sizes" / "checkpoints" / "final.ckpt", weights_only=True)
    saved = sum(tensor.numel() for tensor in checkpoint["state_dict"].values())
    base = sum(tensor.numel() for tensor in load_file(project.parent / "saved" / "model.safetensors").values())
    assert 0 < saved < base / 5  # here 1,920 of 25,760 numbers; a LoRA on a 7B model keeps about 0.1 %
    assert set(checkpoint["state_dict"]) == {
        name for name in checkpoint["state_dict"] if "lora_" in name or "modules_to_save" in name
    }
    record = json.loads((project / "runs" / "sizes" / "record.json").read_text())
    assert record["starts"][0]["pretrained"][BASE_MODEL]["revision"] == REVISION
    assert record["starts"][0]["parameters"]["trainable"] == saved

    sys.path.insert(0, str(project / "src"))
    try:
        from ticket_topics.kit import model_card
    finally:
        sys.path.remove(str(project / "src"))
    model_card(project / "runs" / "sizes", project / "card.md")
    card = (project / "card.md").read_text()
    assert f"**Base model** `{BASE_MODEL}` at revision `{REVISION}`" in card
    assert f"**Trained parameters** {saved:,} of " in card and "adapters LORA with rank 8, alpha 16" in card
    assert "on q_proj, v_proj" in card and "checkpoints hold only the trained parameters" in card
    assert "ticket_topics.data.TicketTopicsDataModule" in card and "text_column: text" in card


def test_reproduce_builds_every_artifact_and_the_merged_model_loads_without_the_project(finetune) -> None:
    """`reproduce --all` trains runs/example, exports it (ONNX, torch.export, merged safetensors), measures
    it on the test split and writes the cards; the merged model then predicts what `predict-files` does."""
    project, _, _ = finetune
    assert run(finetune, "data", "fetch").returncode == 0
    reproduced = run(finetune, "reproduce", "--all", timeout=900)
    assert reproduced.returncode == 0, reproduced.stdout[-3000:] + reproduced.stderr[-3000:]
    example = project / "runs" / "example"
    record = json.loads((example / "export" / "export.json").read_text())
    assert record["parity"]["max_abs_difference"] <= 1e-4
    assert record["merged"]["parity"]["max_abs_difference"] <= 1e-4
    assert "model.safetensors" in record["merged"]["files"] and "tokenizer.json" in record["merged"]["files"]
    assert "| accuracy |" in (project / "artifacts" / "tables" / "final_metrics.md").read_text()
    assert (project / "artifacts" / "figures" / "learning_curves.png").stat().st_size > 0
    card = (project / "artifacts" / "cards" / "model-example.md").read_text()
    assert f"**Base model** `{BASE_MODEL}` at revision `{REVISION}`" in card and "adapters LORA with rank 8" in card
    assert "TicketTopicsDataModule" in (project / "artifacts" / "cards" / "dataset.md").read_text()

    # What a colleague without the project does: transformers alone, from the merged folder.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    merged = example / "export" / "merged"
    model = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged)
    tickets = [json.loads(line) for line in (project / "data" / "serving-example.jsonl").read_text().splitlines()]
    encoded = tokenizer(tickets, padding="max_length", max_length=48, return_tensors="pt")
    with torch.inference_mode():
        merged_predictions = model(**encoded).logits.argmax(-1).tolist()

    for engine in ("pytorch", "onnx"):
        output = f"runs/predicted-{engine}.csv"
        predicted = run(finetune, "predict-files", "data/serving-example.jsonl", "--output", output,
                        "--run_name", "example", "--engine", engine)  # fmt: skip
        assert predicted.returncode == 0, predicted.stderr[-3000:]
        rows = (project / output).read_text().splitlines()[1:]
        assert [int(row.split(",")[2]) for row in rows] == merged_predictions, engine
    _, command, env = finetune
    with serving(command, project, {**os.environ, **env}, run_name="example") as (url, _):  # texts in, topics out
        answered, answer = post(url, {"inputs": tickets})
    assert answered == 200 and [p["prediction"] for p in answer["predictions"]] == merged_predictions, answer
    evaluated = run(finetune, "evaluate", "--run_name", "example")
    assert evaluated.returncode == 0 and "| accuracy |" in evaluated.stdout, evaluated.stderr[-3000:]
    budget = run(finetune, "budget", "--run_name", "example")
    assert budget.returncode in (0, 1), budget.stderr[-3000:]  # 1: over budget, which is a verdict, not a failure
    assert "| onnx |" in budget.stdout and "| pytorch (eager) |" in budget.stdout


def test_a_run_on_other_base_weights_is_refused_by_every_command_that_loads_it(finetune) -> None:
    """As if the cache's weight file changed since the run trained (its recorded hash no longer matches)."""
    project, _, _ = finetune
    run_dir = project / "runs" / "moved-base"
    shutil.copytree(project / "runs" / reference_run(finetune, []), run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["pretrained"][BASE_MODEL]["files"]["model.safetensors"] = "0" * 64
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    for command in (
        ["evaluate"],
        ["export"],
        ["predict-files", "data/serving-example.jsonl", "--output", "runs/x.csv"],
        ["serve"],
    ):
        refused = run(finetune, *command, "--run_name", "moved-base")
        errors = [line for line in refused.stderr.splitlines() if line.strip()]
        assert refused.returncode == 2 and len(errors) == 1, (command, refused.stderr[-2000:])
        assert (
            "trained from other base weights" in errors[0]
            and "files changed in the cache: model.safetensors" in errors[0]
        )
    assert not (run_dir / "export").exists() and not (project / "runs" / "x.csv").exists()


def test_check_says_the_initial_loss_check_does_not_apply(finetune) -> None:
    checked = run(finetune, "check", "--data.max_length=12")  # shorter than most tickets: cut, and said
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-2000:]
    assert re.search(r"^data: \d+ of 1200 texts were cut to max_length=12 tokens", checked.stdout, re.M)
    skipped = f"[SKIP] initial loss is that of even scores: starts from pretrained weights ({BASE_MODEL})"
    assert skipped in checked.stdout
    assert "[PASS] overfits one batch" in checked.stdout
    assert "[PASS] gradients reach every trainable parameter" in checked.stdout


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--model.base_model=test-org/absent"], "test-org/absent at 93efa2f097d5 is not in the weight cache"),
        (["--model.lora_targets=[q_proj,attn_out]"], "lora_targets ['attn_out'] are not linear layers"),
        (["--data.text_column=body"], "tickets.jsonl has no column 'body' (its columns: text, topic)"),
        (["--data.max_length=4", "--data.overlong=refuse"], "1200 of 1200 texts are longer than max_length=4"),
        ([f"--data.revision={OTHER_REVISION}"], "the data is tokenized for HuggingFaceTB/SmolLM2-135M at fedcba987654"),
        (["--data.max_length=0"], "max_length is 0: a text needs at least one token"),
        (["--model.learning_rate=-1"], "TicketTopicClassifier refused its optimizer settings ("),
    ],
    ids=[
        "absent-model", "unknown-lora-target", "missing-column", "overlong-refused", "other-tokenizer",
        "no-tokens", "negative-learning-rate",
    ],
)  # fmt: skip
def test_bad_inputs_end_in_one_line(finetune, options: list[str], says: str) -> None:
    project, _, _ = finetune
    name = "bad-" + "-".join(option.split("=")[0].rsplit(".", 1)[-1] for option in options)
    refused = run(finetune, "fit", "--run_name", name, "--trainer.max_epochs=1", *options)
    assert refused.returncode == 2, refused.stderr[-3000:]
    errors = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and says in errors[0], refused.stderr[-3000:]
    assert not list((project / "runs").glob(f"{name}/checkpoints/*.ckpt"))


def _cut_short(file: Path) -> None:
    os.truncate(file.resolve(), 3000)  # the blob it links to: a copy of the cache interrupted


def _blob_deleted(file: Path) -> None:
    file.resolve().unlink()  # the link stays, its blob is gone


def _not_json(file: Path) -> None:
    file.unlink()  # a hand-edited copy in place of the link
    file.write_text('{"model_type": "llama", ')


@pytest.mark.parametrize(
    ("file", "damage", "loads"),
    [
        ("model.safetensors", _cut_short, True),  # there, and not what the listing says: it fails to load
        ("config.json", _not_json, True),
        ("model.safetensors", _blob_deleted, False),  # the fetch's tree listing names what is not there
        ("tokenizer.json", Path.unlink, False),
    ],
    ids=["weights-cut-short", "config-not-json", "weights-blob-deleted", "tokenizer-missing"],
)
def test_a_damaged_weight_cache_ends_in_one_line_naming_the_commands_that_mend_it(
    finetune, file, damage, loads
) -> None:
    """Base weights that resolve from the cache but do not load (transformers fails deep inside the
    model's __init__, which jsonargparse wraps in seventy lines), or whose snapshot lacks a file the
    fetch's tree listing names: one line naming the model and the commands that find and mend it,
    exit 2, no run started. `weights verify` names a blob cut short."""
    project, command, env = finetune
    # One folder for every damage, made anew: the tests' command server is one per HF_HUB_CACHE, which
    # huggingface_hub reads when it is loaded (preloaded_commands.py).
    cache = project.parent / "damaged-hub"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.copytree(Path(env["HF_HUB_CACHE"]), cache, symlinks=True)
    damage(cache / f"models--{BASE_MODEL.replace('/', '--')}" / "snapshots" / REVISION / file)
    damaged = (project, command, {**env, "HF_HUB_CACHE": str(cache)})

    refused = run(damaged, "fit", "--run_name", f"damaged-{file}", "--trainer.max_epochs=1")
    assert refused.returncode == 2, refused.stderr[-3000:]
    errors = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, refused.stderr[-3000:]
    fetch = f"`{PACKAGE} weights fetch {BASE_MODEL} --revision {REVISION}`"
    if loads:
        assert errors[0].startswith(
            f"error: {BASE_MODEL} at {REVISION[:12]} is in the weight cache ({cache}) but does not load ("
        )
        assert f"`{PACKAGE} weights verify {BASE_MODEL} --revision {REVISION}` names damaged files" in errors[0]
        assert fetch in errors[0]
    else:
        assert errors[0] == (
            f"error: {BASE_MODEL} at {REVISION[:12]} is incomplete in the weight cache ({cache}): 1 file(s) the "
            f"hub lists are not there ({file}; an interrupted fetch or copy?): run {fetch} on a machine that "
            "reaches the hub to complete it"
        )
    assert not (project / "runs" / f"damaged-{file}").exists()
    if damage is _cut_short:  # a fetch would keep a blob that is there: verify says to remove it first
        verified = run(damaged, "weights", "verify", BASE_MODEL, "--revision", REVISION)
        assert verified.returncode == 1 and verified.stdout.startswith("model.safetensors: content hash")
        blob = (cache / f"models--{BASE_MODEL.replace('/', '--')}" / "snapshots" / REVISION / file).resolve()
        assert f"are damaged or missing: remove the damaged blob(s) ({blob}), then run {fetch}" in verified.stdout
