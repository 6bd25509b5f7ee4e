"""Records: every line arrives once, byte for byte, through aws-kinesis-agg's deaggregator."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.envelope import decode_payload
from agent.models import FileIdentity, Line
from agent.records import (
    DIGEST_SIZE,
    MAGIC,
    MAX_PUT_BYTES,
    MAX_PUT_RECORDS,
    MAX_RECORD_BYTES,
    OutRecord,
    RecordBuilder,
    reference_message,
    unpack,
)
from agent.shardmap import ShardMap, hash_key
from tests.agent.support import (
    combined_lines,
    deaggregate,
    even_map,
    junk_lines,
    lab_json_lines,
)

FILE = FileIdentity(device=1, inode=2, fingerprint="f1e2d3c4b5a69788")

big = st.integers(min_value=60_000, max_value=70_000).map(lambda n: b"9.9.9.9 " + b"\xff\t" * n)
any_line = st.one_of(combined_lines, combined_lines, lab_json_lines, junk_lines, big)


def drain(builder: RecordBuilder) -> list[OutRecord]:
    out = []
    for shard_id in builder.shard_ids():
        while records := builder.take(shard_id):
            assert len(records) <= MAX_PUT_RECORDS
            assert sum(r.size for r in records) <= MAX_PUT_BYTES
            out.extend(records)
    return out


def check_records(records: list[OutRecord], shard_map: ShardMap, max_record_bytes: int) -> None:
    shards = {s.shard_id: s for s in shard_map.shards}
    for record in records:
        shard = shards[record.shard_id]
        assert record.size == len(record.data) + len(record.partition_key.encode())
        assert record.size <= max_record_bytes
        assert len(record.partition_key) <= 256
        if record.aggregated:
            assert shard.covers(int(record.explicit_hash_key or "-1"))
            assert record.data.startswith(MAGIC)
            body = record.data[len(MAGIC) : -DIGEST_SIZE]
            # Byte for byte what aws-kinesis-agg's generated class writes for the same message.
            keys: list[str] = []
            entries = []
            for pk, payload in unpack(record.data):
                if pk not in keys:
                    keys.append(pk)
                entries.append((keys.index(pk), payload))
            assert reference_message(keys, entries) == body
        else:
            assert shard.covers(hash_key(record.partition_key))


def shipped(records: list[OutRecord], shard_map: ShardMap) -> dict[str, list[tuple[int, bytes]]]:
    """Per shard, the (offset, line) of every user record in order, as a consumer would see them."""
    per_shard: dict[str, list[tuple[int, bytes]]] = {}
    for record in records:
        for pk, payload in deaggregate([record.entry()]):
            # Every user record belongs to the shard its record is stored on (KCL filters on this).
            assert shard_map.shard_for(pk).shard_id == record.shard_id
            eid, line = decode_payload(payload)
            fingerprint, _, offset = eid.rpartition(":")
            assert fingerprint == FILE.fingerprint
            per_shard.setdefault(record.shard_id, []).append((int(offset), line))
    return per_shard


def offsets_of(lines: list[bytes], start: int = 0) -> list[int]:
    offsets, at = [], start
    for line in lines:
        offsets.append(at)
        at += len(line) + 1
    return offsets


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(any_line, max_size=120),
    shards=st.integers(min_value=1, max_value=4),
    max_record_bytes=st.sampled_from([1024, 4096, 150_000, MAX_RECORD_BYTES]),
    aggregate=st.booleans(),
)
def test_every_line_arrives_once_in_order_within_limits(
    lines: list[bytes], shards: int, max_record_bytes: int, aggregate: bool
) -> None:
    shard_map = even_map(shards)
    builder = RecordBuilder(shard_map, aggregate=aggregate, max_record_bytes=max_record_bytes)
    start = 17
    chunk = b"".join(line + b"\n" for line in lines)
    batch = builder.add_chunk(FILE, start, chunk, now=0.0) if lines else None
    records = drain(builder)
    check_records(records, shard_map, max_record_bytes)
    per_shard = shipped(records, shard_map)
    for sequence in per_shard.values():
        assert [o for o, _ in sequence] == sorted(o for o, _ in sequence)  # per-shard order kept
    got = sorted(item for sequence in per_shard.values() for item in sequence)
    expected = list(zip(offsets_of(lines, start), lines, strict=True))
    assert [o for o, _ in got] == [o for o, _ in expected]
    for (_, sent), (_, original) in zip(got, expected, strict=True):
        if sent != original:  # only a line too big for any Kinesis record is cut, never dropped
            assert builder.truncated_lines > 0
            assert original.startswith(sent)
            assert len(original) + 40 > max_record_bytes
    if batch is not None:
        assert batch.pending == len({id(r) for r in records if batch in r.batches})
        assert batch.ack().offset == start and batch.ack().end == start + len(chunk)


def test_visitor_lines_share_a_key_and_a_shard() -> None:
    shard_map = even_map(4)
    builder = RecordBuilder(shard_map)
    lines = [f"10.0.0.{i % 7} - - x {i}".encode() for i in range(1000)]
    builder.add_chunk(FILE, 0, b"".join(line + b"\n" for line in lines), now=0.0)
    keys: dict[str, set[str]] = {}
    for record in drain(builder):
        for pk, _ in unpack(record.data):
            keys.setdefault(pk, set()).add(record.shard_id)
    assert set(keys) == {f"10.0.0.{i}" for i in range(7)}
    assert all(len(shards) == 1 for shards in keys.values())


def test_lines_without_an_ip_use_their_event_id_as_key() -> None:
    builder = RecordBuilder(even_map(2))
    builder.add_chunk(FILE, 100, b"garbage\n\xff\xfe\n", now=0.0)
    keys = sorted(pk for r in drain(builder) for pk, _ in unpack(r.data))
    assert keys == [f"{FILE.fingerprint}:100", f"{FILE.fingerprint}:108"]


def test_json_lines_are_keyed_by_remote_ip() -> None:
    builder = RecordBuilder(even_map(2))
    lines = [b'{"time": "t", "remoteIP": "1.2.3.4"}', b'{"time": "t", "remoteIP": "5.6.7.8"}']
    builder.add_chunk(FILE, 0, b"\n".join(lines) + b"\n", now=0.0)
    keys = sorted(pk for r in drain(builder) for pk, _ in unpack(r.data))
    assert keys == ["1.2.3.4", "5.6.7.8"]


def test_a_one_mib_line_is_cut_to_fit_and_counted() -> None:
    builder = RecordBuilder(even_map(1))
    line = b"1.2.3.4 " + b"x" * MAX_RECORD_BYTES
    builder.add_chunk(FILE, 0, line + b"\n", now=0.0)
    (record,) = drain(builder)
    assert record.size <= MAX_RECORD_BYTES
    ((pk, payload),) = unpack(record.data)
    eid, sent = decode_payload(payload)
    assert (pk, eid) == ("1.2.3.4", f"{FILE.fingerprint}:0")
    assert line.startswith(sent) and len(sent) > MAX_RECORD_BYTES - 100
    assert builder.truncated_lines == 1


def test_chunk_must_hold_complete_lines() -> None:
    with pytest.raises(ValueError, match="newline"):
        RecordBuilder(even_map(1)).add_chunk(FILE, 0, b"1.2.3.4 partial", now=0.0)


def test_add_lines_makes_one_batch_per_contiguous_run() -> None:
    other = FileIdentity(1, 3, "0011")
    lines = [
        Line(FILE, 0, 10, b"1.2.3.4 a"),
        Line(FILE, 10, 20, b"1.2.3.4 b"),
        Line(other, 0, 5, b"1.2.3.5"),
        Line(FILE, 30, 40, b"1.2.3.4 c"),  # a gap: a new batch, never an ack across the gap
    ]
    builder = RecordBuilder(even_map(2))
    batches = builder.add_lines(lines, now=0.0)
    assert [(b.file, b.offset, b.end, b.lines) for b in batches] == [
        (FILE, 0, 20, 2),
        (other, 0, 5, 1),
        (FILE, 30, 40, 1),
    ]
    sent = sorted(decode_payload(p)[0] for r in drain(builder) for _, p in unpack(r.data))
    assert sent == sorted(
        ["f1e2d3c4b5a69788:0", "f1e2d3c4b5a69788:10", "0011:0", "f1e2d3c4b5a69788:30"]
    )


def test_waiting_and_take_respect_the_put_limits() -> None:
    builder = RecordBuilder(even_map(1), aggregate=False)
    lines = [b"1.2.3.%d %s" % (i % 250, b"y" * 20_000) for i in range(600)]
    builder.add_chunk(FILE, 0, b"".join(line + b"\n" for line in lines), now=5.0)
    (shard_id,) = builder.shard_ids()
    count, size, since = builder.waiting(shard_id)
    assert (count, since) == (600, 5.0)
    assert size > MAX_PUT_BYTES
    first = builder.take(shard_id)
    assert sum(r.size for r in first) <= MAX_PUT_BYTES
    assert len(first) < MAX_PUT_RECORDS
    rest = drain(builder)
    assert len(first) + len(rest) == 600
    assert builder.waiting(shard_id) == (0, 0, None)


@pytest.mark.parametrize("aggregate", [True, False])
def test_reshard_repacks_waiting_and_taken_records(aggregate: bool) -> None:
    before = even_map(1, prefix="parent-")
    after = even_map(2, prefix="child-")
    builder = RecordBuilder(before, aggregate=aggregate, max_record_bytes=4096)
    lines = [b"10.1.%d.%d - - hit" % (i % 13, i % 7) for i in range(400)]
    chunk = b"".join(line + b"\n" for line in lines)
    batch = builder.add_chunk(FILE, 0, chunk, now=0.0)
    taken = builder.take("parent-000000000000", max_records=3)  # in flight when the map changes
    builder.set_shard_map(after)
    assert not builder.is_current(taken[0])
    records = [moved for record in taken for moved in builder.reroute(record)]
    records += drain(builder)
    check_records(records, after, 4096)
    per_shard = shipped(records, after)
    assert sorted(line for seq in per_shard.values() for _, line in seq) == sorted(lines)
    assert batch.pending == len([r for r in records if batch in r.batches])


def test_md5_digest_is_checked_by_unpack() -> None:
    builder = RecordBuilder(even_map(1))
    builder.add_chunk(FILE, 0, b"1.2.3.4 a\n", now=0.0)
    (record,) = drain(builder)
    broken = record.data[:-1] + bytes([record.data[-1] ^ 1])
    with pytest.raises(ValueError, match="MD5"):
        unpack(broken)
    assert hashlib.md5(record.data[4:-16]).digest() == record.data[-16:]
