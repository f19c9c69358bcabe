"""Prometheus metrics, read from the ledger, Redis and the heartbeats at each scrape (`nightshift metrics`).

A custom collector rather than counters kept in the workers: any number of consumers on any number of hosts
share one ledger, so one exporter that reads it gives the whole picture, and the consumers stay light (they never
import prometheus_client). Windowed figures cover the same window as `nightshift status`.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Iterator

import config
from app import status
from app.db import database
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

    def __init__(self, settings: config.Settings | None = None, window: float = status.WINDOW_SECONDS) -> None:
        self.settings = settings or config.get()
        self.window = window

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

        started = time.monotonic()
        q = self.settings.queue
        up = GaugeMetricFamily("nightshift_up", "1 when the component answered this scrape.", labels=["component"])
        redis = status.redis_counts()
        up.add_metric(["redis"], 1 if redis.get("ok") else 0)
        try:
            open_ledger(self.settings.database_url)  # a scrape after an outage at start-up opens it then
            with database.connection_context():
                stamp = status.now()
                counts = status.queue_counts(stamp)
                rates = status.throughput(stamp)
                tasks = status.task_stats(stamp, self.window)
                durations = status.recent_durations(stamp, self.window)
                workers = status.workers(stamp, q, self.settings)
        except Exception as exc:  # noqa: BLE001 - a scrape reports the outage instead of failing
            log.warning("metrics: the ledger did not answer: %s", exc)
            up.add_metric(["ledger"], 0)
            yield up
            return
        up.add_metric(["ledger"], 1)
        yield up

        jobs = GaugeMetricFamily("nightshift_jobs", "Jobs in the ledger now, by state (waiting: due now; "
                                 "scheduled: eta in the future; retrying: part of waiting and scheduled).",
                                 labels=["queue", "state"])
        for state in ("waiting", "scheduled", "running", "retrying", "dead"):
            jobs.add_metric([q, state], counts[state])
        yield jobs
        yield _single(GaugeMetricFamily("nightshift_dead_letters", "Dead jobs waiting for an operator (retry or "
                                        "discard).", labels=["queue"]), [q], counts["dead"])
        yield _single(GaugeMetricFamily("nightshift_oldest_waiting_seconds",
                                        "How long the longest-waiting due job has been waiting (0: none).",
                                        labels=["queue"]), [q], counts["oldest_waiting_seconds"] or 0.0)
        if redis.get("ok"):
            messages = GaugeMetricFamily("nightshift_redis_messages", "Messages on Redis: due (queue) and later "
                                         "(schedule).", labels=["queue", "where"])
            messages.add_metric([q, "queue"], redis["queued"])
            messages.add_metric([q, "schedule"], redis["scheduled"])
            yield messages
        rate = GaugeMetricFamily("nightshift_throughput_jobs_per_minute",
                                 "Jobs finished (succeeded or dead) per minute over the window.",
                                 labels=["queue", "window"])
        for window, value in rates.items():
            rate.add_metric([q, window], value)
        yield rate

        finished = GaugeMetricFamily("nightshift_jobs_finished", f"Jobs finished in the last "
                                     f"{self.window:g}s, by task and outcome.", labels=["queue", "task", "outcome"])
        for t in tasks:
            for outcome in ("succeeded", "dead", "canceled", "expired"):
                if t[outcome]:
                    finished.add_metric([q, t["task"], outcome], t[outcome])
        yield finished
        histogram = HistogramMetricFamily("nightshift_job_duration_seconds", f"Run time of jobs finished in the "
                                          f"last {self.window:g}s (at most {status.SAMPLE_LIMIT} most recent).",
                                          labels=["queue", "task"])
        for task, values in sorted(durations.items()):
            values.sort()
            histogram.add_metric([q, task], histogram_buckets(values), sum(values))
        yield histogram

        by_status = {"alive": 0, "gone": 0, "stopped": 0, "recycled": 0}
        rss = GaugeMetricFamily("nightshift_worker_rss_bytes", "Resident memory of a live consumer.",
                                labels=["queue", "worker"])
        done = GaugeMetricFamily("nightshift_worker_jobs_done", "Jobs a live consumer has run since it started.",
                                 labels=["queue", "worker"])
        age = GaugeMetricFamily("nightshift_worker_heartbeat_age_seconds", "Seconds since a consumer's last "
                                "heartbeat.", labels=["queue", "worker"])
        busy = GaugeMetricFamily("nightshift_worker_running_jobs", "Jobs a live consumer is running now.",
                                 labels=["queue", "worker"])
        for w in workers:
            by_status[w["status"]] += 1
            if w["status"] in ("stopped", "recycled"):
                continue
            age.add_metric([q, w["id"]], w["heartbeat_age"])
            if w["status"] == "alive":
                rss.add_metric([q, w["id"]], w["rss_bytes"])
                done.add_metric([q, w["id"]], w["jobs_done"])
                busy.add_metric([q, w["id"]], len(w["current"]))
        count = GaugeMetricFamily("nightshift_workers", "Consumers by status (alive: fresh heartbeat; gone: "
                                  "heartbeat too old; stopped: shut down, recycled: replaced after its job or "
                                  "memory limit, within the last hour).",
                                  labels=["queue", "status"])
        for name, value in by_status.items():
            count.add_metric([q, name], value)
        yield count
        yield rss
        yield done
        yield age
        yield busy
        yield _single(GaugeMetricFamily("nightshift_scrape_duration_seconds", "Time this scrape took to read the "
                                        "ledger and Redis.", labels=[]), [], time.monotonic() - started)


def _single(family: Any, labels: list[str], value: float) -> Any:
    family.add_metric(labels, value)
    return family


def registry(settings: config.Settings | None = None):
    """A registry with only Nightshift's collector (plus nothing of this exporter process itself)."""
    from prometheus_client import CollectorRegistry
    reg = CollectorRegistry(auto_describe=False)
    reg.register(NightshiftCollector(settings))
    return reg


def serve(port: int, host: str = "127.0.0.1", settings: config.Settings | None = None):
    """Serve /metrics on host:port in a background thread; returns (server, thread)."""
    from prometheus_client import start_http_server
    return start_http_server(port, addr=host, registry=registry(settings))
