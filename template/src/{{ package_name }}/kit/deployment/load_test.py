"""`<package> load-test`: the served model under concurrent clients, against the inference budget.

Managed by the copier-lightning template.

    <package> load-test [--clients N] [--requests 400] [--seconds 60] [--samples FILE] [--run_name NAME ...]

It starts `serve` for the run (the same options as `fit` name it) on a free port of the loopback
address, and only there: no request leaves this machine. N clients (the budget's `served.clients`
unless --clients) send one sample per request over kept-alive connections, `--requests` in all,
stopping at `--seconds` whatever is left: the test is bounded in count and in time. The samples
are the data's serving examples (data/serving-example.csv or .jsonl, read as `predict-files` reads
them), in turn. Then `serve` is stopped with SIGTERM, as a job's end would.

Reported: requests answered, errors (anything but a 200, a refused or broken connection),
throughput, and p50/p95/p99 of each request's latency measured by its client, end to end. The
verdict: no errors, and p95 within the budget's `served.p95_ms` (configs/inference-budget.yaml;
a budget without `served` is held to its batch-1 `latency_ms` p95). Exit 1 when over budget;
the figures go to runs/<run>/load-test.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..base.project_package import PACKAGE
from ..runs.atomic_files import atomic_write_text
from ..runs.identity import run_name
from ..runs.root import RunsRoot
from .batch_inference import SERVING_EXAMPLES, InputError, serving_examples
from .budget import BUDGET_FILE, BudgetError, read_budget

READY_SECONDS = 180  # loading the project and the checkpoint, on a busy machine


class LoadTestError(RuntimeError):
    """The server did not start, or there is nothing to send."""


def served_limits(budget: dict[str, Any]) -> dict[str, Any]:
    """{"clients": N, "p95_ms": MS}: the budget's `served`, else 8 clients held to the batch-1 p95."""
    served = budget.get("served") or {}
    batch_one = (budget.get("latency_ms") or {}).get(1, {}).get("p95")
    return {"clients": served.get("clients", 8), "p95_ms": served.get("p95_ms", batch_one)}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def started_server(config_args: list[str], port: int) -> subprocess.Popen:
    """`serve` on 127.0.0.1:port, ready; LoadTestError with its own words when it does not come up."""
    command = [sys.executable, "-m", PACKAGE, "serve", "--host", "127.0.0.1", "--port", str(port), *config_args]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise LoadTestError(f"serve did not start: {server.stderr.read().strip() or f'exit {server.returncode}'}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/ready")
            if connection.getresponse().status == 200:
                return server
        except OSError:
            time.sleep(0.25)
    stopped(server)
    raise LoadTestError(f"serve was not ready after {READY_SECONDS} s")


def stopped(server: subprocess.Popen) -> int:
    server.send_signal(signal.SIGTERM)
    try:
        return server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        return server.wait()


def send_load(port: int, bodies: list[bytes], clients: int, requests: int, seconds: float) -> dict[str, Any]:
    """`requests` requests from `clients` threads (fewer when `seconds` run out); the figures."""
    claimed = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + seconds

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < deadline:
            with lock:
                number = next(claimed, None)
            if number is None:
                break
            started = time.perf_counter()
            try:
                connection.request(
                    "POST", "/predict", bodies[number % len(bodies)], {"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                response.read()
                failed = None if response.status == 200 else f"HTTP {response.status}"
            except (OSError, http.client.HTTPException) as broken:
                failed = f"{type(broken).__name__}: {broken}"
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            took = time.perf_counter() - started
            with lock:
                if failed:
                    errors.append(failed)
                else:
                    latencies.append(took)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    figures: dict[str, Any] = {
        "clients": clients,
        "answered": len(latencies),
        "errors": len(errors),
        "first_errors": sorted(set(errors))[:3],
        "seconds": round(elapsed, 3),
        "requests_per_second": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
    }
    if latencies:
        for name, share in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
            figures[name] = round(percentile(latencies, share) * 1000, 3)
    return figures


def verdicts(figures: dict[str, Any], limits: dict[str, Any]) -> list[str]:
    """The budget lines missed (none: within budget)."""
    missed = []
    if figures["errors"]:
        missed.append(f"{figures['errors']} request(s) failed ({'; '.join(figures['first_errors'])})")
    if not figures["answered"]:
        missed.append("no request was answered")
    elif limits["p95_ms"] is not None and figures["p95_ms"] > limits["p95_ms"]:
        missed.append(f"p95 {figures['p95_ms']:.2f} ms is over the budget's {limits['p95_ms']} ms")
    return missed


def load_test_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="load-test",
        description="The served model under concurrent clients on the loopback address, against the inference "
        "budget. Other options go to the config parser (--config, --run_name, ...), as for `fit`.",
    )
    parser.add_argument("--clients", type=int, default=None, help="concurrent clients (default: the budget's)")
    parser.add_argument("--requests", type=int, default=400, help="requests in all (default 400)")
    parser.add_argument("--seconds", type=float, default=60.0, help="stop sending after this long (default 60)")
    parser.add_argument(
        "--samples", type=Path, default=None, help="a file of samples (default: data/serving-example.*)"
    )
    parser.add_argument("--budget", type=Path, default=BUDGET_FILE, help=f"the budget file (default {BUDGET_FILE})")
    args, config_args = parser.parse_known_args(argv)
    try:
        limits = served_limits(read_budget(args.budget))
        clients = args.clients or limits["clients"]
        if clients < 1 or args.requests < 1 or args.seconds <= 0:
            raise LoadTestError("--clients and --requests must be at least 1, --seconds above 0")
        bodies = [json.dumps({"inputs": [sample]}).encode() for sample in serving_examples(args.samples)]
        if not bodies:
            raise LoadTestError(f"no samples to send: give --samples FILE (or write {SERVING_EXAMPLES[0]})")
        port = free_loopback_port()
        server = started_server(config_args, port)
    except (BudgetError, InputError, LoadTestError) as refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    try:
        figures = send_load(port, bodies, clients, args.requests, args.seconds)
    finally:
        stopped(server)
    figures["budget_p95_ms"] = limits["p95_ms"]
    missed = verdicts(figures, limits)
    figures["verdict"] = "within budget" if not missed else "over budget"
    print(
        f"{figures['clients']} clients, {figures['answered']} requests answered in {figures['seconds']:.1f} s "
        f"({figures['requests_per_second']:.0f}/s), {figures['errors']} errors; latency p50 "
        f"{figures.get('p50_ms', float('nan')):.2f} ms, p95 {figures.get('p95_ms', float('nan')):.2f} ms, "
        f"p99 {figures.get('p99_ms', float('nan')):.2f} ms (budget p95: {limits['p95_ms']} ms)"
    )
    record = RunsRoot.current().run(run_name(config_args)).path / "load-test.json"
    if record.parent.is_dir():
        atomic_write_text(record, json.dumps(figures, indent=2) + "\n")
    print("Within budget." if not missed else "Over budget: " + "; ".join(missed))
    return 0 if not missed else 1
