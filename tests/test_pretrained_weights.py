"""Pretrained weights from an offline cache (kit/weights/): resolved and loaded with the hub
unreachable, named by a pinned commit, hashed from the cache's own file names, and one clear line
for a model that is not there, an unpinned revision, or a damaged file. In-process, on the example
project's kit, with a tiny LLaMA saved by transformers into a hub cache made here."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from hub_cache import put_in_hub_cache, tiny_llama

MODEL_ID = "test-org/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture(scope="module")
def cache_module(example_package):
    from digits_mlp.kit.weights import cache

    return cache


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, torch.nn.Module]:
    """A hub cache holding the tiny model at COMMIT, seen by this process with the hub off."""
    model = tiny_llama()
    model.save_pretrained(tmp_path / "saved", safe_serialization=True)
    cache = tmp_path / "hub"
    put_in_hub_cache(tmp_path / "saved", cache, MODEL_ID, COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache, model


def test_a_cached_model_loads_offline_with_its_own_weights(cache_module, hub_cache) -> None:
    from transformers import AutoModelForCausalLM

    _, original = hub_cache
    path = cache_module.PretrainedSource(MODEL_ID, COMMIT).local_path()
    loaded = AutoModelForCausalLM.from_pretrained(path)

    tokens = torch.randint(0, 96, (2, 10))
    assert torch.equal(loaded(tokens).logits, original(tokens).logits)
    sources = cache_module.resolved_sources()[MODEL_ID]
    assert sources["revision"] == COMMIT
    weights = sources["files"]["model.safetensors"]
    assert len(weights) == 64 and weights == cache_module._sha256(path / "model.safetensors")


def test_a_model_not_in_the_cache_names_the_fetch_command(cache_module, hub_cache) -> None:
    with pytest.raises(cache_module.WeightsError) as missing:
        cache_module.PretrainedSource("test-org/absent", COMMIT).local_path()
    assert f"weights fetch test-org/absent --revision {COMMIT}" in str(missing.value)
    assert "\n" not in str(missing.value)
    with pytest.raises(cache_module.WeightsError, match="not in the weight cache"):
        cache_module.PretrainedSource(MODEL_ID, OTHER_COMMIT).local_path()  # another revision of a cached model


def test_a_cache_other_than_this_shells_is_looked_up_as_given(cache_module, hub_cache, tmp_path: Path) -> None:
    """`submit` looks the base model up in the cache the job will read (kit/cluster/slurm.py), not this shell's."""
    cache, _ = hub_cache
    source = cache_module.base_weights_named_by({"base_model": MODEL_ID, "revision": COMMIT, "lora_rank": 8})
    assert source == cache_module.PretrainedSource(MODEL_ID, COMMIT)
    assert source.local_path(cache) == source.local_path()  # this shell's cache is that one too (HF_HUB_CACHE)
    with pytest.raises(cache_module.WeightsError) as missing:
        source.local_path(tmp_path / "the-jobs-cache")
    assert f"is not in the weight cache ({tmp_path / 'the-jobs-cache'})" in str(missing.value)
    # Settings that name no base model by the examples' names are not looked up; a branch is refused.
    assert cache_module.base_weights_named_by({"hidden_units": 64, "revision": COMMIT}) is None
    with pytest.raises(cache_module.WeightsError, match="is not a commit hash"):
        cache_module.base_weights_named_by({"base_model": MODEL_ID, "revision": "main"})


def test_a_revision_that_moves_is_refused(cache_module) -> None:
    with pytest.raises(cache_module.WeightsError, match="'main' is not a commit hash"):
        cache_module.PretrainedSource(MODEL_ID, "main")


def test_changed_weights_are_told_apart_by_revision_and_by_file(cache_module, hub_cache, tmp_path: Path) -> None:
    cache, _ = hub_cache
    files = cache_module.snapshot_files(cache_module.PretrainedSource(MODEL_ID, COMMIT).local_path())
    first = {MODEL_ID: {"revision": COMMIT, "files": files}}
    tiny_llama(seed=1).save_pretrained(tmp_path / "retrained", safe_serialization=True)
    put_in_hub_cache(tmp_path / "retrained", cache, MODEL_ID, OTHER_COMMIT)
    second = cache_module.snapshot_files(cache_module.PretrainedSource(MODEL_ID, OTHER_COMMIT).local_path())

    assert cache_module.changed_sources(first, first) == []
    moved = cache_module.changed_sources(first, {MODEL_ID: {"revision": OTHER_COMMIT, "files": second}})
    assert moved == [f"{MODEL_ID}: revision {COMMIT[:12]} then, {OTHER_COMMIT[:12]} now"]
    swapped = cache_module.changed_sources(first, {MODEL_ID: {"revision": COMMIT, "files": second}})
    assert swapped == [f"{MODEL_ID}: files changed in the cache: model.safetensors"]


def test_verify_finds_a_damaged_blob(cache_module, hub_cache) -> None:
    snapshot = cache_module.PretrainedSource(MODEL_ID, COMMIT).local_path()
    assert cache_module.verify_snapshot(snapshot) == {}
    blob = (snapshot / "config.json").resolve()
    blob.write_text(blob.read_text().replace("silu", "gelu"))

    damaged = cache_module.verify_snapshot(snapshot)
    assert list(damaged) == ["config.json"] and damaged["config.json"].startswith("content hash")


def test_a_snapshot_without_a_file_its_fetch_listed_is_named_incomplete(cache_module, hub_cache) -> None:
    snapshot = cache_module.PretrainedSource(MODEL_ID, COMMIT).local_path()
    (snapshot / "generation_config.json").unlink()  # the file huggingface_hub's tree listing names is gone
    with pytest.raises(cache_module.WeightsError) as incomplete:
        cache_module.PretrainedSource(MODEL_ID, COMMIT).local_path()
    assert str(incomplete.value) == (
        f"{MODEL_ID} at {COMMIT[:12]} is incomplete in the weight cache ({hub_cache[0]}): 1 file(s) the hub "
        "lists are not there (generation_config.json; an interrupted fetch or copy?): run `digits_mlp weights "
        f"fetch {MODEL_ID} --revision {COMMIT}` on a machine that reaches the hub to complete it"
    )


def test_verify_finds_a_blob_that_is_gone(cache_module, hub_cache) -> None:
    snapshot = cache_module.PretrainedSource(MODEL_ID, COMMIT).local_path()
    blob = (snapshot / "model.safetensors").resolve()
    blob.unlink()  # the snapshot's link stays: an interrupted copy of the cache, a blob cleaned away
    assert cache_module.verify_snapshot(snapshot) == {
        "model.safetensors": f"its blob {blob.name[:12]} is missing from the cache"
    }


def test_verify_names_a_plain_file_put_in_place_of_a_blob_link(cache_module, hub_cache) -> None:
    """A hand copy (`cp -L`, a sync that follows links) holds no name to check its content against."""
    snapshot = cache_module.PretrainedSource(MODEL_ID, COMMIT).local_path()
    link = snapshot / "config.json"
    content = link.read_bytes()
    link.unlink()
    link.write_bytes(content.replace(b"silu", b"gelu"))
    assert cache_module.verify_snapshot(snapshot) == {
        "config.json": "a plain file, not a link to one of the cache's blobs: its content cannot be checked"
    }


def test_weights_that_do_not_load_are_told_from_other_errors(cache_module, hub_cache, tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    snapshot = cache_module.PretrainedSource(MODEL_ID, COMMIT).local_path()
    os.truncate((snapshot / "model.safetensors").resolve(), 100)
    with pytest.raises(Exception) as cut_short:
        AutoModelForCausalLM.from_pretrained(snapshot)
    wrapped = ValueError("Does not validate against any of the Union subtypes")  # as jsonargparse does
    wrapped.__cause__ = cut_short.value
    said = cache_module.unloadable_weights_message(wrapped)
    assert said.startswith(f"{MODEL_ID} at {COMMIT[:12]} is in the weight cache ({hub_cache[0]}) but does not load (")
    assert "\n" not in said and f"weights verify {MODEL_ID} --revision {COMMIT}" in said

    (tmp_path / "elsewhere").mkdir()  # a folder outside the cache: not the cache's to mend
    with pytest.raises((OSError, ValueError)) as not_cached:
        AutoConfig.from_pretrained(tmp_path / "elsewhere")
    assert cache_module.unloadable_weights_message(not_cached.value) is None
    with pytest.raises(ValueError) as other:
        int(str(snapshot))  # an error that merely mentions the snapshot, raised outside any from_pretrained
    assert cache_module.unloadable_weights_message(other.value) is None


PROBE_MODEL = '''
"""The example's classifier, started from a base model of the weight cache (a test of the kit's record)."""
from transformers import AutoConfig

from .kit import PretrainedSource
from .model import DigitsClassifier


class DigitsFromPretrained(DigitsClassifier):
    def __init__(self, model_id: str, revision: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.base_config = AutoConfig.from_pretrained(PretrainedSource(model_id, revision).local_path())
'''


def test_fit_records_the_base_weights_and_refuses_to_resume_on_others(template_repo, cache_module, tmp_path) -> None:
    """A run stopped by SIGTERM, the cached snapshot's weights swapped under the same commit: refused, one
    line; the original put back: the run resumes and finishes, and its model card names the base model.
    A model not in the cache: one line."""
    from template_dev import commit_all, make_project_venv, render, run

    project = tmp_path / "project"
    render(template_repo, project)
    (project / "src" / "digits_mlp" / "pretrained_probe.py").write_text(PROBE_MODEL)
    commit_all(project, "start, with a model on pretrained weights")
    # The packages of this process (the fine-tune extra is not in the example's lock yet).
    command = [str(make_project_venv(project, standalone=False).script("digits_mlp")), "fit"]
    cache = tmp_path / "hub"
    tiny_llama().save_pretrained(tmp_path / "saved", safe_serialization=True)
    (tmp_path / "saved" / "README.md").write_text("---\nlicense: apache-2.0\n---\n# A tiny LLaMA\n")
    tiny_llama(seed=1).save_pretrained(tmp_path / "other", safe_serialization=True)
    put_in_hub_cache(tmp_path / "saved", cache, MODEL_ID, COMMIT)
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    stop = {
        "class_path": "digits_mlp.kit.KillAt",
        "init_args": {
            "marker_file": str(tmp_path / "stopped"),
            "hook": "train_batch_end",
            "global_step": 5,
            "signal": "SIGTERM",
        },
    }
    (tmp_path / "stop.json").write_text(json.dumps({"trainer": {"callbacks": [stop]}}))
    options = [
        "--config", str(tmp_path / "stop.json"), "--trainer.max_epochs=2", "--run_name", "on-tiny-llama",
        "--model", "digits_mlp.pretrained_probe.DigitsFromPretrained",
        f"--model.init_args.model_id={MODEL_ID}", f"--model.init_args.revision={COMMIT}",
    ]  # fmt: skip

    stopped = run([*command, *options], cwd=project, env=env, check=False)
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    run_dir = project / "runs" / "on-tiny-llama"
    recorded = json.loads((run_dir / "manifest.json").read_text())["pretrained"][MODEL_ID]
    assert recorded["revision"] == COMMIT and recorded["license"] == "apache-2.0"
    assert set(recorded["files"]) == {"README.md", "config.json", "generation_config.json", "model.safetensors"}
    start = json.loads((run_dir / "record.json").read_text())["starts"][0]
    assert start["pretrained"][MODEL_ID] == recorded

    shutil.rmtree(cache)
    put_in_hub_cache(tmp_path / "other", cache, MODEL_ID, COMMIT)  # other weights under the same commit
    refused = run([*command, *options], cwd=project, env=env, check=False)
    assert refused.returncode == 2
    assert "trained from other base weights" in refused.stderr and "model.safetensors" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert [line for line in refused.stderr.splitlines() if "base weights" in line][0].startswith("error: Run")

    evaluate = [command[0], "evaluate", *options[2:]]  # the same model and run, without the stop
    not_evaluated = run(evaluate, cwd=project, env=env, check=False)
    assert not_evaluated.returncode == 2 and "To evaluate it on these would mix two models" in not_evaluated.stderr

    shutil.rmtree(cache)
    put_in_hub_cache(tmp_path / "saved", cache, MODEL_ID, COMMIT)
    resumed = run([*command, *options], cwd=project, env=env, check=False)
    assert resumed.returncode == 0 and "resuming from" in resumed.stdout, resumed.stderr[-3000:]
    from digits_mlp.kit import model_card  # the same kit as the project's; the card reads the run's files

    model_card(run_dir, tmp_path / "card.md")
    card = (tmp_path / "card.md").read_text()
    weights_hash = recorded["files"]["model.safetensors"][:12]
    assert f"**Base model** `{MODEL_ID}` at revision `{COMMIT}`, licence apache-2.0" in card
    assert f"model.safetensors `{weights_hash}`" in card

    weights = [command[0], "weights"]
    listed = run([*weights, "list"], cwd=project, env=env)
    assert f"{MODEL_ID}  {COMMIT}" in listed.stdout
    verified = run([*weights, "verify", MODEL_ID, "--revision", COMMIT], cwd=project, env=env, check=False)
    assert verified.returncode == 0 and "matches its hash" in verified.stdout
    offline = run([*weights, "fetch", "test-org/absent"], cwd=project, env=env, check=False)
    assert offline.returncode == 2 and offline.stderr.startswith("error: could not fetch test-org/absent at main")
    # main is in the cache's refs, but only the hub can say where main is now: no "fetched" from the cache
    moved = run([*weights, "fetch", MODEL_ID], cwd=project, env=env, check=False)
    assert moved.returncode == 2 and moved.stdout == ""
    assert moved.stderr.startswith(f"error: could not fetch {MODEL_ID} at main: ")  # offline, or no such host
    pinned = run([*weights, "fetch", MODEL_ID, "--revision", COMMIT], cwd=project, env=env)
    assert pinned.stdout.startswith(f"{MODEL_ID} at {COMMIT} is in the weight cache already ({cache}); ")

    absent = [*options[:-2], "--model.init_args.model_id=test-org/absent", f"--model.init_args.revision={COMMIT}"]
    missing = run([*command, *absent, "--run_name", "absent"], cwd=project, env=env, check=False)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert f"weights fetch test-org/absent --revision {COMMIT}" in missing.stderr
