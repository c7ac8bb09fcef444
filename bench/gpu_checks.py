"""The checks that need a GPU, in one call on a lent GPU machine, and the sharded-training figures
that only GPUs give (issue 28: per-step time under NCCL, peak memory against `profile`'s estimate).

That machine has no copier, no package index and no network. Here, bench/prepare_gpu_checks.py
renders the two examples from this working tree into `.gpu-checks/` (git-ignored) with wheels of
the packages the machine's image lacks, and prints the device call that carries it and runs this.

Each check runs in its own process with its own time limit (and the call's deadline), so one that
fails or hangs costs its own minutes only; each result is one JSON line, printed and appended to
`--out`/gpu-checks.jsonl as soon as it is known, so a call cut short still returns what it measured.
"ok" says whether the check's condition held, "figures" what was measured, "said" the output's end
when it failed.

- environment: the GPU, torch, Lightning, CUDA, bf16 support; every package the projects import.
- fsdp2_per_step: bench/ddp_overhead.py, the kit's `fit` against a bare Trainer, both `fsdp2`,
  the example's three hidden layers widened to 8,192 units (135 M parameters, 2.2 GB of states with
  AdamW: a step of GPU work, the optimizer's included) and to 2,048 (8.5 M: a step that is mostly
  Python and kernel launches).
- memory_estimate: `profile`'s estimate (its `measure`) against the peak that the kit's `fit`
  reaches, read inside the run (bench/gpu_probe.py): the example, and the example widened to 8,192
  under `fsdp2` against `sharded_gib(N)`; ok when measured <= estimate x 1.15 (profile's headroom).
- fsdp2_save: bench/sharded_checkpointing.py, the kit's staged, checksummed sharded save against
  Lightning's own, width 8,192 (1.6 GB of shards), on this machine's disk.
- example_fit: the digits example's `fit` as a researcher types it: exit 0, on the GPU, in the
  precision the kit chooses by itself (bf16-mixed where the GPU supports it).
- finetune_fit: the fine-tune example on a tiny LLaMA made there (tests/hub_cache.py) and read
  from an offline hub cache, as is (LoRA) and under `fsdp2`: exit 0, bf16-mixed, on the GPU.
- profile: the `profile` command ends with 0 and names a MIG slice or a full GPU.

N = 1 on a machine with one GPU (the lent kinds have one); two processes where two GPUs are.
`--cpu` runs the same checks on the CPU, the models narrowed to 256 units: their plumbing, not their
figures (no GPU memory).

    python3 bench/gpu_checks.py --prepared .gpu-checks --out "$OUT" [--only NAME ...] [--deadline 540]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
TOP = BENCH.parent
HEADROOM = 1.15  # profile's default: 15 % spare
FINETUNE_RUN = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=8", "--trainer.limit_val_batches=2"]
BASE_MODEL, REVISION = "HuggingFaceTB/SmolLM2-135M", "93efa2f097d58c2a74874c7e644dbc9b0cee75a2"  # the example's

# name: (seconds it may take, at most)
CHECKS = {
    "environment": 90,
    "fsdp2_per_step": 240,
    "memory_estimate": 180,
    "fsdp2_save": 150,
    "example_fit": 90,
    "finetune_fit": 150,
    "profile": 90,
}


class Context:
    """Where a check works and what it runs on."""

    def __init__(self, prepared: Path, work: Path, cpu: bool) -> None:
        self.prepared, self.work, self.cpu = prepared, work, cpu
        self.accelerator = "cpu" if cpu else "gpu"
        # Hidden-layer widths: (per-step benches), the memory estimate's, the sharded save's.
        self.step_widths, self.memory_width, self.save_width = ((256,), 256, 256) if cpu else ((8192, 2048), 8192, 8192)
        import torch

        gpus = 0 if cpu else torch.cuda.device_count()
        self.processes = 2 if cpu or gpus >= 2 else 1

    def project(self, name: str) -> Path:
        """A fresh copy of a prepared project (each check writes runs and caches into its own)."""
        copy = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.work)) / name
        shutil.copytree(self.prepared / "projects" / name, copy, symlinks=True)
        return copy

    def command(self, project: Path, args: list[str], timeout: float, **env: str) -> subprocess.CompletedProcess:
        """`python -m <package> ARGS` in `project` (see `python`)."""
        package = next(p.name for p in (project / "src").iterdir() if (p / "cli.py").exists())
        return self.python(project, ["-m", package, *args], timeout, **env)

    def python(self, project: Path, args: list[str], timeout: float, **env: str) -> subprocess.CompletedProcess:
        """`python ARGS` in `project`, its package and this folder (the probe) importable, its runs beside it."""
        paths = [str(project / "src"), str(BENCH), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "RUNS_DIR": str(project.parent / "runs"), **env}
        command = [sys.executable, *args]
        return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=timeout)

    def probed_fit(self, project: Path, run_name: str, options: list[str], timeout: float, **env: str) -> dict:
        """The kit's `fit` with the probe: its exit code, output's end and each process's reading."""
        probe = project.parent / f"probe-{run_name}"
        args = ["fit", "--run_name", run_name, "--trainer.callbacks+=gpu_probe.GpuProbe", *options]
        done = self.command(project, args, timeout, GPU_PROBE_OUT=str(probe), **env)
        readings = [json.loads(path.read_text()) for path in sorted(probe.parent.glob(f"{probe.name}-rank*.json"))]
        return {"exit": done.returncode, "said": tail(done), "readings": readings}

    def bench(self, script: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
        env = {**os.environ, "BENCH_PROJECT": str(self.prepared / "projects" / "digits-mlp")}
        env["PYTHONPATH"] = os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")])
        command = [sys.executable, str(BENCH / script), *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)

    def expected_precision(self) -> str:
        """What the kit should choose here, written out rather than asked of the kit (fit_policies.py):
        the check compares the two."""
        import torch

        if self.cpu:
            return "32-true"
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def tail(done: subprocess.CompletedProcess, characters: int = 1500) -> str:
    return (done.stdout[-characters:] + "\n" + done.stderr[-characters:]).strip()


def environment(context: Context, limit: float) -> dict:
    import importlib
    import importlib.metadata

    import torch

    needed = ["lightning", "torchmetrics", "jsonargparse", "docstring_parser", "typeshed_client", "yaml", "xxhash",
              "scipy", "sklearn", "doit", "optuna", "transformers", "peft", "safetensors", "huggingface_hub",
              "datasets"]  # fmt: skip
    missing = []
    for name in needed:
        try:
            importlib.import_module(name)
        except ImportError as error:
            missing.append(f"{name}: {error}")
    figures = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "lightning": importlib.metadata.version("lightning"),
        "gpus": [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())],
        "bf16_supported": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        "processes_used": context.processes,
    }
    return {"ok": not missing and (context.cpu or bool(figures["gpus"])), "figures": figures, "said": missing}


def bench_result(done: subprocess.CompletedProcess) -> tuple[bool, dict]:
    """Whether a bench printed its ratio, and its figures (the ratio and its output) or its output's end."""
    ratio = next((line for line in done.stdout.splitlines() if line.startswith("ratio ")), "")
    if done.returncode != 0 or not ratio:
        return False, {"said": tail(done)}
    return True, {"ratio": float(ratio.split()[1].rstrip("x")), "output": done.stdout.strip().splitlines()}


def fsdp2_per_step(context: Context, limit: float) -> dict:
    started, figures = time.monotonic(), {}
    for width in context.step_widths:
        args = ["--strategy", "fsdp2", "--accelerator", context.accelerator, "--devices", str(context.processes)]
        args += ["--width", str(width), "--repeats", "2", "--epochs", "4"]
        ok, figures[f"width {width}"] = bench_result(
            context.bench("ddp_overhead.py", args, limit - (time.monotonic() - started))
        )
        if not ok:
            return {"ok": False, "figures": figures, "said": figures[f"width {width}"].pop("said")}
    return {"ok": True, "figures": figures, "said": ""}


def fsdp2_save(context: Context, limit: float) -> dict:
    args = ["--accelerator", context.accelerator, "--devices", str(context.processes)]
    args += ["--width", str(context.save_width), "--saves", "4"]
    ok, figures = bench_result(context.bench("sharded_checkpointing.py", args, limit))
    return {"ok": ok, "figures": figures, "said": figures.pop("said", "")}


ESTIMATE = """
import json, sys
from digits_mlp.kit.cluster.memory_profile import measure
profile = measure(sys.argv[2:], steps=20, accelerator=sys.argv[1])
print(json.dumps({"peak_reserved_bytes": profile.peak_reserved_bytes,
                  "context_overhead_bytes": profile.context_overhead_bytes,
                  "model_state_bytes": profile.model_state_bytes,
                  "needed_gib": profile.needed_gib,
                  "sharded_gib": {n: profile.sharded_gib(n) for n in (1, 2)}}))
"""


def memory_estimate(context: Context, limit: float) -> dict:
    """profile's estimate against the kit's fit's own peak: the example, then wide under fsdp2 (N processes)."""
    if context.cpu:
        return {"ok": True, "figures": {}, "said": "not measured: GPU memory needs a GPU (--cpu)"}
    started, cases, ok = time.monotonic(), {}, True
    wide = [f"--model.init_args.hidden_sizes=[{', '.join([str(context.memory_width)] * 3)}]"]
    sharded = [*wide, "--trainer.strategy=fsdp2", f"--trainer.devices={context.processes}"]
    for case, options, fit_options, processes in (
        ("example", [], [], None),  # one process, no sharding: profile's `needed`
        ("wide-fsdp2", wide, sharded, context.processes),  # per GPU with the states split N ways
    ):
        project = context.project("digits-mlp")
        estimate = context.python(project, ["-c", ESTIMATE, "gpu", *options], limit - (time.monotonic() - started))
        if estimate.returncode != 0:
            return {"ok": False, "figures": cases, "said": f"{case}: the estimate failed\n{tail(estimate)}"}
        predicted = json.loads(estimate.stdout.strip().splitlines()[-1])
        remaining = limit - (time.monotonic() - started)
        run = context.probed_fit(project, f"memory-{case}", ["--trainer.max_epochs=2", *fit_options], remaining)
        if run["exit"] != 0 or not run["readings"]:
            return {"ok": False, "figures": cases, "said": f"{case}: fit ended with {run['exit']}\n{run['said']}"}
        measured_gib = max(r["peak_reserved_bytes"] + r["context_overhead_bytes"] for r in run["readings"]) / 2**30
        estimate_gib = predicted["sharded_gib"][str(processes)] if processes else predicted["needed_gib"]
        cases[case] = {
            "estimate_gib": round(estimate_gib, 3),
            "measured_peak_gib_per_process": round(measured_gib, 3),
            "measured_over_estimate": round(measured_gib / estimate_gib, 3),
            "model_state_gib": round(predicted["model_state_bytes"] / 2**30, 3),
            "processes": len(run["readings"]),
            "precision": run["readings"][0]["precision"],
        }
        ok = ok and measured_gib <= estimate_gib * HEADROOM
    return {"ok": ok, "figures": cases, "said": ""}


def trained_as_expected(context: Context, run: dict, processes: int) -> tuple[bool, dict]:
    """Exit 0, one reading per process, each on the accelerator and in the precision the kit chooses."""
    readings = run["readings"]
    device = "cpu" if context.cpu else "cuda"
    ok = run["exit"] == 0 and len(readings) == processes
    ok = ok and all(r["precision"] == context.expected_precision() and r["device"].startswith(device) for r in readings)
    figures = {"exit": run["exit"], "readings": readings}
    return ok, figures


def example_fit(context: Context, limit: float) -> dict:
    project = context.project("digits-mlp")
    run = context.probed_fit(project, "gpu-example", ["--trainer.max_epochs=5"], limit)
    ok, figures = trained_as_expected(context, run, 1)
    record = project.parent / "runs" / "gpu-example" / "record.json"
    if record.exists():
        figures["final_metrics"] = json.loads(record.read_text()).get("final_metrics")
    return {"ok": ok, "figures": figures, "said": "" if ok else run["said"]}


def finetune_fit(context: Context, limit: float) -> dict:
    """The fine-tune example, its base a tiny LLaMA saved here and laid out as the hub's cache."""
    sys.path.insert(0, str(TOP / "tests"))
    from hub_cache import put_in_hub_cache, save_tiny_llama_with_tokenizer

    started = time.monotonic()
    project = context.project("ticket-topics")
    sys.path.insert(0, str(project / "src"))
    from ticket_topics.data import write_example_tickets  # the tickets the tokenizer is made from, as in the tests

    write_example_tickets(context.work / "tickets.jsonl")
    texts = [json.loads(line)["text"] for line in (context.work / "tickets.jsonl").read_text().splitlines()]
    save_tiny_llama_with_tokenizer(context.work / "tiny-llama", texts)
    hub = context.work / "hub"
    put_in_hub_cache(context.work / "tiny-llama", hub, BASE_MODEL, REVISION)
    env = {"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    figures, ok, said = {}, True, ""
    for case, options, processes in (
        ("lora", [], 1),
        ("lora-fsdp2", ["--trainer.strategy=fsdp2", f"--trainer.devices={context.processes}"], context.processes),
    ):
        remaining = limit - (time.monotonic() - started)
        run = context.probed_fit(project, f"finetune-{case}", [*FINETUNE_RUN, *options], remaining, **env)
        case_ok, figures[case] = trained_as_expected(context, run, processes)
        ok, said = ok and case_ok, said if case_ok else f"{said}\n{case}: {run['said']}"
    return {"ok": ok, "figures": figures, "said": said.strip()}


def profile(context: Context, limit: float) -> dict:
    project = context.project("digits-mlp")
    done = context.command(project, ["profile"], limit)
    lines = done.stdout.strip().splitlines()
    if context.cpu:  # profile measures GPU memory: without one it says so and ends with 1
        ok = done.returncode == 1 and "No CUDA GPU is visible here" in done.stdout
    else:
        ok = done.returncode == 0 and any(line.startswith(("Recommended:", "No MIG slice")) for line in lines)
    return {"ok": ok, "figures": {"output": lines[-6:]}, "said": "" if ok else tail(done)}


def run_one(name: str, context: Context, limit: float) -> dict:
    try:
        return globals()[name](context, limit)
    except subprocess.TimeoutExpired as late:  # the check's own limit, reached inside one of its commands
        command = " ".join(Path(part).name if part.startswith("/") else part for part in late.cmd[:6])
        return {"ok": False, "said": f"`{command} ...` did not end within the check's {late.timeout:.0f} s"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", type=Path, default=TOP / ".gpu-checks")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--only", nargs="+", choices=list(CHECKS), help="these checks only (default: all, in order)")
    parser.add_argument("--deadline", type=float, default=540, help="seconds for all the checks together")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU: the checks' plumbing, not their figures")
    parser.add_argument("--check", choices=list(CHECKS), help=argparse.SUPPRESS)  # one check, in this process
    parser.add_argument("--limit", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.check:
        result = run_one(args.check, Context(args.prepared.resolve(), args.work, args.cpu), args.limit)
        print(json.dumps(result))
        return 0

    if not (args.prepared / "projects").is_dir():
        print(f"error: {args.prepared}/projects is missing: run bench/prepare_gpu_checks.py first", file=sys.stderr)
        return 2
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "gpu-checks.jsonl"
    failed = 0
    for name in args.only or list(CHECKS):
        left = args.deadline - (time.monotonic() - started)
        result = {"check": name}
        if left < 20:
            result |= {"ok": None, "said": "not run: the call's deadline had passed"}
        else:
            result |= run_check(name, args, limit=min(CHECKS[name], left - 5))
        failed += result["ok"] is False
        line = json.dumps(result)
        print(line, flush=True)
        with results.open("a") as out:
            out.write(line + "\n")
    print(f"gpu_checks: {failed} failed, in {time.monotonic() - started:.0f} s; results in {results}")
    return 1 if failed else 0


def run_check(name: str, args: argparse.Namespace, limit: float) -> dict:
    """One check in its own process, under its time limit; its result or why there is none."""
    work = Path(tempfile.mkdtemp(prefix=f"gpu-check-{name}-"))
    command = [sys.executable, __file__, "--check", name, "--prepared", str(args.prepared), "--work", str(work)]
    command += ["--limit", str(limit - 5)] + (["--cpu"] if args.cpu else [])
    started = time.monotonic()
    # Its own process group: on timeout the check goes with everything it started (bench sides, ranks).
    # Its temporary files (the benches' runs: gigabytes of checkpoints) go into its folder, removed after.
    check = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "TMPDIR": str(work)},
    )  # fmt: skip
    try:
        stdout, stderr = check.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        end_process_group(check)
        return {"ok": False, "seconds": round(limit), "said": f"did not end within {limit:.0f} s"}
    finally:
        end_process_group(check)  # stragglers too: a bench's ranks outlive a bench ended at its time limit
        shutil.rmtree(work, ignore_errors=True)
    seconds = round(time.monotonic() - started, 1)
    try:
        return {**json.loads(stdout.strip().splitlines()[-1]), "seconds": seconds}
    except (IndexError, json.JSONDecodeError):
        return {"ok": False, "seconds": seconds, "said": tail(subprocess.CompletedProcess(command, 1, stdout, stderr))}


def end_process_group(check: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(check.pid, signal.SIGKILL)
    check.communicate()


if __name__ == "__main__":
    sys.exit(main())
