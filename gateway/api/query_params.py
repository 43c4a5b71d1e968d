"""A query parameter is given once: given twice, which one counts was the framework's silent
choice (FastAPI keeps the last: `group_by=day&group_by=model` grouped by model alone, and
`purpose=fine-tune&purpose=batch` listed batch files), so it is a 400 naming it."""

from __future__ import annotations

from fastapi import Request

from gateway.errors import InvalidRequest


async def single_valued_query(request: Request) -> None:
    """The app's dependency on every route FastAPI serves (the hot routes read no query); a
    `name[]` parameter is a list, given once per item (the SDK's `include[]=a&include[]=b`,
    Prometheus' `name[]`). Async: a plain function would run in a worker thread."""
    items = request.query_params.multi_items()
    if len(items) < 2:
        return
    seen: set[str] = set()
    for name, _ in items:
        if name in seen and not name.endswith("[]"):
            raise InvalidRequest(
                f"The query parameter '{name}' is given more than once; give it once "
                "(a list as one comma-separated value where the parameter takes one).",
                param=name,
                code="duplicate_parameter",
            )
        seen.add(name)
