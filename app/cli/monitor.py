"""Monitoring commands: status, health, metrics."""
from __future__ import annotations

import json
import signal
import sys
import time

import click

from app import jobids
from app.cli.root import main
from app.jobview import ago
from app.schema import open_ledger
from app.cli.common import EXIT_FAILED, MAX_SECONDS, NAME, PORT, Number, chosen_queues, echo_json, fail, queue_options

CLEAR = "\x1b[H\x1b[2J"   # cursor home, clear screen
WIDTH = 80


def table(rows: list[list], headers: list[str]) -> str:
    """An aligned table: numbers to the right, text to the left."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) for i in range(len(headers))]

    def line(cells: list) -> str:
        return "  ".join(str(c).rjust(w) if num else str(c).ljust(w)
                         for c, w, num in zip(cells, widths, numeric)).rstrip()
    return "\n".join([line(headers)] + [line(row) for row in rows])


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else ago(value)


def _mb(value: int) -> str:
    return f"{value / 1048576:.0f}M" if value else "-"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "~"


def render(data: dict) -> str:
    """The snapshot as aligned tables that fit in 80 columns."""
    from app.status import _dt, now
    stamp = _dt(data["generated_at"].rstrip("Z")) or now()
    lines = [f"nightshift status at {data['generated_at'][:19].replace('T', ' ')} UTC", ""]
    rows = []
    for q in data["queues"]:
        redis = q["redis"]
        on_redis = f"{redis['queued']}+{redis['scheduled']}" if redis.get("ok") else "DOWN"
        rows.append([_cut(q["name"], 16), q["waiting"], q["scheduled"], q["running"], q["retrying"], q["dead"],
                     ago(q["oldest_waiting_seconds"]) if q["oldest_waiting_seconds"] is not None else "-",
                     on_redis])
    lines.append(table(rows, ["QUEUE", "WAITING", "SCHED", "RUNNING", "RETRY", "DEAD", "OLDEST", "REDIS"]))
    for q in data["queues"]:
        if q.get("paused"):
            lines.append(_cut(f"  queue {q['name']} is PAUSED: no job starts until `nightshift resume {q['name']}`",
                              WIDTH))
        if not q["redis"].get("ok"):
            lines.append(_cut(f"  Redis: {q['redis']['error']}", WIDTH))
    rate = data["throughput_per_minute"]
    lines += ["", "throughput (jobs/min):  " + "   ".join(f"{k} {v:g}" for k, v in rate.items())]

    window = ago(data["window_seconds"]).replace("m00s", "m").replace("h00m", "h")
    lines += ["", f"tasks (finished in the last {window}):"]
    rows = []
    for t in data["tasks"]:
        rate_ = f"{t['success_rate'] * 100:.0f}%" if t["success_rate"] is not None else "-"
        failure = t["last_failure"]
        last = "-"
        if failure:
            when = _dt(failure["at"].rstrip("Z")) if failure["at"] else None
            last = (ago((stamp - when).total_seconds()) + " ago " if when else "") + (failure["error"] or "")
        rows.append([_cut(t["task"], 24), t["finished"], rate_, _secs(t["p50"]), _secs(t["p95"]), t["running"],
                     t["waiting"], last])
    if rows:
        head = ["TASK", "DONE", "OK", "P50", "P95", "RUN", "WAIT"]
        used = len(table([r[:7] for r in rows], head).splitlines()[0]) + 2
        for r in rows:
            r[7] = _cut(r[7], max(WIDTH - used, 10))
        lines.append(table(rows, head + ["LAST FAILURE"]))
    else:
        lines.append("  no jobs")

    lines += ["", f"workers (gone after {data['gone_after_seconds']:g}s without a heartbeat):"]
    rows = []
    for w in data["workers"]:
        current = w["current"]
        if current:
            job = current[0]
            doing = f"{_cut(job['task'], 14)} {jobids.short(job['id'])} {ago(job.get('running_for'))}"
            if len(current) > 1:
                doing += f" +{len(current) - 1}"
        else:
            doing = "idle" if w["status"] == "alive" else "-"
        started = ago(w["uptime"]) if w["status"] == "alive" else w["started_at"][5:16].replace("T", " ")
        rows.append([_cut(w["id"], 22), w["status"], started, w["jobs_done"], ago(w["heartbeat_age"]),
                     _mb(w["rss_bytes"]), _cut(doing, 30)])
    lines.append(table(rows, ["WORKER", "STATUS", "UP", "DONE", "BEAT", "RSS", "CURRENT"]) if rows
                 else "  no consumer has beaten on this queue in the last hour")
    return "\n".join(lines)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (one JSON document per refresh).")
@click.option("--watch", type=Number(0.2, MAX_SECONDS), metavar="SECONDS",
              help="Refresh every SECONDS until Ctrl-C.")
@click.option("--window", type=Number(1, MAX_SECONDS / 60), default=60, show_default=True, metavar="MINUTES",
              help="Per-task figures cover jobs finished in the last MINUTES.")
@queue_options
@click.pass_obj
def status(settings, as_json, watch, window, queue_names, all_queues):
    """What the service (its queue, or --queue / --all-queues) is doing: queue depth, throughput, per-task
    figures, workers."""
    from app import status as status_mod
    queues = chosen_queues(queue_names, all_queues)
    open_ledger(settings.database_url)
    try:
        while True:
            data = status_mod.snapshot(settings, window * 60, queues=queues)
            if as_json:
                if watch:
                    click.echo(json.dumps(data, default=str))
                else:
                    echo_json(data)
            else:
                text = render(data)
                if watch and sys.stdout.isatty():
                    sys.stdout.write(CLEAR + text + "\n")   # refresh in place
                else:
                    click.echo(text + ("\n" if watch else ""))
            if not watch:
                return
            sys.stdout.flush()
            time.sleep(watch)
    except KeyboardInterrupt:  # Ctrl-C ends --watch (wherever it lands): a normal way out
        if not watch:
            raise
        click.echo("")


@main.command()
@click.option("--this-host", is_flag=True, help="Require a live consumer on this host (a container's own "
              "consumer), not just anywhere.")
@click.pass_obj
def health(settings, this_host):
    """Exit 0 when Redis and the ledger answer and a consumer's heartbeat is fresh; else 1 with the reason."""
    from app import status as status_mod
    ok, line = status_mod.health(settings, this_host=this_host)
    if not ok:
        fail(f"unhealthy: {line}", EXIT_FAILED)
    click.echo(line)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@main.command()
@click.option("--port", type=PORT, required=True, help="Port to serve /metrics on.")
@click.option("--host", type=NAME, default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.pass_obj
def metrics(settings, port, host):
    """Serve Prometheus metrics (queue depth, outcomes, durations, workers) until SIGTERM or Ctrl-C."""
    from app import metrics as metrics_mod
    try:
        server, thread = metrics_mod.serve(port, host, settings)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_FAILED)
    click.echo(f"serving Prometheus metrics on http://{host}:{server.server_port}/metrics", err=True)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while thread.is_alive():
            thread.join(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
