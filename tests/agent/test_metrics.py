from prometheus_client import generate_latest

from agent.metrics import AgentMetrics, is_healthy


def test_healthy_when_nothing_waits() -> None:
    assert is_healthy(pending_lines=0, waiting_since=None, last_ack=None, now=1e6, stall_seconds=5)


def test_stall_clock_starts_when_lines_start_waiting() -> None:
    # Idle for an hour, then a line arrives: not stalled at once.
    assert is_healthy(
        pending_lines=1, waiting_since=3600.0, last_ack=0.0, now=3601, stall_seconds=5
    )
    assert not is_healthy(
        pending_lines=1, waiting_since=3600.0, last_ack=0.0, now=3606, stall_seconds=5
    )


def test_acknowledgements_keep_it_healthy_while_lines_keep_coming() -> None:
    assert is_healthy(pending_lines=9, waiting_since=0.0, last_ack=98.0, now=100, stall_seconds=5)
    assert not is_healthy(pending_lines=9, waiting_since=0.0, last_ack=90, now=100, stall_seconds=5)


def test_registries_are_separate_and_lag_series_can_be_dropped() -> None:
    first, second = AgentMetrics(), AgentMetrics()  # no duplicate-registration error
    first.lines_read.inc(3)
    first.set_lag("/var/log/a", 10)
    first.set_lag("/var/log/b", 0)
    first.forget_file("/var/log/b")
    first.forget_file("/var/log/never-seen")
    text = generate_latest(first.registry).decode()
    assert "clickstream_agent_lines_read_total 3.0" in text
    assert 'clickstream_agent_lag_bytes{file="/var/log/a"} 10.0' in text
    assert "/var/log/b" not in text
    assert 'clickstream_agent_retries_total{cause="throttled"} 0.0' in text
    assert "clickstream_agent_lines_read_total 0.0" in generate_latest(second.registry).decode()
