"""`copier update` on real projects: a throwaway template repository gets two tagged releases,
1.0.0 (this working tree) and 1.1.0 (a modified copy standing for the next release), and projects
made at 1.0.0 are updated to 1.1.0. No test depends on tags of this repository.
"""

from __future__ import annotations

import filecmp
import json
import re
from pathlib import Path

import pytest
import yaml
from copier import run_update

from template_dev import EXAMPLE_ANSWERS, commit_all, git, make_project_venv, render, run, snapshot_template

PACKAGE = EXAMPLE_ANSWERS["package_name"]
OLD, NEW = "1.0.0", "1.1.0"


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def add_migrations(copier_yml: Path, migrations: list[dict]) -> None:
    """Append to copier.yml's `_migrations` list (the file keeps its comments and layout)."""
    text = copier_yml.read_text()
    lines = yaml.safe_dump(migrations, sort_keys=False).replace("\n", "\n  ")
    marker = "_migrations:\n"
    assert marker in text, "copier.yml has no _migrations list to add to"
    copier_yml.write_text(text.replace(marker, marker + "  " + lines.rstrip() + "\n", 1))


def make_next_release(template: Path) -> None:
    """Commit and tag what stands for the next template release: edits, a moved file, a migration."""
    kit = template / "template" / "src" / "{{ package_name }}" / "kit"
    edit(kit / "runs" / "directory.py", '"""A run as a directory:', '"""A run as a directory (1.1.0):')
    edit(template / "template" / "README.md.jinja", "## Test\n", "## Test\n\nAll checks, as CI runs them:\n")
    # configs/default.yaml becomes configs/base.yaml (a move, with a before-migration) and changes a value.
    git(template, "mv", "template/configs/default.yaml.jinja", "template/configs/base.yaml.jinja")
    edit(template / "template" / "configs" / "base.yaml.jinja", "log_every_n_steps: 10", "log_every_n_steps: 20")
    edit(
        kit / "runs" / "identity.py",
        'DEFAULT_CONFIG = "configs/default.yaml"',
        'DEFAULT_CONFIG = "configs/base.yaml"',
    )
    script = ["{{ _copier_python }}", "{{ _copier_conf.src_path }}/migrations/move_path.py"]
    moved = ["configs/default.yaml", "configs/base.yaml"]
    migrations = [
        {
            "version": NEW,
            "when": "{{ _stage == 'before' }}",
            "command": [*script, "--stage", "before", "--template", "{{ _copier_conf.src_path }}", *moved],
        },
        {"version": NEW, "when": "{{ _stage == 'after' }}", "command": [*script, "--stage", "after", *moved]},
    ]
    add_migrations(template / "copier.yml", migrations)
    git(template, "add", "-A")
    git(template, "commit", "-q", "-m", "next release")
    git(template, "tag", NEW)


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> Path:
    """A template repository with tag 1.0.0 (the working tree) and tag 1.1.0 (the next release)."""
    template = snapshot_template(tmp_path_factory.mktemp("releases"))
    git(template, "tag", OLD)
    make_next_release(template)
    return template


def project_at_old_release(releases: Path, destination: Path, **answers) -> Path:
    render(releases, destination, vcs_ref=OLD, **answers)
    commit_all(destination, "Start from copier-lightning 1.0.0")
    return destination


def update(project: Path, **kwargs) -> None:
    run_update(str(project), overwrite=True, defaults=True, unsafe=True, quiet=True, **kwargs)


def tree(root: Path) -> set[str]:
    files = (path.relative_to(root) for path in root.rglob("*") if path.is_file())
    return {str(path) for path in files if ".git" not in path.parts}


def assert_same_files(updated: Path, fresh: Path) -> None:
    assert tree(updated) == tree(fresh)
    differing = [
        name
        for name in sorted(tree(fresh))
        if name != ".copier-answers.yml" and not filecmp.cmp(updated / name, fresh / name, shallow=False)
    ]
    assert differing == []
    without_commit = [
        [line for line in (root / ".copier-answers.yml").read_text().splitlines() if not line.startswith("_commit:")]
        for root in (updated, fresh)
    ]
    assert without_commit[0] == without_commit[1]


@pytest.mark.parametrize("example", ["digits", "finetune"])
def test_untouched_project_updated_equals_a_fresh_copy_of_the_new_release(
    releases: Path, tmp_path: Path, example: str
) -> None:
    project = project_at_old_release(releases, tmp_path / "updated", example=example)
    update(project)
    render(releases, tmp_path / "fresh", vcs_ref=NEW, example=example)
    assert_same_files(project, tmp_path / "fresh")
    assert yaml.safe_load((project / ".copier-answers.yml").read_text())["_commit"] == NEW
    assert "<<<<<<<" not in "".join(text for text in map(Path.read_text, map(project.joinpath, tree(project))))


def test_researcher_edits_survive_an_update(releases: Path, tmp_path: Path) -> None:
    project = project_at_old_release(releases, tmp_path / "project")
    src = project / "src" / PACKAGE
    edit(src / "model.py", "dropout: float = 0.1", "dropout: float = 0.25")
    edit(src / "data.py", '"""Stratified train', '"""My split. Stratified train')
    edit(project / "configs" / "default.yaml", "seed_everything: 42", "seed_everything: 7")
    edit(project / "configs" / "experiments" / "wide.yaml", "dropout: 0.3", "dropout: 0.4")
    with open(project / "README.md", "a") as stream:
        stream.write("\n## Notes\n\nThe val split of seed 0 is hard: expect 96 %.\n")
    (src / "augment.py").write_text('"""My own module."""\n')
    commit_all(project, "my edits")

    update(project)

    assert "dropout: float = 0.25" in (src / "model.py").read_text()
    assert '"""My split. Stratified train' in (src / "data.py").read_text()
    assert "dropout: 0.4" in (project / "configs" / "experiments" / "wide.yaml").read_text()
    assert (src / "augment.py").read_text() == '"""My own module."""\n'
    readme = (project / "README.md").read_text()
    assert "The val split of seed 0 is hard" in readme and "All checks, as CI runs them:" in readme
    # The template moved default.yaml to base.yaml and changed it; the user's edit moved with it.
    base = (project / "configs" / "base.yaml").read_text()
    assert "seed_everything: 7" in base and "log_every_n_steps: 20" in base
    assert not (project / "configs" / "default.yaml").exists()
    assert "(1.1.0)" in (src / "kit" / "runs" / "directory.py").read_text()
    assert "<<<<<<<" not in base + readme


def test_without_its_migration_a_moved_file_loses_the_edit(releases: Path, tmp_path: Path) -> None:
    """The reason for the migration: the same update minus the migration drops the user's edit."""
    without = tmp_path / "no-migration"
    git(tmp_path, "clone", "-q", str(releases), str(without))
    git(without, "tag", "-d", NEW)
    lines = (without / "copier.yml").read_text().splitlines(keepends=True)
    start = next(n for n, line in enumerate(lines) if line.startswith("_migrations:"))
    end = next(n for n in range(start + 1, len(lines)) if not lines[n].startswith(" "))  # the list's end
    (without / "copier.yml").write_text("".join(lines[:start] + lines[end:]))
    commit_all(without, "next release without its migration")
    git(without, "tag", NEW)
    project = project_at_old_release(without, tmp_path / "project")
    edit(project / "configs" / "default.yaml", "seed_everything: 42", "seed_everything: 7")
    commit_all(project, "my edit")

    update(project)

    assert "seed_everything: 7" not in (project / "configs" / "base.yaml").read_text()


def test_conflicting_edit_gives_inline_markers_and_pre_commit_refuses_it(releases: Path, tmp_path: Path) -> None:
    project = project_at_old_release(releases, tmp_path / "project")
    edit(project / "configs" / "default.yaml", "log_every_n_steps: 10", "log_every_n_steps: 5")
    commit_all(project, "log more often")

    update(project)

    base = (project / "configs" / "base.yaml").read_text()
    assert re.search(r"<<<<<<< before updating\n.*log_every_n_steps: 5.*=======\n.*log_every_n_steps: 20", base, re.S)
    assert "UU configs/base.yaml" in git(project, "status", "--porcelain")

    venv = make_project_venv(project, standalone=False)
    git(project, "add", "-A")
    hooks = run([str(venv.script("pre-commit")), "run", "--all-files"], cwd=project, check=False, env=venv.env)
    assert hooks.returncode != 0
    assert re.search(r"refuse unresolved conflict markers.*Failed", hooks.stdout)
    assert "configs/base.yaml" in hooks.stdout


def test_pre_commit_refuses_rejected_hunk_files(releases: Path, tmp_path: Path) -> None:
    project = project_at_old_release(releases, tmp_path / "project")
    venv = make_project_venv(project, standalone=False)
    (project / "configs" / "default.yaml.rej").write_text("@@ -1 +1 @@\n-a\n+b\n")
    git(project, "add", "-A")
    hooks = run([str(venv.script("pre-commit")), "run", "--all-files"], cwd=project, check=False, env=venv.env)
    assert hooks.returncode != 0 and "default.yaml.rej" in hooks.stdout


@pytest.mark.parametrize(("before", "after"), [("csv", "wandb"), ("wandb", "csv"), ("csv", "tensorboard")])
def test_changing_the_logger_on_update_adds_and_removes_the_right_files(
    releases: Path, tmp_path: Path, before: str, after: str
) -> None:
    project = project_at_old_release(releases, tmp_path / "updated", logger=before)
    update(project, data={"logger": after})
    render(releases, tmp_path / "fresh", vcs_ref=NEW, logger=after)
    assert_same_files(project, tmp_path / "fresh")
    assert (project / "WANDB.md").exists() == (after == "wandb")


def test_updated_project_passes_its_own_tests(releases: Path, tmp_path: Path) -> None:
    project = project_at_old_release(releases, tmp_path / "project")
    edit(project / "configs" / "default.yaml", "seed_everything: 42", "seed_everything: 7")
    commit_all(project, "my edit")
    update(project)
    commit_all(project, "update to 1.1.0")
    venv = make_project_venv(project, standalone=False)
    done = run([str(venv.python), "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project)
    assert re.search(r"\d+ passed", done.stdout) and "failed" not in done.stdout


def test_update_of_a_dirty_project_is_refused(releases: Path, tmp_path: Path) -> None:
    project = project_at_old_release(releases, tmp_path / "project")
    edit(project / "configs" / "default.yaml", "seed_everything: 42", "seed_everything: 7")  # not committed
    before = (project / "configs" / "default.yaml").read_text()
    with pytest.raises(Exception, match="Destination repository is dirty; cannot continue"):
        update(project)
    assert (project / "configs" / "default.yaml").read_text() == before
    assert yaml.safe_load((project / ".copier-answers.yml").read_text())["_commit"] == OLD


def test_check_update_reports_the_new_release(releases: Path, tmp_path: Path) -> None:
    project = project_at_old_release(releases, tmp_path / "project")
    venv = make_project_venv(project, standalone=False)
    done = run([str(venv.script("copier")), "check-update", "--output-format", "json"], cwd=project, env=venv.env)
    report = json.loads(done.stdout)
    assert report == {"update_available": True, "current_version": OLD, "latest_version": NEW}
