"""`llmaas up`: Redis, one vLLM engine with the bundled model, and the gateway, in one command.

Everything runs under one event loop; Ctrl-C (or SIGTERM) stops the gateway, then the engine's
whole process group, then the private Redis, so nothing is left behind.
"""

from __future__ import annotations

import os
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import uvicorn
import uvloop
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.auth.authenticate import DEV_PEPPER
from gateway.auth.issue import issue_key
from gateway.auth.store import AuthStore
from gateway.embedded.engine import EngineSpec, running_engine
from gateway.embedded.paths import CHAT_MODEL_NAME, CHAT_TOOL_PARSER, EmbeddedPaths
from gateway.embedded.prepare import prepare
from gateway.embedded.redis_server import running_redis
from gateway.netutil import free_port
from gateway.server import started
from gateway.settings import ModelRoute, Settings


def run_up(*, gateway_port: int, engine_port: int, home: Path | None) -> int:
    paths = EmbeddedPaths.resolve(home)
    try:
        uvloop.run(_up(paths, gateway_port, engine_port or free_port()))
    except KeyboardInterrupt:
        print("\nstopped.", file=sys.stderr)
    return 0


async def _up(paths: EmbeddedPaths, gateway_port: int, engine_port: int) -> None:
    ready = await prepare(paths)
    async with AsyncExitStack() as stack:
        redis_url = await stack.enter_async_context(
            running_redis(os.environ.get("LLMAAS_REDIS_URL"))
        )
        spec = EngineSpec(
            python=ready.engine_python,
            model_dir=ready.chat_model,
            served_name=CHAT_MODEL_NAME,
            port=engine_port,
            log_path=paths.logs / f"engine-{engine_port}.log",
            tool_parser=CHAT_TOOL_PARSER,
        )
        engine_url = await stack.enter_async_context(running_engine(spec))
        settings = Settings(
            port=gateway_port,
            redis_url=redis_url,
            dev_mode=True,
            models=[ModelRoute(name=CHAT_MODEL_NAME, engines=[engine_url])],
        )
        dev_key = await _dev_key(redis_url, (settings.key_pepper or DEV_PEPPER).encode())
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(settings),
                host=settings.host,
                port=gateway_port,
                loop="none",
                http="httptools",
                log_level="warning",
                access_log=False,
            )
        )
        async with started(server) as serving:
            base = f"http://{settings.host}:{gateway_port}"
            print(banner(base, redis_url, spec, dev_key, settings.admin_token or ""), flush=True)
            await serving


async def _dev_key(redis_url: str, pepper: bytes) -> str:
    """A key for the tenant `dev`, shown once in the banner."""
    redis = Redis.from_url(redis_url)
    try:
        _, key = await issue_key(AuthStore(redis), pepper, tenant="dev", name="llmaas up")
    finally:
        await redis.aclose()
    return key


def banner(base: str, redis_url: str, spec: EngineSpec, key: str, admin_token: str) -> str:
    return f"""
llmaas is up.
  base URL   {base}/v1
  model      {CHAT_MODEL_NAME}  (vLLM on {spec.url}, log {spec.log_path})
  redis      {redis_url}
  api key    {key}   (tenant "dev")
  admin      LLMAAS_ADMIN_TOKEN={admin_token}   (llmaas keys create --tenant NAME)

  curl -s {base}/v1/chat/completions -H 'authorization: Bearer {key}' \\
    -H 'content-type: application/json' -d '{{
    "model": "{CHAT_MODEL_NAME}",
    "messages": [{{"role": "user", "content": "What is the capital of France?"}}]}}'

  python - <<'PY'
from openai import OpenAI
client = OpenAI(base_url="{base}/v1", api_key="{key}")
question = [{{"role": "user", "content": "What is the capital of France?"}}]
reply = client.chat.completions.create(model="{CHAT_MODEL_NAME}", messages=question)
print(reply.choices[0].message.content)
PY

Ctrl-C stops everything.
"""
