"""The base of every section of the gateway's config (gateway/settings.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

# A directory of the config: `~` is the home of the user the gateway runs as.
HomePath = Annotated[Path, AfterValidator(Path.expanduser)]


class Section(BaseModel):
    """A part of the config: a key it does not have is an error (a typo must not pass for a
    default), as at the top level."""

    model_config = ConfigDict(extra="forbid")
