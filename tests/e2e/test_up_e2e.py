"""`llmaas up` (what `make run` runs): a working base URL, and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from gateway.netutil import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]


def processes_mentioning(text: str) -> list[str]:
    listing = subprocess.run(
        ["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=True
    )
    return [line for line in listing.stdout.splitlines() if text in line and "ps -ww" not in line]


async def test_up_prints_a_base_url_that_answers_and_stops_cleanly(tmp_path: Path) -> None:
    engine_port = free_port()
    env = {**os.environ, "LLMAAS_METERING__SPILL_DIR": str(tmp_path / "usage-spill")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "up",
        "--port",
        str(free_port()),
        "--engine-port",
        str(engine_port),
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    try:
        printed = ""
        async with asyncio.timeout(300):
            while "Ctrl-C stops everything" not in printed:
                line = await proc.stdout.readline()
                assert line, f"llmaas up ended early:\n{printed}"
                printed += line.decode()
        match = re.search(r"base URL\s+(\S+)", printed)
        assert match is not None
        key = re.search(r"api key\s+(sk-llmaas-\S+)", printed)
        assert key is not None
        async with openai.AsyncOpenAI(base_url=match.group(1), api_key=key.group(1)) as client:
            reply = await client.chat.completions.create(
                model="smollm2-135m-instruct",
                messages=[{"role": "user", "content": "What is the capital of France?"}],
                temperature=0,
            )
        assert "Paris" in (reply.choices[0].message.content or "")
        assert processes_mentioning(f"--port {engine_port}")
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 60)
    assert proc.returncode == 0
    assert processes_mentioning(f"--port {engine_port}") == []
