"""Benchmark of ticket-guard on its own local stack: ``python -m bench.run``."""
