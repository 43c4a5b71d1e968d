"""Small JSON responses for the non-proxied endpoints."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from gateway.errors import InvalidRequest


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def page_response(data: list[dict[str, Any]], more: bool) -> Response:
    """A page of a list, as OpenAI's cursor pages are: its objects, the ids of the first and
    the last (the next page's `after`), and whether more follow."""
    return json_response(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }
    )


def unknown_cursor(after: str | None, what: str) -> InvalidRequest:
    """The answer for an `after` that names no `what` of the listing."""
    return InvalidRequest(
        f"Invalid 'after': no {what} {after[:64] if after else ''!r} in this listing.",
        param="after",
        code="invalid_value",
    )
