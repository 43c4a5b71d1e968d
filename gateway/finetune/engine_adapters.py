"""Loading and unloading LoRA adapters on a running vLLM engine (started with LoRA on:
gateway/embedded/engine.py `max_loras`), so a fine-tuned model is served without a restart.

Both calls are idempotent, as a worker that retries after a crash needs: loading an adapter
already loaded from the same path succeeds, and unloading one the engine does not hold
succeeds (vLLM answers 400 and 404 for those)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

TIMEOUT_S = 60.0  # loading reads the adapter's weights (0.15 s for a 3.7 MB rank-8 adapter)
_ALREADY_LOADED = "has already been loaded"  # vLLM's 400 when the name is taken
_NOT_LOADED = "cannot be found"  # vLLM's 404 when it holds no adapter of that name


class AdapterError(RuntimeError):
    """The engine refused: `status` is its HTTP status, `message` its own words."""

    def __init__(self, action: str, name: str, status: int, message: str) -> None:
        super().__init__(f"engine could not {action} LoRA adapter {name!r} ({status}): {message}")
        self.status = status
        self.message = message


async def load_adapter(
    session: aiohttp.ClientSession, engine_url: str, name: str, path: str
) -> None:
    """Serve the adapter at `path` (a directory the engine can read) as model `name`."""
    body = {"lora_name": name, "lora_path": path}
    status, message = await _post(session, f"{engine_url}/v1/load_lora_adapter", body)
    if status == 200:
        return
    if status == 400 and _ALREADY_LOADED in message:
        if await _loaded_from(session, engine_url, name) == path:
            return
        message += f" (from another path than {path})"
    raise AdapterError("load", name, status, message)


async def unload_adapter(session: aiohttp.ClientSession, engine_url: str, name: str) -> None:
    """Stop serving model `name`; requests naming it then get 404."""
    body = {"lora_name": name}
    status, message = await _post(session, f"{engine_url}/v1/unload_lora_adapter", body)
    if status == 200 or (status == 404 and _NOT_LOADED in message):
        return
    raise AdapterError("unload", name, status, message)


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, str]) -> tuple[int, str]:
    """The status and the engine's message: vLLM's error text, else the raw body."""
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with session.post(url, json=body, timeout=timeout) as resp:
        text = await resp.text()
        if resp.status == 200:
            return 200, text
        return resp.status, _error_message(text, resp.status)


def _error_message(text: str, status: int) -> str:
    try:
        payload: Any = json.loads(text)
    except ValueError:
        return text.strip() or f"HTTP {status}"
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if payload.get("detail") == "Not Found":  # FastAPI's own 404: no such route
            return (
                "the engine has no LoRA endpoints (start it with LoRA on: "
                "--enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)"
            )
    return text.strip()


async def _loaded_from(session: aiohttp.ClientSession, engine_url: str, name: str) -> str | None:
    """The path the engine loaded adapter `name` from, per its /v1/models (`root`)."""
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with session.get(f"{engine_url}/v1/models", timeout=timeout) as resp:
        if resp.status != 200:
            return None
        cards = (await resp.json()).get("data", [])
    for card in cards:
        if card.get("id") == name:
            root = card.get("root")
            return root if isinstance(root, str) else None
    return None
