"""Releases published with malware, which must never be installed. Managed by the copier-lightning template.

The list is `compromised_releases.yml` beside this module: a copy of the template's
`compromised-releases.yml`, the one place it is written (`copier update` brings new entries). The
project's pyproject.toml excludes every listed version of its dependencies (`!=`), its locks never
pin one, and `doctor` fails when one is installed: by then its code has run, so the fix is a clean
install and new credentials.
"""

from __future__ import annotations

from pathlib import Path

import yaml

RELEASES_FILE = Path(__file__).with_name("compromised_releases.yml")


def compromised_releases(path: Path = RELEASES_FILE) -> dict[str, list[dict[str, str]]]:
    """package name -> [{version, advisory, what}], from the list."""
    return yaml.safe_load(path.read_text()) or {}


def installed_compromised(installed: dict[str, str], path: Path = RELEASES_FILE) -> list[str]:
    """One line per installed release on the list: "lightning 2.6.2 (GHSA-...: what it does)"."""
    found = []
    for package, releases in compromised_releases(path).items():
        for release in releases:
            if installed.get(package) == str(release["version"]):
                found.append(f"{package} {release['version']} ({release['advisory']}: {release['what']})")
    return found
