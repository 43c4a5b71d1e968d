"""What "auto" means for a job's hyperparameters, given its dataset."""

from __future__ import annotations

import math

from gateway.finetune.jobs import Hyperparameters
from gateway.finetune_settings import FineTuningSettings

TARGET_STEPS = 30  # small datasets get enough epochs to learn from (4 examples: 25 steps do)
MAX_AUTO_EPOCHS = 10


def resolve(
    given: Hyperparameters, examples: int, settings: FineTuningSettings
) -> tuple[Hyperparameters, float]:
    """The hyperparameters with every "auto" chosen, and the learning rate they give."""
    batch = given.batch_size if given.batch_size != "auto" else min(8, max(1, examples // 32))
    steps_per_epoch = math.ceil(examples / batch)
    epochs = (
        given.n_epochs
        if given.n_epochs != "auto"
        else max(1, min(MAX_AUTO_EPOCHS, math.ceil(TARGET_STEPS / steps_per_epoch)))
    )
    multiplier = given.learning_rate_multiplier if given.learning_rate_multiplier != "auto" else 1.0
    rank = given.lora_rank if given.lora_rank != "auto" else settings.lora_rank
    resolved = Hyperparameters(
        n_epochs=epochs, batch_size=batch, learning_rate_multiplier=multiplier, lora_rank=rank
    )
    return resolved, settings.learning_rate * multiplier
