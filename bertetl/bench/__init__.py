"""Benchmarks (`bertetl bench`): the engine against its peers, executors, memory."""
