"""Cost of run integrity, against the start of a `fit`, side by side in one process.

Per start of `fit`: the code check (hash your files under src/, compare with the run's) and the
one-writer lease (exclusive create, read back, heartbeat thread, give back). Per checkpoint write:
the lease's confirmation (one small file read). Per `submit`: freezing the code into the run's
snapshot, fresh and when unchanged (kept). The reference is the start of a one-batch `fit` of the
example in this process (parse the config, build model and data, resume logic, records, one
step, the final save): the part of a run these additions lengthen.

    .venv/bin/python bench/run_integrity.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import statistics
import sys
import time
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]

from example_project import use_rendered_example  # noqa: E402

from template_dev import commit_all  # noqa: E402

ONE_BATCH = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"]


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    work, _ = use_rendered_example("bench-integrity-")
    project = Path.cwd()
    commit_all(project, "start")

    from digits_mlp.kit.runs.code_state import code_files, freeze_code
    from digits_mlp.kit.runs.lease import RunLease
    from digits_mlp.kit.training.lightning_cli import run_lightning_cli

    def one_step_fit(number: int) -> None:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = run_lightning_cli(["fit", *ONE_BATCH, "--run_name", f"start-{number}"])
        assert code == 0, code

    def lease_cycle(number: int) -> None:
        lease = RunLease(work / "leases" / f"run-{number}")
        lease.acquire()
        lease.release()

    def confirm_once(number: int) -> float:
        """ms of one confirmation (what each checkpoint write does first), on a lease held for it."""
        lease = RunLease(work / "leases" / f"held-{number}")
        lease.acquire()
        took = timed(lease.confirm)
        lease.release()
        return took

    one_step_fit(-1)  # imports and first-use costs out of the way
    times: dict[str, list[float]] = {"fit start": [], "code check": [], "lease": [], "confirm": [], "freeze": []}
    for repeat in range(args.repeats):
        times["fit start"].append(timed(lambda: one_step_fit(repeat)))  # noqa: B023
        times["code check"].append(timed(lambda: code_files(project)))
        times["lease"].append(timed(lambda: lease_cycle(repeat)))  # noqa: B023
        times["confirm"].append(confirm_once(repeat))
        destination = work / "snapshots" / f"code-{repeat}"
        times["freeze"].append(timed(lambda: freeze_code(project, destination)))  # noqa: B023
    kept = [timed(lambda: freeze_code(project, work / "snapshots" / "code-0")) for _ in range(args.repeats)]
    files = len(code_files(project))
    snapshot_files = sum(1 for path in (work / "snapshots" / "code-0").rglob("*") if path.is_file())

    median = {name: statistics.median(values) for name, values in times.items()}
    start = median["fit start"]
    print(f"median of {args.repeats}, in one process, interleaved:")
    print(f"  one-batch fit (the reference)     {start:8.1f} ms")
    print(
        f"  code check ({files} files of yours)   {median['code check']:8.2f} ms  {median['code check'] / start:6.2%}"
    )
    print(f"  lease acquire + release           {median['lease']:8.2f} ms  {median['lease'] / start:6.2%}")
    print(f"  lease confirm (per checkpoint)    {median['confirm']:8.3f} ms")
    print(f"  freeze the code ({snapshot_files} files)      {median['freeze']:8.1f} ms  (per submit)")
    print(f"  freeze, unchanged (kept)          {statistics.median(kept):8.1f} ms")
    with contextlib.suppress(OSError):
        shutil.rmtree(work)
    sys.exit(0)


if __name__ == "__main__":
    main()
