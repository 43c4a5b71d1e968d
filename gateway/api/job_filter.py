"""The fine-tuning jobs listing's filter: OpenAI's `metadata[k]=v` (the jobs whose metadata has
k = v, all of them when several are given) and `metadata=null` (those without metadata), read
from the query and applied a page of the job index at a time."""

from __future__ import annotations

from typing import Literal

from starlette.requests import Request

from gateway.errors import InvalidRequest
from gateway.finetune.job_store import JobStore
from gateway.finetune.jobs import Job


def metadata_filter(request: Request) -> dict[str, str] | Literal["null"] | None:
    """`metadata[k]=v` pairs, or `metadata=null`; any other `metadata…` parameter is a 400
    naming it (a typo, `metadata[team=x`, listed every job)."""
    wanted: dict[str, str] = {}
    for name, value in request.query_params.items():
        if not name.startswith("metadata"):
            continue
        if name == "metadata" and value == "null":
            return "null"
        if len(name) > 10 and name.startswith("metadata[") and name.endswith("]"):
            wanted[name[9:-1]] = value
            continue
        raise InvalidRequest(
            f"Invalid query parameter '{name}': filter by `metadata[<key>]=<value>`, or "
            "`metadata=null` for jobs without metadata.",
            param=name,
            code="invalid_value",
        )
    return wanted or None


async def filtered_page(
    store: JobStore,
    tenant: str,
    limit: int,
    after: str | None,
    wanted: dict[str, str] | Literal["null"],
) -> tuple[list[Job], bool]:
    """Up to `limit` matching jobs after `after`, read a page of the index at a time."""
    found: list[Job] = []
    while True:
        jobs, more = await store.page(tenant, 100, after)
        for job in jobs:
            if (not job.metadata) if wanted == "null" else _has(job.metadata, wanted):
                if len(found) == limit:
                    return found, True
                found.append(job)
        if not more or not jobs:
            return found, False
        after = jobs[-1].id


def _has(metadata: dict[str, str] | None, wanted: dict[str, str]) -> bool:
    return metadata is not None and all(metadata.get(k) == v for k, v in wanted.items())
