"""ONNX Runtime against eager PyTorch: latency of the example model per batch, at batch sizes 1 and 256.

`.venv/bin/python bench/inference.py`. Renders the example, builds its model (untrained: latency does
not depend on the weights), exports it with the kit's `export_onnx`, then times both engines side
by side in this process, interleaved round by round so that the machine's noise hits both alike:
each round runs every engine for REPEATS batches; a batch's time is the median over its rounds.
Also for the example's 4-hidden-layer variant of width 1024 (a model where compute dominates).
Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from example_project import use_rendered_example  # noqa: E402

BATCH_SIZES = (1, 256)
ROUNDS, REPEATS, WARMUP = 15, 40, 20
MODELS = {"example (64-128-10)": [], "wide (64-1024x4-10)": ["--model.init_args.hidden_sizes=[1024,1024,1024,1024]"]}


def timed(function, batch) -> float:
    started = time.perf_counter()
    for _ in range(REPEATS):
        function(batch)
    return (time.perf_counter() - started) / REPEATS * 1000


def main() -> None:
    import torch

    work, _ = use_rendered_example("bench-inference-")
    from digits_mlp.kit import load_model_and_data
    from digits_mlp.kit.deployment.export import export_onnx
    from digits_mlp.kit.deployment.onnx_runtime import onnx_session

    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads; median of {ROUNDS} rounds x {REPEATS} batches each")
    print(f"{'model':22} {'batch':>5} {'eager ms':>9} {'onnxruntime ms':>15} {'eager/onnx':>11}")
    for label, options in MODELS.items():
        torch.manual_seed(0)
        model, _ = load_model_and_data(options)
        model.eval()
        path = work / f"{label.split()[0]}.onnx"
        export_onnx(model, torch.zeros(4, 8, 8), path)
        session = onnx_session(path)

        def eager(batch, model=model):
            with torch.inference_mode():
                return model(batch)

        def onnx(batch, session=session):
            return session.run(None, {"inputs": batch.numpy()})

        for size in BATCH_SIZES:
            batch = torch.rand(size, 8, 8)
            for function in (eager, onnx):
                for _ in range(WARMUP):
                    function(batch)
            rounds = {"eager": [], "onnx": []}
            for _ in range(ROUNDS):
                rounds["eager"].append(timed(eager, batch))
                rounds["onnx"].append(timed(onnx, batch))
            eager_ms, onnx_ms = (statistics.median(rounds[name]) for name in ("eager", "onnx"))
            print(f"{label:22} {size:5d} {eager_ms:9.3f} {onnx_ms:15.3f} {eager_ms / onnx_ms:10.2f}x", flush=True)


if __name__ == "__main__":
    main()
