"""decode: every line the agent aggregates comes out once, byte for byte, with its event id and
the sub-sequence number the KCL would give it; on any input, the same split as aws-kinesis-agg."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

from aws_kinesis_agg.aggregator import RecordAggregator
from aws_kinesis_agg.deaggregator import iter_deaggregate_records
from aws_kinesis_agg.messages_pb2 import AggregatedRecord
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.envelope import decode_payload, encode_payload, event_id
from agent.models import FileIdentity
from agent.records import MAGIC, RecordBuilder
from consumers.decode import (
    arrival_seconds,
    decode_record,
    decode_records,
    split_envelope,
    sub_payloads,
    synthetic_event_id,
)
from consumers.models import UserRecord
from tests.agent.support import combined_lines, even_map, junk_lines, lab_json_lines

FILE = FileIdentity(device=1, inode=2, fingerprint="f1e2d3c4b5a69788f1e2d3c4b5a69788")

any_line = st.one_of(combined_lines, combined_lines, lab_json_lines, junk_lines)


def library_user_records(data: bytes) -> list[tuple[int, bytes]]:
    """(sub-sequence number, payload) as aws-kinesis-agg's deaggregator yields them."""
    shaped = {
        "Data": data,
        "PartitionKey": "pk",
        "SequenceNumber": "1",
        "ApproximateArrivalTimestamp": 0.0,
    }
    out = []
    for user in iter_deaggregate_records([shaped], data_format="Boto3"):
        kinesis = user["kinesis"]
        if kinesis.get("aggregated"):
            out.append((kinesis["subSequenceNumber"], base64.b64decode(kinesis["data"])))
        else:
            out.append((0, kinesis["data"]))
    return out


def ours(data: bytes) -> list[tuple[int, bytes]]:
    """(sub-sequence number, payload) of our decode, with the envelope put back together."""
    out = []
    for r in decode_record("shardId-000000000000", "1", 0.0, data):
        payload = (
            r.line if r.event_id.startswith("kinesis:") else encode_payload(r.event_id, r.line)
        )
        out.append((r.sub_sequence_number, payload))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(any_line, min_size=1, max_size=300),
    st.sampled_from([1024, 4096, 1024 * 1024]),
    st.booleans(),
)
def test_agent_records_decode_to_exact_lines(
    lines: list[bytes], max_record_bytes: int, aggregate: bool
) -> None:
    builder = RecordBuilder(even_map(2), aggregate=aggregate, max_record_bytes=max_record_bytes)
    chunk = b"".join(line + b"\n" for line in lines)
    builder.add_chunk(FILE, 1000, chunk, now=0.0)
    builder.seal_all()
    expected = {}
    offset = 1000
    for line in lines:
        expected[event_id(FILE.fingerprint, offset)] = line
        offset += len(line) + 1
    got: dict[str, bytes] = {}
    seq = 0
    for shard_id in builder.shard_ids():
        while records := builder.take(shard_id):
            for record in records:
                seq += 1
                users = decode_record(shard_id, str(seq), 12.5, record.data)
                assert [u.sub_sequence_number for u in users] == list(range(record.lines))
                for u in users:
                    assert (u.shard_id, u.sequence_number, u.arrival_time) == (
                        shard_id,
                        str(seq),
                        12.5,
                    )
                    assert u.event_id not in got
                    got[u.event_id] = u.line
    # Lines longer than a record are cut by the agent (and counted there); all others are exact.
    assert set(got) == set(expected)
    for eid, line in got.items():
        if len(expected[eid]) < max_record_bytes // 2:
            assert line == expected[eid]
        else:
            assert expected[eid].startswith(line)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=20), st.binary(max_size=300)), max_size=80))
def test_library_aggregated_records_match_the_library_deaggregator(
    users: list[tuple[str, bytes]],
) -> None:
    aggregator = RecordAggregator(max_size=8 * 1024)
    full = [r for pk, data in users if (r := aggregator.add_user_record(pk, data)) is not None]
    if (last := aggregator.clear_and_get()) is not None:
        full.append(last)
    flattened: list[bytes] = []
    for record in full:
        _, _, data = record.get_contents()
        assert ours(data) == library_user_records(data)
        flattened.extend(p for _, p in ours(data))
    assert flattened == [data for _, data in users]


def _library_would_fail(body: bytes) -> bool:
    """The library stops (printing an error) at a sub-record whose key index is out of range;
    we hand such sub-records on, since partition keys play no part in what we decode."""
    try:
        message = AggregatedRecord.FromString(body)
    except DecodeError:
        return False
    keys, hashes = len(message.partition_key_table), len(message.explicit_hash_key_table)
    return any(
        r.partition_key_index >= keys or (hashes and r.explicit_hash_key_index >= hashes)
        for r in message.records
    )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["raw", "magic", "digest", "bad-digest"]))
def test_any_bytes_split_like_the_library(body: bytes, shape: str) -> None:
    digest = hashlib.md5(body).digest()
    data = {
        "raw": body,
        "magic": MAGIC + body,
        "digest": MAGIC + body + digest,
        "bad-digest": MAGIC + body + bytes(b ^ 1 for b in digest),
    }[shape]
    if shape == "digest" and _library_would_fail(body):
        return
    assert ours(data) == library_user_records(data)


def test_plain_agent_record_is_one_user_record_with_sub_zero() -> None:
    payload = encode_payload("abc123:42", b'1.2.3.4 - - "GET /cafe"\tx')
    [user] = decode_record("shardId-1", "495", 3.0, payload)
    assert user == UserRecord(
        "shardId-1", "495", 0, 3.0, "abc123:42", b'1.2.3.4 - - "GET /cafe"\tx'
    )


def test_foreign_payloads_keep_every_byte_under_a_synthetic_id() -> None:
    for foreign in (b"", b"no tab at all", b"key\tvalue", b"abc:12x\tline", b"\xff\xfe:1\tline"):
        [user] = decode_record("shardId-7", "900", 0.0, foreign)
        assert user.line == foreign
        assert (
            user.event_id == synthetic_event_id("shardId-7", "900", 0) == "kinesis:shardId-7:900:0"
        )


def test_foreign_sub_records_get_their_own_synthetic_ids() -> None:
    aggregator = RecordAggregator()
    for data in (b"plain one", encode_payload("ff00:7", b"ours"), b"plain two"):
        aggregator.add_user_record("pk", data)
    record = aggregator.clear_and_get()
    assert record is not None
    users = decode_record("shardId-2", "55", 0.0, record.get_contents()[2])
    assert [(u.event_id, u.line) for u in users] == [
        ("kinesis:shardId-2:55:0", b"plain one"),
        ("ff00:7", b"ours"),
        ("kinesis:shardId-2:55:2", b"plain two"),
    ]


@given(
    st.text(alphabet="0123456789abcdef", min_size=1, max_size=40), st.integers(0, 2**63), junk_lines
)
def test_split_envelope_agrees_with_the_agent_envelope(fp: str, offset: int, line: bytes) -> None:
    payload = encode_payload(event_id(fp, offset), line)
    assert split_envelope(payload) == decode_payload(payload)


def test_empty_aggregated_record_has_no_user_records() -> None:
    body = AggregatedRecord().SerializeToString() + b"\x0a\x01k"  # a key table, no records
    data = MAGIC + body + hashlib.md5(body).digest()
    assert sub_payloads(data) == []
    assert decode_record("s", "1", 0.0, data) == []


def test_decode_records_takes_get_records_shape() -> None:
    when = datetime(2026, 11, 22, 1, 0, tzinfo=UTC)
    response = [
        {"SequenceNumber": "1", "ApproximateArrivalTimestamp": when, "Data": b"ab:1\tx"},
        {"SequenceNumber": "2", "ApproximateArrivalTimestamp": when, "Data": b"ab:2\ty"},
    ]
    users = decode_records("shardId-0", response)
    assert [(u.sequence_number, u.event_id, u.line) for u in users] == [
        ("1", "ab:1", b"x"),
        ("2", "ab:2", b"y"),
    ]
    assert users[0].arrival_time == arrival_seconds(when) == when.timestamp()
