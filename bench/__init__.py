"""Benchmarks and tools that run against a live stack (not tests)."""
