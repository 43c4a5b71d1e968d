"""A vLLM-compatible engine simulator for tests, benchmarks and clusters without GPUs."""
