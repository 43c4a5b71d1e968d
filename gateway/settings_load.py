"""Reading the config: a YAML file and LLMAAS_* variables into Settings, and what is wrong with
them said for a person, one line per field by its path, never a value (it may be a secret)."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Hashable, Mapping
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
    loaded: Any = {}
    twice: list[str] = []  # keys given twice in the file, said with its other wrong fields
    if path is not None:
        try:
            with path.open(encoding="utf-8") as file:  # (YAML's errors then name the file)
                loader = _UniqueKeys(file)  # (a SafeLoader)
                try:
                    loaded = loader.get_single_data() or {}
                    twice = loader.twice
                finally:
                    loader.dispose()
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text: {_first_not_utf8(path)}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        data.update(loaded)
    data.update(overrides)
    where = str(path) if path is not None else "settings"
    # An unknown variable is said with every other wrong field, not alone first (a second run
    # found the next one).
    said = [("environment", line) for line in unknown_variables(os.environ)]
    said += [(where, line) for line in twice]
    try:
        settings = Settings(**data)
    except SettingsError as exc:
        said.append(("environment", environment_error(exc)))
    except ValidationError as exc:
        said += [(_source(loc, where, line, loaded), line) for loc, line in config_errors(exc)]
    if not said:
        return settings
    sources = {source for source, _ in said}
    if len(sources) > 1:  # each line says where its value came from
        raise ConfigError("\n  ".join(["", *[f"{s}: {line}" for s, line in said]]))
    source = sources.pop()
    if len(said) == 1:
        raise ConfigError(f"{source}: {said[0][1]}")
    raise ConfigError("\n  ".join([f"{source}:", *[line for _, line in said]]))


def _source(loc: tuple[str | int, ...], where: str, line: str, data: Mapping[str, Any]) -> str:
    """Where a wrong value came from: the LLMAAS_* variable that sets it (or a section of it),
    else `where` (the file). `LLMAAS_PORT=99999` was said as the file's `port`. A check across
    fields (`max_body_bytes` against `request_policy.max_data_url_bytes`) names the settings
    its line names that variables set, and the file if it set one of the others."""
    if loc and not isinstance(loc[0], str):
        return where
    upto = next((i for i, part in enumerate(loc) if not isinstance(part, str)), len(loc))
    names = [str(part) for part in loc[:upto]]
    set_ = {name.upper() for name in os.environ}
    for end in range(len(names), 0, -1):
        variable = _variable(names[:end])
        if variable in set_:
            return f"environment ({variable})"
    if _field(names) is not Settings and not _is_section(_field(names)):
        return where  # a field's own check: its value is the file's
    variables, in_file = [], False
    for named in _named_settings(names, line):
        if (variable := _variable(named)) in set_:
            variables += [variable] if variable not in variables else []
        else:
            in_file = in_file or _given(data, named)
    if not variables:
        return where
    environment = f"environment ({', '.join(variables)})"
    return f"{where} and {environment}" if in_file else environment


def _variable(path: list[str]) -> str:
    return "LLMAAS_" + "__".join(path).upper()


def _field(path: list[str]) -> Any:
    """The annotation at a path of settings (Settings itself for []), or None for no setting."""
    kind: Any = Settings
    for part in path:
        info = getattr(kind, "model_fields", {}).get(part)
        if info is None:
            return None
        kind = info.annotation
    return kind


def _named_settings(section: list[str], line: str) -> list[list[str]]:
    """The settings (not sections) a line names, dotted from the top (`files.max_file_bytes`)
    or from its section (`hmac_secret` in `auth.jwt`)."""
    named = []
    for word in re.findall(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*", line):
        parts = word.split(".")
        for path in (parts, [*section, *parts]):
            kind = _field(path)
            if kind is not None and not _is_section(kind) and path not in named:
                named.append(path)
                break
    return named


def _given(data: Mapping[str, Any], path: list[str]) -> bool:
    """Whether the file's mapping sets this path."""
    value: Any = data
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return False
        value = value[part]
    return True


def _first_not_utf8(path: Path) -> str:
    """Where the first byte that is not UTF-8 is (a latin-1 `é` in a comment): the decoder's
    own offset counts from the chunk YAML read, and its message shows the byte, which is never
    said (the file may hold a secret)."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        return f"line {line} (byte {exc.start}); save it as UTF-8"
    return "save it as UTF-8"  # (it decodes now: rewritten meanwhile)


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, noting each key given twice in one mapping (`twice`, one line each):
    the second `limits:` of a file took the place of the first, whose settings were dropped
    without a word. The file is read on, so that its other wrong fields are said with it."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.twice: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # (SafeLoader refuses it below, naming the line)
            if key in seen:
                line = key_node.start_mark.line + 1
                self.twice.append(f"line {line}: {key!r} is given twice")
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
    if settings.redis_url is not None:  # (metering on: what Redis does not take is spilled)
        errors += spill_dir_errors(settings.metering.spill_dir)
    if errors:
        raise ConfigError("\n  ".join(["", *errors]) if len(errors) > 1 else errors[0])
    return settings


def spill_dir_errors(path: Path) -> list[str]:
    """Why `metering.spill_dir` could not take a spill file (nothing made to find out): found
    only at the first spill, with Redis away, its settlements were lost (usage never billed)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        why = f"{existing} is not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        why = f"{existing} is not writable by this process"
    else:
        return []
    return [
        f"metering.spill_dir: {path} cannot hold spill files ({why}); usage Redis does not "
        "take would be lost"
    ]


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
            guess = _in_section(section, upper.removeprefix(f"LLMAAS_{section}_"))
        else:
            close = difflib.get_close_matches(top, list(fields), n=1)
            guess = f"LLMAAS_{close[0]}" if close else ""
        hint = f" (did you mean {guess}?)" if guess else ""
        said.append(f"{name}: not a setting{hint}")
    return said


def _in_section(section: str, rest: str) -> str:
    """The variable of `section`'s setting `rest` meant (LLMAAS_UPSTREAM_RESPONSE_TIMEOUT_S:
    one `_` for `__`), or the closest name it has: the guess was the name with `__`, whether
    or not that was a setting (LLMAAS_UPSTREAM_TIMEOUT had LLMAAS_UPSTREAM__TIMEOUT, which is
    not one either)."""
    fields = [name.upper() for name in _field([section.lower()]).model_fields]
    head = rest.split("__", 1)[0]
    if head in fields:
        return f"LLMAAS_{section}__{rest}"
    close = difflib.get_close_matches(head, fields, n=1)
    return f"LLMAAS_{section}__{close[0]}" if close else ""


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
    kind = _field([part.lower() for part in [path[0].removeprefix("LLMAAS_"), *path[1:]]])
    if kind is None:
        return False
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
        for line in message.split("\n"):  # (the checks across fields: one line each)
            lines.append((tuple(error["loc"]), f"{path}: {line}" if path else line))
    return lines
