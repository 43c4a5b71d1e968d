"""Reading the config: a YAML file and LLMAAS_* variables into Settings, and what is wrong with
them said for a person, one line per field by its path, never a value (it may be a secret)."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

from gateway.auth.jwks import key_file_errors
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
                loaded = yaml.load(file, Loader=_UniqueKeys) or {}  # (a SafeLoader)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        data.update(loaded)
    data.update(overrides)
    where = str(path) if path is not None else "settings"
    # An unknown variable is said with every other wrong field, not alone first (a second run
    # found the next one).
    said = [("environment", line) for line in unknown_variables(os.environ)]
    try:
        settings = Settings(**data)
    except SettingsError as exc:
        said.append(("environment", environment_error(exc)))
    except ValidationError as exc:
        said += [(_source(loc, where), line) for loc, line in config_errors(exc)]
    if not said:
        return settings
    sources = {source for source, _ in said}
    if len(sources) > 1:  # each line says where its value came from
        raise ConfigError("\n  ".join(["", *[f"{s}: {line}" for s, line in said]]))
    source = sources.pop()
    if len(said) == 1:
        raise ConfigError(f"{source}: {said[0][1]}")
    raise ConfigError("\n  ".join([f"{source}:", *[line for _, line in said]]))


def _source(loc: tuple[str | int, ...], where: str) -> str:
    """Where a wrong value came from: the LLMAAS_* variable that sets it (or a section of it),
    else `where` (the file). `LLMAAS_PORT=99999` was said as the file's `port`."""
    names = [part for part in loc if isinstance(part, str)]
    if loc and not isinstance(loc[0], str):
        return where
    upto = next((i for i, part in enumerate(loc) if not isinstance(part, str)), len(loc))
    set_ = {name.upper() for name in os.environ}
    for end in range(upto, 0, -1):
        variable = "LLMAAS_" + "__".join(names[:end]).upper()
        if variable in set_:
            return f"environment ({variable})"
    return where


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: the second `limits:` of a
    file took the place of the first, whose settings were dropped without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def invalid_configuration(command: str, exc: BaseException) -> str:
    """The line a command prints for a config error: on the line after "invalid
    configuration:", or (several lines, each indented) below it."""
    text = str(exc)
    said = text if text.startswith("\n") else " " + text
    return f"llmaas {command}: invalid configuration:{said}"


def usable_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """load_settings, and the JWT key files it names read and checked: what `llmaas serve` and
    `llmaas up` check before they start anything. Raises ConfigError (one line per wrong
    field, never a value) or OSError."""
    settings = load_settings(path, **overrides)
    jwt = settings.auth.jwt
    hmac = jwt.hmac_secret is not None and any(a.startswith("HS") for a in jwt.algorithms)
    errors = key_file_errors(
        jwt.public_key_file,
        jwt.jwks_file,
        jwt.jwks_ca_file,
        algorithms=jwt.algorithms,
        other_keys=hmac or jwt.jwks_url is not None,
    )
    if errors:
        raise ConfigError("\n  ".join(["", *errors]) if len(errors) > 1 else errors[0])
    return settings


# LLMAAS_* names read by the tools beside the gateway's settings: the client commands' gateway
# and key, the engine home, the config file handed to workers, the disconnect test's seed.
NOT_SETTINGS = frozenset(
    {"LLMAAS_URL", "LLMAAS_API_KEY", "LLMAAS_HOME", "LLMAAS_CONFIG_FILE", "LLMAAS_DISCONNECT_SEED"}
)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """LLMAAS_* variables that name no setting, each with what it may have meant: pydantic
    reads only the names of fields, so a misspelt top-level one (LLMAAS_UPSTREAM_TIMEOUT_S for
    LLMAAS_UPSTREAM__…) was ignored without a word, while one inside a section is refused."""
    fields = {name.upper(): info for name, info in Settings.model_fields.items()}
    sections = [n for n, info in fields.items() if _is_section(info.annotation)]
    said = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith("LLMAAS_") or upper in NOT_SETTINGS:
            continue
        top = upper.removeprefix("LLMAAS_").split("__", 1)[0]
        if top in fields:
            continue
        section = next((s for s in sections if top.startswith(s + "_")), None)
        if section is not None:
            guess = f"LLMAAS_{section}__{upper.removeprefix(f'LLMAAS_{section}_')}"
        else:
            close = difflib.get_close_matches(top, list(fields), n=1)
            guess = f"LLMAAS_{close[0]}" if close else ""
        hint = f" (did you mean {guess}?)" if guess else ""
        said.append(f"{name}: not a setting{hint}")
    return said


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


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


def config_errors(exc: ValidationError) -> list[tuple[tuple[str | int, ...], str]]:
    """Each error's place and line, `field.path: message` (`models[0].engines[1]`), never
    with the value given: it may be a secret."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        path = field_path(error["loc"])
        if error["type"] == "extra_forbidden":
            message = "not a setting (misspelt, or in the wrong section?)"
        else:
            message = error["msg"].removeprefix("Value error, ")
        lines.append((tuple(error["loc"]), f"{path}: {message}" if path else message))
    return lines
