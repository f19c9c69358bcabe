"""Nightshift as the README installs it, in its own virtualenv: `app.submit` one by one, `app.submit_many` in
batches. NIGHTSHIFT_* settings come from benchmarks/peers.py (ledger file, queue, Redis, task module)."""
from app import submit as _submit, submit_many


def submit(n: int) -> None:
    for _ in range(n):
        _submit("bench_noop")


def bulk(n: int, batch: int) -> str:
    for start in range(0, n, batch):
        submit_many("bench_noop", ({} for _ in range(min(batch, n - start))))
    return f"submit_many, batches of {batch:,} (one ledger transaction + one Redis round trip each)"


def send_latency(sent: float) -> None:
    _submit("bench_latency", sent=sent)

