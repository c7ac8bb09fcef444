"""`loader` names the bottleneck: a planted slow `__getitem__` is input-bound, a heavy model compute-bound."""

from __future__ import annotations

import time

from template_dev import run


def test_a_slow_dataset_is_input_bound_and_the_knobs_are_named(example_package, monkeypatch) -> None:
    import torch
    from digits_mlp.kit import load_model_and_data
    from digits_mlp.kit.diagnostics.loader_report import measure
    from torch.utils.data import DataLoader, Dataset

    monkeypatch.chdir(example_package)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")  # the CPUs of the job, not the node's count
    model, data = load_model_and_data([])
    data.setup("fit")

    class SlowItems(Dataset):
        """Each example costs 15 ms to fetch, like an image opened and decoded from a network disk: slow
        enough that waiting dominates even when the other test worker keeps both CPUs busy."""

        def __init__(self, examples) -> None:
            self.examples = examples

        def __len__(self) -> int:
            return len(self.examples)

        def __getitem__(self, index: int):
            time.sleep(0.015)
            return self.examples[index]

    # One intra-op thread, as in a one-CPU job: with two, a small step under the other test processes'
    # load waits on the other thread (a step of this model once took 120 ms instead of about 2).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = measure(model, DataLoader(SlowItems(data.splits["train"]), batch_size=16), max_batches=8)
    finally:
        torch.set_num_threads(threads)
    assert report.input_bound and report.waiting_share > 0.5, report
    assert report.model_steps_per_second > 3 * report.steps_per_second  # the model alone is much faster
    verdict = report.verdict()
    assert verdict.startswith("input-bound") and "num_workers is 0; this job may use 8 CPUs: try 7" in verdict
    assert "pinned memory" in verdict and "shard" in verdict


def test_a_heavy_model_is_compute_bound(example_project, example_command) -> None:
    project, _ = example_project
    heavy = ["--model.init_args.hidden_sizes=[2048, 2048, 2048]", "--data.init_args.batch_size=256"]
    done = run([*example_command, "loader", *heavy], cwd=project)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("loader alone:") and lines[1].startswith("model alone:") and lines[2].startswith("both:")
    assert lines[-1].startswith("compute-bound: the loader keeps up"), done.stdout


def test_the_advice_fits_the_loader(example_package, monkeypatch) -> None:
    """Shards already: no advice to pack; workers that take the training's CPUs: fewer workers, not more."""
    from digits_mlp.kit.diagnostics.loader_report import LoaderReport

    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")
    figures = {"samples_per_second": 1e5, "gpu_busy_share": None, "batch_size": 256, "pin_memory": False}
    waiting = LoaderReport(**figures, model_steps_per_second=190, steps_per_second=130, waiting_share=0.3,
                           num_workers=0, from_shards=True)  # fmt: skip
    assert waiting.verdict().startswith("input-bound") and "shard" not in waiting.verdict()
    assert "try 1" in waiting.verdict()
    crowded = LoaderReport(**figures, model_steps_per_second=190, steps_per_second=60, waiting_share=0.1,
                           num_workers=1, from_shards=True)  # fmt: skip
    assert crowded.verdict().startswith("slowed by its workers") and "3.2x as long" in crowded.verdict()
    assert "fewer workers" in crowded.verdict() and "this job's 2 CPUs" in crowded.verdict()
    heavy = LoaderReport(**figures, model_steps_per_second=20, steps_per_second=19, waiting_share=0.05,
                         num_workers=1, from_shards=True)  # fmt: skip
    assert heavy.verdict().startswith("compute-bound")
