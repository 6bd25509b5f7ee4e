"""S3 archive sink: keys and partitions, replays that overwrite, failures that keep the batch.

The integration tests write to moto through a real aiobotocore client (`aws` fixture)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow.parquet as pq
import pytest

from consumers.archive_format import IpPrivacy
from consumers.models import EnrichedHit, Rejection, UserRecord
from consumers.sinks.base import ArchiveWriteError
from consumers.sinks.s3_archive import S3ArchiveSink, archive_key
from service.aws import aws_client
from tests.consumers.test_archive_format import SHARD, T0, make_event

BUCKET = "archive-test"
Event = tuple[UserRecord, EnrichedHit, str | None]


def test_archive_key_layout() -> None:
    hour = int(datetime(2026, 11, 22, 7, tzinfo=UTC).timestamp() * 1000)
    assert archive_key("", "events", hour, SHARD, "4965", 7) == (
        f"events/dt=2026-11-22/hour=07/shard={SHARD}/4965-00007.parquet"
    )
    assert archive_key("/cafe/", "rejects", hour, "s", "1", 0) == (
        "cafe/rejects/dt=2026-11-22/hour=07/shard=s/1-00000.parquet"
    )


def test_pending_counts_records_bytes_and_age() -> None:
    now = [100.0]
    sink = S3ArchiveSink(None, BUCKET, SHARD, clock=lambda: now[0])
    assert (sink.pending.records, sink.pending.age_s) == (0, 0.0)
    record, hit, session = make_event(0)
    sink.add(record, hit, session)
    now[0] = 112.5
    sink.add_rejected(record, Rejection("empty", ""))
    pending = sink.pending
    assert (pending.records, pending.bytes, pending.age_s) == (2, 2 * len(record.line), 12.5)


# ----------------------------------------------------------------------------- integration


@pytest.fixture
async def s3(aws: str) -> AsyncIterator[Any]:
    async with aws_client("s3") as client:
        await client.create_bucket(Bucket=BUCKET)
        yield client


async def listing(s3: Any) -> dict[str, str]:
    """key -> ETag of every object in the bucket."""
    found: dict[str, str] = {}
    paginator = s3.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            found[item["Key"]] = item["ETag"]
    return found


async def archived_event_ids(s3: Any, kind: str = "events") -> list[str]:
    ids: list[str] = []
    for key in sorted(await listing(s3)):
        if f"{kind}/" not in key:
            continue
        body = await (await s3.get_object(Bucket=BUCKET, Key=key))["Body"].read()
        ids += pq.read_table(io.BytesIO(body)).column("event_id").to_pylist()
    return ids


def spanning_hours(count: int) -> list[Event]:
    """Events in shard order over 07:59 .. about 10:00, so every batch spans several hours."""
    return [make_event(i, when=T0 + i * (7_300 / count)) for i in range(count)]


async def run(sink: S3ArchiveSink, made: Sequence[Event], cuts: Sequence[int]) -> list[str]:
    """Add events, flushing after each index in `cuts` and at the end; return the keys."""
    keys: list[str] = []
    for index, (record, hit, session) in enumerate(made):
        sink.add(record, hit, session)
        if index in cuts:
            keys += (await sink.flush()).keys
    keys += (await sink.flush()).keys
    return keys


@pytest.mark.integration
async def test_flush_writes_one_object_per_hour_named_by_its_first_row(s3: Any) -> None:
    sink = S3ArchiveSink(s3, BUCKET, SHARD, prefix="cafe")
    made = spanning_hours(40)
    for record, hit, session in made:
        sink.add(record, hit, session)
    rejected = UserRecord(SHARD, "1003", 9, T0 + 5, "fp1:999", b"\x00junk")
    sink.add_rejected(rejected, Rejection("unknown_format", "not a log line"))
    result = await sink.flush()

    assert result.records == 41 and sink.pending.records == 0
    assert sorted(result.keys) == sorted(await listing(s3))
    events_keys = sorted(k for k in result.keys if "/events/" in k)
    assert events_keys == [
        f"cafe/events/dt=2026-11-22/hour=07/shard={SHARD}/1000-00000.parquet",
        f"cafe/events/dt=2026-11-22/hour=08/shard={SHARD}/1000-00001.parquet",
        f"cafe/events/dt=2026-11-22/hour=09/shard={SHARD}/1002-00001.parquet",
    ]
    assert [k for k in result.keys if "/rejects/" in k] == [
        f"cafe/rejects/dt=2026-11-22/hour=07/shard={SHARD}/1003-00009.parquet"
    ]
    assert sorted(await archived_event_ids(s3)) == sorted(r.event_id for r, _, _ in made)
    assert await archived_event_ids(s3, "rejects") == ["fp1:999"]
    head = await s3.head_object(Bucket=BUCKET, Key=events_keys[0])
    assert head["ContentType"] == "application/vnd.apache.parquet"
    assert (await sink.flush()).objects == 0


@pytest.mark.integration
async def test_replay_from_the_same_checkpoint_overwrites_the_same_keys(s3: Any) -> None:
    made = spanning_hours(60)
    first_keys = await run(S3ArchiveSink(s3, BUCKET, SHARD), made, cuts=[29])
    before = await listing(s3)

    # Crash before the checkpoint: a new sink replays the same records with the same cuts.
    replay_keys = await run(S3ArchiveSink(s3, BUCKET, SHARD), made, cuts=[29])

    assert replay_keys == first_keys
    assert await listing(s3) == before  # same keys, same count, byte-identical (same ETags)
    assert sorted(await archived_event_ids(s3)) == sorted(r.event_id for r, _, _ in made)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("original_cuts", "replay_cuts"),
    [
        ((), (10,)),  # the replay cuts sooner: the crashed batch's later hours are left behind
        ((10,), ()),  # the replay cuts later
        ((), (5, 25, 41)),
        ((17, 33), (2, 40)),
    ],
)
async def test_a_replay_cut_differently_never_duplicates_rows(
    s3: Any, original_cuts: tuple[int, ...], replay_cuts: tuple[int, ...]
) -> None:
    """The key rule (s3_archive docstring): after the checkpoint at C, whatever cut points a
    replay takes, every object the crashed run wrote is overwritten."""
    made = spanning_hours(48)
    checkpoint = 8  # records 0..8 were flushed and checkpointed before the crash
    await run(S3ArchiveSink(s3, BUCKET, SHARD), made[: checkpoint + 1], cuts=[])
    after = made[checkpoint + 1 :]
    # The crashed run flushed at each cut and checkpointed each of those flushes; its last
    # flush (at the end) wrote its objects, then the process died before the checkpoint.
    await run(S3ArchiveSink(s3, BUCKET, SHARD), after, cuts=original_cuts)
    # The replay restarts after the last checkpoint: at the first record of that last batch.
    last_start = (original_cuts[-1] + 1) if original_cuts else 0
    await run(S3ArchiveSink(s3, BUCKET, SHARD), after[last_start:], cuts=replay_cuts)

    ids = await archived_event_ids(s3)
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(r.event_id for r, _, _ in made)


@pytest.mark.integration
async def test_ip_privacy_reaches_the_archive(s3: Any) -> None:
    sink = S3ArchiveSink(s3, BUCKET, SHARD, IpPrivacy("truncated"))
    record, hit, session = make_event(0, ip="203.0.113.77")
    sink.add(record, hit, session)
    (key,) = (await sink.flush()).keys
    body = await (await s3.get_object(Bucket=BUCKET, Key=key))["Body"].read()
    row = pq.read_table(io.BytesIO(body)).to_pylist()[0]
    assert (row["client_ip"], row["raw_line"]) == ("203.0.113.0", None)
    assert b"203.0.113.77" not in body


@pytest.mark.integration
async def test_a_failed_flush_keeps_the_batch_and_the_retry_writes_it(s3: Any) -> None:
    failing = {"on": True}

    def refuse(**_: Any) -> None:
        if failing["on"]:
            raise ConnectionError("injected: S3 unreachable")

    s3.meta.events.register("before-call.s3.PutObject", refuse)
    sink = S3ArchiveSink(s3, BUCKET, SHARD, max_attempts=2, backoff_s=0.01)
    made = spanning_hours(10)
    for record, hit, session in made[:6]:
        sink.add(record, hit, session)
    with pytest.raises(ArchiveWriteError, match="not written"):
        await sink.flush()
    assert sink.stats.failed_puts >= 2 and sink.stats.failed_flushes == 1
    assert sink.pending.records == 6  # kept: the checkpoint must not move, the data is not lost

    for record, hit, session in made[6:]:
        sink.add(record, hit, session)
    failing["on"] = False
    result = await sink.flush()
    assert result.records == 10
    ids = await archived_event_ids(s3)
    assert ids == [r.event_id for r, _, _ in made]  # shard order, nothing lost or doubled


def test_add_batch_is_add_for_many_lines_at_once() -> None:
    made = [make_event(i) for i in range(3)]
    one = S3ArchiveSink(None, BUCKET, SHARD, clock=lambda: 5.0)
    many = S3ArchiveSink(None, BUCKET, SHARD, clock=lambda: 5.0)
    for record, hit, session in made:
        one.add(record, hit, session)
    records, hits, sessions = (list(column) for column in zip(*made, strict=True))
    many.add_batch(records, hits, sessions)
    many.add_batch([], [], [])
    assert many.pending == one.pending
    with pytest.raises(ValueError, match="parallel"):
        many.add_batch(records, hits, [])


@pytest.mark.integration
async def test_a_crash_in_the_middle_of_a_flush_is_repaired_by_the_replay(s3: Any) -> None:
    """kill -9 while the PUTs are in flight: some hours' objects written, others not."""

    def die_at_hour_09(params: dict[str, Any], **_: Any) -> None:
        if "/hour=09/" in params["Key"]:
            raise ConnectionError("injected: process killed mid-flush")

    made = spanning_hours(30)
    crashed = S3ArchiveSink(s3, BUCKET, SHARD, max_attempts=1)
    s3.meta.events.register("provide-client-params.s3.PutObject", die_at_hour_09, "die")
    with pytest.raises(ArchiveWriteError):
        await run(crashed, made, cuts=[])
    s3.meta.events.unregister("provide-client-params.s3.PutObject", unique_id="die")
    assert any("/hour=08/" in key for key in await listing(s3))

    await run(S3ArchiveSink(s3, BUCKET, SHARD), made, cuts=[3, 11])  # replay, cut elsewhere
    ids = await archived_event_ids(s3)
    assert sorted(ids) == sorted(r.event_id for r, _, _ in made)


@pytest.mark.integration
async def test_rows_added_one_by_one_and_in_batches_keep_shard_order(s3: Any) -> None:
    sink = S3ArchiveSink(s3, BUCKET, SHARD)
    made = [make_event(i) for i in range(600)]  # one hour, more rows than add() stages
    for record, hit, session in made[:300]:
        sink.add(record, hit, session)
    records, hits, sessions = (list(column) for column in zip(*made[300:350], strict=True))
    sink.add_batch(records, hits, sessions)
    for record, hit, session in made[350:]:
        sink.add(record, hit, session)
    assert sink.pending.records == 600
    result = await sink.flush()
    assert (result.records, result.objects) == (600, 1)
    assert await archived_event_ids(s3) == [r.event_id for r, _, _ in made]
