"""Benchmarks: `python benchmarks/compare_huey.py --jobs 10000` (see docs/performance.md)."""
