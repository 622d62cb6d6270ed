"""Placeholder until implemented."""
NODES = []
