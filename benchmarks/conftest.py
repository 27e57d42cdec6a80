"""Benchmark fixtures (the suite itself grows in benchmarks/test_*.py)."""
