"""FastAPI dependencies, as Annotated aliases so route signatures read like prose."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import Request

from gateway.auth.principal import Principal
from gateway.state import GatewayState


async def get_state(request: Request) -> GatewayState:
    # async: a plain def would be run in a thread pool on every request.
    state: GatewayState = request.app.state.gateway
    return state


Gateway = Annotated[GatewayState, Depends(get_state)]


async def authenticate(request: Request) -> Principal:
    state: GatewayState = request.app.state.gateway
    return await state.auth.principal(request.headers)


Caller = Annotated[Principal, Depends(authenticate)]
