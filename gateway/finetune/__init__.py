"""Fine-tuning: the LoRA trainer the worker runs and the engine calls that serve its adapters."""
