"""LiteLLM's proxy as a benchmark peer: the same simulator behind it, started offline.

LiteLLM pins its own FastAPI, pydantic and openai, so it lives in a venv of its own under
$LLMAAS_HOME/bench (default ~/.cache/llmaas/bench), installed once; a stamp written only after
a successful install makes a half-finished one start again. The proxy runs with a master key
and no database (no DATABASE_URL), and with its cost-map download and telemetry off, since the
box has no internet.

    .venv/bin/python -m bench.litellm_peer   # install if needed, start, check one chat, stop
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import orjson

from bench.harness import Server, command, simulator
from gateway.embedded.paths import default_home
from gateway.netutil import free_port

VERSION = "1.100.5"
PIN = f"litellm[proxy]=={VERSION}"


def default_venv() -> Path:
    """Beside the engine venv, in $LLMAAS_HOME (kept by the test suite) or ~/.cache/llmaas."""
    return default_home(os.environ) / "bench" / "litellm-venv"


STAMP = ".llmaas-litellm"
MASTER_KEY = "sk-bench-litellm-0123456789"
START_TIMEOUT_S = 180.0  # importing litellm's proxy takes tens of seconds on a busy 2-core box
# Offline and quiet: the cost map ships inside the package, nothing phones home.
OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY": "False",
    "LITELLM_LOG": "ERROR",
    "LITELLM_MODE": "PRODUCTION",  # no .env loading
    "DISABLE_SCHEMA_UPDATE": "True",
    "NO_DOCS": "True",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


class LiteLLMError(RuntimeError):
    pass


def litellm_binary(venv: Path | None = None) -> Path:
    venv = venv or default_venv()
    return venv / "bin" / "litellm"


def is_installed(venv: Path | None = None) -> bool:
    venv = venv or default_venv()
    stamp = venv / STAMP
    return litellm_binary(venv).exists() and stamp.is_file() and stamp.read_text() == PIN


async def ensure_litellm(venv: Path | None = None) -> Path:
    """The proxy's executable, installing LiteLLM into its own venv first if needed."""
    venv = venv or default_venv()
    if is_installed(venv):
        return litellm_binary(venv)
    print(f"installing LiteLLM {VERSION} (once)...", file=sys.stderr, flush=True)
    python = venv / "bin" / "python"
    if not python.exists():
        await _run("create the venv", sys.executable, "-m", "venv", str(venv))
    await _run(
        f"install {PIN}",
        str(python),
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--progress-bar=off",
        "--quiet",
        PIN,
    )
    (venv / STAMP).write_text(PIN)
    return litellm_binary(venv)


async def _run(what: str, *argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        tail = err.decode(errors="replace")[-2000:]
        raise LiteLLMError(f"could not {what} (exit {proc.returncode}):\n{tail}")


def config_yaml(sim_url: str, model: str) -> str:
    """The simulator as an OpenAI-compatible upstream; a master key; no database."""
    return (
        "model_list:\n"
        f"  - model_name: {model}\n"
        "    litellm_params:\n"
        f"      model: openai/{model}\n"
        f"      api_base: {sim_url}/v1\n"
        "      api_key: sk-simulator-any\n"
        "litellm_settings:\n"
        "  set_verbose: false\n"
        "  json_logs: false\n"
        "  telemetry: false\n"
        "  turn_off_message_logging: true\n"
        "general_settings:\n"
        f"  master_key: {MASTER_KEY}\n"
        "  disable_spend_logs: true\n"
        "  disable_reset_budget: true\n"
    )


@asynccontextmanager
async def litellm_proxy(sim_url: str, model: str, tmp: Path) -> AsyncIterator[Server]:
    """LiteLLM's proxy in front of `sim_url`, ready: live, and a chat answered both ways."""
    binary = await ensure_litellm()
    config = tmp / "litellm-config.yaml"
    config.write_text(config_yaml(sim_url, model))
    port = free_port()
    argv = [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--num_workers", "1", "--telemetry", "False"]
    url = f"http://127.0.0.1:{port}"
    log = tmp / "litellm-stderr.log"
    try:
        async with command(
            argv,
            f"{url}/health/liveliness",
            _env(),
            timeout_s=START_TIMEOUT_S,
            stderr=log,
        ) as pid:
            await check_chat(url, model)
            yield Server(url, pid)
    except (TimeoutError, RuntimeError) as exc:
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise LiteLLMError(f"LiteLLM's proxy did not start: {exc}\n{tail}") from exc


def _env() -> dict[str, str]:
    # LiteLLM reads any DATABASE_URL set, even an empty one, as a database to use.
    if "DATABASE_URL" in os.environ:
        raise LiteLLMError("unset DATABASE_URL: the LiteLLM peer runs without a database")
    return {**OFFLINE_ENV, "STORE_MODEL_IN_DB": "False"}


async def check_chat(url: str, model: str) -> None:
    """One non-streaming and one streaming chat through the proxy; raise unless both work."""
    headers = {"authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"}
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for stream in (False, True):
            payload = orjson.dumps({**body, "stream": stream})
            async with http.post(
                f"{url}/v1/chat/completions", data=payload, headers=headers
            ) as resp:
                answer = await resp.read()
            done = answer.rstrip().endswith(b"data: [DONE]")
            if resp.status != 200 or (stream and not done):
                raise LiteLLMError(f"chat (stream={stream}) {resp.status}: {answer[:300]!r}")


async def smoke(model: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        async with simulator(model) as sim, litellm_proxy(sim, model, Path(tmp)) as proxy:
            return f"LiteLLM {VERSION} answered at {proxy.url} (pid {proxy.pid})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="bench-model")
    args = parser.parse_args()
    print(asyncio.run(smoke(args.model)))


if __name__ == "__main__":
    main()
