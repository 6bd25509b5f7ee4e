"""Lines -> Kinesis records, grouped by the shard each line's partition key hashes to. Pure: no I/O.

Each line becomes a *user record*: partition key = its client IP (`client_ip.py`), data = the
envelope ``<event id> TAB <line>`` (`envelope.py`). With aggregation on (the default), the user
records bound for one shard are packed into KPL aggregated records: the format the KPL writes and
the KCL, `aws-kinesis-agg` and our consumer read (magic ``F3 89 9A C2``, an ``AggregatedRecord``
protobuf message from aws-kinesis-agg's ``messages.proto``, then the MD5 of that message). Each
aggregated record carries an ExplicitHashKey inside its shard's range, so Kinesis stores it on the
shard whose range covers every user record inside it (a KCL consumer drops sub-records that do not
belong to its shard). With aggregation off, every line is one Kinesis record, for consumers that
cannot deaggregate.

Why the protobuf is written here rather than by the generated class: building one ``Record``
message object per line costs ~1.6 µs (measured), more than the whole per-line budget of the
300,000 lines/s target. The wire encoding of this message is tiny (two length-delimited fields and
one varint), so the hot loop writes exactly the bytes ``AggregatedRecord.SerializeToString()``
produces; `tests/agent/test_records.py` checks byte equality with the generated class and a round
trip through aws-kinesis-agg's deaggregator on arbitrary input. `reroute` parses records back with
the generated class.

Lines arrive in *batches*: a contiguous run of lines of one file. A batch is acknowledged as one
`Ack` once every record carrying any of its lines has been accepted by Kinesis; the shipper
counts that down with `Batch.pending`.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import aws_kinesis_agg

# Importing the aggregator puts the generated modules' own directory on sys.path, which
# messages_pb2 needs (it does `import config_pb2`).
import aws_kinesis_agg.aggregator
from aws_kinesis_agg.messages_pb2 import AggregatedRecord

from agent.client_ip import json_remote_ip, normalise_ip
from agent.models import Ack, FileIdentity, Line
from agent.shardmap import ShardMap, hash_key

MAGIC: bytes = aws_kinesis_agg.MAGIC
DIGEST_SIZE = 16
# Kinesis limits (PutRecords API reference). A record's size counts its data and partition key.
MAX_RECORD_BYTES = 1024 * 1024
MAX_PUT_RECORDS = 500
MAX_PUT_BYTES = 5 * 1024 * 1024
MAX_PARTITION_KEY_CHARS = 256

_ROUTE_CACHE_LIMIT = 100_000
_AGG_OVERHEAD = len(MAGIC) + DIGEST_SIZE


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Precomputed varints below 2**14 (up to two bytes): every index and nearly every length.
_SMALL = 1 << 14
_VARINT = [varint(i) for i in range(_SMALL)]


def _v(value: int) -> bytes:
    return _VARINT[value] if value < _SMALL else varint(value)


def _pk_table_entry(partition_key: str) -> bytes:
    """Field 1 of AggregatedRecord (partition_key_table), one entry."""
    raw = partition_key.encode()
    return b"\x0a" + _v(len(raw)) + raw


def _user_record(pk_index: int, payload: bytes) -> bytes:
    """Field 3 of AggregatedRecord (records): a Record with partition_key_index and data."""
    vi = _v(pk_index)
    vp = _v(len(payload))
    inner = 2 + len(vi) + len(vp) + len(payload)
    return b"\x1a" + _v(inner) + b"\x08" + vi + b"\x1a" + vp + payload


@dataclass(slots=True, eq=False)
class Batch:
    """A contiguous run of lines of one file, acknowledged as a whole.

    `pending` counts the records holding at least one of its lines that Kinesis has not accepted
    yet; it only reaches zero once the whole batch has been packed (packing is synchronous).
    """

    file: FileIdentity
    offset: int
    end: int
    lines: int
    nbytes: int
    pending: int = 0

    def ack(self) -> Ack:
        return Ack(self.file, self.offset, self.end)


@dataclass(slots=True, eq=False)
class OutRecord:
    """One PutRecords entry and the batches whose lines it carries."""

    shard_id: str
    partition_key: str
    explicit_hash_key: str | None
    data: bytes
    lines: int
    batches: list[Batch]
    since: float
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = len(self.data) + len(self.partition_key.encode())

    @property
    def aggregated(self) -> bool:
        return self.explicit_hash_key is not None

    def entry(self) -> dict[str, Any]:
        if self.explicit_hash_key is None:
            return {"Data": self.data, "PartitionKey": self.partition_key}
        return {
            "Data": self.data,
            "PartitionKey": self.partition_key,
            "ExplicitHashKey": self.explicit_hash_key,
        }


class _Open:
    """The aggregated record being filled for one shard."""

    __slots__ = (
        "batches",
        "budget",
        "last_batch",
        "lines",
        "outer_pk",
        "parts",
        "pk_index",
        "pk_parts",
        "since",
        "size",
    )

    def __init__(self, outer_pk: str, max_record_bytes: int, since: float) -> None:
        self.outer_pk = outer_pk
        # Bytes left for the protobuf message once magic, digest and partition key are counted.
        self.budget = max_record_bytes - _AGG_OVERHEAD - len(outer_pk.encode())
        self.pk_index: dict[str, int] = {}
        self.pk_parts: list[bytes] = []
        self.parts: list[bytes] = []
        self.size = 0
        self.lines = 0
        self.batches: list[Batch] = []
        self.last_batch: Batch | None = None
        self.since = since


_JSON = object()  # route-cache marker: the first field opens a JSON line, look inside it
_NO_IP = object()  # route-cache marker: not an IP, use the fallback key

_Route = tuple[str, int, bytes]  # partition key, shard index, its partition_key_table entry


class RecordBuilder:
    """Packs batches of lines into per-shard records, and holds them until the shipper takes them.

    `now` arguments are the caller's monotonic clock: the builder only remembers since when a
    shard has had lines waiting, for the shipper's linger.
    """

    def __init__(
        self,
        shard_map: ShardMap,
        *,
        aggregate: bool = True,
        max_record_bytes: int = MAX_RECORD_BYTES,
    ) -> None:
        if max_record_bytes > MAX_RECORD_BYTES or max_record_bytes < 1024:
            raise ValueError(f"max_record_bytes must be 1024..{MAX_RECORD_BYTES}")
        self.aggregate = aggregate
        self.max_record_bytes = max_record_bytes
        self.truncated_lines = 0
        self.lines_added = 0
        self._route: dict[bytes, Any] = {}
        self._install(shard_map)

    def _install(self, shard_map: ShardMap) -> None:
        self._map = shard_map
        self._index = {s.shard_id: i for i, s in enumerate(shard_map.shards)}
        self._open: list[_Open | None] = [None] * len(shard_map)
        self._sealed: list[deque[OutRecord]] = [deque() for _ in shard_map.shards]
        self._sealed_bytes = [0] * len(shard_map)
        self._route.clear()

    @property
    def shard_map(self) -> ShardMap:
        return self._map

    # ---- input -------------------------------------------------------------------------------

    def add_chunk(self, file: FileIdentity, offset: int, chunk: bytes, now: float) -> Batch:
        """Complete lines, each ending in b"\\n", read from `file` at byte `offset`.

        The fast path: the tailer hands over what it read, no per-line objects are built.
        """
        if not chunk.endswith(b"\n"):
            raise ValueError("a chunk must end with a newline (complete lines only)")
        datas = chunk.split(b"\n")
        datas.pop()
        batch = Batch(file, offset, offset + len(chunk), len(datas), len(chunk))
        self._add(file, datas, None, offset, batch, now)
        return batch

    def add_lines(self, lines: Sequence[Line], now: float) -> list[Batch]:
        """`Line`s in file order; each contiguous run of one file becomes one batch."""
        batches = []
        for run in _runs(lines):
            first, last = run[0], run[-1]
            datas = [line.data for line in run]
            nbytes = sum(map(len, datas)) + len(datas)
            batch = Batch(first.file, first.offset, last.end, len(run), nbytes)
            self._add(first.file, datas, [line.offset for line in run], 0, batch, now)
            batches.append(batch)
        return batches

    def _add(
        self,
        file: FileIdentity,
        datas: list[bytes],
        offsets: list[int] | None,
        offset: int,
        batch: Batch,
        now: float,
    ) -> None:
        """Route every line to its shard, then pack each shard's lines (two tight loops).

        `offsets` are the lines' offsets, or None when the lines are contiguous from `offset`.
        """
        prefix = file.fingerprint.encode() + b":"
        route = self._route
        groups: list[list[tuple[_Route, bytes, int]]] = [[] for _ in self._open]
        appends = [g.append for g in groups]
        if offsets is None:  # contiguous lines (a chunk): offsets follow from the lengths
            off = offset
            for data in datas:
                space = data.find(b" ")
                r = route.get(data if space < 0 else data[:space])
                if r.__class__ is not tuple:
                    r = self._resolve(data, space, r, prefix, off)
                appends[r[1]]((r, data, off))
                off += len(data) + 1
        else:
            for data, off in zip(datas, offsets, strict=True):
                space = data.find(b" ")
                r = route.get(data if space < 0 else data[:space])
                if r.__class__ is not tuple:
                    r = self._resolve(data, space, r, prefix, off)
                appends[r[1]]((r, data, off))
        pack = self._pack if self.aggregate else self._pack_single
        for idx, group in enumerate(groups):
            if group:
                pack(idx, group, prefix, batch, now)
        self.lines_added += batch.lines

    def _pack(
        self,
        idx: int,
        group: list[tuple[_Route, bytes, int]],
        prefix: bytes,
        batch: Batch,
        now: float,
    ) -> None:
        """Append one shard's lines to its open aggregated record, sealing it whenever it is full.

        The hot loop of the agent: state lives in locals, and each user record is written with a
        single bytes format (the offset's digit count changes rarely, so it is tracked, not
        recomputed).
        """
        o = self._open[idx]
        if o is None:
            o = self._open[idx] = _Open(group[0][0][0], self.max_record_bytes, now)
        _join(o, batch)
        pk_index, pk_parts, append = o.pk_index, o.pk_parts, o.parts.append
        size, budget, lines = o.size, o.budget, o.lines
        varints, small = _VARINT, _SMALL
        base = len(prefix) + 1
        threshold = digits = 0
        for r, data, off in group:
            if off >= threshold:  # offsets only grow within a batch
                digits = len(str(off))
                threshold = 10**digits
            pk = r[0]
            i = pk_index.get(pk)
            if i is None:
                i = len(pk_parts)
                grow = len(r[2])
            else:
                grow = 0
            plen = base + digits + len(data)
            vi = varints[i] if i < small else varint(i)
            vp = varints[plen] if plen < small else varint(plen)
            inner = 2 + len(vi) + len(vp) + plen
            part = b"\x1a%b\x08%b\x1a%b%b%d\t%b" % (
                varints[inner] if inner < small else varint(inner),
                vi,
                vp,
                prefix,
                off,
                data,
            )
            grow += len(part)
            if size + grow > budget:
                o.size, o.lines = size, lines
                o = self._overflow(idx, pk, r[2], b"%b%d\t%b" % (prefix, off, data), batch, now)
                pk_index, pk_parts, append = o.pk_index, o.pk_parts, o.parts.append
                size, budget, lines = o.size, o.budget, o.lines
                continue
            if grow != len(part):
                pk_index[pk] = i
                pk_parts.append(r[2])
            append(part)
            size += grow
            lines += 1
        o.size, o.lines = size, lines

    def _resolve(self, data: bytes, space: int, cached: Any, prefix: bytes, offset: int) -> _Route:
        """The slow path of routing: a first field not seen yet, a JSON line, or no IP at all."""
        key = data if space < 0 else data[:space]
        if cached is None:
            if key[:1] == b"{":
                cached = _JSON
            else:
                ip = normalise_ip(key)
                cached = _NO_IP if ip is None else self._route_for(ip)
            self._remember(key, cached)
            if cached.__class__ is tuple:
                return cached
        if cached is _JSON:
            raw = json_remote_ip(data)
            if raw is not None:
                hit = self._route.get(raw)
                if hit.__class__ is tuple:
                    return hit
                ip = normalise_ip(raw)
                if ip is not None:
                    found = self._route_for(ip)
                    self._remember(raw, found)
                    return found
        # No client IP: the event id is the key, so the line still ships (and spreads evenly).
        fallback = (prefix + b"%d" % offset).decode(errors="replace")
        return self._route_for(fallback[-MAX_PARTITION_KEY_CHARS:])

    def _route_for(self, partition_key: str) -> _Route:
        idx = self._map.index_of_key(hash_key(partition_key))
        return (partition_key, idx, _pk_table_entry(partition_key))

    def _remember(self, key: bytes, value: Any) -> None:
        if len(self._route) >= _ROUTE_CACHE_LIMIT:
            self._route.clear()
        self._route[key] = value

    def _overflow(
        self, idx: int, pk: str, pk_entry: bytes, payload: bytes, batch: Batch, now: float
    ) -> _Open:
        """The open record cannot take this line: seal it and start a new one with the line."""
        self._seal(idx)
        o = self._open[idx] = _Open(pk, self.max_record_bytes, now)
        part = _user_record(0, payload)
        excess = len(pk_entry) + len(part) - o.budget
        if excess > 0:
            # A line larger than a Kinesis record (DESIGN.md: 1 MiB lines happen). Ship its head
            # under its own event id so the consumer sees, rejects and counts it; never drop.
            self.truncated_lines += 1
            payload = payload[: len(payload) - excess - 8]
            part = _user_record(0, payload)
        o.pk_index[pk] = 0
        o.pk_parts.append(pk_entry)
        o.parts.append(part)
        o.size = len(pk_entry) + len(part)
        o.lines = 1
        _join(o, batch)
        return o

    def _pack_single(
        self,
        idx: int,
        group: list[tuple[_Route, bytes, int]],
        prefix: bytes,
        batch: Batch,
        now: float,
    ) -> None:
        """Aggregation off: one Kinesis record per line, which Kinesis routes by its key."""
        shard_id = self._map.shards[idx].shard_id
        sealed = self._sealed[idx]
        total = 0
        for r, data, off in group:
            pk = r[0]
            payload = b"%b%d\t%b" % (prefix, off, data)
            limit = self.max_record_bytes - len(pk)
            if len(payload) > limit:
                self.truncated_lines += 1
                payload = payload[:limit]
            record = OutRecord(shard_id, pk, None, payload, 1, [batch], now)
            sealed.append(record)
            total += record.size
        batch.pending += len(group)
        self._sealed_bytes[idx] += total

    # ---- output ------------------------------------------------------------------------------

    def _seal(self, idx: int) -> None:
        o = self._open[idx]
        self._open[idx] = None
        if o is None:
            return
        if not o.lines:  # joined by a batch whose first line did not fit: nothing to wait for
            for batch in o.batches:
                batch.pending -= 1
            return
        body = b"".join(chain(o.pk_parts, o.parts))
        data = b"".join((MAGIC, body, hashlib.md5(body, usedforsecurity=False).digest()))
        shard = self._map.shards[idx]
        record = OutRecord(
            shard.shard_id, o.outer_pk, shard.explicit_hash_key, data, o.lines, o.batches, o.since
        )
        self._sealed[idx].append(record)
        self._sealed_bytes[idx] += record.size

    def shard_ids(self) -> list[str]:
        return [s.shard_id for s in self._map.shards]

    def waiting(self, shard_id: str) -> tuple[int, int, float | None]:
        """(records, bytes, since) not yet taken for a shard; `since` is the oldest line's arrival.

        Records and bytes count the open aggregated record as one record of its current size.
        """
        idx = self._index.get(shard_id)
        if idx is None:
            return 0, 0, None
        sealed = self._sealed[idx]
        o = self._open[idx]
        count, size = len(sealed), self._sealed_bytes[idx]
        since = sealed[0].since if sealed else None
        if o is not None and o.lines:
            count += 1
            size += o.size + _AGG_OVERHEAD + len(o.outer_pk)
            since = o.since if since is None else since
        return count, size, since

    def take(
        self, shard_id: str, max_records: int = MAX_PUT_RECORDS, max_bytes: int = MAX_PUT_BYTES
    ) -> list[OutRecord]:
        """Records for one PutRecords call to `shard_id`, oldest first, within the call's limits.

        The open aggregated record is sealed and included when it fits: whoever takes is about to
        send, and a partial record now beats a full one a linger later.
        """
        idx = self._index.get(shard_id)
        if idx is None:
            return []
        sealed = self._sealed[idx]
        if len(sealed) < max_records and self._open[idx] is not None:
            o = self._open[idx]
            assert o is not None
            pending = self._sealed_bytes[idx] + o.size + _AGG_OVERHEAD + len(o.outer_pk)
            if pending <= max_bytes or not sealed:
                self._seal(idx)
        out: list[OutRecord] = []
        size = 0
        while sealed and len(out) < max_records and (not out or size + sealed[0].size <= max_bytes):
            record = sealed.popleft()
            size += record.size
            out.append(record)
        self._sealed_bytes[idx] -= size
        return out

    def seal_all(self) -> None:
        for idx in range(len(self._open)):
            self._seal(idx)

    # ---- resharding --------------------------------------------------------------------------

    def set_shard_map(self, shard_map: ShardMap) -> None:
        """Adopt a new shard map; records waiting for shards that closed are re-packed."""
        if shard_map == self._map:
            return
        self.seal_all()
        old_shards, old_sealed = self._map.shards, self._sealed
        self._install(shard_map)
        new_index = {s: i for i, s in enumerate(shard_map.shards)}
        leftovers: list[OutRecord] = []
        for shard, records in zip(old_shards, old_sealed, strict=True):
            idx = new_index.get(shard)
            if idx is None:
                leftovers.extend(records)
            else:
                self._sealed[idx] = records
                self._sealed_bytes[idx] = sum(r.size for r in records)
        for record in leftovers:
            for moved in self.reroute(record):
                idx = self._index[moved.shard_id]
                self._sealed[idx].append(moved)
                self._sealed_bytes[idx] += moved.size

    def is_current(self, record: OutRecord) -> bool:
        return record.shard_id in self._index

    def reroute(self, record: OutRecord) -> list[OutRecord]:
        """Re-pack a record built for a shard that no longer exists, under the current map.

        The batches of the old record are carried by every new one (their `pending` grows to
        match), so a batch is acknowledged only once all the pieces are in.
        """
        if not record.aggregated:
            idx = self._map.index_of_key(hash_key(record.partition_key))
            record.shard_id = self._map.shards[idx].shard_id
            return [record]
        pieces: dict[int, list[_Open]] = {}
        for pk, payload in unpack(record.data):
            idx = self._map.index_of_key(hash_key(pk))
            opens = pieces.setdefault(idx, [])
            pk_entry = _pk_table_entry(pk)
            if not opens or not _fits(opens[-1], pk, pk_entry, payload):
                opens.append(_Open(pk, self.max_record_bytes, record.since))
            o = opens[-1]
            i = o.pk_index.get(pk)
            if i is None:
                i = o.pk_index[pk] = len(o.pk_parts)
                o.pk_parts.append(pk_entry)
                o.size += len(pk_entry)
            part = _user_record(i, payload)
            o.parts.append(part)
            o.size += len(part)
            o.lines += 1
        out = []
        for idx, opens in pieces.items():
            shard = self._map.shards[idx]
            for o in opens:
                body = b"".join(chain(o.pk_parts, o.parts))
                data = MAGIC + body + hashlib.md5(body, usedforsecurity=False).digest()
                out.append(
                    OutRecord(
                        shard.shard_id,
                        o.outer_pk,
                        shard.explicit_hash_key,
                        data,
                        o.lines,
                        list(record.batches),
                        record.since,
                    )
                )
        for batch in record.batches:
            batch.pending += len(out) - 1
        return out


def _join(o: _Open, batch: Batch) -> None:
    """Note that `o` carries lines of `batch` (once per batch)."""
    if o.last_batch is not batch:
        o.last_batch = batch
        o.batches.append(batch)
        batch.pending += 1


def _fits(o: _Open, pk: str, pk_entry: bytes, payload: bytes) -> bool:
    grow = len(_user_record(len(o.pk_parts), payload))
    if pk not in o.pk_index:
        grow += len(pk_entry)
    return o.size + grow <= o.budget


def _runs(lines: Sequence[Line]) -> Iterator[Sequence[Line]]:
    """Split `lines` where the file changes or a line does not start where the previous ended."""
    start = 0
    for i in range(1, len(lines)):
        prev, line = lines[i - 1], lines[i]
        if line.file != prev.file or line.offset != prev.end:
            yield lines[start:i]
            start = i
    if lines:
        yield lines[start:]


def unpack(data: bytes) -> list[tuple[str, bytes]]:
    """(partition key, payload) of each user record of one aggregated record, with the library's
    generated class. Raises ValueError when `data` is not an intact aggregated record."""
    if not data.startswith(MAGIC) or len(data) < _AGG_OVERHEAD:
        raise ValueError("not a KPL aggregated record (no magic)")
    body, digest = data[len(MAGIC) : -DIGEST_SIZE], data[-DIGEST_SIZE:]
    if hashlib.md5(body, usedforsecurity=False).digest() != digest:
        raise ValueError("KPL aggregated record with a wrong MD5 digest")
    message = AggregatedRecord.FromString(body)
    keys = list(message.partition_key_table)
    return [(keys[r.partition_key_index], r.data) for r in message.records]


def reference_message(partition_keys: Sequence[str], records: Sequence[tuple[int, bytes]]) -> bytes:
    """The same message built with aws-kinesis-agg's generated class (tests compare bytes)."""
    message = AggregatedRecord()
    message.partition_key_table.extend(partition_keys)
    for index, payload in records:
        message.records.add(partition_key_index=index, data=payload)
    return message.SerializeToString()
