"""Per-system driver scripts for benchmarks/peers.py; each runs in that system's own virtualenv."""
