"""Run one benchmark step for one system, inside that system's virtualenv, and print its figures as JSON.

    python drive.py SYSTEM submit N | bulk N BATCH | latency COUNT INTERVAL

`submit` and `bulk` time the calls in this process (wall and CPU); `latency` sends COUNT `latency` jobs, one every
INTERVAL seconds, each carrying the time it was sent (the worker notes the lag as the task starts)."""
import importlib
import json
import sys
import time


def main() -> None:
    system, step, *args = sys.argv[1:]
    peer = importlib.import_module(f"{system}_peer")
    out: dict = {}
    if step in ("submit", "bulk"):
        n = int(args[0])
        if step == "bulk" and peer.bulk is None:
            print(json.dumps({"unsupported": True}))
            return
        started, cpu = time.perf_counter(), time.process_time()
        how = peer.submit(n) if step == "submit" else peer.bulk(n, int(args[1]))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        out = {"rate": n / elapsed, "seconds": elapsed, "cpu_us": cpu / n * 1e6, "how": how}
    elif step == "latency":
        count, interval = int(args[0]), float(args[1])
        peer.send_latency(time.time())  # warm-up (connections, imports); its figure is dropped by the caller
        time.sleep(0.2)
        next_at = time.perf_counter()
        for _ in range(count):
            next_at += interval
            peer.send_latency(time.time())
            pause = next_at - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
        out = {"sent": count + 1}
    else:
        raise SystemExit(f"unknown step {step!r}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
