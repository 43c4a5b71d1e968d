"""A stored file's metadata, and the OpenAI `file` object it is shown as."""

from __future__ import annotations

import secrets
from typing import Any

from pydantic import BaseModel, ConfigDict

FILE_ID_PATTERN = r"^file-[0-9a-f]{24}$"


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


class FileRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    tenant: str
    filename: str
    purpose: str
    bytes: int
    created_at: int  # Unix seconds
    lines: int | None = None  # examples in a checked fine-tune file

    def view(self) -> dict[str, Any]:
        """OpenAI's file object (its deprecated `status` always "processed": files are checked
        before they are stored)."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "expires_at": None,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }
