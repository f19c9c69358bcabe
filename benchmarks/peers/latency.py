"""The one thing every peer's `latency` task does: note how long ago it was sent, in a file the benchmark reads.

Imported by each peer's task module (the directory is on PYTHONPATH in every peer's virtualenv)."""
import os
import time


def record(sent: float) -> None:
    """Append enqueue->start latency (seconds) as the task starts; the write comes after the clock is read."""
    lag = time.time() - sent
    with open(os.environ["BENCH_LATENCY_FILE"], "a") as f:
        f.write(f"{lag!r}\n")
