"""`serve` against calling the model in-process: latency at batch 1, and throughput with dynamic batching.

`.venv/bin/python bench/serving.py`. Renders the example, trains it for one epoch, then in one run:
- in-process: the run's predictor (kit/deployment/predictor.py: the training preprocessing, then
  the checkpoint) called on one sample at a time, as a program that imports the project would;
- served at batch 1: the same run behind `serve` (a subprocess on the loopback address, no batching
  wait), one client sending one sample per request over a kept-alive connection; the difference of
  the medians is the server's own overhead per request (HTTP, JSON, the event loop, the batcher);
- served under load: CLIENTS concurrent clients, each sending one sample per request, against the
  server without batching (--max_batch_size 1) and with it (--max_batch_size 32 --max_wait_ms 2),
  for the example and for its 4-hidden-layer variant of width 1024 (where the model's compute, not
  HTTP, takes most of a request's time).
Latencies are measured by the clients, end to end, with the kit's own load client (`load-test`).
Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from example_project import use_rendered_example  # noqa: E402

SEQUENTIAL, CLIENTS, PER_CLIENT, WARMUP = 500, 16, 60, 30
MODELS = {"example (64-128-10)": [], "wide (64-1024x4-10)": ["--model.init_args.hidden_sizes=[1024,1024,1024,1024]"]}
SERVERS = {"no batching": ["--max_batch_size", "1", "--max_wait_ms", "0"],
           "dynamic batching": ["--max_batch_size", "32", "--max_wait_ms", "2"]}  # fmt: skip


def main() -> None:
    import numpy as np
    import torch

    work, _ = use_rendered_example("bench-serving-")
    os.environ["PYTHONPATH"] = str(Path.cwd() / "src")  # the kit starts `serve` with `python -m digits_mlp`
    names = {}
    for label, options in MODELS.items():
        names[label] = name = f"bench-{label.split()[0]}"
        fit = [sys.executable, "-m", "digits_mlp", "fit", "--trainer.max_epochs=1", "--run_name", name, *options]
        subprocess.run(fit, check=True, stdout=subprocess.DEVNULL)
    # The kit's own load client (`load-test`): one sample per request over kept-alive connections.
    from digits_mlp.kit.deployment.load_test import free_loopback_port, percentile, send_load, started_server, stopped
    from digits_mlp.kit.deployment.predictor import load_predictor

    def served(run: str, options: list[str], clients: int, requests: int) -> dict:
        port = free_loopback_port()
        server = started_server(["--run_name", run, *options], port)
        try:
            send_load(port, [body], clients, WARMUP, 600)
            return send_load(port, [body], clients, requests, 600)
        finally:
            stopped(server)

    row = np.loadtxt("data/serving-example.csv", delimiter=",", ndmin=2)[0].tolist()
    body = json.dumps({"inputs": [row]}).encode()
    example = names["example (64-128-10)"]
    predictor = load_predictor(["--run_name", example])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {os.cpu_count()} cores")
    for _ in range(WARMUP):
        predictor.predict(predictor.preprocess([row]))
    in_process = []
    for _ in range(SEQUENTIAL):
        started = time.perf_counter()
        predictor.predict(predictor.preprocess([row]))
        in_process.append(time.perf_counter() - started)
    one_by_one = served(example, ["--max_wait_ms", "0"], 1, SEQUENTIAL)
    loaded = {
        (model, label): served(names[model], [*MODELS[model], *options], CLIENTS, CLIENTS * PER_CLIENT)
        for model in MODELS
        for label, options in SERVERS.items()
    }

    ms = 1000
    print(f"\nOne sample per call, {SEQUENTIAL} calls, one after another:")
    print(f"{'':28} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'calls/s':>9}")
    print(f"{'in-process (predictor)':28} {statistics.median(in_process) * ms:8.3f} "
          f"{percentile(in_process, 0.95) * ms:8.3f} {percentile(in_process, 0.99) * ms:8.3f} "
          f"{len(in_process) / sum(in_process):9.0f}")  # fmt: skip
    print(f"{'served (serve, HTTP)':28} {one_by_one['p50_ms']:8.3f} {one_by_one['p95_ms']:8.3f} "
          f"{one_by_one['p99_ms']:8.3f} {one_by_one['requests_per_second']:9.0f}")  # fmt: skip
    overhead = one_by_one["p50_ms"] - statistics.median(in_process) * ms
    ratio = one_by_one["p50_ms"] / (statistics.median(in_process) * ms)
    print(f"server's own overhead per request (difference of medians): {overhead:.3f} ms; served/in-process "
          f"{ratio:.2f}x")  # fmt: skip
    print(f"\n{CLIENTS} concurrent clients, {PER_CLIENT} one-sample requests each:")
    print(f"{'model':22} {'server':18} {'requests/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for (model, label), figures in loaded.items():
        print(f"{model:22} {label:18} {figures['requests_per_second']:10.0f} {figures['p50_ms']:8.2f} "
              f"{figures['p95_ms']:8.2f} {figures['p99_ms']:8.2f} {figures['errors']:6d}")  # fmt: skip
    for model in MODELS:
        batched, one_at_a_time = loaded[model, "dynamic batching"], loaded[model, "no batching"]
        gain = batched["requests_per_second"] / one_at_a_time["requests_per_second"]
        print(f"{model}: dynamic batching / no batching, throughput {gain:.2f}x")


if __name__ == "__main__":
    main()
