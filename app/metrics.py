"""Prometheus metrics, read from the ledger, Redis and the heartbeats at each scrape (`nightshift metrics`).

A custom collector rather than counters kept in the workers: any number of consumers on any number of hosts
share one ledger, so one exporter that reads it gives the whole picture, and the consumers stay light (they never
import prometheus_client). Windowed figures cover the same window as `nightshift status`.

Every figure carries a `queue` label, for every queue (status.every_queue: this service's own and every queue the
ledger knows), so one exporter per ledger shows all of them and Prometheus filters by the label. A consumer that
serves several queues is counted under each.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Iterator

import config
from app import status
from app.db import database
from app.queue import get_huey
from app.schema import open_ledger

log = logging.getLogger("nightshift.metrics")

# Upper bounds (seconds) of the duration histogram buckets.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


def histogram_buckets(durations: list[float], bounds: tuple[float, ...] = BUCKETS) -> list[tuple[str, int]]:
    """Cumulative (le, count) pairs for sorted `durations`, ending with +Inf."""
    result, i = [], 0
    for bound in bounds:
        while i < len(durations) and durations[i] <= bound:
            i += 1
        result.append((repr(float(bound)), i))
    result.append(("+Inf", len(durations)))
    return result


class NightshiftCollector:
    """Collects a fresh snapshot on every scrape; a failing source shows as nightshift_up{component} 0."""

    def __init__(self, settings: config.Settings, window: float = status.WINDOW_SECONDS,
                 queues: list[str | None] | None = None) -> None:
        self.settings = settings
        self.window = window
        self.queues = queues  # None: every queue (status.every_queue), found again at each scrape

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

        started = time.monotonic()
        up = GaugeMetricFamily("nightshift_up", "1 when the component answered this scrape.", labels=["component"])
        try:
            open_ledger(self.settings.database_url)  # a scrape after an outage at start-up opens it then
            with database.connection_context():
                stamp = status.now()
                names = self.queues if self.queues is not None else status.every_queue(self.settings)
                counts = {name: status.queue_counts(stamp, name) for name in names}
                rates = status.throughput_by_queue(stamp, names)
                finished_jobs = status.finished_by_queue(stamp, self.window, queues=names)
                durations = status.durations_by_queue(stamp, self.window, queues=names)
                workers = {name: status.workers(stamp, name, self.settings) for name in names if name is not None}
        except Exception as exc:  # noqa: BLE001 - a scrape reports the outage instead of failing
            log.warning("metrics: the ledger did not answer: %s", exc)
            up.add_metric(["redis"], 1 if status.redis_counts().get("ok") else 0)
            up.add_metric(["ledger"], 0)
            yield up
            return
        redis = {name: status.redis_counts(huey) for name, huey in _hueys(names)}
        up.add_metric(["redis"], 1 if all(r.get("ok") for r in redis.values()) else 0)
        up.add_metric(["ledger"], 1)
        yield up

        def label(name: str | None) -> str:
            return status.NO_QUEUE_NAME if name is None else name

        jobs = GaugeMetricFamily("nightshift_jobs", "Jobs in the ledger now, by state (waiting: due now; "
                                 "scheduled: eta in the future; retrying: part of waiting and scheduled).",
                                 labels=["queue", "state"])
        dead = GaugeMetricFamily("nightshift_dead_letters", "Dead jobs waiting for an operator (retry or discard).",
                                 labels=["queue"])
        oldest = GaugeMetricFamily("nightshift_oldest_waiting_seconds",
                                   "How long the longest-waiting due job has been waiting (0: none).", labels=["queue"])
        for name, of_queue in counts.items():
            for state in ("waiting", "scheduled", "running", "retrying", "dead"):
                jobs.add_metric([label(name), state], of_queue[state])
            dead.add_metric([label(name)], of_queue["dead"])
            oldest.add_metric([label(name)], of_queue["oldest_waiting_seconds"] or 0.0)
        yield jobs
        yield dead
        yield oldest
        messages = GaugeMetricFamily("nightshift_redis_messages", "Messages on Redis: due (queue) and later "
                                     "(schedule).", labels=["queue", "where"])
        for name, on_redis in redis.items():
            if on_redis.get("ok"):
                messages.add_metric([name, "queue"], on_redis["queued"])
                messages.add_metric([name, "schedule"], on_redis["scheduled"])
        yield messages
        rate = GaugeMetricFamily("nightshift_throughput_jobs_per_minute",
                                 "Jobs finished (succeeded or dead) per minute over the window.",
                                 labels=["queue", "window"])
        for name, windows in rates.items():
            for window, value in windows.items():
                rate.add_metric([label(name), window], value)
        yield rate

        finished = GaugeMetricFamily("nightshift_jobs_finished", f"Jobs finished in the last "
                                     f"{self.window:g}s, by task and outcome.", labels=["queue", "task", "outcome"])
        for (name, task), outcomes in sorted(finished_jobs.items(), key=lambda item: (label(item[0][0]), item[0][1])):
            for outcome, value in outcomes.items():
                if value:
                    finished.add_metric([label(name), task, outcome], value)
        yield finished
        histogram = HistogramMetricFamily("nightshift_job_duration_seconds", f"Run time of jobs finished in the "
                                          f"last {self.window:g}s (at most the {status.SAMPLE_LIMIT} most recent "
                                          f"of all queues).", labels=["queue", "task"])
        for (name, task), values in sorted(durations.items(), key=lambda item: (label(item[0][0]), item[0][1])):
            values.sort()
            histogram.add_metric([label(name), task], histogram_buckets(values), sum(values))
        yield histogram

        rss = GaugeMetricFamily("nightshift_worker_rss_bytes", "Resident memory of a live consumer (under each "
                                "queue it serves).", labels=["queue", "worker"])
        done = GaugeMetricFamily("nightshift_worker_jobs_done", "Jobs a live consumer has run since it started.",
                                 labels=["queue", "worker"])
        age = GaugeMetricFamily("nightshift_worker_heartbeat_age_seconds", "Seconds since a consumer's last "
                                "heartbeat.", labels=["queue", "worker"])
        busy = GaugeMetricFamily("nightshift_worker_running_jobs", "Jobs a live consumer is running now.",
                                 labels=["queue", "worker"])
        count = GaugeMetricFamily("nightshift_workers", "Consumers by status (alive: fresh heartbeat; gone: "
                                  "heartbeat too old; stopped: shut down, recycled: replaced after its job or "
                                  "memory limit, within the last hour), under each queue they serve.",
                                  labels=["queue", "status"])
        for name, of_queue in workers.items():
            by_status = {"alive": 0, "gone": 0, "stopped": 0, "recycled": 0}
            for w in of_queue:
                by_status[w["status"]] += 1
                if w["status"] in ("stopped", "recycled"):
                    continue
                age.add_metric([name, w["id"]], w["heartbeat_age"])
                if w["status"] == "alive":
                    rss.add_metric([name, w["id"]], w["rss_bytes"])
                    done.add_metric([name, w["id"]], w["jobs_done"])
                    busy.add_metric([name, w["id"]], len(w["current"]))
            for state, value in by_status.items():
                count.add_metric([name, state], value)
        yield count
        yield rss
        yield done
        yield age
        yield busy
        yield _single(GaugeMetricFamily("nightshift_scrape_duration_seconds", "Time this scrape took to read the "
                                        "ledger and Redis.", labels=[]), [], time.monotonic() - started)


def _hueys(queues: list[str | None]) -> Iterator[tuple[str, Any]]:
    """(name, Huey instance) of each queue that has messages on Redis: not the jobs without a queue, nor a name
    Huey cannot carry (a ledger row written by hand)."""
    for name in queues:
        if name is not None:
            try:
                yield name, get_huey(name)
            except ValueError:
                continue


def _single(family: Any, labels: list[str], value: float) -> Any:
    family.add_metric(labels, value)
    return family


def registry(settings: config.Settings):
    """A registry with only Nightshift's collector (plus nothing of this exporter process itself)."""
    from prometheus_client import CollectorRegistry
    reg = CollectorRegistry(auto_describe=False)
    reg.register(NightshiftCollector(settings))
    return reg


def serve(port: int, host: str, settings: config.Settings):
    """Serve /metrics on host:port in a background thread; returns (server, thread)."""
    from prometheus_client import start_http_server
    return start_http_server(port, addr=host, registry=registry(settings))
