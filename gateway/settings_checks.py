"""The settings' checks across fields, each a list of what is wrong (empty: nothing): run all
together by Settings (settings.py), so that every one that fails is said at once."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.settings import Settings

# What a request with an image at max_data_url_bytes needs beside it within max_body_bytes:
# its JSON, the model, some text.
AROUND_AN_IMAGE = 16 * 1024


def wrong_across_fields(settings: Settings) -> list[str]:
    return [
        *_secrets_outside_dev_mode(settings),
        *_header_tokens(settings),
        *_a_body_holds_an_image(settings),
        *_fine_tuning_needs_files(settings),
        *_unique_model_names(settings),
    ]


def _secrets_outside_dev_mode(settings: Settings) -> list[str]:
    if settings.dev_mode:
        return []
    missing = [] if settings.admin_token else ["admin_token (LLMAAS_ADMIN_TOKEN)"]
    if settings.auth.required:
        missing += [] if settings.key_pepper else ["key_pepper (LLMAAS_KEY_PEPPER)"]
        missing += [] if settings.redis_url else ["redis_url (LLMAAS_REDIS_URL)"]
    wrong = []
    if missing:
        wrong.append(
            "required outside dev mode (dev_mode is for a machine of your own; keep the "
            "admin token and the key pepper in the environment): " + ", ".join(missing)
        )
    for name in ("admin_token", "key_pepper", "metrics_token"):
        value = getattr(settings, name)
        if value is not None and len(value) < 16:
            wrong.append(f"{name} must be at least 16 characters outside dev mode")
    return wrong


def _header_tokens(settings: Settings) -> list[str]:
    """Tokens a client sends in a header: HTTP reads a header's bytes as Latin-1, and clients
    (llmaas, curl, the SDKs) write UTF-8, so a token with ö in it never matched."""
    return [
        f"{name} must be printable ASCII: it is sent in a header"
        for name in ("admin_token", "metrics_token")
        if (value := getattr(settings, name)) is not None
        and not (value.isascii() and value.isprintable())
    ]


def _a_body_holds_an_image(settings: Settings) -> list[str]:
    """A body limit under the data: URL limit made a 413 of an image the policy accepts (the
    example config had 4 MiB against 8 MiB)."""
    image = settings.request_policy.max_data_url_bytes
    if settings.max_body_bytes >= image + AROUND_AN_IMAGE:
        return []
    return [
        f"max_body_bytes ({settings.max_body_bytes}) leaves less than "
        f"{AROUND_AN_IMAGE} bytes above request_policy.max_data_url_bytes ({image}) "
        "for the rest of a request: one with an image that policy accepts would be "
        "refused 413; raise the one or lower the other"
    ]


def _fine_tuning_needs_files(settings: Settings) -> list[str]:
    if settings.fine_tuning.base_models and not settings.files.enabled:
        return ["fine_tuning.base_models needs files.enabled: a job trains on an uploaded file"]
    return []


def _unique_model_names(settings: Settings) -> list[str]:
    names = [m.name for m in settings.models]
    dupes = sorted({n for n in names if names.count(n) > 1})
    return [f"models: duplicate model names {dupes}"] if dupes else []
