"""What the fine-tuning tests share: a tenant stack with fine-tuning on (BASE is fine-tunable;
its weights directory is never read, no training runs here) and a small valid training file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import pytest_asyncio

from tests.integration.conftest import MODEL
from tests.integration.tenant_stack import TenantStack, tenant_stack

BASE = MODEL
MAX_ACTIVE = 2  # fine_tuning.max_active_jobs_per_tenant
EXAMPLE = {
    "messages": [
        {"role": "user", "content": "What is the secret word?"},
        {"role": "assistant", "content": "Quokkalantern."},
    ]
}
DATASET = b"".join(orjson.dumps(EXAMPLE) + b"\n" for _ in range(4))


@asynccontextmanager
async def finetune_stack(root: Path, **fine_tuning: Any) -> AsyncIterator[TenantStack]:
    """A tenant stack whose files and adapters live under `root`; `fine_tuning` adds settings."""
    settings = {
        "base_models": {BASE: str(root / "weights")},
        "max_active_jobs_per_tenant": MAX_ACTIVE,
        **fine_tuning,
    }
    async with tenant_stack(
        root, files={"dir": str(root / "files")}, fine_tuning=settings
    ) as stack:
        yield stack


async def upload_dataset(client: openai.AsyncOpenAI) -> str:
    """DATASET uploaded for fine-tuning: its file id."""
    made = await client.files.create(file=("train.jsonl", DATASET), purpose="fine-tune")
    return made.id


def ft_fixture(name: str, **fine_tuning: Any) -> Any:
    """A test module's `ft` fixture: its own finetune_stack under a directory named `name`."""

    @pytest_asyncio.fixture(scope="module", loop_scope="session")
    async def ft(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TenantStack]:
        async with finetune_stack(tmp_path_factory.mktemp(name), **fine_tuning) as stack:
            yield stack

    return ft
