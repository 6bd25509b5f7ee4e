"""One Kinesis record -> the user records (log lines) inside it. Pure: no I/O.

A record is either a KPL aggregated record (magic ``F3 89 9A C2``, an ``AggregatedRecord``
protobuf message from aws-kinesis-agg's ``messages.proto``, then the MD5 of that message) or a
plain record. The rules are aws-kinesis-agg's deaggregator's, so that we split exactly where the
KCL and that library split:

- magic, intact digest and a message that parses: one user record per ``records`` entry, with
  ``sub_sequence_number`` = its index (what the KCL checkpoints as the sub-sequence number);
- anything else (no magic, too short, wrong digest, not a protobuf message): the whole record is
  one user record with sub-sequence number 0.

Each user record's data is then the agent's envelope (`agent.envelope`): ``<event id> TAB <line>``.
A payload that is not an envelope (another producer writes to the stream, or a corrupted record)
is still handed on, never dropped: its whole data is the line, and its event id is synthetic,
``kinesis:<shard id>:<sequence number>:<sub-sequence number>``. That id is deterministic (a replay
of the same record carries the same id, so it is still recognisable as a duplicate) and cannot be
mistaken for an agent id (a file fingerprint is a hex digest). An envelope is accepted only
when the text before the first tab has the shape the envelope module promises,
``<fingerprint>:<decimal offset>`` in UTF-8, so a foreign line that merely contains a tab is less
likely to be split at it.

Why the protobuf is parsed here with the library's generated class rather than through its
``iter_deaggregate_records``: the library builds two dicts per user record and base64-encodes each
payload (Lambda's shape), which costs several times more than the whole decode below
(``bench/decode_throughput.py``). The generated class is the same format, and
`tests/consumers/test_decode.py` checks that both give the same user records on arbitrary input.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from itertools import repeat
from operator import attrgetter, itemgetter
from typing import Any, Final

import aws_kinesis_agg

# Importing the aggregator puts the generated modules' own directory on sys.path, which
# messages_pb2 needs (it does `import config_pb2`).
import aws_kinesis_agg.aggregator
from aws_kinesis_agg.messages_pb2 import AggregatedRecord
from google.protobuf.message import DecodeError

from agent.envelope import SEPARATOR
from consumers.models import UserRecord, fast_constructor, mutable_twin

MAGIC: Final[bytes] = aws_kinesis_agg.MAGIC
DIGEST_SIZE: Final[int] = aws_kinesis_agg.DIGEST_SIZE
SYNTHETIC_PREFIX: Final[str] = "kinesis:"

_new_user_record: Final[Callable[..., UserRecord]] = fast_constructor(UserRecord)
_MutableUserRecord: Final = mutable_twin(UserRecord)  # see consumers.models.fast_constructor
_data_of: Final = attrgetter("data")
_first, _second, _third = itemgetter(0), itemgetter(1), itemgetter(2)


def synthetic_event_id(shard_id: str, sequence_number: str, sub_sequence_number: int) -> str:
    """The event id of a user record that carries no envelope of ours (see the module notes)."""
    return f"{SYNTHETIC_PREFIX}{shard_id}:{sequence_number}:{sub_sequence_number}"


def split_envelope(payload: bytes) -> tuple[str, bytes] | None:
    """(event id, line) when `payload` is an agent envelope, else None.

    The same split as `agent.envelope.decode_payload` (first tab), restricted to ids of the shape
    `agent.envelope.event_id` writes: ``<fingerprint>:<decimal offset>``.
    """
    eid, sep, line = payload.partition(SEPARATOR)
    if not sep:
        return None
    fingerprint, colon, offset = eid.rpartition(b":")
    if not colon or not fingerprint or not offset.isdigit():
        return None
    try:
        return eid.decode(), line
    except UnicodeDecodeError:
        return None


def sub_payloads(data: bytes) -> list[bytes] | None:
    """The user-record payloads of a KPL aggregated record, or None if `data` is not one intact
    (in which case the library, and we, treat it as a plain record)."""
    if len(data) <= len(MAGIC) + DIGEST_SIZE or not data.startswith(MAGIC):
        return None
    body = data[len(MAGIC) : -DIGEST_SIZE]
    if hashlib.md5(body, usedforsecurity=False).digest() != data[-DIGEST_SIZE:]:
        return None
    try:
        message = AggregatedRecord.FromString(body)
    except DecodeError:
        return None
    return list(map(_data_of, message.records))


def decode_record(
    shard_id: str, sequence_number: str, arrival_time: float, data: bytes
) -> list[UserRecord]:
    """Every user record of one Kinesis record, in order, with its sub-sequence number.

    An aggregated record with no entries gives an empty list (there is nothing to hand on, and
    its position is still covered by the batch that carried it).
    """
    payloads = sub_payloads(data)
    if payloads is None:
        payloads = [data]
    count = len(payloads)
    envelopes = _envelopes(payloads)
    if envelopes is None:
        return _decode_one_by_one(shard_id, sequence_number, arrival_time, payloads)
    event_ids, lines = envelopes
    out: list[UserRecord] = list(
        map(
            _MutableUserRecord,
            repeat(shard_id, count),
            repeat(sequence_number, count),
            range(count),
            repeat(arrival_time, count),
            event_ids,
            lines,
        )
    )
    for record in out:
        record.__class__ = UserRecord
    return out


_ENVELOPE_IDS: Final = re.compile(rb"(?:[^\n]+:[0-9]+\n)*[^\n]+:[0-9]+")
"""Event ids joined by newlines, each of the shape `split_envelope` accepts: whatever the
regex accepts, every id in it has a non-empty fingerprint before its last colon and only
digits after it (a newline inside an id is still a separator here, so an id can only be
accepted as a run of well-formed pieces, which is well-formed itself)."""


def _envelopes(payloads: list[bytes]) -> tuple[list[str], list[bytes]] | None:
    """(event ids, lines) of `payloads` when every one is an agent envelope (the rule of
    `split_envelope`), else None. Checked for all the payloads at once, in C: one partition per
    payload, one regex match and one UTF-8 decode for the record."""
    if not payloads:
        return [], []
    parts = list(map(bytes.partition, payloads, repeat(b"\t")))
    if list(map(_second, parts)).count(b"\t") != len(parts):
        return None
    ids = list(map(_first, parts))
    joined = b"\n".join(ids)
    if _ENVELOPE_IDS.fullmatch(joined) is None:
        return None
    try:
        texts = joined.decode().split("\n")
    except UnicodeDecodeError:
        return None
    return (texts, list(map(_third, parts))) if len(texts) == len(ids) else None


def _decode_one_by_one(
    shard_id: str, sequence_number: str, arrival_time: float, payloads: list[bytes]
) -> list[UserRecord]:
    """`decode_record` for payloads not all of which are envelopes: each on its own."""
    out: list[UserRecord] = []
    append = out.append
    new = _new_user_record
    for sub, payload in enumerate(payloads):
        envelope = split_envelope(payload)
        if envelope is None:
            synthetic = synthetic_event_id(shard_id, sequence_number, sub)
            append(new(shard_id, sequence_number, sub, arrival_time, synthetic, payload))
        else:
            append(new(shard_id, sequence_number, sub, arrival_time, *envelope))
    return out


def arrival_seconds(value: Any) -> float:
    """ApproximateArrivalTimestamp as epoch seconds (botocore parses it to a datetime)."""
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value)


def decode_records(shard_id: str, records: Iterable[Mapping[str, Any]]) -> list[UserRecord]:
    """The user records of a GetRecords response's ``Records``, in shard order."""
    out: list[UserRecord] = []
    for record in records:
        out.extend(
            decode_record(
                shard_id,
                record["SequenceNumber"],
                arrival_seconds(record["ApproximateArrivalTimestamp"]),
                record["Data"],
            )
        )
    return out
