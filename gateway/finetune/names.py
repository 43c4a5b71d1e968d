"""Fine-tuned model names: `ft:<base>:<tenant>:<suffix>:<id>`, usable by that tenant only."""

from __future__ import annotations


def fine_tuned_name(base: str, tenant: str, suffix: str | None, job_id: str) -> str:
    return f"ft:{base}:{tenant}:{suffix or ''}:{job_id.removeprefix('ftjob-')[:12]}"


def owner_of(model: str) -> str | None:
    """The tenant a fine-tuned model belongs to; None for any other model name ("" for an
    `ft:` name that is malformed: nobody's)."""
    if not model.startswith("ft:"):
        return None
    parts = _parts(model)
    return "" if parts is None else parts[1]


def base_of(model: str) -> str | None:
    """The base model a fine-tuned model was trained on; None for any other model name (and
    for an `ft:` name that is malformed)."""
    parts = _parts(model) if model.startswith("ft:") else None
    return None if parts is None else parts[0]


def _parts(model: str) -> list[str] | None:
    """An `ft:` name's base, tenant, suffix and id; None when malformed. Read from the right:
    the base model's name may itself hold colons, the other parts never do."""
    parts = model[3:].rsplit(":", 3)
    return parts if len(parts) == 4 and parts[0] else None
