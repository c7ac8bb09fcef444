"""The memory profile's arithmetic and slice choice, with fixed numbers (CPU); a real measurement on a GPU."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def profiler(example_package):
    from digits_mlp.kit.cluster import memory_profile

    return memory_profile


def test_needed_memory_adds_the_context_to_the_allocator_peak(profiler) -> None:
    profile = profiler.MemoryProfile(peak_reserved_bytes=6 * profiler.GIB, context_overhead_bytes=profiler.GIB // 2)
    assert profile.needed_gib == pytest.approx(6.5)


@pytest.mark.parametrize(
    ("needed", "headroom", "site_types", "expected"),
    [
        (3.0, 0.15, ["1g.10gb", "2g.20gb", "3g.40gb"], "1g.10gb"),
        (8.0, 0.15, ["1g.10gb", "2g.20gb", "3g.40gb"], "2g.20gb"),  # 8 x 1.15 = 9.2 > 9.0 usable
        (8.0, 0.10, ["1g.10gb", "2g.20gb", "3g.40gb"], "1g.10gb"),  # 8 x 1.10 = 8.8 <= 9.0
        (30.0, 0.15, ["1g.10gb", "2g.20gb", "3g.40gb"], "3g.40gb"),
        (3.0, 0.15, ["a100_3g.40gb", "a100_1g.10gb"], "a100_1g.10gb"),  # site names with a prefix
        (60.0, 0.15, ["1g.10gb", "2g.20gb", "3g.40gb"], None),  # nothing fits: use a full GPU
        (20.0, 0.15, ["1g.35gb", "2g.35gb"], "1g.35gb"),  # H200 slices
    ],
)
def test_smallest_site_slice_with_headroom(profiler, needed, headroom, site_types, expected) -> None:
    assert profiler.smallest_site_slice(needed, headroom, site_types) == expected


def test_table_lists_every_profile_of_the_four_gpus(profiler) -> None:
    table = profiler.format_table(profiler.MemoryProfile(4 * profiler.GIB, profiler.GIB // 4), headroom=0.2)
    assert "4.25 GiB needed" in table and "5.10 GiB" in table
    for gpu in ("A100 40GB", "A100 80GB", "H100 80GB", "H200 141GB"):
        assert gpu in table
    rows = [line.split() for line in table.splitlines()[2:]]
    assert ["A100", "40GB", "1g.5gb", "4.4", "no"] in rows and ["A100", "40GB", "1g.10gb", "9.0", "yes"] in rows


def test_write_sets_the_site_default_and_keeps_comments(profiler, tmp_path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("# my cluster\npartition: gpu\ndefault_gpu: full:1  # old\nmig_types: [1g.10gb]\n")
    profiler.set_default_gpu(site, "1g.10gb")
    assert site.read_text() == "# my cluster\npartition: gpu\ndefault_gpu: mig:1g.10gb\nmig_types: [1g.10gb]\n"


def test_measuring_run_completes_and_combines_the_readings(profiler, example_package, monkeypatch) -> None:
    """The measuring run (fit + validate) on the CPU, with the CUDA memory readings replaced by fixed
    numbers: no GPU here, so this checks the run and the arithmetic, not real memory."""
    import torch.cuda as cuda

    gib = profiler.GIB
    readings = {
        "init": lambda: None,
        "reset_peak_memory_stats": lambda: None,
        "synchronize": lambda: None,
        "max_memory_reserved": lambda: 3 * gib,
        "memory_reserved": lambda: 2 * gib,
        "mem_get_info": lambda: (77 * gib, 80 * gib),  # 3 GiB in use: 2 by the allocator, 1 outside it
    }
    for name, reading in readings.items():
        monkeypatch.setattr(cuda, name, reading)
    monkeypatch.chdir(example_package)
    profile = profiler.measure(["--data.init_args.batch_size=64"], steps=3, accelerator="cpu")
    assert (profile.peak_reserved_bytes, profile.context_overhead_bytes) == (3 * gib, gib)
    assert profile.needed_gib == pytest.approx(4.0)
    # The states sharding splits, counted from the trained model and its AdamW: fp32 weights, their
    # gradients, two moments per weight and one step counter per tensor.
    from digits_mlp.kit import load_model_and_data

    model, _ = load_model_and_data([])
    weights = sum(p.numel() for p in model.parameters())
    tensors = len(list(model.parameters()))
    assert profile.model_state_bytes == 4 * weights * 4 + 4 * tensors


def test_sharding_splits_the_model_states_and_names_the_fewest_gpus(profiler) -> None:
    gib = profiler.GIB
    # 100 GiB peak of which 90 GiB model states; 1 GiB outside the allocator.
    profile = profiler.MemoryProfile(100 * gib, gib, model_state_bytes=90 * gib)
    assert [profile.sharded_gib(n) for n in (1, 2, 4, 8)] == [101.0, 56.0, 33.5, 22.25]
    assert profiler.fewest_gpus(profile, 131.0, 0.15) == 1  # H200: 101 x 1.15 = 116 <= 131
    assert profiler.fewest_gpus(profile, 76.0, 0.15) == 2  # 80 GB: 56 x 1.15 = 64 <= 76
    assert profiler.fewest_gpus(profile, 37.5, 0.15) == 8  # 40 GB: 33.5 x 1.15 = 38.5 > 37.5 with 4
    text = profiler.format_sharding(profile, 0.15)
    assert "model states 90.00 GiB" in text and "2 GPUs 56.00 GiB" in text and "on A100 40GB: 8 GPU(s)" in text
    tiny = profiler.MemoryProfile(10 * gib, 0, model_state_bytes=1 * gib)  # activations dominate: no count fits
    assert profiler.fewest_gpus(tiny, 9.0, 0.15) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the profile measures real GPU memory")
def test_measured_profile_covers_a_real_training_run(profiler, example_package, monkeypatch) -> None:
    import lightning.pytorch as pl
    from digits_mlp.kit import load_model_and_data

    monkeypatch.chdir(example_package)
    profile = profiler.measure([], steps=20)
    assert profile.peak_reserved_bytes > 0 and profile.context_overhead_bytes > 0
    model, data = load_model_and_data([])
    torch.cuda.reset_peak_memory_stats()
    pl.Trainer(accelerator="gpu", devices=1, max_epochs=3, logger=False, enable_checkpointing=False).fit(model, data)
    measured = torch.cuda.max_memory_reserved()
    predicted_mib, measured_mib = profile.peak_reserved_bytes / 2**20, measured / 2**20
    print(f"predicted peak {predicted_mib:.1f} MiB, measured over 3 epochs {measured_mib:.1f} MiB")
    assert measured <= profile.peak_reserved_bytes * 1.15


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the refusal is for a machine without one")
def test_profile_without_a_gpu_is_refused_in_one_line(profiler, example_package, monkeypatch, capsys) -> None:
    monkeypatch.chdir(example_package)
    assert profiler.profile_main([]) == 2
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err.startswith("error: no CUDA GPU is visible here, and `profile` measures GPU memory")
    assert "`srun --gres=gpu:1 --pty digits_mlp profile`" in printed.err and printed.err.count("\n") == 1
