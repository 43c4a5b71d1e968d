"""Reading the config: a YAML file and LLMAAS_* variables into Settings, and what is wrong with
them said for a person, one line per field by its path, never a value (it may be a secret)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

from gateway.errors import field_path
from gateway.settings import Settings


class ConfigError(ValueError):
    """A config that cannot be used, said for a person: each wrong field by its path."""


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from an optional YAML file; LLMAAS_* variables override it. Raises
    ConfigError (a file that cannot be read or parsed, or a wrong value) or OSError."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open(encoding="utf-8") as file:  # (YAML's errors then name the file)
                loaded = yaml.safe_load(file) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        data.update(loaded)
    data.update(overrides)
    where = str(path) if path is not None else "settings"
    try:
        return Settings(**data)
    except SettingsError as exc:
        raise ConfigError(f"{where}: {environment_error(exc)}") from None
    except ValidationError as exc:
        lines = config_errors(exc)
        if len(lines) == 1:
            raise ConfigError(f"{where}: {lines[0]}") from None
        raise ConfigError("\n  ".join([f"{where}:", *lines])) from None


def environment_error(exc: SettingsError) -> str:
    """pydantic-settings refused an LLMAAS_* variable it reads as JSON (a list, a mapping, or a
    section given whole): the field and the variable, never its value."""
    found = re.search(r'field "(\w+)"', str(exc))
    field = found.group(1).upper() if found else ""
    names = [
        name
        for name in sorted(os.environ)
        if (path := name.upper().split("__"))[0] == f"LLMAAS_{field}" and _json_setting(path)
    ]
    return (
        f"{field.lower()}: {' or '.join(names) or 'LLMAAS_' + field} is not valid JSON (an "
        "environment variable gives a list or a mapping as JSON: LLMAAS_AUTH__JWT__ALGORITHMS="
        "'[\"RS256\"]')"
    )


def _json_setting(path: list[str]) -> bool:
    """Whether the setting of LLMAAS_A__B (path ["LLMAAS_A", "B"]) is a list, a mapping or a
    section: what the environment gives as JSON."""
    kind: Any = Settings
    for part in [path[0].removeprefix("LLMAAS_"), *path[1:]]:
        fields = {name.upper(): f for name, f in getattr(kind, "model_fields", {}).items()}
        if part not in fields:
            return False
        kind = fields[part].annotation
    kinds = get_args(kind) if get_origin(kind) in (Union, UnionType) else (kind,)
    return any(
        get_origin(k) in (list, dict) or (isinstance(k, type) and issubclass(k, BaseModel))
        for k in kinds
    )


def config_errors(exc: ValidationError) -> list[str]:
    """Each error as `field.path: message` (`models[0].engines[1]`; a LLMAAS_* variable is
    named by the same path), never with the value given: it may be a secret."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        path = field_path(error["loc"])
        if error["type"] == "extra_forbidden":
            message = "not a setting (misspelt, or in the wrong section?)"
        else:
            message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {message}" if path else message)
    return lines
