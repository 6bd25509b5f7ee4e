"""The agent's Prometheus metrics and its health rule.

The metrics live in their own `CollectorRegistry`, not the process-wide default: the agent can
then run inside the service's process (the demo), or twice in one test process, without duplicate
registrations, and `/metrics` of the agent shows only the agent. Label cardinality stays bounded:
`file` is a tailed file's path (as many as the glob matches, and `forget_file` drops closed ones),
`cause` is one of `RETRY_CAUSES`.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Why a record was sent again (see shipper.classify).
RETRY_CAUSES = ("throttled", "server_error", "connection", "rejected")


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.lines_read = Counter(
            "clickstream_agent_lines_read", "Lines handed to the shipper", registry=r
        )
        self.lines_sent = Counter(
            "clickstream_agent_lines_sent", "Lines whose records Kinesis accepted", registry=r
        )
        self.records_sent = Counter(
            "clickstream_agent_records_sent",
            "Kinesis records accepted (aggregated records count once)",
            registry=r,
        )
        self.bytes_sent = Counter(
            "clickstream_agent_bytes_sent",
            "Bytes of accepted Kinesis records (data and partition key)",
            registry=r,
        )
        self.retries = Counter(
            "clickstream_agent_retries",
            "Kinesis records sent again, by cause",
            ["cause"],
            registry=r,
        )
        for cause in RETRY_CAUSES:
            self.retries.labels(cause)
        self.truncated_lines = Counter(
            "clickstream_agent_truncated_lines",
            "Lines cut to fit one Kinesis record (1 MiB)",
            registry=r,
        )
        self.put_seconds = Histogram(
            "clickstream_agent_put_seconds",
            "PutRecords call latency",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.lag_bytes = Gauge(
            "clickstream_agent_lag_bytes",
            "Bytes between the acknowledged position and the end of each tailed file",
            ["file"],
            registry=r,
        )
        self.last_put = Gauge(
            "clickstream_agent_last_successful_put_timestamp_seconds",
            "Unix time of the last PutRecords call that had records accepted",
            registry=r,
        )
        self.in_flight_bytes = Gauge(
            "clickstream_agent_in_flight_bytes",
            "Bytes of lines read but not yet acknowledged by Kinesis",
            registry=r,
        )
        self.pending_lines = Gauge(
            "clickstream_agent_pending_lines",
            "Lines read but not yet acknowledged by Kinesis",
            registry=r,
        )
        self.healthy = Gauge(
            "clickstream_agent_healthy",
            "1 while the agent makes progress, 0 when lines wait with no acknowledgement",
            registry=r,
        )
        self.healthy.set(1)

    def set_lag(self, path: str, lag_bytes: int) -> None:
        self.lag_bytes.labels(path).set(lag_bytes)

    def forget_file(self, path: str) -> None:
        """Drop the lag series of a file no longer followed (keeps the label set bounded)."""
        with contextlib.suppress(KeyError):
            self.lag_bytes.remove(path)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Serve /metrics on a local port (a daemon thread; port 0 picks a free one)."""
        start_http_server(port, addr=addr, registry=self.registry)


def is_healthy(
    *,
    pending_lines: int,
    waiting_since: float | None,
    last_ack: float | None,
    now: float,
    stall_seconds: float,
) -> bool:
    """Unhealthy when lines wait and nothing was acknowledged for `stall_seconds`.

    The clock starts at the later of the last acknowledgement and the moment lines started
    waiting: an agent idle for hours is healthy, and its first new line is not "stalled" at once.
    """
    if pending_lines <= 0 or waiting_since is None:
        return True
    since = waiting_since if last_ack is None else max(last_ack, waiting_since)
    return now - since < stall_seconds
