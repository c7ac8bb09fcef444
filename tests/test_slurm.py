"""Job scripts under a real single-node Slurm (Debian's slurm-wlm, started by scripts/start-slurm.sh)
with GPU GRES typed like MIG slices. The example trains on the CPU (--trainer.accelerator=cpu); the
GRES are stand-ins, which is all the scheduler needs to place MIG and full-GPU jobs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import LAST_RELEASE, copy_of_example_project
from copier import run_update
from servers import free_port, post
from training_runs import checkpoint_weights, resume_test_config

from template_dev import EXAMPLE_ANSWERS, TOP, TORCH_PIN, commit_all, git, make_project_venv, render, run

PACKAGE = EXAMPLE_ANSWERS["package_name"]

SITE = """\
partition: gpu
time: "00:20:00"
cpus_per_gpu: 1
mem_per_gpu: 1G
full_gpu_gres: gpu
mig_types: [1g.10gb, 2g.20gb]
default_gpu: mig:1g.10gb
signal_lead_seconds: 60
"""
LATE_EXIT = "digits_mlp.kit.training.resume_testing.LateExit"
CPU_RUN = ["--trainer.accelerator=cpu", "--early_stopping.patience=null", "--checkpointing.every_n_steps=20"]


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld and slurmd needs root (CI runs as root)")
    run(["bash", str(TOP / "scripts" / "start-slurm.sh")], cwd=TOP)
    yield
    run(["bash", str(TOP / "scripts" / "stop-slurm.sh")], cwd=TOP)


@pytest.fixture(scope="module")
def cluster_project(slurm, example_project, example_command, tmp_path_factory):
    project, _ = example_project
    site = tmp_path_factory.mktemp("site") / "site.yaml"
    site.write_text(SITE)
    runs = tmp_path_factory.mktemp("slurm-runs")
    return project, example_command, site, {"RUNS_DIR": str(runs)}, runs


def submit(cluster_project, *options: str) -> int:
    project, command, site, env, _ = cluster_project
    done = run([*command, "submit", "--site", str(site), *options], cwd=project, env=env)
    match = re.search(r"Submitted batch job (\d+)", done.stdout)
    assert match, done.stdout + done.stderr
    return int(match.group(1))


def job_state(job: int) -> str | None:
    shown = subprocess.run(["scontrol", "show", "job", str(job)], capture_output=True, text=True)
    match = re.search(r"JobState=(\w+)", shown.stdout)
    return match.group(1) if match else None


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_until_done(job: int, timeout: float = 240) -> str:
    return wait_for(
        lambda: (s := job_state(job)) in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") and s,
        timeout,
        f"job {job} to end",
    )


def log_of(runs: Path, job: int) -> str:
    return "".join(path.read_text() for path in (runs / "slurm-logs").glob(f"*-{job}.out"))


@pytest.mark.parametrize("gpu", ["mig:1g.10gb", "full:1"])
def test_job_script_trains_the_example(cluster_project, gpu: str) -> None:
    *_, runs = cluster_project
    run_name = f"slurm-{gpu.replace(':', '-')}"
    job = submit(cluster_project, "--gpu", gpu, "--trainer.max_epochs=2", *CPU_RUN, "--run_name", run_name)
    assert wait_until_done(job) == "COMPLETED", log_of(runs, job)
    script = (runs / run_name / "slurm" / f"{gpu.split(':')[0]}.sbatch").read_text()
    expected_gres = "#SBATCH --gres=gpu:1g.10gb:1" if gpu.startswith("mig") else "#SBATCH --gres=gpu:1"
    assert expected_gres in script and "#SBATCH --requeue" in script and "--signal=B:USR1@60" in script
    assert f"Run '{run_name}' finished" in log_of(runs, job)
    assert (runs / run_name / "checkpoints" / "final.ckpt").exists()


# An edit made after submit, which changes what is trained: a job running it would not match the reference.
EDIT_AFTER_SUBMIT = """
print("model.py edited after submit", flush=True)
DigitsClassifier.forward = lambda self, images: 2.0 * self.network(images.flatten(start_dim=1))
"""


def requeue_now(job: int, runs: Path) -> None:
    """USR1 to the job's batch shell: the run checkpoints, the script requeues the job; start it again at once."""
    run(["scancel", "--signal=USR1", "--batch", str(job)], cwd=runs)
    wait_for(lambda: "requeueing" in log_of(runs, job), 60, "the job to checkpoint and requeue itself")
    # A requeued job waits out a back-off (BeginTime, ~2 min) once its first run has ended; skip the wait.
    wait_for(lambda: job_state(job) == "PENDING", 60, "the requeued job to be pending")
    time.sleep(2)  # started any earlier, slurmd may still be revoking the first run's credential


def start_now(job: int) -> None:
    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], capture_output=True)


def test_usr1_requeues_and_the_job_resumes_exactly_on_the_code_it_was_submitted_with(
    cluster_project, example_project, tmp_path
) -> None:
    """model.py is edited right after submit; the job's first start and its requeue train the submitted code."""
    example, command, site, env, runs = cluster_project
    project, copy_command = copy_of_example_project(example_project, tmp_path / "project")
    # Long enough that USR1 (sent at the first checkpoint, epoch 2) lands well before the end: an
    # epoch takes 0.3-1 s here, USR1 arrives within about 1.5 s of the checkpoint.
    options = ["--trainer.max_epochs=20", *CPU_RUN]
    submitted = run(
        [*copy_command, "submit", "--site", str(site), "--gpu", "full:1", *options, "--run_name", "requeued"],
        cwd=project,
        env=env,
    )
    job = int(re.search(r"Submitted batch job (\d+)", submitted.stdout).group(1))
    commit = git(project, "rev-parse", "HEAD").strip()
    model = project / "src" / PACKAGE / "model.py"
    model.write_text(model.read_text() + EDIT_AFTER_SUBMIT)
    checkpoints = runs / "requeued" / "checkpoints"
    wait_for(lambda: job_state(job) == "RUNNING" and (checkpoints / "last.ckpt").exists(), 120, "a first checkpoint")
    requeue_now(job, runs)
    start_now(job)
    assert wait_until_done(job, timeout=300) == "COMPLETED", log_of(runs, job)

    log = log_of(runs, job)
    assert "restart 0" in log and "restart 1" in log and "edited after submit" not in log
    assert "Run 'requeued' stopped on SIGUSR1" in log and "Run 'requeued': resuming from last.ckpt" in log
    assert "Run 'requeued' finished" in log
    starts = json.loads((runs / "requeued" / "record.json").read_text())["starts"]
    assert [(start["git_sha"], start["code_snapshot"]) for start in starts] == [
        (commit, str(runs / "requeued" / "code"))
    ] * 2

    reference = run(  # the submitted code, uninterrupted, in the unedited example project
        [*command, "fit", *options, "--trainer.devices=1", "--trainer.num_nodes=1", "--run_name", "uninterrupted"],
        cwd=example,
        env={**env, "OMP_NUM_THREADS": "1"},  # one compute thread, as the job's task has one CPU (cpus_per_gpu: 1)
    )
    assert "Run 'uninterrupted' finished" in reference.stdout
    final = {name: final_weights(runs, name) for name in ("requeued", "uninterrupted")}
    assert max((final["requeued"][k] - final["uninterrupted"][k]).abs().max().item() for k in final["requeued"]) == 0


def test_a_job_requeued_across_a_template_update_continues_its_run(
    cluster_project, template_with_history, tmp_path
) -> None:
    """Submitted at 0.2.0 with the W&B logger; requeued; the project updated meanwhile; the requeue finishes it.

    Slurm keeps the script it was given, so the requeue runs 0.2.0's job script on the updated code.
    """
    _, _, site, env, runs = cluster_project
    template, _ = template_with_history
    project = tmp_path / "project"
    render(template, project, vcs_ref=LAST_RELEASE, logger="wandb")
    commit_all(project, f"Start from copier-lightning {LAST_RELEASE}")
    console = str(make_project_venv(project, standalone=False).script(PACKAGE))
    options = ["--trainer.max_epochs=20", *CPU_RUN, "--run_name", "across-update"]
    submitted = run([console, "submit", "--site", str(site), "--gpu", "full:1", *options], cwd=project, env=env)
    job = int(re.search(r"Submitted batch job (\d+)", submitted.stdout).group(1))
    checkpoints = runs / "across-update" / "checkpoints"
    wait_for(lambda: job_state(job) == "RUNNING" and (checkpoints / "last.ckpt").exists(), 120, "a first checkpoint")
    requeue_now(job, runs)

    run_update(str(project), overwrite=True, defaults=True, unsafe=True, quiet=True)
    commit_all(project, "update to the working tree")
    start_now(job)
    assert wait_until_done(job, timeout=300) == "COMPLETED", log_of(runs, job)

    log = log_of(runs, job)
    assert "Run 'across-update': resuming from last.ckpt" in log and "Run 'across-update' finished" in log
    assert "different config" not in log


def final_weights(runs: Path, name: str) -> dict:
    return checkpoint_weights(runs / name / "checkpoints" / "final.ckpt")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_task_job_checkpoints_once_requeues_once_and_resumes_exactly(cluster_project, tmp_path, strategy) -> None:
    """The full-GPU job script with a CPU override: srun starts two tasks, Lightning's SLURM environment
    makes them ranks 0 and 1, USR1 reaches both through srun, and the pair stops at the same batch.
    Rank 1 ends 5 s after rank 0 (LateExit, as a slow GPU teardown would): still one requeue.
    The same with sharded training (fsdp2): its checkpoints are directories of shards."""
    project, command, _, env, runs = cluster_project
    late_exit = tmp_path / "late-exit.json"
    callbacks = [{"class_path": "digits_mlp.kit.ProgressLines"}, {"class_path": LATE_EXIT, "init_args": {"rank": 1}}]
    late_exit.write_text(json.dumps({"trainer": {"callbacks": callbacks}}))
    options = ["--trainer.max_epochs=25", f"--trainer.strategy={strategy}", *CPU_RUN]  # first checkpoint: epoch 4
    job = submit(
        cluster_project, "--gpu", "full:2", "--config", str(late_exit), *options, "--run_name", f"{strategy}-requeued"
    )
    script = (runs / f"{strategy}-requeued" / "slurm" / "full.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "--trainer.devices=2 --trainer.num_nodes=1" in script
    checkpoints = runs / f"{strategy}-requeued" / "checkpoints"
    wait_for(lambda: job_state(job) == "RUNNING" and (checkpoints / "last.ckpt").exists(), 180, "a first checkpoint")
    run(["scancel", "--signal=USR1", "--batch", str(job)], cwd=project)
    ended = ("COMPLETED", "FAILED", "CANCELLED")
    wait_for(lambda: "requeueing" in log_of(runs, job) or job_state(job) in ended, 90, "the job to requeue or end")
    assert "requeueing" in log_of(runs, job), f"job {job_state(job)} instead of requeued:\n{log_of(runs, job)}"
    wait_for(lambda: job_state(job) == "PENDING", 60, "the requeued job to be pending")
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], capture_output=True)
    assert wait_until_done(job, timeout=400) == "COMPLETED", log_of(runs, job)

    log = log_of(runs, job)
    assert "All distributed processes registered. Starting with 2 processes" in log
    assert log.count("stopped on SIGUSR1") == 1 and log.count("requeueing") == 1  # rank 0 speaks; one requeue
    assert f"Run '{strategy}-requeued': resuming from last.ckpt" in log and f"Run '{strategy}-requeued' finished" in log
    manifest = (runs / f"{strategy}-requeued" / "manifest.json").read_text()
    assert '"starts": 2' in manifest  # one per job start, not one per process

    # The reference is the same job, uninterrupted: the same launcher, environment and threads per process.
    job_options = ["--gpu", "full:2", "--config", str(late_exit), *options]
    reference = submit(cluster_project, *job_options, "--run_name", f"{strategy}-uninterrupted")
    assert wait_until_done(reference, timeout=400) == "COMPLETED", log_of(runs, reference)
    assert f"Run '{strategy}-uninterrupted' finished" in log_of(runs, reference)
    requeued, uninterrupted = (
        final_weights(runs, f"{strategy}-requeued"),
        final_weights(runs, f"{strategy}-uninterrupted"),
    )
    assert max((requeued[k] - uninterrupted[k]).abs().max().item() for k in requeued) == 0


def test_two_node_job_script(example_project, example_command, tmp_path: Path) -> None:
    """Rendered only: this machine is one node. What Lightning's SLURM environment checks must agree."""
    project, _ = example_project
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    done = run(
        [*example_command, "submit", "--site", str(site), "--write-only", "--gpu", "full:4", "--nodes", "2"],
        cwd=project,
        env={"RUNS_DIR": str(tmp_path / "runs")},
    )
    script = Path(re.search(r"Job script: (\S+)", done.stdout).group(1)).read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=4" in script  # == num_nodes, devices
    assert "#SBATCH --gres=gpu:4" in script and "#SBATCH --mem=4G" in script  # per node
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert "--trainer.devices=4" in srun and "--trainer.num_nodes=2" in srun and srun.endswith("&")


def test_a_job_reads_pretrained_weights_from_the_site_cache_with_the_hub_off(
    example_project, example_command, tmp_path: Path
) -> None:
    project, _ = example_project
    site = tmp_path / "site.yaml"
    for cache_line, exported in (("", None), ("weights_cache: /shared/hf-cache\n", "/shared/hf-cache")):
        site.write_text(SITE + cache_line)
        done = run(
            [*example_command, "submit", "--site", str(site), "--write-only", "--gpu", "full:1"],
            cwd=project,
            env={"RUNS_DIR": str(tmp_path / "runs")},
        )
        script = Path(re.search(r"Job script: (\S+)", done.stdout).group(1)).read_text()
        lines = script.splitlines()
        assert "export HF_HUB_OFFLINE=1" in lines
        assert (f"export HF_HUB_CACHE={exported}" in lines) if exported else not any("HF_HUB_CACHE" in x for x in lines)
        assert lines.index("export HF_HUB_OFFLINE=1") < next(i for i, x in enumerate(lines) if x.startswith("srun "))


def test_a_fine_tune_job_trains_from_the_site_weight_cache_with_the_hub_off(
    cluster_project, template_repo, tmp_path_factory
) -> None:
    """The fine-tune example as a job: the job script alone points it at the cache (`weights_cache:` in
    the site config) and turns the hub off; the submitting shell knows of no cache."""
    from test_finetune_example import PACKAGE as FINETUNE_PACKAGE
    from test_finetune_example import REVISION, finetune_project

    root = tmp_path_factory.mktemp("finetune-job")
    project, command, cache_env = finetune_project(template_repo, root)
    site = root / "site.yaml"
    site.write_text(SITE + f"weights_cache: {cache_env['HF_HUB_CACHE']}\n")
    runs = root / "runs"
    env = {"RUNS_DIR": str(runs), "HF_HUB_CACHE": str(root / "empty"), "HF_HUB_OFFLINE": "0"}
    submit = [*command, "submit", "--gpu", "mig:1g.10gb", "--trainer.max_epochs=1", *CPU_RUN]
    submit += ["--run_name", "fine-tune-job"]
    # A site cache without the base model: refused before the queue wait (the job would end at its start).
    site_without = root / "site-without-the-model.yaml"
    site_without.write_text(SITE + f"weights_cache: {root / 'other-hub'}\n")
    refused = run([*submit, "--site", str(site_without)], cwd=project, env=env, check=False)
    said = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(said) == 1 and "Submitted batch job" not in refused.stdout, refused.stderr
    assert said[0].startswith(
        f"error: not submitted, the job would end at its start: HuggingFaceTB/SmolLM2-135M at {REVISION[:12]} "
        f"is not in the weight cache ({root / 'other-hub'}): run `{FINETUNE_PACKAGE} weights fetch "
    ) and said[0].endswith(f"the job reads HF_HUB_CACHE={root / 'other-hub'} (`weights_cache:` in the site config)")
    assert not runs.exists()  # nothing frozen, no job script
    done = run([*submit, "--site", str(site)], cwd=project, env=env)
    job = int(re.search(r"Submitted batch job (\d+)", done.stdout).group(1))
    assert wait_until_done(job) == "COMPLETED", log_of(runs, job)
    assert "Run 'fine-tune-job' finished" in log_of(runs, job)
    record = json.loads((runs / "fine-tune-job" / "record.json").read_text())
    assert record["starts"][0]["pretrained"]["HuggingFaceTB/SmolLM2-135M"]["revision"] == REVISION
    assert record["starts"][0]["slurm"]["SLURM_JOB_ID"] == str(job)
    assert record["starts"][0]["parameters"]["checkpoints_hold"] == "only the trained"


def test_a_container_wraps_only_the_training_command(example_project, example_command, tmp_path: Path) -> None:
    """Rendered only: `container:` in site.yaml runs the srun line in the Apptainer image, with the
    GPUs, the project and the job's code snapshot bound in; the signal relay and the requeue stay in
    the batch shell."""
    project, _ = example_project
    site = tmp_path / "site.yaml"
    site.write_text(SITE + "container: runs/containers/digits_mlp.sif\n")
    done = run(
        [*example_command, "submit", "--site", str(site), "--write-only", "--gpu", "full:2"],
        cwd=project,
        env={"RUNS_DIR": str(tmp_path / "runs")},
    )
    script = Path(re.search(r"Job script: (\S+)", done.stdout).group(1)).read_text()
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    image = project / "runs" / "containers" / "digits_mlp.sif"
    code = Path(re.search(r"Code frozen for the job: (\S+)", done.stdout).group(1))
    assert srun.startswith(f"srun --kill-on-bad-exit=0 --wait=120 apptainer exec --nv --bind {project},{code} ")
    assert f"--env PYTHONPATH={code / 'src'} {image} python -m digits_mlp fit " in srun
    inside = [line for line in script.splitlines() if "apptainer" in line]
    assert inside == [srun]  # scontrol requeue and the USR1 relay run outside the image
    assert "scontrol requeue" in script and "trap 'kill -USR1 $child" in script


def test_the_apptainer_definition_installs_the_cuda_lock(example_project) -> None:
    project, _ = example_project
    definition = (project / "container" / "apptainer.def").read_text()
    header = dict(line.split(": ", 1) for line in definition.splitlines()[:2])
    assert header == {"Bootstrap": "docker", "From": "python:3.11-slim"}
    sections = re.findall(r"^%(\w+)$", definition, flags=re.M)
    assert sections == ["files", "post", "environment", "test"]
    # `apptainer run --app serve IMAGE ...` serves a run from the image (`submit --serve` does it in a job).
    assert re.search(r'^%apprun serve\n\s+exec python -m digits_mlp serve "\$@"$', definition, flags=re.M), definition
    files = definition.split("%files\n")[1].split("\n\n")[0].split()
    assert files == ["locks", "/opt/project/locks"]
    install = re.search(r"^\s+pip install .*-r /opt/project/(locks/\S+)$", definition, flags=re.M)
    assert install and "--require-hashes --no-deps" in install.group(0), definition
    assert TORCH_PIN in (project / install.group(1)).read_text()  # the lock it names exists, with the pinned torch


@pytest.mark.skipif(shutil.which("apptainer") is None, reason="apptainer is not installed here (no image to build)")
def test_the_apptainer_image_builds(example_project, tmp_path) -> None:
    project, _ = example_project
    image = tmp_path / "project.sif"
    run(["apptainer", "build", "--fakeroot", str(image), "container/apptainer.def"], cwd=project, timeout=1800)
    assert image.stat().st_size > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--gpu", "mig:4g.40gb"], "unknown MIG profile '4g.40gb': this site offers 1g.10gb, 2g.20gb"),
        (["--gpu", "mig:1g.10gb:2"], "one CUDA process can use only one MIG slice"),
        (["--gpu", "mig:1g.10gb", "--nodes", "2"], "one CUDA process can use only one MIG slice"),
        (["--gpu", "mig:1g.10gb", "--trainer.strategy=ddp"], "DDP, sharded training or several devices asked for"),
        (["--gpu", "mig:1g.10gb", "--trainer.strategy=fsdp2"], "DDP, sharded training or several devices asked for"),
        (["--gpu", "full:two"], "write mig:TYPE"),
    ],
)
def test_bad_requests_get_one_clear_error(cluster_project, tmp_path: Path, options, message) -> None:
    project, command, site, env, _ = cluster_project
    done = run([*command, "submit", "--site", str(site), "--write-only", *options], cwd=project, env=env, check=False)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_a_missing_site_setting_is_named(cluster_project, tmp_path: Path) -> None:
    project, command, _, env, _ = cluster_project
    site = tmp_path / "site.yaml"
    site.write_text(SITE.replace("partition: gpu\n", ""))
    done = run([*command, "submit", "--site", str(site), "--write-only"], cwd=project, env=env, check=False)
    assert done.returncode == 2 and "missing the site setting(s): partition" in done.stderr


def test_sweep_as_a_job_array_runs_every_trial(cluster_project, tmp_path: Path) -> None:
    project, *_, runs = cluster_project
    sweep = tmp_path / "array.yaml"
    sweep.write_text(
        "options: [--trainer.max_epochs=2, --trainer.accelerator=cpu]\n"
        "parameters:\n  model.init_args.learning_rate: [0.001, 0.01]\n"
    )
    job = submit(cluster_project, "--sweep", str(sweep), "--gpu", "mig:1g.10gb")
    script = (runs / "sweeps" / "array.sbatch").read_text()
    assert "#SBATCH --array=0-1" in script and "sweep --trial $SLURM_ARRAY_TASK_ID" in script
    manifests = [runs / f"sweep-array-00{trial}" / "manifest.json" for trial in (0, 1)]

    def finished(manifest: Path) -> bool:  # written last, after final.ckpt (waiting for that one raced it)
        return manifest.exists() and '"status": "finished"' in manifest.read_text()

    wait_for(lambda: job_state(job) is None or all(map(finished, manifests)), 300, "both array tasks")
    for manifest in manifests:
        assert finished(manifest), manifest.read_text() if manifest.exists() else f"no {manifest}"


def test_optuna_search_as_a_job_array_resumes_a_killed_task_in_the_same_study(cluster_project, tmp_path: Path) -> None:
    """Each array task asks the study for a trial; the task SIGKILLed mid-trial leaves it RUNNING, and
    the same search submitted again trains that trial on from its checkpoint: 3 trials, one study."""
    project, *_, runs = cluster_project
    kill = resume_test_config(tmp_path / "kill.json", tmp_path / "batches.jsonl", {"global_step": 5}, tmp_path / "k")
    search = tmp_path / "search.yaml"
    search.write_text(
        "strategy: optuna\ntrials: 3\nseed: 0\n"
        f"options: [--config={kill}, --trainer.max_epochs=1, --trainer.accelerator=cpu, "
        "--checkpointing.every_n_steps=3, --checkpointing.every_n_minutes=null]\n"
        "parameters:\n  model.init_args.learning_rate: {low: 1.0e-4, high: 1.0e-1, log: true}\n"
    )
    first = submit(cluster_project, "--sweep", str(search), "--gpu", "mig:1g.10gb")
    script = (runs / "sweeps" / "search.sbatch").read_text()
    assert "#SBATCH --array=0-2" in script and "sweep --trial $SLURM_ARRAY_TASK_ID" in script
    wait_for(lambda: not queued(first), 300, f"array job {first} to end")
    trials = study_trials(runs / "sweeps" / "search" / "study.journal", "search")
    killed = [t.number for t in trials if t.state.name == "RUNNING"]  # one; two if two tasks reached step 5 at once
    assert killed and all(t.state.name == "COMPLETE" for t in trials if t.number not in killed), log_of(runs, first)

    second = submit(cluster_project, "--sweep", str(search), "--gpu", "mig:1g.10gb")
    wait_for(lambda: not queued(second), 300, f"array job {second} to end")
    trials = study_trials(runs / "sweeps" / "search" / "study.journal", "search")
    assert sorted((t.number, t.state.name) for t in trials) == [(n, "COMPLETE") for n in range(3)]
    assert sorted(t.user_attrs["worker"] for t in trials) == [f"array-task-{n}" for n in range(3)]  # one each
    assert len(json.loads((runs / "sweeps" / "search.json").read_text())["trials"]) == 3
    for number in range(3):
        assert '"status": "finished"' in (runs / f"sweep-search-00{number}" / "manifest.json").read_text()
    logs = "".join(path.read_text() for path in (runs / "slurm-logs").glob(f"*{second}*"))
    for number in killed:  # went on in its own run, from its checkpoint: two starts, one run
        assert len(json.loads((runs / f"sweep-search-00{number}" / "record.json").read_text())["starts"]) == 2
        assert f"Run 'sweep-search-00{number}': resuming from last.ckpt" in logs, logs[-3000:]


def queued(job: int) -> bool:
    """Whether any task of `job` is still in the queue."""
    listed = subprocess.run(["squeue", "--noheader", "--jobs", str(job)], capture_output=True, text=True)
    return bool(listed.stdout.strip())


def study_trials(journal: Path, name: str) -> list:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(journal)))
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def test_a_serving_job_answers_on_its_node_until_cancelled_and_then_stops_cleanly(cluster_project) -> None:
    project, command, site, env, runs = cluster_project
    run([*command, "fit", "--trainer.max_epochs=1", "--run_name", "to-serve"], cwd=project, env=env)
    port = free_port()
    job = submit(cluster_project, "--serve", "--port", str(port), "--run_name", "to-serve")
    script = (runs / "to-serve" / "slurm" / "serve.sbatch").read_text()
    # On a MIG slice by default; nothing to checkpoint or requeue.
    assert "#SBATCH --gres=gpu:1g.10gb:1" in script and "--requeue" not in script and "USR1" not in script
    wait_for(lambda: "Serving run 'to-serve'" in log_of(runs, job), 120, "the job to start serving")
    samples = (project / "data" / "serving-example.csv").read_text().splitlines()
    row = [float(value) for value in next(line for line in samples if not line.startswith("#")).split(",")]
    answer = wait_for(lambda: _predicted(port, row), 60, "the served model to answer")
    assert answer["predictions"][0]["prediction"] in range(10) and job_state(job) == "RUNNING"
    run(["scancel", str(job)], cwd=runs)
    assert wait_until_done(job, timeout=90) == "CANCELLED"
    wait_for(lambda: "Stopped on SIGTERM after answering 1 request(s)." in log_of(runs, job), 30, "a clean stop")
    assert "Traceback" not in log_of(runs, job)


def _predicted(port: int, row: list[float]) -> dict | None:
    try:
        return post(f"http://127.0.0.1:{port}", {"inputs": [row]})[1]
    except OSError:  # not listening yet
        return None
