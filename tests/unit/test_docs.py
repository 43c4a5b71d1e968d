"""README.md and docs/*.md against the code: what operators act on names things that exist."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import prometheus_client
from pydantic import BaseModel

from gateway.cli import _parser
from gateway.metrics import Metrics
from gateway.proxy.outcome import Outcome
from gateway.settings import Settings

DOCS = [Path("README.md"), *sorted(Path("docs").glob("*.md"))]
MODULE_MAP_SKIPS = {"__init__.py", "__main__.py"}


def _setting_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    paths = set()
    for name, field in model.model_fields.items():
        paths.add(prefix + name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            paths |= _setting_paths(field.annotation, f"{prefix}{name}.")
    return paths


def _is_code_path(dotted: str) -> bool:
    """`metering.settlement.lease_release`: a function of gateway/metering/settlement.py."""
    module, _, attribute = dotted.rpartition(".")
    try:
        return hasattr(importlib.import_module(f"gateway.{module}"), attribute)
    except ImportError:
        return False


def _found(doc: Path, text: str, start: int, what: str) -> str:
    return f"{doc}:{text.count(chr(10), 0, start) + 1}: {what}"


def test_every_setting_the_docs_name_exists() -> None:
    """`limits.lease_ttl_s`, `routing.strategy`: an operator sets what the docs name; a name
    that is not a setting is refused at start (a misspelt key is an error)."""
    known = _setting_paths(Settings)
    sections = set(Settings.model_fields)
    unknown = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for found in re.finditer(r"`([a-z_]+(?:\.[a-z_0-9]+)+)`", text):
            name = found.group(1)
            if name.split(".")[0] in sections and name not in known and not _is_code_path(name):
                unknown.append(_found(doc, text, found.start(), name))
    assert unknown == []


def test_every_llmaas_environment_variable_the_docs_name_is_read() -> None:
    """An LLMAAS_* variable is a setting (nested with __) or one the code reads by name."""
    known = _setting_paths(Settings)
    sources = "".join(p.read_text(encoding="utf-8") for p in Path("gateway").rglob("*.py"))
    sources += "".join(p.read_text(encoding="utf-8") for p in Path("tests").rglob("*.py"))
    unknown = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for found in re.finditer(r"LLMAAS_[A-Z0-9_]*[A-Z0-9]", text):
            name = found.group(0)
            setting = name.removeprefix("LLMAAS_").lower().replace("__", ".")
            if setting not in known and f'"{name}"' not in sources:
                unknown.append(_found(doc, text, found.start(), name))
    assert unknown == []


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    """Every option of a command and of its subcommands."""
    options = {o for action in parser._actions for o in action.option_strings}
    for child in _subcommands(parser).values():
        options |= _options(child)
    return options


def test_every_command_and_flag_in_the_readme_commands_table_exists() -> None:
    """README's Commands table: `llmaas files upload|list|show|delete …` names a command each,
    and `llmaas usage [--tenant --key-id …]` options that command takes."""
    readme = Path("README.md").read_text(encoding="utf-8")
    table = readme.split("## Commands", 1)[1].split("\n\n", 2)[1]
    commands = _subcommands(_parser())
    missing = []
    for found in re.finditer(r"`llmaas ([a-z]+)((?: [a-z|\\]+)?)([^`]*)`", table):
        name, subs = found.group(1), found.group(2).strip().replace("\\", "")
        if name not in commands:
            missing.append(name)
            continue
        children = _subcommands(commands[name])
        missing += [f"{name} {s}" for s in subs.split("|") if subs and s not in children]
        flags = re.findall(r"--[a-z-]+", found.group(3))
        missing += [f"{name} {f}" for f in flags if f not in _options(commands[name])]
    assert len(re.findall(r"`llmaas ", table)) >= 8
    assert missing == []


def _module_map() -> tuple[set[str], set[str]]:
    """The modules docs/architecture.md's module map names, and the folders it names whole."""
    text = Path("docs/architecture.md").read_text(encoding="utf-8")
    block = text.split("## Module map (as built)", 1)[1].split("```", 2)[1]
    named: set[str] = set()
    whole: set[str] = set()
    folder = ""
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        entry = line.strip()
        if indent == 2 and re.match(r"[a-z_]+/( |$)", entry):
            folder, _, about = entry.partition("/")
            if about.strip():
                whole.add(f"gateway/{folder}/")
            folder += "/"
            continue
        if indent not in (2, 4):
            continue
        folder = "" if indent == 2 else folder
        files = re.match(r"(?:[\w/]+\.(?:py|lua)(?:, )?)+", entry)
        if files:
            named |= {f"gateway/{folder}{name}" for name in files.group(0).split(", ")}
        named |= {f"gateway/{folder}{name}" for name in re.findall(r"over ([\w/]+\.py)", entry)}
        named |= {f"gateway/{folder}{name}" for name in re.findall(r"\(([\w/]+\.py)", entry)}
    return named, whole


def test_the_architecture_module_map_names_every_module_and_only_modules() -> None:
    named, whole = _module_map()
    modules = {
        str(p)
        for p in Path("gateway").rglob("*")
        if p.suffix in (".py", ".lua") and p.name not in MODULE_MAP_SKIPS
    }
    not_named = sorted(m for m in modules - named if not m.startswith(tuple(whole)))
    assert not_named == []
    assert sorted(named - modules) == []
    assert {"gateway/sim/", "gateway/embedded/"} <= whole


def test_every_metric_the_docs_name_is_served_with_those_labels() -> None:
    """`llmaas_engine_up{engine}`: an alert or a query copied from the docs finds the series."""
    served = {
        metric._name: set(metric._labelnames)
        for metric in vars(Metrics()).values()
        if isinstance(metric, prometheus_client.metrics.MetricWrapperBase)
    }
    wrong = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for found in re.finditer(r"\b(llmaas_[a-z_]+)(?:\{([a-z_,]*)\})?", text):
            name, labels = found.group(1), found.group(2)
            base = re.sub(r"_(total|bucket|count|sum)$", "", name)
            if name.endswith("_"):  # a family: `llmaas_engine_*`
                continue
            if base not in served:
                wrong.append(_found(doc, text, found.start(), name))
            elif labels is not None and set(labels.split(",")) != served[base]:
                wrong.append(_found(doc, text, found.start(), found.group(0)))
    assert wrong == []


def test_every_error_code_the_docs_name_is_one_the_gateway_sends() -> None:
    """`503 gateway_busy`, code `rate_limit_exceeded`: clients match on these strings."""
    sources = "".join(
        p.read_text(encoding="utf-8")
        for p in Path("gateway").rglob("*")
        if p.suffix in (".py", ".lua")
    )
    named, unknown = 0, []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for found in re.finditer(r"(?:\b[45]\d\d |\bcodes? |\bcode: )`([a-z_]+)`", text):
            named += 1
            code = found.group(1)
            if f'"{code}"' not in sources and f"'{code}'" not in sources:
                unknown.append(_found(doc, text, found.start(), code))
    assert named >= 30
    assert unknown == []


def test_the_usage_outcomes_readme_lists_are_every_outcome_a_record_can_have() -> None:
    """Billing filters records by outcome: README listed six and left out `slow_client`."""
    readme = Path("README.md").read_text(encoding="utf-8")
    section = readme.split("## Usage metering", 1)[1]
    listed = re.search(r"outcome \(([^)]*)\)", section)
    assert listed is not None
    no_record = {Outcome.ENGINE_UNAVAILABLE.value, Outcome.REFUSED.value, Outcome.SHED.value}
    recorded = {o.value for o in Outcome} - no_record
    assert set(re.findall(r"`([a-z_]+)`", listed.group(1))) == recorded


_UNITS = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "ms": 0.001}
# `name` (figure [unit]), not a range: `eject_max_s` (1 s … 60 s) names two settings' figures.
_BRACKETED_DEFAULT = re.compile(
    r"`([a-z_]+(?:\.[a-z_]+)*)` \(([0-9][0-9,.]*[0-9]|[0-9])(?:\s*(KiB|MiB|GiB|ms|s)\b)?"
)


def _setting(settings: BaseModel, dotted: str) -> object:
    """A setting's default by its path, or by its bare name in whichever section has it."""
    value: object = settings
    for part in dotted.split("."):
        value = getattr(value, part, None)
    if value is None and "." not in dotted:
        sections = [getattr(settings, name) for name in Settings.model_fields]
        value = next((getattr(s, dotted) for s in sections if hasattr(s, dotted)), None)
    return value


def test_every_default_readme_and_architecture_give_in_brackets_is_the_default() -> None:
    """`limits.lease_ttl_s` (30 s): an operator plans around the figure beside a setting's name
    (it was 600 s until 72d37e6). docs/deploy.md gives the chart's values, not these."""
    defaults = Settings(dev_mode=True)
    checked, wrong = 0, []
    for doc in (Path("README.md"), Path("docs/architecture.md")):
        text = doc.read_text(encoding="utf-8")
        for found in re.finditer(_BRACKETED_DEFAULT, text):
            value = _setting(defaults, found.group(1))
            a_range = text[found.end() :].lstrip().startswith("\u2026")
            if a_range or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            checked += 1
            figure = float(found.group(2).replace(",", "")) * _UNITS.get(found.group(3) or "", 1)
            if abs(float(value) - figure) > 1e-9:
                wrong.append(_found(doc, text, found.start(), f"{found.group(0)} is {value}"))
    assert checked >= 25
    assert wrong == []
