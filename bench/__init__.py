"""Benchmarks of agentpost (not part of the installed packages)."""
