"""Rendering: every logger choice, no Jinja left over, answers recorded exactly, bad answers refused."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from template_dev import EXAMPLE_ANSWERS, LOCK_INSTALL, TORCH_PIN, render

LOGGER_FILES = {
    "csv": ("lightning.pytorch.loggers.CSVLogger", None),
    "tensorboard": ("lightning.pytorch.loggers.TensorBoardLogger", '"tensorboard>='),
    "wandb": ("lightning.pytorch.loggers.WandbLogger", '"wandb>='),
}


def logger_entries(config: dict) -> list[dict]:
    """The config's trainer.logger entries: one mapping, or a list of them."""
    logger = config["trainer"]["logger"]
    return logger if isinstance(logger, list) else [logger]


def text_files(root: Path):
    for path in root.rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            yield path, path.read_text()


@pytest.mark.parametrize("logger", sorted(LOGGER_FILES))
def test_each_logger_renders_its_config_and_dependency(template_repo: Path, tmp_path: Path, logger: str) -> None:
    answers = render(template_repo, tmp_path / "project", logger=logger, package_name=f"digits_{logger}")
    project = tmp_path / "project"
    logger_class, _ = LOGGER_FILES[logger]

    config = yaml.safe_load((project / "configs" / "default.yaml").read_text())
    loggers = {entry["class_path"]: entry for entry in logger_entries(config)}
    assert logger_class in loggers
    # CSV files always: reproduce's figures and the cards read runs/<run>/logs/metrics.csv.
    assert "lightning.pytorch.loggers.CSVLogger" in loggers
    assert config["model"]["class_path"] == f"digits_{logger}.model.DigitsClassifier"
    pyproject = (project / "pyproject.toml").read_text()
    for other, (_, other_dependency) in LOGGER_FILES.items():
        if other_dependency:
            assert (other_dependency in pyproject) == (other == logger)
    assert (project / "src" / answers["package_name"] / "kit" / "training" / "lightning_cli.py").is_file()


@pytest.mark.parametrize("logger", sorted(LOGGER_FILES))
def test_no_jinja_left_in_any_rendered_file(template_repo: Path, tmp_path: Path, logger: str) -> None:
    render(template_repo, tmp_path / "project", logger=logger)
    leftovers = [
        str(path.relative_to(tmp_path))
        for path, text in text_files(tmp_path / "project")
        if "{{" in text or "{%" in text or path.suffix == ".jinja"
    ]
    assert leftovers == []


@pytest.mark.parametrize(
    "answers",
    [
        {},
        {
            "logger": "tensorboard",
            "python_version": "3.12",
            "package_name": "mnist_probe",
            "project_name": "MNIST probe",
        },
        {"logger": "wandb", "wandb_project": "digits", "wandb_entity": "my-lab", "wandb_online": True},
    ],
    ids=["defaults", "tensorboard", "wandb"],
)
def test_answers_file_records_exactly_the_answers_given(template_repo: Path, tmp_path: Path, answers: dict) -> None:
    given = render(template_repo, tmp_path / "project", **answers)
    recorded = yaml.safe_load((tmp_path / "project" / ".copier-answers.yml").read_text())
    assert recorded.pop("_src_path") == str(template_repo)
    assert recorded.pop("_commit")
    assert recorded == given


def test_wandb_is_offline_unless_the_user_opts_in(template_repo: Path, tmp_path: Path) -> None:
    render(template_repo, tmp_path / "offline", logger="wandb")
    render(template_repo, tmp_path / "online", logger="wandb", wandb_online=True)
    for name, offline in (("offline", True), ("online", False)):
        config = yaml.safe_load((tmp_path / name / "configs" / "default.yaml").read_text())
        wandb = next(e for e in logger_entries(config) if e["class_path"].endswith("WandbLogger"))
        assert wandb["init_args"]["offline"] is offline


def test_package_name_is_derived_from_the_project_name(template_repo: Path, tmp_path: Path) -> None:
    from copier import run_copy

    data = {k: v for k, v in EXAMPLE_ANSWERS.items() if k != "package_name"}
    run_copy(
        str(template_repo),
        tmp_path / "p",
        data={**data, "project_name": "Protein Folding-2"},
        defaults=True,
        vcs_ref="HEAD",
        quiet=True,
    )
    assert (tmp_path / "p" / "src" / "protein_folding_2" / "cli.py").is_file()


@pytest.mark.parametrize(
    ("question", "answer", "message"),
    [
        ("package_name", "my-package", "is not a valid package name"),
        ("package_name", "my package", "is not a valid package name"),
        ("package_name", "2fast", "is not a valid package name"),
        ("package_name", "torch", "would shadow"),
        ("package_name", "random", "would shadow"),
        ("project_name", "", "must not be empty"),
        ("project_name", "   ", "must not be empty"),
        ("python_version", "3.9", "Python 3.9 is not supported"),
        ("python_version", "three", "is not supported"),
        ("author_email", "jane-at-example", "does not look like an e-mail address"),
    ],
)
def test_bad_answers_are_refused_with_the_validator_message(
    template_repo: Path, tmp_path: Path, question: str, answer: str, message: str
) -> None:
    with pytest.raises(ValueError, match=f"(?s)Validation error for question '{question}'.*{message}"):
        render(template_repo, tmp_path / "project", **{question: answer})
    assert not (tmp_path / "project" / "pyproject.toml").exists()  # nothing half-written


def test_an_unknown_logger_is_refused_with_the_choices(template_repo: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Invalid choice for 'logger': 'mlflow' is not in"):
        render(template_repo, tmp_path / "project", logger="mlflow")


def test_the_words_after_copy_agree_with_the_readme(
    template_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from copier import run_copy

    run_copy(str(template_repo), tmp_path / "p", data=EXAMPLE_ANSWERS, defaults=True, quiet=False, unsafe=False)
    words = capsys.readouterr().err
    readme = (tmp_path / "p" / "README.md").read_text()
    # The same install in both: from the lock (Python 3.11), else torch first and pinned as torch-pin.txt
    # says (a bare `pip install torch` pulls a multi-GB CUDA build).
    assert f"{shlex.join(LOCK_INSTALL)} && pip install --no-deps -e ." in words
    assert f"{shlex.join(LOCK_INSTALL)}\npip install --no-deps -e .\n" in readme
    assert f"pip install {TORCH_PIN}\n" in readme  # the way without a lock
    sections = re.findall(r'README.md, "([^"]+)"', words)
    assert sections, words
    for section in sections:
        assert f"\n## {section}\n" in readme, f"the words after copy point to a README section {section!r} it lacks"


@pytest.mark.parametrize("python", ["3.11", "3.12"])
def test_ci_workflow_installs_the_lock_and_runs_the_readme_checks(template_repo: Path, tmp_path: Path, python) -> None:
    """From the CPU lock where the template ships one (Python 3.11); otherwise torch first, pinned."""
    render(template_repo, tmp_path / "p", python_version=python)
    workflow = yaml.safe_load((tmp_path / "p" / ".github" / "workflows" / "tests.yml").read_text())
    steps = [step.get("run", "") for step in workflow["jobs"]["tests"]["steps"]]
    install = next(step for step in steps if "pip install" in step)
    if python == "3.11":
        assert f"{shlex.join(LOCK_INSTALL)}\npip install --no-deps -e ." in install
        assert "digits_mlp lock --check" in steps and (tmp_path / "p" / "locks" / "cpu.txt").is_file()
    else:
        assert install.index(f"pip install {TORCH_PIN} ") < install.index('pip install -e ".[example,dev]"')
        assert sorted(path.name for path in (tmp_path / "p").glob("locks/*")) == ["cuda.txt"]  # the GPU build's
        assert "digits_mlp lock --check" in steps
    readme = (tmp_path / "p" / "README.md").read_text()
    test_section = readme.split("\n## Test\n")[1].split("\n## ")[0]
    for command in re.findall(r"^(\S.*)$", test_section.split("```bash\n")[1].split("```")[0], flags=re.M):
        assert command in steps, f"the README's test command {command!r} is not a CI step"
