"""`/metrics`: the service's Prometheus exposition, read at scrape time from what already exists.

Nothing on the processing path updates a Prometheus object; a collector reads the worker's
plain counters, the call watch and the last summary the push loop computed when Prometheus
asks. A scrape therefore never waits for the consumer's loop (a summary may take a while when
the consumer is busy) and costs the consumer nothing.

Cardinality is bounded by construction: labels are shard ids (a handful), AWS operations (a
fixed set), windows (three), and cities only for the top `top_cities` of the last 24 hours plus
the catch-all `Other`. No label ever carries an address or a user agent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from consumers.counters import OTHER
from consumers.scheduler import LeaseReport
from service.consumer_process import ConsumerProcess

WINDOW_FIELDS = ("page_views", "visitors", "menu_viewers", "purchasers", "rejected_lines")


class PipelineCollector(Collector):
    def __init__(
        self,
        consumer: ConsumerProcess,
        summaries: Callable[[], dict[str, dict[str, Any]]],
        top_cities: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consumer = consumer
        self.summaries = summaries
        self.top_cities = top_cities
        self._clock = clock

    def collect(self) -> Iterator[Any]:
        yield from self._worker()
        yield from self._calls()
        yield from self._windows()

    def _worker(self) -> Iterator[Any]:
        up = GaugeMetricFamily("clickstream_consumer_up", "1 while the consumer worker runs")
        up.add_metric([], 1.0 if self.consumer.running else 0.0)
        yield up
        status = self.consumer.status
        if status is None or not status.worker_started:
            return
        for name, value, doc in (
            ("clickstream_consumer_lines", status.records, "Log lines handed to the processors"),
            ("clickstream_consumer_commits", status.commits, "Shard commits (archive+checkpoint)"),
            ("clickstream_consumer_shard_failures", status.shard_failures, "Shard tasks failed"),
        ):
            counter = CounterMetricFamily(name, doc)
            counter.add_metric([], float(value))
            yield counter
        held = GaugeMetricFamily("clickstream_consumer_shards_held", "Shards being read")
        held.add_metric([], float(len(status.shards)))
        yield held
        behind = GaugeMetricFamily(
            "clickstream_consumer_millis_behind_latest",
            "How far each held shard's reader is behind the stream's tip",
            labels=["shard"],
        )
        for shard, millis in sorted(status.shards.items()):
            behind.add_metric([shard], float(millis))
        yield behind
        yield from self._leases(status.leases)
        now = self._clock()
        age = GaugeMetricFamily(
            "clickstream_consumer_seconds_since_fetch",
            "Seconds since each held shard's last successful GetRecords",
            labels=["shard"],
        )
        for shard in sorted(status.shards):
            if shard in status.last_fetches:
                age.add_metric([shard], now - status.last_fetches[shard])
        yield age

    def _leases(self, report: LeaseReport | None) -> Iterator[Any]:
        """The lease coordinator's figures (issue #6): one series each, no per-shard labels
        beyond the shards this worker holds."""
        if report is None:
            return
        healthy = GaugeMetricFamily(
            "clickstream_leases_healthy", "1 while the lease table answers and no lease is fenced"
        )
        healthy.add_metric([], 1.0 if report.healthy else 0.0)
        yield healthy
        held = GaugeMetricFamily("clickstream_leases_held", "Leases this worker holds")
        held.add_metric([], float(report.stats.held))
        yield held
        for field, doc in (
            ("taken", "Unowned or expired leases taken"),
            ("stolen", "Leases stolen from other workers for a fair share"),
            ("lost", "Leases lost to another worker or fenced"),
            ("evicted", "Leases given up on a graceful stop"),
            ("renew_errors", "Lease renewals that failed (table unreachable)"),
        ):
            counter = CounterMetricFamily(f"clickstream_leases_{field}", doc)
            counter.add_metric([], float(getattr(report.stats, field)))
            yield counter

    def _calls(self) -> Iterator[Any]:
        calls = CounterMetricFamily(
            "clickstream_aws_calls",
            "AWS calls made by the consumer, by outcome",
            labels=["service", "operation", "outcome"],
        )
        failing = GaugeMetricFamily(
            "clickstream_aws_failing_seconds",
            "How long each AWS operation has been failing (0 when its last call succeeded)",
            labels=["service", "operation"],
        )
        now = self._clock()
        status = self.consumer.status
        operations = status.operations if status is not None else {}
        for (service, operation), health in sorted(operations.items()):
            calls.add_metric([service, operation, "ok"], float(health.calls - health.failures))
            calls.add_metric([service, operation, "error"], float(health.failures))
            failing.add_metric([service, operation], health.failing_for(now))
        yield calls
        yield failing

    def _windows(self) -> Iterator[Any]:
        summaries = self.summaries()
        totals = GaugeMetricFamily(
            "clickstream_window_total",
            "The summary's totals for each rolling window",
            labels=["window", "field"],
        )
        rates = GaugeMetricFamily(
            "clickstream_window_conversion",
            "The summary's conversion rates for each rolling window",
            labels=["window", "rate"],
        )
        for window, summary in sorted(summaries.items()):
            for field in WINDOW_FIELDS:
                totals.add_metric([window, field], float(summary["totals"].get(field, 0)))
            for rate, value in summary.get("conversion", {}).items():
                rates.add_metric([window, rate], float(value))
        yield totals
        yield rates
        day = summaries.get("24h")
        if day is None:
            return
        cities = GaugeMetricFamily(
            "clickstream_city_visitors",
            f"Distinct visitors in the last 24 h of the top {self.top_cities} cities; the rest "
            f"summed as {OTHER}",
            labels=["city", "region", "country"],
        )
        top = day["cities"][: self.top_cities]
        for row in top:
            cities.add_metric([row["city"], row["region"], row["country"]], float(row["visitors"]))
        rest = day["totals"]["visitors"] - sum(row["visitors"] for row in top)
        cities.add_metric([OTHER, OTHER, OTHER], float(max(rest, 0)))
        yield cities


def build_registry(collector: PipelineCollector) -> CollectorRegistry:
    """A registry of our own (not the process-wide default) with the process metrics too: the
    service's (`process_*`) and its consumer child's (`clickstream_consumer_process_*`)."""
    registry = CollectorRegistry()
    registry.register(collector)
    ProcessCollector(registry=registry)
    ProcessCollector(
        namespace="clickstream_consumer", pid=lambda: collector.consumer.pid, registry=registry
    )
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
