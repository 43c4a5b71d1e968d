"""What an engine's GET /v1/models says it serves: base models and LoRA adapters (vLLM's cards)."""

from __future__ import annotations

from dataclasses import dataclass

MAX_CARDS = 10_000  # an engine listing more is answering something else; refuse it


@dataclass(frozen=True, slots=True)
class ServedModel:
    id: str
    parent: str | None = None  # vLLM lists a LoRA adapter with parent = its base model
    max_model_len: int | None = None

    @property
    def is_adapter(self) -> bool:
        return self.parent is not None


def parse_model_list(payload: object) -> tuple[ServedModel, ...]:
    """vLLM's `{"object": "list", "data": [cards]}`; ValueError when it is not that shape.

    Cards without a string id are skipped; unknown fields are ignored.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise ValueError("expected a JSON object with a 'data' list")
    data: list[object] = payload["data"]
    if len(data) > MAX_CARDS:
        raise ValueError(f"more than {MAX_CARDS} model cards")
    cards = (_card(item) for item in data)
    seen: dict[str, ServedModel] = {}
    for card in cards:
        if card is not None:
            seen.setdefault(card.id, card)
    return tuple(seen.values())


def _card(item: object) -> ServedModel | None:
    if not isinstance(item, dict):
        return None
    model_id, parent, length = item.get("id"), item.get("parent"), item.get("max_model_len")
    if not isinstance(model_id, str) or not model_id or len(model_id) > 512:
        return None
    return ServedModel(
        model_id,
        parent if isinstance(parent, str) and parent else None,
        length if isinstance(length, int) and not isinstance(length, bool) and length > 0 else None,
    )
