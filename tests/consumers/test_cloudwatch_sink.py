"""CloudWatch sink: top N + Other, the hand-over contract (acknowledged cursors, dedupe, bounded
queue, expiry), and, against moto, batching within API limits and outages that only delay."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from consumers import metric_names as names
from consumers.sinks.cloudwatch import (
    MAX_AGE_S,
    MAX_INVALID_PER_CYCLE,
    CloudWatchSink,
    MetricBatch,
    MetricDatum,
    bucket_metric_data,
    health_metric_data,
)
from service.aws import aws_client

NAMESPACE = "ClickstreamTest"
SEATTLE = ("Seattle", "Washington", "US")
PORTLAND_OR = ("Portland", "Oregon", "US")
PORTLAND_ME = ("Portland", "Maine", "US")
LYON = ("Lyon", "Auvergne-Rhône-Alpes", "FR")


def minute_ago(minutes: int) -> float:
    """A minute start `minutes` before now: closed buckets are in the past."""
    now = int(time.time()) // 60 * 60
    return float(now - minutes * 60)


def batch(source: str, cursor: int, *values: float, name: str = names.PAGE_VIEWS) -> MetricBatch:
    when = minute_ago(200 - cursor)
    return MetricBatch(source, cursor, tuple(MetricDatum(name, (), when, v) for v in values))


# ----------------------------------------------------------------------------- bucket -> data


def series(data: list[MetricDatum]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for d in data:
        found[(d.name, d.dimensions)] = found.get((d.name, d.dimensions), 0) + d.value
    return found


def test_bucket_data_publishes_top_cities_and_folds_the_rest_into_other() -> None:
    by_place = {
        SEATTLE: (10, 5, 3, 1),
        PORTLAND_OR: (8, 4, 2, 1),
        PORTLAND_ME: (2, 1, 1, 0),
        LYON: (3, 1, 0, 0),
    }
    data = bucket_metric_data(1_800_000_000.0, by_place, top_n=2, rejected_lines=7)
    found = series(data)
    assert {d.timestamp for d in data} == {1_800_000_000.0}
    assert found[(names.PAGE_VIEWS, ())] == 23
    assert found[(names.VISITORS, ())] == 11
    assert found[(names.PURCHASERS, ())] == 2
    assert found[(names.REJECTED_LINES, ())] == 7
    city = (("Country", "US"), ("Region", "Oregon"), ("City", "Portland"))
    assert found[(names.VISITORS, city)] == 4
    other_city = (("Country", "Other"), ("Region", "Other"), ("City", "Other"))
    assert found[(names.VISITORS, other_city)] == 2  # Portland, Maine and Lyon
    assert found[(names.PAGE_VIEWS, other_city)] == 5
    cities = {dims for (_, dims) in found if len(dims) == 3}
    assert len(cities) == 3  # two cities + Other: bounded, whatever the number of places
    other_region = (("Country", "Other"), ("Region", "Other"))
    assert found[(names.VISITORS, (("Country", "US"), ("Region", "Washington")))] == 5
    assert found[(names.VISITORS, other_region)] == 2


def test_bucket_data_with_a_stable_top_set_and_no_traffic() -> None:
    data = bucket_metric_data(0.0, {LYON: (1, 1, 0, 0)}, top_cities={SEATTLE}, top_regions=set())
    found = series(data)
    other_city = (("Country", "Other"), ("Region", "Other"), ("City", "Other"))
    assert found[(names.VISITORS, other_city)] == 1
    empty = series(bucket_metric_data(0.0, {}))
    assert empty == {
        (names.PAGE_VIEWS, ()): 0,
        (names.VISITORS, ()): 0,
        (names.MENU_VIEWERS, ()): 0,
        (names.PURCHASERS, ()): 0,
        (names.REJECTED_LINES, ()): 0,
    }  # a zero is published, so the dashboard shows 0 rather than a gap


def test_health_data_units() -> None:
    data = health_metric_data(
        0.0, records=5, iterator_age_ms=1500.0, archive_failures=1, metric_failures=2
    )
    units = {d.name: d.unit for d in data}
    assert units[names.ITERATOR_AGE] == "Milliseconds"
    assert units[names.RECORDS_PROCESSED] == "Count"


# ----------------------------------------------------------------------------- hand-over


def test_add_takes_each_batch_once_in_cursor_order_per_source() -> None:
    sink = CloudWatchSink(None, NAMESPACE)
    pending = [batch("a", 1, 1.0), batch("a", 2, 2.0), batch("b", 1, 5.0, 6.0)]
    assert sink.add(pending) == 3
    assert sink.queued == 4
    assert sink.add(pending) == 0  # the counters hand the same pending list again: ignored
    assert sink.add([*pending, batch("a", 3, 3.0)]) == 1
    assert sink.acknowledged("a") is None


def test_an_empty_bucket_is_acknowledged_in_order() -> None:
    sink = CloudWatchSink(None, NAMESPACE)
    sink.add([MetricBatch("a", 1, ())])
    assert sink.acknowledged("a") == 1
    sink.add([batch("a", 2, 1.0), MetricBatch("a", 3, ())])
    assert sink.acknowledged("a") == 1  # 3 waits for 2 to be sent


def test_a_full_queue_refuses_later_batches_instead_of_dropping_them() -> None:
    sink = CloudWatchSink(None, NAMESPACE, max_queued=3)
    offered = [batch("a", 1, 1.0, 1.0), batch("a", 2, 2.0, 2.0), batch("a", 3, 3.0)]
    assert sink.add(offered) == 1
    assert sink.stats.refused == 3 and sink.stats.failures == 3
    # Cursor order is kept: batch 3 would fit but is refused too, since 2 was.
    assert sink.queued == 2
    big = CloudWatchSink(None, NAMESPACE, max_queued=1)
    assert big.add([batch("a", 1, 1.0, 2.0, 3.0)]) == 1  # an empty queue takes any batch


def test_forget_drops_a_lost_shards_data_and_cursors() -> None:
    sink = CloudWatchSink(None, NAMESPACE)
    sink.add([batch("a", 1, 1.0, 2.0), batch("b", 1, 3.0), batch("a", 2, 4.0)])
    assert sink.forget("a") == 3
    assert sink.queued == 1 and sink.acknowledged("a") is None
    assert sink.add([batch("a", 1, 1.0)]) == 1  # a later owner of the shard starts afresh


# ----------------------------------------------------------------------------- integration


@pytest.fixture
async def cloudwatch(aws: str) -> AsyncIterator[Any]:
    async with aws_client("cloudwatch", retries={"total_max_attempts": 1}) as client:
        yield client


async def values_by_time(
    client: Any, name: str, start: float, end: float, dims: tuple[tuple[str, str], ...] = ()
) -> dict[datetime, float]:
    response = await client.get_metric_data(
        MetricDataQueries=[
            {
                "Id": "m",
                "MetricStat": {
                    "Metric": {
                        "Namespace": NAMESPACE,
                        "MetricName": name,
                        "Dimensions": [{"Name": k, "Value": v} for k, v in dims],
                    },
                    "Period": 60,
                    "Stat": "Sum",
                },
            }
        ],
        StartTime=datetime.fromtimestamp(start, UTC),
        EndTime=datetime.fromtimestamp(end, UTC) + timedelta(minutes=1),
    )
    (result,) = response["MetricDataResults"]
    return {
        ts.astimezone(UTC): value
        for ts, value in zip(result["Timestamps"], result["Values"], strict=True)
    }


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@pytest.mark.integration
async def test_published_data_keep_their_original_timestamps(cloudwatch: Any) -> None:
    sink = CloudWatchSink(cloudwatch, NAMESPACE)
    by_place = {SEATTLE: (10, 5, 3, 1), LYON: (4, 2, 1, 0)}
    t1, t2 = minute_ago(180), minute_ago(179)  # three hours old: a backlog being caught up
    sink.add(
        [
            MetricBatch(
                "shard-0", 100, tuple(bucket_metric_data(t1, by_place, top_n=1, rejected_lines=3))
            ),
            MetricBatch("shard-0", 101, tuple(bucket_metric_data(t2, {SEATTLE: (1, 1, 0, 0)}))),
        ]
    )
    result = await sink.flush()
    assert (result.sent, result.failed_calls, result.queued) == (sink.stats.sent, 0, 0)
    assert sink.acknowledged("shard-0") == 101

    # (moto answers a query without dimensions with the sum of every series of that name, so
    # totals are checked on a metric that is only published without dimensions.)
    assert await values_by_time(cloudwatch, names.REJECTED_LINES, t1, t2) == {
        at(t1): 3,
        at(t2): 0,
    }
    seattle = (("Country", "US"), ("Region", "Washington"), ("City", "Seattle"))
    assert await values_by_time(cloudwatch, names.VISITORS, t1, t2, seattle) == {
        at(t1): 5,
        at(t2): 1,
    }
    other = (("Country", "Other"), ("Region", "Other"), ("City", "Other"))
    assert await values_by_time(cloudwatch, names.VISITORS, t1, t2, other) == {at(t1): 2}


@pytest.mark.integration
async def test_large_backlogs_go_out_in_calls_within_the_api_limits(cloudwatch: Any) -> None:
    calls: list[int] = []

    def count(params: dict[str, Any], **_: Any) -> None:
        calls.append(len(params["MetricData"]))

    cloudwatch.meta.events.register("provide-client-params.monitoring.PutMetricData", count)
    sink = CloudWatchSink(cloudwatch, NAMESPACE)
    start = minute_ago(2_500)
    data = tuple(MetricDatum(names.PAGE_VIEWS, (), start + 60 * i, 1.0) for i in range(2_400))
    sink.add([MetricBatch("shard-0", 1, data)])
    result = await sink.flush()
    assert calls == [1_000, 1_000, 400]
    assert (result.sent, result.calls) == (2_400, 3)
    values = await values_by_time(cloudwatch, names.PAGE_VIEWS, start, start + 60 * 2_399)
    assert len(values) == 2_400 and set(values.values()) == {1.0}


@pytest.mark.integration
async def test_long_dimension_values_split_calls_below_the_payload_limit(cloudwatch: Any) -> None:
    calls: list[int] = []
    cloudwatch.meta.events.register(
        "provide-client-params.monitoring.PutMetricData",
        lambda params, **_: calls.append(len(params["MetricData"])),
    )
    bodies: list[int] = []
    cloudwatch.meta.events.register(
        "before-send.monitoring.PutMetricData",
        lambda request, **_: bodies.append(len(request.body)),
    )
    sink = CloudWatchSink(cloudwatch, NAMESPACE)
    when = minute_ago(30)
    data = tuple(
        MetricDatum(names.VISITORS, ((names.CITY, f"{i:04d}" + "x" * 1_000),), when, 1.0)
        for i in range(1_000)
    )
    assert sum(d.payload_estimate() for d in data) > 3_000_000
    sink.add([MetricBatch("shard-0", 1, data)])
    result = await sink.flush()
    assert result.sent == 1_000 and sum(calls) == 1_000
    assert len(calls) >= 4  # 1,000 data would fit one call by count, not by size
    assert len(bodies) == len(calls) and max(bodies) < 1_000_000
    assert sum(bodies) <= sum(d.payload_estimate() for d in data)


@pytest.mark.integration
async def test_run_publishes_every_interval_until_cancelled(cloudwatch: Any) -> None:
    sink = CloudWatchSink(cloudwatch, NAMESPACE)
    task = asyncio.create_task(sink.run(interval_s=0.05))
    try:
        sink.add([batch("shard-0", 1, 2.0)])
        for _ in range(200):
            if sink.acknowledged("shard-0") == 1:
                break
            await asyncio.sleep(0.05)
        assert sink.acknowledged("shard-0") == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.integration
async def test_an_outage_delays_metrics_but_loses_and_doubles_nothing(cloudwatch: Any) -> None:
    outage = {"on": True}

    def unavailable(**_: Any) -> None:
        if outage["on"]:
            raise ConnectionError("injected: CloudWatch unreachable")

    cloudwatch.meta.events.register("before-call.monitoring.PutMetricData", unavailable)
    sink = CloudWatchSink(cloudwatch, NAMESPACE, max_attempts=2, backoff_s=0.01)
    pending = [batch("shard-0", 1, 3.0), batch("shard-0", 2, 4.0)]

    sink.add(pending)
    result = await sink.flush()  # returns, does not raise: the processor carries on
    assert (result.sent, result.failed_calls, result.queued) == (0, 1, 2)
    assert sink.acknowledged("shard-0") is None  # the counters keep the cursor where it was
    assert sink.stats.failures == 1

    sink.add([*pending, batch("shard-0", 3, 5.0)])  # the next cycle hands over again
    assert sink.queued == 3
    outage["on"] = False
    result = await sink.flush()
    assert (result.sent, result.queued) == (3, 0)
    assert sink.acknowledged("shard-0") == 3

    first, last = pending[0].data[0].timestamp, minute_ago(200 - 3)
    assert await values_by_time(cloudwatch, names.PAGE_VIEWS, first, last) == {
        at(first): 3.0,
        at(first + 60): 4.0,
        at(last): 5.0,
    }


@pytest.mark.integration
async def test_a_closed_port_is_an_outage_too(aws: str) -> None:
    """A real network failure (nothing listens), not an injected one."""
    async with aws_client(
        "cloudwatch", retries={"total_max_attempts": 1}, connect_timeout=1
    ) as client:
        client.meta.events.register(
            "before-sign.monitoring.PutMetricData", _to_closed_port, unique_id="closed-port"
        )
        sink = CloudWatchSink(client, NAMESPACE, max_attempts=1)
        sink.add([batch("shard-0", 1, 1.0)])
        result = await sink.flush()
    assert (result.sent, result.failed_calls, result.queued) == (0, 1, 1)


def _to_closed_port(request: Any, **_: Any) -> None:
    request.url = "http://127.0.0.1:9/"  # discard port: connection refused


@pytest.mark.integration
async def test_data_older_than_cloudwatch_accepts_are_dropped_counted_and_acknowledged(
    cloudwatch: Any,
) -> None:
    sink = CloudWatchSink(cloudwatch, NAMESPACE, clock=lambda: time.time() + MAX_AGE_S)
    sink.add([batch("shard-0", 1, 1.0), MetricBatch("shard-0", 2, ())])
    result = await sink.flush()
    assert (result.sent, result.expired, result.queued) == (0, 1, 0)
    assert sink.acknowledged("shard-0") == 2
    assert sink.stats.failures == 1


def _invalid_parameter(operation: str = "PutMetricData") -> ClientError:
    return ClientError(
        {
            "Error": {"Code": "InvalidParameterValue", "Message": "injected: invalid datum"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        },
        operation,
    )


@pytest.mark.integration
async def test_a_datum_cloudwatch_refuses_is_isolated_and_dropped_not_blocking(
    cloudwatch: Any,
) -> None:
    def refuse_poison(params: dict[str, Any], **_: Any) -> None:
        if any(d["MetricName"] == "Poison" for d in params["MetricData"]):
            raise _invalid_parameter()

    cloudwatch.meta.events.register("provide-client-params.monitoring.PutMetricData", refuse_poison)
    sink = CloudWatchSink(cloudwatch, NAMESPACE, max_attempts=1)
    when = minute_ago(10)
    data = [MetricDatum(names.PAGE_VIEWS, (), when + 60 * i, 1.0) for i in range(9)]
    data.insert(5, MetricDatum("Poison", (), when, 1.0))
    sink.add(
        [MetricBatch("shard-0", 1, tuple(data[:6])), MetricBatch("shard-0", 2, tuple(data[6:]))]
    )
    result = await sink.flush()
    assert (result.sent, result.invalid, result.queued) == (9, 1, 0)
    assert sink.acknowledged("shard-0") == 2 and sink.stats.failures == 1
    values = await values_by_time(cloudwatch, names.PAGE_VIEWS, when, when + 8 * 60)
    assert len(values) == 9


@pytest.mark.integration
async def test_when_cloudwatch_refuses_everything_the_data_are_kept(cloudwatch: Any) -> None:
    def refuse(**_: Any) -> None:
        raise _invalid_parameter()

    cloudwatch.meta.events.register("before-call.monitoring.PutMetricData", refuse)
    sink = CloudWatchSink(cloudwatch, NAMESPACE, max_attempts=1)
    when = minute_ago(10)
    data = tuple(MetricDatum(names.PAGE_VIEWS, (), when + i, 1.0) for i in range(40))
    sink.add([MetricBatch("shard-0", 1, data)])
    result = await sink.flush()
    assert result.invalid == MAX_INVALID_PER_CYCLE and result.failed_calls == 1
    assert result.queued == 40 - MAX_INVALID_PER_CYCLE
    assert sink.acknowledged("shard-0") is None


@pytest.mark.integration
async def test_forgetting_a_source_while_its_data_are_in_flight(cloudwatch: Any) -> None:
    sink = CloudWatchSink(cloudwatch, NAMESPACE)

    def lose_the_lease(**_: Any) -> None:
        sink.forget("a")

    cloudwatch.meta.events.register("before-call.monitoring.PutMetricData", lose_the_lease)
    sink.add([batch("a", 1, 1.0), batch("b", 1, 2.0), batch("a", 2, 3.0)])
    result = await sink.flush()
    assert (result.sent, result.queued) == (3, 0)  # the call was already on its way
    assert sink.acknowledged("b") == 1 and sink.acknowledged("a") is None


@pytest.mark.integration
async def test_a_call_in_flight_when_publishing_is_cancelled_is_not_sent_twice(
    cloudwatch: Any,
) -> None:
    """Shutdown cancels the publish loop; a PutMetricData that CloudWatch already stored must
    not go out again with the final flush (CloudWatch would sum it twice)."""
    landed = asyncio.Event()

    async def slow_response(**_: Any) -> None:
        landed.set()  # CloudWatch has the data; the answer is on its way back
        await asyncio.sleep(0.3)

    cloudwatch.meta.events.register("after-call.monitoring.PutMetricData", slow_response)
    sink = CloudWatchSink(cloudwatch, NAMESPACE)
    sink.add([batch("shard-0", 1, 7.0)])
    publishing = asyncio.create_task(sink.run(interval_s=60))
    await asyncio.wait_for(landed.wait(), 10)
    publishing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await publishing
    result = await sink.flush()  # the worker's final flush after stopping the loop
    assert (result.sent, result.queued) == (1, 0)
    assert sink.acknowledged("shard-0") == 1
    when = minute_ago(200 - 1)
    assert await values_by_time(cloudwatch, names.PAGE_VIEWS, when, when) == {at(when): 7.0}
