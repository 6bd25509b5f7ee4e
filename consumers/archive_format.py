"""The archive's file format: accepted events and rejected lines as Parquet, and IP privacy.

Pure: rows in, a `pyarrow.Table` or Parquet bytes out. Where the bytes go (S3 keys, partitions,
retries) is `consumers.sinks.s3_archive`; this module only decides what a file contains, so the
schema is defined, documented and tested in one place.

Why columnar, batch-wise
------------------------
The whole processing path must reach 150k lines/s on one core, encoding included. Per-row dicts
(or `pa.Table.from_pylist`) cost several microseconds a row. Instead `EventColumns` copies each
field into a Python list per column while the objects are fresh (a Kinesis record's lines at a
time, one C-level `map` per field), and at flush each list becomes an Arrow array in one call;
times are scaled and cast vectorised, places are expanded from the few distinct `Location`s.
One table per flush, zstd-compressed, dictionary-encoded by the Parquet writer where values
repeat (cities, pages, user agents).

The events schema (`EVENT_SCHEMA`), for SQL users
-------------------------------------------------
Names are snake_case and avoid SQL keywords (`remote_user`, not `user`; `query_string`;
`page_class`), so DuckDB and Athena queries need no quoting.

- `event_id` (string): the agent's deterministic id (file fingerprint + byte offset); unique
  per log line, the key to deduplicate on and to join rejects with events.
- `event_time` (timestamp[ms, UTC]): when the web server handled the request, in UTC.
  `utc_offset_minutes` (int16) is the zone the line was written in (null: the line had none).
- `client_ip` (string): the visitor's address (behind a trusted balancer: the address it
  vouched for); `logged_ip`: the address Apache logged; `forwarded_for`: the X-Forwarded-For
  header as logged. All three follow the IP privacy mode (below).
- `ident`, `remote_user`, `method`, `path`, `query_string`, `protocol`, `status` (int16),
  `bytes_sent` (int64), `referer`, `user_agent`, `log_format`: the parsed line (`models.Hit`).
- `city`, `region`, `country`, `continent`, `latitude`, `longitude`: our geolocation of
  `client_ip` ("Unknown" when it cannot be placed). `file_country` ... `file_lon`: what the
  lab's JSON format claimed, kept as logged (strings) and never used for counting.
- `is_bot` (bool, user-agent rule), `page_class`, `is_page_view` (bool), `funnel_stage`: the
  enrichment's verdicts; `session_id`: the session the stateful step put the hit in (null when
  it has none, e.g. a bot).
- `shard_id`, `sequence_number` (string: Kinesis sequence numbers exceed BIGINT),
  `sub_sequence_number` (int32), `arrival_time` (timestamp[ms, UTC]): where the line was in
  the stream, for tracing and replays.
- `raw_line` (binary): the line as the web server wrote it (bytes: it may not be UTF-8). Null
  unless the IP mode is `full`, because the raw line carries the address in the clear.

`dt` (YYYY-MM-DD) and `hour` (HH) are Hive partitions of `event_time` in UTC, in the object key
only (`.../dt=2026-11-22/hour=07/...`), never columns inside the file: DuckDB
(`read_parquet('.../events/**/*.parquet', hive_partitioning = true)`) and Athena (partition
projection on `dt`, `hour`) add them as columns, and a copy inside the file could only disagree.

Querying: DuckDB adds `shard` from the path too (the same value as `shard_id`). In Athena,
declare `dt` (date, `yyyy-MM-dd`) and `hour` (integer, two digits) with partition projection and
`storage.location.template` `s3://<bucket>/<prefix>/events/dt=${dt}/hour=${hour}/`; Athena
reads every object under a partition's location, the `shard=` folders included, and `shard_id`
in the file serves queries by shard. Rows are unique by `event_id` (see the key rule in
`consumers.sinks.s3_archive`), so `count(*)` needs no DISTINCT.

The rejects schema (`REJECT_SCHEMA`): `event_id`, `reason`, `detail`, `shard_id`,
`sequence_number`, `sub_sequence_number`, `arrival_time`, `raw_line`. A line that did not parse
has no trustworthy event time, so rejects are partitioned by `arrival_time`. Their raw line is
always kept (it is all a reject has), with anything that looks like an IP address rewritten by
the privacy mode.

IP privacy
----------
Client addresses are personal data. `IpPrivacy.mode`:

- `full`: as logged;
- `truncated`: IPv4 to its /24 (`198.51.100.0`), IPv6 to its /48 (`2001:db8:1::`), the
  granularity at which geolocation still works and a household no longer stands out;
- `hashed`: HMAC-SHA256 with a secret key, hex, first 16 bytes (32 hex digits): the same
  address always maps to the same value (distinct-visitor queries still work), but without the
  key nobody can test guesses (a plain hash of the 2^32 IPv4 addresses is reversed in minutes).

Counting uses the real address before the archive sees it, so the mode never changes a count.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any, Final, Literal, get_args

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from consumers.geo.locator import Location
from consumers.models import EnrichedHit, Hit, Rejection, UserRecord

SCHEMA_VERSION: Final = "1"
COMPRESSION: Final = "zstd"
COMPRESSION_LEVEL: Final = 3
"""zstd 3: most of zstd's ratio for little more CPU than level 1 (bench/archive_encoding.py)."""

MS_PER_HOUR: Final = 3_600_000

IpMode = Literal["full", "truncated", "hashed"]
IP_MODES: Final[frozenset[str]] = frozenset(get_args(IpMode))
HASH_HEX_DIGITS: Final = 32  # 16 bytes of the HMAC
_PRIVACY_CACHE_LIMIT: Final = 65_536

TIMESTAMP_MS_UTC: Final = pa.timestamp("ms", tz="UTC")

# Arrow allocates through the C library's malloc, not its bundled mimalloc: the archive builds
# ~40 arrays every 8,192 rows and frees them at each flush, and with mimalloc that pattern cost
# ~1.2 µs more per line and ~100 MiB more peak RSS (bench/processing_path.py, 1M lines: archive
# add + flush 5.1-6.0 -> 4.1-4.6 µs/line, peak RSS 470-477 -> 372 MiB). Process-wide, because
# pyarrow's compute functions and the Parquet writer allocate from the default pool; this module
# is the consumer's only user of Arrow. An explicit ARROW_DEFAULT_MEMORY_POOL is respected.
if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
    pa.set_memory_pool(pa.system_memory_pool())

EVENT_SCHEMA: Final = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_time", TIMESTAMP_MS_UTC, nullable=False),
        pa.field("utc_offset_minutes", pa.int16()),
        pa.field("client_ip", pa.string(), nullable=False),
        pa.field("logged_ip", pa.string(), nullable=False),
        pa.field("forwarded_for", pa.string()),
        pa.field("ident", pa.string()),
        pa.field("remote_user", pa.string()),
        pa.field("method", pa.string()),
        pa.field("path", pa.string()),
        pa.field("query_string", pa.string()),
        pa.field("protocol", pa.string()),
        pa.field("status", pa.int16(), nullable=False),
        pa.field("bytes_sent", pa.int64()),
        pa.field("referer", pa.string()),
        pa.field("user_agent", pa.string()),
        pa.field("log_format", pa.string(), nullable=False),
        pa.field("city", pa.string(), nullable=False),
        pa.field("region", pa.string(), nullable=False),
        pa.field("country", pa.string(), nullable=False),
        pa.field("continent", pa.string(), nullable=False),
        pa.field("latitude", pa.float64()),
        pa.field("longitude", pa.float64()),
        pa.field("is_bot", pa.bool_(), nullable=False),
        pa.field("page_class", pa.string(), nullable=False),
        pa.field("is_page_view", pa.bool_(), nullable=False),
        pa.field("funnel_stage", pa.string()),
        pa.field("session_id", pa.string()),
        pa.field("file_country", pa.string()),
        pa.field("file_region", pa.string()),
        pa.field("file_city", pa.string()),
        pa.field("file_lat", pa.string()),
        pa.field("file_lon", pa.string()),
        pa.field("shard_id", pa.string(), nullable=False),
        pa.field("sequence_number", pa.string(), nullable=False),
        pa.field("sub_sequence_number", pa.int32(), nullable=False),
        pa.field("arrival_time", TIMESTAMP_MS_UTC, nullable=False),
        pa.field("raw_line", pa.binary()),
    ],
    metadata={"clickstream.archive": "events", "clickstream.schema_version": SCHEMA_VERSION},
)

REJECT_SCHEMA: Final = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("shard_id", pa.string(), nullable=False),
        pa.field("sequence_number", pa.string(), nullable=False),
        pa.field("sub_sequence_number", pa.int32(), nullable=False),
        pa.field("arrival_time", TIMESTAMP_MS_UTC, nullable=False),
        pa.field("raw_line", pa.binary(), nullable=False),
    ],
    metadata={"clickstream.archive": "rejects", "clickstream.schema_version": SCHEMA_VERSION},
)

EVENT_TIME_COLUMN: Final = "event_time"
REJECT_TIME_COLUMN: Final = "arrival_time"


# ----------------------------------------------------------------------------- IP privacy


def truncate_ip(address: str) -> str:
    """The /24 (IPv4) or /48 (IPv6) network address; "" for text that is not an address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return ""
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


def hash_ip(address: str, key: bytes) -> str:
    """HMAC-SHA256 of the address text under `key`, as 32 hex digits."""
    return hmac.new(key, address.encode(), hashlib.sha256).hexdigest()[:HASH_HEX_DIGITS]


_ADDRESS_CANDIDATE: Final = re.compile(rb"(?<![0-9A-Za-z:.])[0-9A-Fa-f:.]{3,}(?![0-9A-Za-z:.])")
"""Runs of hex digits, dots and colons not glued to other word characters: every IPv4 and
IPv6 address (without zone) is one; most candidates (times, versions) fail validation."""


@dataclass(slots=True)
class IpPrivacy:
    """How client addresses are archived; see the module docstring. Memoised per address,
    because a visitor's address repeats on every hit and HMAC costs a microsecond."""

    mode: IpMode = "full"
    key: bytes = b""
    _memo: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in IP_MODES:
            raise ValueError(f"ip mode must be one of {sorted(IP_MODES)}, got {self.mode!r}")
        if self.mode == "hashed" and len(self.key) < 16:
            raise ValueError("hashed ip mode needs a secret key of at least 16 bytes")

    @property
    def keeps_raw_line(self) -> bool:
        return self.mode == "full"

    def address(self, address: str) -> str:
        if self.mode == "full":
            return address
        memo = self._memo
        answer = memo.get(address)
        if answer is None:
            if self.mode == "truncated":
                answer = truncate_ip(address)
            else:
                answer = hash_ip(address, self.key)
            if len(memo) >= _PRIVACY_CACHE_LIMIT:
                memo.clear()
            memo[address] = answer
        return answer

    def header(self, forwarded_for: str | None) -> str | None:
        """X-Forwarded-For with each entry that is an address rewritten (a port is dropped
        with it); other entries (`unknown`, obfuscated ids) are kept."""
        if forwarded_for is None or self.mode == "full":
            return forwarded_for
        return ", ".join(self._entry(entry) for entry in forwarded_for.split(","))

    def _entry(self, entry: str) -> str:
        text = entry.strip()
        if text.startswith("["):
            text = text[1 : text.find("]")] if "]" in text else text[1:]
        elif text.count(":") == 1:
            text = text.partition(":")[0]
        try:
            canonical = str(ipaddress.ip_address(text))
        except ValueError:
            return entry.strip()
        return self.address(canonical)

    def text(self, raw: bytes) -> bytes:
        """Any bytes with every embedded IP address rewritten; for raw lines we cannot parse."""
        if self.mode == "full":
            return raw

        def rewrite(match: re.Match[bytes]) -> bytes:
            candidate = match.group().decode("ascii")
            try:
                ip = ipaddress.ip_address(candidate)
            except ValueError:
                return match.group()
            return self.address(str(ip)).encode("ascii")

        return _ADDRESS_CANDIDATE.sub(rewrite, raw)


# ----------------------------------------------------------------------------- events

_get_hit = attrgetter("hit")


def _column(objects: Sequence[object], name: str) -> list[object]:
    return list(map(attrgetter(name), objects))


def _location_columns(places: list[Location]) -> list[pa.Array]:
    """city, region, country, continent, latitude, longitude.

    Enrichment memoises one `Location` object per address, so a batch holds a few thousand
    distinct objects for a hundred thousand rows: encode by object identity (in C), build the
    six columns for the distinct ones only, and expand them with `take`.
    """
    ids = pa.array(list(map(id, places)), pa.int64())
    encoded = pc.dictionary_encode(ids)
    by_id = dict(zip(map(id, places), places, strict=True))
    distinct = [by_id[i] for i in encoded.dictionary.to_pylist()]
    indices = encoded.indices
    return [
        pa.array(_column(distinct, name), kind).take(indices)
        for name, kind in (
            ("city", pa.string()),
            ("region", pa.string()),
            ("country", pa.string()),
            ("continent", pa.string()),
            ("latitude", pa.float64()),
            ("longitude", pa.float64()),
        )
    ]


def _milliseconds(seconds: list[float]) -> pa.Array:
    """Epoch seconds (floats) -> timestamp[ms, UTC], vectorised."""
    scaled = pc.floor(pc.multiply(pa.array(seconds, pa.float64()), 1000.0))
    return pc.cast(scaled, pa.int64()).view(TIMESTAMP_MS_UTC)


_RECORD_FIELDS: Final = (
    "event_id",
    "shard_id",
    "sequence_number",
    "sub_sequence_number",
    "arrival_time",
    "line",
)
_ENRICHED_FIELDS: Final = ("client_ip", "location", "is_bot", "page", "is_page_view", "stage")
_HIT_FIELDS: Final = tuple(f.name for f in fields(Hit))
"""In `Hit`'s field order, which is the order `EventColumns.extend_columns` takes them in."""


SEAL_ROWS: Final = 8192
"""Rows `EventColumns` keeps as Python lists before turning them into Arrow arrays. Measured
(bench/processing_path.py): a flush of 100,000 rows held as ~38 lists of Python objects made
every full garbage collection visit ~4 million references, scattered over the heap (a cache
miss each: 40-60 ms a collection); as Arrow buffers they are invisible to the collector and
several times smaller. Large enough that the ~40 array builds per seal are noise per row."""


class EventColumns:
    """Accepted events in columns, filled a Kinesis record's lines at a time.

    Why not keep the objects until the flush: reading a field from 100,000 objects that left
    the CPU caches long ago costs a cache miss per object and field, and 300,000 live
    `UserRecord`/`Hit`/`EnrichedHit` objects make every full garbage collection of the whole
    consumer walk them. Read while the objects are fresh, the fields are plain strings and
    numbers, and the objects can go as soon as the state step is done with them. Every
    `seal_rows` rows those lists become Arrow arrays (`_seal`), in the form of the `full` IP
    mode; `table` applies the privacy mode to the address columns and raw lines at the flush,
    where it is known.
    """

    __slots__ = (
        "_plan",
        "_rows_sealed",
        "_sealed",
        "enriched",
        "hit",
        "record",
        "seal_rows",
        "session_ids",
    )

    def __init__(self, seal_rows: int = SEAL_ROWS) -> None:
        self.seal_rows = seal_rows
        self._sealed: list[pa.Table] = []
        self._rows_sealed = 0
        self._reset()

    def _reset(self) -> None:
        self.record: dict[str, list[Any]] = {name: [] for name in _RECORD_FIELDS}
        self.enriched: dict[str, list[Any]] = {name: [] for name in _ENRICHED_FIELDS}
        self.hit: dict[str, list[Any]] = {name: [] for name in _HIT_FIELDS}
        self.session_ids: list[str | None] = []
        self._plan = (
            [(column, attrgetter(name)) for name, column in self.record.items()],
            [(column, attrgetter(name)) for name, column in self.enriched.items()],
            [(column, attrgetter(name)) for name, column in self.hit.items()],
        )

    def __len__(self) -> int:
        return self._rows_sealed + len(self.session_ids)

    def extend(
        self,
        records: Sequence[UserRecord],
        hits: Sequence[EnrichedHit],
        session_ids: Sequence[str | None],
    ) -> None:
        """Append rows; the three sequences are parallel, in shard order."""
        if not (len(records) == len(hits) == len(session_ids)):
            raise ValueError("records, hits and session ids must be parallel")
        record_plan, enriched_plan, hit_plan = self._plan
        for column, getter in record_plan:
            column += map(getter, records)
        for column, getter in enriched_plan:
            column += map(getter, hits)
        parsed = list(map(_get_hit, hits))
        for column, getter in hit_plan:
            column += map(getter, parsed)
        self.session_ids += session_ids
        if len(self.session_ids) >= self.seal_rows:
            self._seal()

    def extend_columns(
        self,
        records: Sequence[UserRecord],
        hit_columns: Sequence[list[Any]],
        enriched_columns: Mapping[str, list[Any]],
        session_ids: Sequence[str | None],
    ) -> None:
        """`extend` for rows already in columns: `hit_columns` one list per `Hit` field in
        field order (`consumers.parse.ParsedBatch.columns`), `enriched_columns` by
        `EnrichedHit` field name (at least `client_ip`, `location`, `is_bot`, `page`,
        `is_page_view`, `stage`), all parallel to `records`. The lists are appended as they
        are; no object per row is built or read, but the records' fields."""
        rows = len(records)
        if len(session_ids) != rows or any(len(c) != rows for c in hit_columns):
            raise ValueError("records, columns and session ids must be parallel")
        record_plan = self._plan[0]
        for column, getter in record_plan:
            column += map(getter, records)
        for name, column in self.enriched.items():
            column += enriched_columns[name]
        for column, values in zip(self.hit.values(), hit_columns, strict=True):
            column += values
        self.session_ids += session_ids
        if len(self.session_ids) >= self.seal_rows:
            self._seal()

    def absorb(self, later: EventColumns) -> None:
        """Append every row of `later` (a failed flush's rows, then the newer ones)."""
        if later._sealed:
            self._seal()
            self._sealed += later._sealed
            self._rows_sealed += later._rows_sealed
        for mine, theirs in (
            (self.record, later.record),
            (self.enriched, later.enriched),
            (self.hit, later.hit),
        ):
            for name, column in mine.items():
                column += theirs[name]
        self.session_ids += later.session_ids
        if len(self.session_ids) >= self.seal_rows:
            self._seal()

    def _seal(self) -> None:
        """The rows still in lists become one Arrow table (IP mode `full`), the lists start over."""
        if self.session_ids:
            self._sealed.append(self._full_table())
            self._rows_sealed += len(self.session_ids)
            self._reset()

    def table(self, privacy: IpPrivacy) -> pa.Table:
        """The rows as one Arrow table in `EVENT_SCHEMA`."""
        self._seal()
        if not self._sealed:
            return EVENT_SCHEMA.empty_table()
        table = self._sealed[0] if len(self._sealed) == 1 else pa.concat_tables(self._sealed)
        if privacy.mode == "full":
            return table
        rows = table.num_rows
        client = table.column("client_ip")
        logged = table.column("logged_ip")
        # Without a trusted proxy the visitor is the logged client: one conversion serves both.
        same_address = client.equals(logged)
        client_ips = _rewritten(client, privacy.address)
        logged_ips = client_ips if same_address else _rewritten(logged, privacy.address)
        forwarded = table.column("forwarded_for")
        if forwarded.null_count != rows:
            forwarded = _rewritten(forwarded, privacy.header)
        for name, column in (
            ("client_ip", client_ips),
            ("logged_ip", logged_ips),
            ("forwarded_for", forwarded),
            ("raw_line", pa.nulls(rows, pa.binary())),
        ):
            index = EVENT_SCHEMA.get_field_index(name)
            table = table.set_column(index, EVENT_SCHEMA.field(index), column)
        return table

    def _full_table(self) -> pa.Table:
        """The rows in the lists as a table in `EVENT_SCHEMA`, addresses and raw lines as
        logged (the `full` IP mode)."""
        record, enriched, hit = self.record, self.enriched, self.hit
        rows = len(self.session_ids)
        file_geo = hit["file_geo"]
        has_file_geo = file_geo.count(None) != rows

        def geo_column(name: str) -> pa.Array:
            if not has_file_geo:
                return pa.nulls(rows, pa.string())
            values = [None if g is None else getattr(g, name) for g in file_geo]
            return pa.array(values, pa.string())

        client_ips: list[str] = enriched["client_ip"]
        logged_ips: list[str] = hit["client_ip"]
        client_ip_array = pa.array(client_ips, pa.string())
        logged_ip_array = (
            client_ip_array if logged_ips == client_ips else pa.array(logged_ips, pa.string())
        )
        columns = [
            pa.array(record["event_id"], pa.string()),
            _milliseconds(hit["time"]),
            _array(hit["utc_offset_minutes"], pa.int16()),
            client_ip_array,
            logged_ip_array,
            _array(hit["forwarded_for"], pa.string()),
            _array(hit["ident"], pa.string()),
            _array(hit["user"], pa.string()),
            pa.array(hit["method"], pa.string()),
            pa.array(hit["path"], pa.string()),
            _array(hit["query"], pa.string()),
            _array(hit["protocol"], pa.string()),
            pa.array(hit["status"], pa.int16()),
            pa.array(hit["bytes_sent"], pa.int64()),
            pa.array(hit["referer"], pa.string()),
            pa.array(hit["user_agent"], pa.string()),
            _array(hit["log_format"], pa.string()),
            *_location_columns(enriched["location"]),
            pa.array(enriched["is_bot"], pa.bool_()),
            pa.array(enriched["page"], pa.string()),
            pa.array(enriched["is_page_view"], pa.bool_()),
            pa.array(enriched["stage"], pa.string()),
            _array(self.session_ids, pa.string()),
            geo_column("country"),
            geo_column("region"),
            geo_column("city"),
            geo_column("lat"),
            geo_column("lon"),
            _array(record["shard_id"], pa.string()),
            pa.array(record["sequence_number"], pa.string()),
            pa.array(record["sub_sequence_number"], pa.int32()),
            _milliseconds(record["arrival_time"]),
            pa.array(record["line"], pa.binary()),
        ]
        return pa.Table.from_arrays(columns, schema=EVENT_SCHEMA)


def _array(values: list[Any], kind: pa.DataType) -> pa.Array:
    """`pa.array(values, kind)`, but a column of one repeated value (the shard, the log format,
    a field nobody logs) is built from that value alone: ~3 ns a row instead of ~25."""
    if values and values.count(values[0]) == len(values):
        return pa.repeat(pa.scalar(values[0], kind), len(values))
    return pa.array(values, kind)


def _rewritten(column: pa.ChunkedArray, rewrite: Callable[[Any], Any]) -> pa.Array:
    """A string column with `rewrite` applied to each distinct non-null value (nulls kept):
    addresses repeat on every hit of a visitor, so there are far fewer values than rows."""
    encoded = pc.dictionary_encode(column.combine_chunks())
    values = pa.array(list(map(rewrite, encoded.dictionary.to_pylist())), pa.string())
    return values.take(encoded.indices)


def events_table(
    records: Sequence[UserRecord],
    hits: Sequence[EnrichedHit],
    session_ids: Sequence[str | None],
    privacy: IpPrivacy,
) -> pa.Table:
    """One table of accepted events; the three sequences are parallel, in shard order."""
    columns = EventColumns()
    columns.extend(records, hits, session_ids)
    return columns.table(privacy)


def rejects_table(
    records: Sequence[UserRecord], rejections: Sequence[Rejection], privacy: IpPrivacy
) -> pa.Table:
    """One table of rejected lines (rare: no need for speed), raw lines privacy-rewritten."""
    if len(records) != len(rejections):
        raise ValueError("records and rejections must be parallel")
    columns = [
        pa.array(_column(records, "event_id"), pa.string()),
        pa.array(_column(rejections, "reason"), pa.string()),
        pa.array(_column(rejections, "detail"), pa.string()),
        pa.array(_column(records, "shard_id"), pa.string()),
        pa.array(_column(records, "sequence_number"), pa.string()),
        pa.array(_column(records, "sub_sequence_number"), pa.int32()),
        _milliseconds(_column(records, "arrival_time")),  # type: ignore[arg-type]
        pa.array([privacy.text(r.line) for r in records], pa.binary()),
    ]
    return pa.Table.from_arrays(columns, schema=REJECT_SCHEMA)


# ----------------------------------------------------------------------------- partitions


@dataclass(frozen=True, slots=True)
class HourPiece:
    """The rows of one table that fall in one UTC hour, and where the first of them was."""

    hour_start_ms: int
    first_row: int
    table: pa.Table


def split_by_hour(table: pa.Table, time_column: str) -> list[HourPiece]:
    """The table cut into one piece per UTC hour of `time_column`, oldest hour first; row
    order is kept inside each piece (the archive key relies on each piece's first row).

    An hour whose rows are contiguous (the usual case: a shard's lines come in time order) is
    a zero-copy slice; only an hour interleaved with another (late lines) is copied out."""
    if table.num_rows == 0:
        return []
    hours = pc.divide(table.column(time_column).cast(pa.int64()), MS_PER_HOUR)
    distinct = sorted(pc.unique(hours).to_pylist())
    if len(distinct) == 1:
        return [HourPiece(distinct[0] * MS_PER_HOUR, 0, table)]
    values, counts = pc.value_counts(hours).flatten()
    rows_in = dict(zip(values.to_pylist(), counts.to_pylist(), strict=True))
    pieces = []
    for hour in distinct:
        first = pc.index(hours, hour).as_py()
        rows = rows_in[hour]
        if pc.all(pc.equal(hours.slice(first, rows), hour)).as_py():
            piece = table.slice(first, rows)  # the hour's rows are contiguous: no copy
        else:
            piece = table.filter(pc.equal(hours, hour))
        pieces.append(HourPiece(hour * MS_PER_HOUR, first, piece))
    return pieces


# ----------------------------------------------------------------------------- Parquet


_UNIQUE_PER_ROW: Final = frozenset(
    {"event_id", "sequence_number", "event_time", "arrival_time", "bytes_sent", "raw_line"}
)
"""Columns whose values (almost) never repeat: a dictionary only costs time, and the writer's
fallback when it overflows leaves the file larger (measured: 42 vs 36 bytes a row)."""


def parquet_bytes(table: pa.Table) -> bytes:
    """The table as one Parquet file: zstd; dictionary pages for columns that repeat (cities,
    paths, user agents); min/max statistics on every column but the raw line, so DuckDB and
    Athena skip row groups on `event_time`, `status`, `country`..."""
    names = table.column_names
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        compression=COMPRESSION,
        compression_level=COMPRESSION_LEVEL,
        use_dictionary=[n for n in names if n not in _UNIQUE_PER_ROW],
        write_statistics=[n for n in names if n != "raw_line"],
    )
    return sink.getvalue().to_pybytes()
