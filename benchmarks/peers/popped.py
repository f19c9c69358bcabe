"""A system's own consumer, run in this process with its dequeue noting when each latency job came off Redis.

    python popped.py huey|nightshift      (from benchmarks/floors.py, inside the system's virtualenv)

Each message taken writes `time.time() - sent` to $BENCH_LATENCY_FILE.popped before it runs, so the latency
splits into sent -> off Redis (the producer's submit, Redis, the wake-up) and off Redis -> the task's first line
(decoding, the hooks, a claim)."""
import os
import sys
import time


def note(task) -> None:
    sent = task.kwargs.get("sent") if task.kwargs else (task.args[0] if task.args else None)
    if isinstance(sent, float):
        with open(os.environ["BENCH_LATENCY_FILE"] + ".popped", "a") as f:
            f.write(f"{time.time() - sent!r}\n")


def patch(cls) -> None:
    dequeue = cls.dequeue

    def noted(self, *args, **kwargs):
        task = dequeue(self, *args, **kwargs)
        if task is not None:
            note(task)
        return task
    cls.dequeue = noted


def main() -> None:
    if sys.argv[1] == "huey":
        from huey.api import Huey
        from huey.bin.huey_consumer import consumer_main
        patch(Huey)
        sys.argv = ["huey_consumer", "huey_peer.huey", "-w", "1", "-k", "thread"]
        consumer_main()
    else:
        from app.cli import run
        from app.queue import NightshiftHuey
        patch(NightshiftHuey)
        sys.argv = ["nightshift", "worker"]
        run()


if __name__ == "__main__":
    main()
