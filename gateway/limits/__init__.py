"""Admission control in Redis: rate and concurrency limits at key and tenant scope."""
