"""The base of every section of the gateway's config (gateway/settings.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A part of the config: a key it does not have is an error (a typo must not pass for a
    default), as at the top level."""

    model_config = ConfigDict(extra="forbid")
