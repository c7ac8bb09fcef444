"""`doctor`: each check passes on a healthy setup and fails, with its fix, on a planted fault."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def doctor(example_package):
    from digits_mlp.kit.cluster import doctor

    return doctor


def test_python_version(doctor) -> None:
    assert doctor.check_python(">=3.10", "3.11.7").verdict == "PASS"
    wrong = doctor.check_python(">=3.12", "3.11.7")
    assert wrong.verdict == "FAIL" and "3.11.7 does not meet the project's >=3.12" in wrong.detail
    assert "python3.12 -m venv" in wrong.fix


def test_missing_or_mismatched_packages(doctor) -> None:
    assert doctor.check_packages(["pyyaml>=5", "torch>=2.4"]).verdict == "PASS"
    missing = doctor.check_packages(["pyyaml>=5", "no-such-package-here>=1", "pyyaml>=999"])
    assert missing.verdict == "FAIL" and "pip install -e" in missing.fix
    assert "no-such-package-here is not installed" in missing.detail and "is not >=999" in missing.detail


def test_installed_packages_against_the_lock(doctor, example_package, tmp_path) -> None:
    lock = tmp_path / "cpu.txt"
    lock.write_text("# variant: cpu\n# inputs-sha256: abc\npyyaml==6.0.2 \\\n    --hash=sha256:00\ntorch==2.13.0+cpu\n")
    installed = {"pyyaml": "6.0.2", "torch": "2.13.0+cpu", "digits-mlp": "0.1.0"}
    assert doctor.check_lock(lock, "abc", installed, "digits_mlp", "2.13.0+cpu").verdict == "PASS"
    differs = doctor.check_lock(lock, "abc", {**installed, "pyyaml": "5.4"}, "digits_mlp", "2.13.0+cpu")
    assert differs.verdict == "FAIL" and "pyyaml 5.4 (the lock pins 6.0.2)" in differs.detail
    assert differs.fix == f"pip install --require-hashes --no-deps -r {lock}"
    missing = doctor.check_lock(lock, "abc", {"torch": "2.13.0+cpu"}, "digits_mlp", "2.13.0+cpu")
    assert missing.verdict == "FAIL" and "pyyaml missing" in missing.detail
    stale = doctor.check_lock(lock, "another pyproject", installed, "digits_mlp", "2.13.0+cpu")
    assert stale.verdict == "FAIL" and "made from another pyproject.toml" in stale.detail
    assert stale.fix.startswith("digits_mlp lock")
    none = doctor.check_lock(None, "abc", installed, "digits_mlp", "2.13.0+cu126")
    assert none.verdict == "WARN" and "(cu126)" in none.detail and "digits_mlp lock" in none.fix
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / "cpu.txt").write_text("")
    assert doctor.lock_for_torch("2.13.0+cpu", tmp_path / "locks") == tmp_path / "locks" / "cpu.txt"
    assert doctor.lock_for_torch("2.13.0", tmp_path / "locks") is None  # PyPI's build: locks/cuda.txt


def test_torch_build_against_the_gpus_and_driver(doctor) -> None:
    assert doctor.check_torch_build("2.13.0+cpu", [], None).verdict == "PASS"
    cpu_on_gpu = doctor.check_torch_build("2.13.0+cpu", ["NVIDIA H100 80GB HBM3"], "550.54.15")
    assert cpu_on_gpu.verdict == "FAIL" and "CPU build" in cpu_on_gpu.detail and "whl/cu" in cpu_on_gpu.fix
    too_new = doctor.check_torch_build("2.5.1+cu124", ["NVIDIA A100-SXM4-40GB"], "470.82.01")
    assert too_new.verdict == "FAIL" and "needs an NVIDIA driver >= 525.60" in too_new.detail
    assert doctor.check_torch_build("2.5.1+cu124", ["NVIDIA A100-SXM4-40GB"], "550.54.15").verdict == "PASS"
    assert doctor.check_torch_build(None, [], None).verdict == "FAIL"
    # PyPI's torch has no local tag: the CUDA version comes from torch's own files
    untagged = doctor.check_torch_build("2.13.0", ["NVIDIA H100 80GB HBM3"], "550.54.15", cuda_version="13.0")
    assert untagged.verdict == "FAIL" and "needs an NVIDIA driver >= 580.65" in untagged.detail
    assert doctor.check_torch_build("2.13.0", ["NVIDIA H100"], "580.82.07", cuda_version="13.0").verdict == "PASS"


def test_slurm_site(doctor, example_package, tmp_path) -> None:
    site = example_package / "configs" / "slurm" / "site.yaml"
    assert doctor.check_site(site, None).verdict == "PASS"
    assert doctor.check_site(site, ["gpu", "debug"]).verdict == "PASS"
    unknown = doctor.check_site(site, ["a100", "debug"])
    assert unknown.verdict == "FAIL" and "partition gpu is not one of this cluster's: a100, debug" in unknown.detail
    broken = tmp_path / "site.yaml"
    broken.write_text("partition: [gpu\n")
    unparsable = doctor.check_site(broken, None)
    assert unparsable.verdict == "FAIL" and "does not parse" in unparsable.detail
    broken.write_text("partition: gpu\n")
    incomplete = doctor.check_site(broken, None)
    assert incomplete.verdict == "FAIL" and "missing the site setting(s): time" in incomplete.detail


def test_wandb_mode_and_key(doctor, tmp_path) -> None:
    online = "class_path: lightning.pytorch.loggers.WandbLogger\n  offline: false\n"
    assert doctor.check_wandb("class_path: CSVLogger", {}, tmp_path).verdict == "SKIP"
    no_key = doctor.check_wandb(online, {}, tmp_path)
    assert no_key.verdict == "FAIL" and no_key.fix == "wandb login"
    assert doctor.check_wandb(online, {"WANDB_API_KEY": "k"}, tmp_path).verdict == "PASS"
    assert doctor.check_wandb(online.replace("false", "true"), {}, tmp_path).verdict == "PASS"


def test_runs_directory(doctor, tmp_path) -> None:
    assert doctor.check_runs_dir(tmp_path / "runs").verdict == "PASS"
    (tmp_path / "a-file").write_text("not a directory")
    blocked = doctor.check_runs_dir(tmp_path / "a-file" / "runs")
    assert blocked.verdict == "FAIL" and "cannot write" in blocked.detail and "RUNS_DIR" in blocked.fix


def test_raw_data_against_its_record(doctor, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("data/raw").mkdir(parents=True)
    Path("data/raw/table.csv").write_text("a,b\n1,2\n")
    import hashlib

    digest = hashlib.sha256(Path("data/raw/table.csv").read_bytes()).hexdigest()
    Path("data/raw.sha256").write_text(f"{digest}  data/raw/table.csv\n")
    assert doctor.check_raw_data(Path("data/raw.sha256"), "pkg").verdict == "PASS"
    Path("data/raw/table.csv").write_text("a,b\n1,3\n")
    changed = doctor.check_raw_data(Path("data/raw.sha256"), "pkg")
    assert changed.verdict == "FAIL" and "changed: data/raw/table.csv" in changed.detail and "pkg data" in changed.fix
    Path("data/raw/table.csv").unlink()
    assert "missing: data/raw/table.csv" in doctor.check_raw_data(Path("data/raw.sha256"), "pkg").detail


def test_doctor_imports_neither_torch_nor_lightning(example_project, example_command, tmp_path) -> None:
    import subprocess

    project, _ = example_project
    probe = (
        "import sys; from digits_mlp.kit.cluster.doctor import doctor_main; code = doctor_main([]); "
        "assert not {'torch', 'lightning'} & set(sys.modules), sorted(m for m in sys.modules if 'torch' in m)[:5]"
    )
    done = subprocess.run(
        [str(Path(example_command[0]).parent / "python"), "-c", probe],
        cwd=project,
        capture_output=True,
        text=True,
        env={"RUNS_DIR": str(tmp_path / "runs"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode in (0, 1), done.stderr  # 1: raw data not fetched in this project yet
    assert "[PASS] python" in done.stdout and "AssertionError" not in done.stderr, done.stdout + done.stderr
    # installed from locks/cpu.txt (template_dev.make_project_venv): every pinned version is there
    assert "[PASS] lock: all " in done.stdout and "packages at the versions locks/cpu.txt pins" in done.stdout
