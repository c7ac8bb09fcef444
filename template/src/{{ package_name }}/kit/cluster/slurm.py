"""SLURM jobs for a MIG slice or full GPUs, one flag apart. Managed by the copier-lightning template.

`<package> submit --gpu mig:2g.20gb [fit options]` or `--gpu full:4 [--nodes 2]` writes a job script
into runs/<run>/slurm/ from configs/slurm/site.yaml, prints the `sbatch` command and runs it
(`--write-only` stops before sbatch). `--sweep FILE` submits a job array, one task per trial.

Every job script: asks for USR1 `signal_lead_seconds` before its time limit (to the batch shell,
which passes it on to the training process), `--requeue` and `--open-mode=append` (one log file
across requeues), puts TMPDIR on the runs filesystem and exports SRUN_CPUS_PER_TASK. On USR1 the
run checkpoints at the next batch boundary and exits with code 3; the script then requeues the
job, which resumes the same run from that checkpoint.

One CUDA process sees one MIG slice, and slices cannot talk to each other: a MIG job is one slice,
one process. Full-GPU jobs run one process per GPU under `srun` (DDP across GPUs and nodes).
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..base.project_package import PACKAGE
from ..experiments.sweep_files import SweepFileError, read_sweep_file
from ..runs.code_state import CodeChangedError, SnapshotError, code_files, freeze_code, refuse_changed_code
from ..runs.directory import REQUEUE_EXIT_CODE, RunDirectory
from ..runs.identity import RunNameError, option_value, run_name
from ..runs.lease import RunHeldError, RunLease
from ..runs.root import RunsRoot
from ..weights.cache import WeightsError, base_weights_named_by

SITE_CONFIG = Path("configs/slurm/site.yaml")
REQUIRED_SITE_KEYS = ("partition", "time", "cpus_per_gpu", "mem_per_gpu", "full_gpu_gres", "mig_types")
# How long srun lets the other tasks finish once one task has ended. The processes of a run stopped
# for requeue all exit with code 3, but not at the same instant (rank 0 writes the run's records; a
# GPU process can take seconds to tear down): with --kill-on-bad-exit the first exit 3 would cancel
# the others, srun would report 143 and the job would end instead of requeueing. A process that
# died still ends the step in bounded time: this long, or distributed.timeout_minutes if sooner.
TASK_EXIT_GRACE_SECONDS = 120


class SlurmSetupError(ValueError):
    """A bad --gpu request, a bad combination, or a missing site setting."""


@dataclass
class GpuRequest:
    kind: str  # "mig" or "full"
    count: int
    nodes: int
    mig_type: str | None = None

    @property
    def gres(self) -> str:
        return f"gpu:{self.mig_type}:1" if self.kind == "mig" else ""


def load_site(path: Path = SITE_CONFIG) -> dict:
    if not path.exists():
        raise SlurmSetupError(f"no site config at {path}: it names the cluster's partition, GRES, time limit, ...")
    site = yaml.safe_load(path.read_text()) or {}
    missing = [key for key in REQUIRED_SITE_KEYS if site.get(key) in (None, "")]
    if missing:
        raise SlurmSetupError(f"{path} is missing the site setting(s): {', '.join(missing)}")
    site.setdefault("signal_lead_seconds", 300)
    site["setup"] = site.get("setup") or ""
    site["mig_types"] = [str(t) for t in site["mig_types"] or []]
    site["container"] = str(site.get("container") or "")
    site["weights_cache"] = str(site.get("weights_cache") or "")  # absent from site files before 0.3.0
    return site


def job_weight_cache(site: dict) -> Path | None:
    """The weight cache a job reads: `weights_cache:` in the site config; None: the submitting shell's
    HF_HUB_CACHE (or the hub's default), which sbatch passes on to the job."""
    return Path(site["weights_cache"]) if site["weights_cache"] else None


def _weight_cache_lines(site: dict) -> list[str]:
    """A job reads pretrained weights from the shared cache only: it never downloads (kit/weights/)."""
    lines = ["# Pretrained weights come from the cache that `weights fetch` filled; a job never downloads."]
    if (cache := job_weight_cache(site)) is not None:
        lines.append(f"export HF_HUB_CACHE={shlex.quote(str(cache))}")
    return [*lines, "export HF_HUB_OFFLINE=1"]


def parse_gpu_request(text: str, site: dict, nodes: int = 1) -> GpuRequest:
    """`mig:TYPE` (one slice) or `full:N` (N whole GPUs per node)."""
    kind, _, rest = text.partition(":")
    if kind == "mig":
        mig_type, _, count = rest.partition(":")
        if nodes != 1 or count not in ("", "1"):
            raise SlurmSetupError(
                "A MIG job is one slice and one process: one CUDA process can use only one MIG slice and slices "
                "cannot communicate, so DDP or several devices on MIG cannot work. Use --gpu full:N for that."
            )
        if mig_type not in site["mig_types"]:
            offered = ", ".join(site["mig_types"]) or "none"
            raise SlurmSetupError(
                f"unknown MIG profile '{mig_type}': this site offers {offered} (configs/slurm/site.yaml, mig_types)"
            )
        return GpuRequest("mig", 1, 1, mig_type)
    if kind == "full" and re.fullmatch(r"[1-9][0-9]*", rest):
        return GpuRequest("full", int(rest), nodes)
    example = (site["mig_types"] or ["1g.10gb"])[0]
    raise SlurmSetupError(f"--gpu {text!r}: write mig:TYPE (e.g. mig:{example}) or full:N")


def refuse_multi_process_on_mig(request: GpuRequest, fit_options: list[str]) -> None:
    if request.kind != "mig":
        return
    joined = " ".join(fit_options)
    if re.search(r"strategy[= ]\S*(ddp|fsdp|deepspeed)", joined) or re.search(r"devices[= ]([2-9]|[1-9][0-9])", joined):
        raise SlurmSetupError(
            "DDP, sharded training or several devices asked for on a MIG slice: one CUDA process can use only "
            "one slice, and slices cannot talk to each other. Use --gpu full:N for multi-GPU training."
        )


def job_script(
    request: GpuRequest,
    site: dict,
    job_name: str,
    command: str,
    project: Path,
    array: int | None = None,
    code: Path | None = None,
    serving_port: int | None = None,
) -> str:
    """The job script; `code`: the code snapshot the job runs in (kit/runs/code_state.py), else the project.

    serving_port: a serving job (`submit --serve`): `command` answers on this port until the job is
    cancelled or reaches its time limit; no checkpoint signal and no requeue (there is nothing to resume).
    """
    logs = RunsRoot.current().slurm_logs
    log_name = "%x-%A_%a.out" if array else "%x-%j.out"
    gres = request.gres or f"{site['full_gpu_gres']}:{request.count}"
    memory = re.fullmatch(r"([0-9]+)([KMGT]?)", str(site["mem_per_gpu"]))
    if memory is None:
        raise SlurmSetupError(f"mem_per_gpu {site['mem_per_gpu']!r} is not a SLURM memory size like 32G")
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --partition={site['partition']}",
        *([f"#SBATCH --account={site['account']}"] if site.get("account") else []),
        *([f"#SBATCH --qos={site['qos']}"] if site.get("qos") else []),
        f"#SBATCH --time={site['time']}",
        f"#SBATCH --nodes={request.nodes}",
        f"#SBATCH --ntasks-per-node={request.count}",
        f"#SBATCH --gres={gres}",
        f"#SBATCH --cpus-per-task={site['cpus_per_gpu']}",
        f"#SBATCH --mem={int(memory.group(1)) * request.count}{memory.group(2)}",
        *(
            [f"#SBATCH --signal=B:USR1@{int(site['signal_lead_seconds'])}", "#SBATCH --requeue"]
            if serving_port is None
            else []
        ),
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={logs}/{log_name}",
        *([f"#SBATCH --array=0-{array - 1}"] if array else []),
        "",
        f"# {'One MIG slice, one process.' if request.kind == 'mig' else 'One process per GPU (DDP).'}"
        + (
            " Written by `submit`; re-submitting the same command resumes the same run."
            if serving_port is None
            else " Written by `submit --serve`: `scancel` or the time limit stops it (SIGTERM: requests in flight"
            " are answered first)."
        ),
        "set -uo pipefail",
        f"cd {shlex.quote(str(project))}",
        *site["setup"].strip().splitlines(),
        *(
            [
                "# The code as it was at submit, frozen by `submit`: the first start and every requeue run it,",
                "# whatever the working tree holds by then. Its data/ folders are links to the project's.",
                f"cd {shlex.quote(str(code))}",
                "export PYTHONPATH=" + shlex.quote(str(code / "src")) + "${PYTHONPATH:+:$PYTHONPATH}",
            ]
            if code is not None
            else []
        ),
        f"export RUNS_DIR={shlex.quote(str(RunsRoot.current().path))}",
        *_weight_cache_lines(site),
        "# Checkpoints are staged next to their target; keep any other temporary file on that filesystem too.",
        'export TMPDIR="$RUNS_DIR/.tmp" && mkdir -p "$TMPDIR"',
        "# Slurm >= 22.05: srun does not inherit --cpus-per-task by itself.",
        "export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK",
        "# One compute thread per CPU of the task: torch would start one per core of the node.",
        'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$SLURM_CPUS_PER_TASK}"',
        'echo "job ${SLURM_JOB_ID} on $(hostname) at $(date -Is), restart ${SLURM_RESTART_COUNT:-0}"',
        "",
        *(_serving_tail(command, serving_port) if serving_port is not None else _training_tail(command)),
    ]
    return "\n".join(lines) + "\n"


def _training_tail(command: str) -> list[str]:
    """`fit` under srun, USR1 relayed to it, and the requeue when it stopped for one."""
    return [
        "# USR1 reaches this shell; pass it on to the training processes, which checkpoint and exit with 3.",
        f"# The step ends at most {TASK_EXIT_GRACE_SECONDS} s after its first task, whatever its exit code",
        "# (all exit with 3 on USR1, a moment apart: --kill-on-bad-exit would cancel the later ones).",
        f"srun --kill-on-bad-exit=0 --wait={TASK_EXIT_GRACE_SECONDS} {command} &",
        "child=$!",
        "trap 'kill -USR1 $child 2>/dev/null' USR1",
        "status=0",
        'while kill -0 "$child" 2>/dev/null; do wait "$child"; status=$?; done',
        'wait "$child" 2>/dev/null; last=$?; [ "$last" -ne 127 ] && status=$last',
        f'if [ "$status" -eq {REQUEUE_EXIT_CODE} ]; then',
        '    job="${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}"',
        '    echo "checkpoint written; requeueing ${job:-$SLURM_JOB_ID}"',
        '    scontrol requeue "${job:-$SLURM_JOB_ID}"',
        "    exit 0",
        "fi",
        'exit "$status"',
    ]


def _serving_tail(command: str, port: int) -> list[str]:
    """`serve` under srun: scancel and the time limit send it SIGTERM, which it answers by finishing."""
    return [
        f'echo "serving at http://$(hostname):{port}/ (scancel $SLURM_JOB_ID stops it)"',
        f"exec srun {command}",
    ]


def container_python(image: str, project: Path, code: Path | None = None) -> str:
    """The Python inside the site's Apptainer image, with the GPUs (--nv) and the job's code snapshot
    (`code`, else the project's working tree) bound in: a code change needs no rebuild. Only the srun
    line runs it: the job script's signal relay and `scontrol requeue` stay outside the container."""
    image_path = Path(image) if Path(image).is_absolute() else project / image
    source = code or project
    binds = ",".join(shlex.quote(str(path)) for path in dict.fromkeys([project, source]))
    return (
        f"apptainer exec --nv --bind {binds} "
        f"--env PYTHONPATH={shlex.quote(str(source / 'src'))} {shlex.quote(str(image_path))} python"
    )


def trainer_options(request: GpuRequest) -> list[str]:
    if request.kind == "mig":
        return ["--trainer.devices=1", "--trainer.num_nodes=1"]
    return [f"--trainer.devices={request.count}", f"--trainer.num_nodes={request.nodes}"]


def submit_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="submit",
        description="Submit `fit` as a SLURM job on a MIG slice or full GPUs. Other options go to `fit`.",
    )
    parser.add_argument("--gpu", help="mig:TYPE (one slice) or full:N (N GPUs per node); default: site default_gpu")
    parser.add_argument("--nodes", type=int, default=1, help="nodes, for full-GPU jobs (default 1)")
    parser.add_argument("--sweep", type=Path, help="submit a job array, one task per trial of this sweep file")
    parser.add_argument("--write-only", action="store_true", help="write the job script, print sbatch, do not run it")
    parser.add_argument("--site", type=Path, default=SITE_CONFIG, help=f"site config (default {SITE_CONFIG})")
    parser.add_argument("--serve", action="store_true",
                        help="submit `serve` instead: the run's model over HTTP on its node until scancel "
                        "(default: the site's first MIG slice)")  # fmt: skip
    parser.add_argument("--port", type=int, default=8000, help="with --serve: the port it listens on (default 8000)")
    args, fit_options = parser.parse_known_args(argv)
    try:
        site = load_site(args.site)
        default = _serving_gpu(site) if args.serve else str(site.get("default_gpu", "full:1"))
        request = parse_gpu_request(args.gpu or default, site, args.nodes)
        refuse_multi_process_on_mig(request, fit_options)
        if args.serve:
            job = _prepare_serving(request, site, fit_options, args.port)
        else:
            job = _prepare(request, site, fit_options, args.sweep)
    except (SlurmSetupError, RunNameError, SweepFileError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not args.write_only and args.sweep is None:
        from ..training.project_loading import check_config  # torch and Lightning: seconds, not a queue wait

        config = check_config([*fit_options, *trainer_options(request)])  # a bad config stops here, not in the job
        try:
            refuse_base_weights_missing_from_job_cache(config.model.get("init_args") or {}, site)
        except (SlurmSetupError, WeightsError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    if not args.write_only and shutil.which("sbatch") is None:
        print(
            "error: `sbatch` is not installed here: run this on a SLURM login node, or write the job script "
            "with --write-only and submit it yourself.",
            file=sys.stderr,
        )
        return 2
    try:
        if not args.serve:  # a serving job trains nothing: it loads the checkpoint with the project's code
            print(_freeze(job, allow_changed_code=bool(option_value(fit_options, "allow_changed_code"))))
    except (SnapshotError, CodeChangedError, RunHeldError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    job.script_path.parent.mkdir(parents=True, exist_ok=True)
    RunsRoot.current().slurm_logs.mkdir(parents=True, exist_ok=True)
    job.script_path.write_text(job.script)
    command = ["sbatch", str(job.script_path)]
    print(f"Job script: {job.script_path}\n$ {shlex.join(command)}")
    if args.write_only:
        return 0
    done = subprocess.run(command, capture_output=True, text=True)  # sbatch is there: checked above
    print((done.stdout + done.stderr).strip())
    return done.returncode


@dataclass
class PreparedJob:
    script_path: Path
    script: str
    code: Path  # where `submit` freezes the code the job runs
    run: RunDirectory | None  # None for a sweep's job array (each trial is its own run)


def _prepare(request: GpuRequest, site: dict, fit_options: list[str], sweep: Path | None) -> PreparedJob:
    project = Path.cwd()
    root = RunsRoot.current()
    if sweep is not None:
        sweep_file = read_sweep_file(sweep)
        count, name = sweep_file.size, sweep_file.name
        code = root.sweeps / f"{name}-code"
        python = _python(site, project, code)
        options = shlex.join([*trainer_options(request), *fit_options])
        command = f"{python} -m {PACKAGE} sweep --trial $SLURM_ARRAY_TASK_ID {shlex.quote(str(sweep))} {options}"
        script = job_script(request, site, f"sweep-{name}", command, project, array=count, code=code)
        return PreparedJob(root.sweeps / f"{name}.sbatch", script, code, None)

    run_options = [*fit_options, *trainer_options(request)]
    run = root.run(run_name(run_options))  # from the options alone: no torch import
    if "--run_name" not in run_options:
        run_options += ["--run_name", run.name]  # the job resumes the run this command names
    code = run.code_snapshot_dir
    command = f"{_python(site, project, code)} -m {PACKAGE} fit {shlex.join(run_options)}"
    script = job_script(request, site, run.name, command, project, code=code)
    return PreparedJob(run.slurm_dir / f"{request.kind}.sbatch", script, code, run)


def refuse_base_weights_missing_from_job_cache(model_settings, site: dict) -> None:
    """A job reads its base weights from the cache only, with the hub off (`_weight_cache_lines`): base weights
    missing from the cache the job reads (`job_weight_cache`) would end it at its start, after the queue
    wait. Refused here instead. `model_settings`: the model's init_args as `check_config` parsed them. Models that name
    their weights otherwise than `base_model` and `revision` are not looked up (kit/weights/cache.py,
    `base_weights_named_by`)."""
    source = base_weights_named_by(model_settings)
    if source is None:
        return
    job_cache = job_weight_cache(site)
    try:
        source.local_path(job_cache)
    except WeightsError as missing:
        site_cache = f"; the job reads HF_HUB_CACHE={job_cache} (`weights_cache:` in the site config)"
        site_cache = site_cache if job_cache else ""
        raise SlurmSetupError(f"not submitted, the job would end at its start: {missing}{site_cache}") from None


def _serving_gpu(site: dict) -> str:
    """Where a serving job runs without --gpu: the site's smallest MIG slice (listed first), else its default."""
    mig_types = site.get("mig_types") or []
    return f"mig:{mig_types[0]}" if mig_types else str(site.get("default_gpu", "full:1"))


def _prepare_serving(request: GpuRequest, site: dict, fit_options: list[str], port: int) -> PreparedJob:
    """`serve` of the run that `fit` with `fit_options` trains, as a job; refused before a queue wait when the
    run has no checkpoint yet or the request asks for more than one process."""
    if request.count * request.nodes != 1:
        raise SlurmSetupError(
            f"a serving job runs one process on one GPU or MIG slice, not {request.count}x{request.nodes}"
        )
    project = Path.cwd()
    run_options = [*fit_options]
    run = RunsRoot.current().run(run_name(run_options))
    if "--run_name" not in run_options:
        run_options += ["--run_name", run.name]
    if not any(run.checkpoint_dir.glob("*.ckpt")):
        raise SlurmSetupError(f"run '{run.name}' has no checkpoint yet ({run.checkpoint_dir}): train it first")
    options = shlex.join(["--host", "0.0.0.0", "--port", str(port), *run_options])
    command = f"{_python(site, project, project)} -m {PACKAGE} serve {options}"
    script = job_script(request, site, f"serve-{run.name}", command, project, serving_port=port)
    return PreparedJob(run.slurm_dir / "serve.sbatch", script, project, run)


def _python(site: dict, project: Path, code: Path) -> str:
    return container_python(site["container"], project, code) if site["container"] else shlex.quote(sys.executable)


def _freeze(job: PreparedJob, allow_changed_code: bool) -> str:
    """Freeze the project's code for the job (kit/runs/code_state.py); one line saying what was done."""
    project = Path.cwd()
    holder = RunLease(job.run.path).live_holder() if job.run is not None else None
    if holder is not None:
        raise RunHeldError(
            f"Run '{job.run.name}' is being trained right now ({holder.describe()}): a second job would be "
            f"refused when it starts. Wait for it to end, or stop it first (scancel)."
        )
    if job.run is not None and not allow_changed_code:
        recorded = job.run.recorded_code_files()
        if recorded is not None:
            refuse_changed_code(job.run.name, recorded, code_files(project))
    record = freeze_code(project, job.code)
    state = (record["git_sha"] or "no commit")[:10] + (" + uncommitted changes" if record["git_dirty"] else "")
    kept = " (unchanged since the last submit: kept)" if record.get("kept") else ""
    return f"Code frozen for the job: {job.code} ({record['files']} files, {state}){kept}"
