"""Suite-wide: fast tests first, the end-to-end tests with real engines last; and the whole
session runs in a temporary home, so no test writes into the user's (a gateway's default spill
directory is under ~/.local/state: a record spilled there was once replayed by `make run`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from gateway.embedded.paths import default_home

REAL_HOME = pytest.StashKey[Path]()
ENV_BEFORE = pytest.StashKey[dict[str, str | None]]()
_TEMP_HOME = pytest.StashKey[Path]()
_REDIRECTED = ("HOME", "XDG_STATE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")


def pytest_configure(config: pytest.Config) -> None:
    """Before any test: HOME and the XDG state, data and config homes point into a temporary
    directory. Kept from the real home: the engine cache (the prepared vLLM venv and models,
    exported as LLMAAS_HOME) and XDG_CACHE_HOME, so the engines' own caches (vLLM, Hugging Face,
    torch, pip) stay warm and the e2e tests run as before."""
    env = os.environ
    config.stash[ENV_BEFORE] = {name: env.get(name) for name in (*_REDIRECTED, "LLMAAS_HOME")}
    real_home = Path.home()
    config.stash[REAL_HOME] = real_home
    engine_home = default_home(env).expanduser().resolve()
    cache = env.get("XDG_CACHE_HOME") or str(real_home / ".cache")
    home = Path(tempfile.mkdtemp(prefix="llmaas-test-home-"))
    config.stash[_TEMP_HOME] = home
    env.update(
        HOME=str(home),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_CACHE_HOME=cache,
        LLMAAS_HOME=str(engine_home),
    )
    # Hypothesis keeps its files (example database, constants cache) under the temporary home,
    # not in the checkout.
    set_hypothesis_home_dir(str(home / ".hypothesis"))


def pytest_unconfigure(config: pytest.Config) -> None:
    saved = config.stash.get(ENV_BEFORE, None)
    if saved is None:
        return
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    shutil.rmtree(config.stash[_TEMP_HOME], ignore_errors=True)


@pytest.fixture(scope="session")
def real_home(pytestconfig: pytest.Config) -> Path:
    """The user's home as it was before the session moved HOME away from it."""
    return pytestconfig.stash[REAL_HOME]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)
