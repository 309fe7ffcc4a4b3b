"""Simulated stacks: training nodes and a serving host as Linux network namespaces (needs root)."""
