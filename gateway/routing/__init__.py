"""Routing: engine registry and balancing strategies."""
