"""The column-wise processing path gives exactly what the per-line path gave.

`parse_batch` against `parse_lines`, `Enricher.enrich_columns` against `enrich_batch`,
`EventColumns.extend_columns` against `extend`, and the whole of
`ShardProcessor.process_records` against the per-line flow it replaced (kept here as
`per_line_reference`), on a simulated log with odd lines mixed in: the same per-shard state
(its snapshot bytes), the same archive tables of events and of rejects.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers import archive_format, parse
from consumers.archive_format import (
    MS_PER_HOUR,
    EventColumns,
    IpPrivacy,
    rejects_table,
    split_by_hour,
)
from consumers.counters import ShardState
from consumers.decode import _decode_one_by_one, _envelopes, decode_record, split_envelope
from consumers.enrich import Enricher
from consumers.geo.locator import GeoLocator
from consumers.leases import Checkpoint, Lease, LeaseTable
from consumers.models import EnrichedHit, Hit, Rejection, UserRecord
from consumers.parse import parse_batch, parse_lines
from consumers.processor import ShardProcessor, count_in_shard_order
from consumers.reader import ReadBatch
from consumers.sinks.s3_archive import S3ArchiveSink
from consumers.snapshots import SnapshotStore
from consumers.state_store import to_bytes
from tests.consumers.test_parse_properties import access_lines, json_lines, mutated_lines

REPO = Path(__file__).resolve().parents[2]
SHARD = "shardId-000000000000"
FIRST_SEQUENCE = 49_650_000_000_000_000_000_000_000_000_000_000_000_000_000_000

ODD_LINES = [
    b"",
    b"   ",
    b"PHP Warning: something",
    b'192.0.2.1 - - [10/Oct/2000:13:55:36 -0700] "GET /a\\"b HTTP/1.1" 200 5 "-" "x\\\\y"',
    b'192.0.2.1 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "-" "caf\xe9"',
    b'192.0.2.1 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "-" "ok" "10.0.0.1"',
    b'192.0.2.1 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5',
    b' 192.0.2.1 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "-" "lead"',
    b'192.0.2.1 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "-" "trail"\r\n',
    b'192.0.2.1 a b [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 999 5 "-" "bad status"',
    b'host.example - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "-" "name"',
    b'192.0.2.1 - - [10/Oct/2000:13:55:36 -0700] "-" 408 - "-" "-"',
    b'{"time":"2023-02-22 03:38:18","remoteIP":"192.0.2.1","request":"/","status":"200"}',
    b'{"a":"1","b":"2","c":"3"}',
    b'::ffff:192.0.2.9 - - [10/Oct/2000:13:55:36 +0200] "GET /cafe/menu.php HTTP/1.1" 200 5 "" ""',
    b"\xff\xfe binary junk",
    b'192.0.2.1 - - [31/Feb/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "-" "no such day"',
]

any_lines = st.lists(
    st.one_of(
        access_lines().map(lambda case: case[0]),
        json_lines().map(lambda case: case[0]),
        mutated_lines(),
        st.binary(max_size=200),
        st.sampled_from(ODD_LINES),
    ),
    max_size=30,
)


@given(any_lines)
@settings(max_examples=300, deadline=None)
def test_parse_batch_answers_as_parse_lines(lines: list[bytes]) -> None:
    parsed = parse_batch(lines)
    assert parsed.results(len(lines)) == parse_lines(lines)
    assert all(len(column) == len(parsed.hit_rows) for column in parsed.columns)


def test_parse_batch_of_nothing() -> None:
    parsed = parse_batch([])
    assert len(parsed) == 0 and parsed.rejections == [] and parsed.hits() == []


@pytest.fixture(scope="module")
def enricher() -> Enricher:
    return Enricher(GeoLocator())


@given(any_lines)
@settings(max_examples=100, deadline=None)
def test_enrich_columns_answer_as_enrich_batch(lines: list[bytes]) -> None:
    enricher = Enricher(GeoLocator(), trusted_proxies=["10.0.0.0/8", "192.0.2.0/24"])
    for chosen in (enricher, Enricher(enricher.geo)):
        parsed = parse_batch(lines)
        hits = parsed.hits()
        enriched = chosen.enrich_parsed(parsed)
        assert enriched.objects(hits) == chosen.enrich_batch(hits)


# ----------------------------------------------------------------------- the whole path


@pytest.fixture(scope="module")
def simulated_lines(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    log = tmp_path_factory.mktemp("simulated") / "access.log"
    subprocess.run(
        [sys.executable, "-m", "service.cli", "simulate", "--lines", "6000", "--seed", "7",
         "--end", "2026-11-21T12:00:00Z", "--out", str(log)],
        cwd=REPO, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    lines = log.read_bytes().splitlines()
    for i, odd in enumerate(ODD_LINES):  # spread the odd lines over the batches
        lines.insert(1 + i * 347, odd)
    return lines


def kinesis_batches(lines: list[bytes], per_record: int, per_batch: int) -> list[ReadBatch]:
    """The lines as the reader hands them on: Kinesis records of `per_record` lines (one
    sequence number, sub-sequence numbers counting up), `per_batch` records a batch."""
    records = [
        UserRecord(SHARD, str(FIRST_SEQUENCE + first), sub, 1.7e9, f"f:{first + sub}", line)
        for first in range(0, len(lines), per_record)
        for sub, line in enumerate(lines[first : first + per_record])
    ]
    size = per_record * per_batch
    return [
        ReadBatch(
            SHARD,
            records[i : i + size],
            Checkpoint(records[i + len(records[i : i + size]) - 1].sequence_number),
            0,
        )
        for i in range(0, len(records), size)
    ]


def per_line_reference(
    enricher: Enricher, batches: list[ReadBatch]
) -> tuple[ShardState, EventColumns, list[UserRecord], list[Rejection]]:
    """What `process_records` did before it worked in columns: an object per line."""
    state = ShardState(SHARD)
    columns = EventColumns()
    rejected: list[UserRecord] = []
    rejections: list[Rejection] = []
    for batch in batches:
        records = batch.records
        parsed = parse_lines([record.line for record in records])
        hits: list[Hit] = [result for result in parsed if not isinstance(result, Rejection)]
        enriched = iter(enricher.enrich_batch(hits))
        hit_records: list[UserRecord] = []
        enriched_hits: list[EnrichedHit] = []
        for record, result in zip(records, parsed, strict=True):
            if isinstance(result, Rejection):
                state.add_rejected(record.sequence_number, record.sub_sequence_number)
                rejected.append(record)
                rejections.append(result)
            else:
                hit = next(enriched)
                state.add(hit, record.sequence_number, record.sub_sequence_number)
                hit_records.append(record)
                enriched_hits.append(hit)
        columns.extend(hit_records, enriched_hits, [None] * len(enriched_hits))
    return state, columns, rejected, rejections


def processor(enricher: Enricher) -> ShardProcessor:
    """A processor whose clients are never called (nothing here commits or flushes)."""
    lease = Lease(SHARD, "me", 1, Checkpoint("TRIM_HORIZON"))
    archive = S3ArchiveSink(None, "bucket", SHARD, encode_in_thread=False)
    return ShardProcessor(
        lease, LeaseTable(None, "leases", "me"), archive, SnapshotStore(None, "bucket"), enricher
    )


@pytest.mark.parametrize(("per_record", "per_batch"), [(500, 3), (1, 40), (4000, 1)])
def test_process_records_gives_what_the_per_line_path_gave(
    enricher: Enricher, simulated_lines: list[bytes], per_record: int, per_batch: int
) -> None:
    batches = kinesis_batches(simulated_lines, per_record, per_batch)
    state, columns, rejected, rejections = per_line_reference(enricher, batches)
    assert rejections, "the odd lines should give rejections"

    shard = processor(enricher)
    for batch in batches:
        shard.process_records(batch)

    assert to_bytes(shard.state) == to_bytes(state)
    assert shard.state.high_water == state.high_water
    assert shard.stats.hits == sum(len(b.records) for b in batches) - len(rejections)
    assert shard.stats.rejected == len(rejections)
    archived = shard._archive._batch  # what the next flush would write
    for privacy in (IpPrivacy("full"), IpPrivacy("truncated")):
        assert archived.events.table(privacy).equals(columns.table(privacy), check_metadata=True)
    assert archived.rejected == rejected
    assert archived.rejections == rejections
    assert rejects_table(archived.rejected, archived.rejections, IpPrivacy()).equals(
        rejects_table(rejected, rejections, IpPrivacy())
    )


def test_extend_columns_fills_the_table_extend_does(
    enricher: Enricher, simulated_lines: list[bytes]
) -> None:
    batch = kinesis_batches(simulated_lines[:900], 900, 1)[0]
    parsed = parse_batch([record.line for record in batch.records])
    enriched = enricher.enrich_parsed(parsed)
    records = [batch.records[i] for i in parsed.hit_rows]
    sessions = [None if i % 3 else f"s{i}" for i in range(len(records))]
    by_objects, by_columns = EventColumns(seal_rows=256), EventColumns(seal_rows=256)
    by_objects.extend(records, enriched.objects(parsed.hits()), sessions)
    by_columns.extend_columns(records, parsed.columns, enriched.by_name(), sessions)
    table = by_columns.table(IpPrivacy())
    assert table.equals(by_objects.table(IpPrivacy()))
    assert table.num_rows == len(records) and isinstance(table, pa.Table)
    with pytest.raises(ValueError, match="parallel"):
        by_columns.extend_columns(records, parsed.columns, enriched.by_name(), sessions[1:])


# ----------------------------------------------------------------------- decode, a record at once

id_pieces = st.sampled_from([b"ab12", b":", b"7", b"\n", b"\xff", b"\xc3\xa9", b"", b" ", b"-"])
event_ids = st.lists(id_pieces, max_size=8).map(b"".join)
payloads = st.one_of(
    st.builds(lambda eid, line: eid + b"\t" + line, event_ids, st.binary(max_size=20)),
    st.builds(lambda n, line: b"%032x:%d\t" % (n, n) + line, st.integers(0, 2**40), st.binary()),
    st.binary(max_size=30),
)


@given(st.lists(payloads, max_size=12))
@settings(max_examples=400, deadline=None)
def test_a_record_at_once_splits_envelopes_as_one_at_a_time(items: list[bytes]) -> None:
    """`_envelopes` checks a record's payloads together; where it answers, it answers as
    `split_envelope` does for each, and where it does not, each payload is split on its own."""
    one_by_one = [split_envelope(payload) for payload in items]
    together = _envelopes(items)
    if together is not None:
        assert [(eid, line) for eid, line in zip(*together, strict=True)] == one_by_one
    data = items[0] if len(items) == 1 else b"plain record"
    decoded = decode_record(SHARD, "42", 1.5, data)
    assert decoded == _decode_one_by_one(SHARD, "42", 1.5, [data])


address_like = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.lists(
        st.one_of(st.integers(0, 300).map(str), st.sampled_from(["00", "01", "٣", " 1", "", "x"])),
        min_size=3,
        max_size=5,
    ).map(".".join),
    st.text(alphabet="0123456789.:abcdef%", max_size=20),
)


@given(address_like)
@settings(max_examples=500, deadline=None)
def test_canonical_ipv4_shortcut_agrees_with_ipaddress(text: str) -> None:
    parse._addresses.pop(text, None)
    assert parse._canonical_address(text) == parse._canonical_address_slowly(text)


def test_unseen_drops_what_is_at_or_below_the_high_water_mark(enricher: Enricher) -> None:
    shard = processor(enricher)
    records = [
        UserRecord(SHARD, str(FIRST_SEQUENCE + seq), sub, 1.7e9, f"f:{seq}:{sub}", b"x")
        for seq in (4, 5, 6)
        for sub in range(3)
    ]
    assert shard._unseen(records) is records  # nothing counted yet
    shard.state.high_water = (FIRST_SEQUENCE + 5, 1)
    assert shard._unseen(records) == records[5:]
    assert shard.stats.replays_dropped == 5
    assert shard._unseen(records[5:]) is not None and shard._unseen(records[5:]) == records[5:]
    assert shard._unseen(records[:5]) == []
    assert shard._unseen([]) == []


def test_parse_batch_when_memos_are_cleared_midway_or_cannot_hold_a_piece(
    monkeypatch: pytest.MonkeyPatch, simulated_lines: list[bytes]
) -> None:
    """Misses are filled once per distinct piece, then looked up again: a memo that is cleared
    in between, or a piece too long to remember, must still give every row its answer."""
    long_request = b'"GET /' + b"a" * 400 + b' HTTP/1.1"'
    lines = [
        line.replace(b'"GET /', b'"GET /' + b"a" * 400 + b"/", 1) if i % 5 == 0 else line
        for i, line in enumerate(simulated_lines[:1500])
    ]
    lines += [b'192.0.2.1 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "-" "x"'] * 3
    lines.append(b"192.0.2.1 - - [10/Oct/2000:13:55:36 -0700] " + long_request + b' 200 5 "-" "y"')
    expected = parse_lines(lines)
    for name in ("_addresses", "_apache_stamps", "_apache_hours", "_requests", "_status_sizes"):
        monkeypatch.setattr(parse, name, {})
    monkeypatch.setattr(parse, "_CACHE_LIMIT", 3)
    assert parse_batch(lines).results(len(lines)) == expected


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        (["shardId-1"] * 5, pa.string()),
        ([None] * 4, pa.string()),
        (["a", "a", None], pa.string()),
        ([], pa.string()),
        ([0, 0, 0], pa.int16()),
        ([60, 0], pa.int16()),
    ],
)
def test_array_of_a_repeated_value_is_pa_array(values: list[object], kind: pa.DataType) -> None:
    built = archive_format._array(values, kind)
    assert built.type == kind
    assert built.equals(pa.array(values, kind))


def test_split_by_hour_slices_contiguous_hours_and_filters_interleaved_ones() -> None:
    base = 1_763_700_000_000 - 1_763_700_000_000 % MS_PER_HOUR
    offsets = [0, 10, 3_600_000, 3_600_010, 7_200_000, 3_600_020, 7_200_010]
    table = pa.table(
        {
            "event_time": pa.array([base + o for o in offsets], pa.int64()).cast(
                pa.timestamp("ms", tz="UTC")
            ),
            "row": list(range(len(offsets))),
        }
    )
    pieces = split_by_hour(table, "event_time")
    assert [(p.hour_start_ms - base) // MS_PER_HOUR for p in pieces] == [0, 1, 2]
    assert [p.first_row for p in pieces] == [0, 2, 4]
    assert [p.table.column("row").to_pylist() for p in pieces] == [[0, 1], [2, 3, 5], [4, 6]]
    contiguous = split_by_hour(table.slice(0, 5), "event_time")
    assert [p.table.column("row").to_pylist() for p in contiguous] == [[0, 1], [2, 3], [4]]


def test_add_columns_counts_as_add_does(enricher: Enricher, simulated_lines: list[bytes]) -> None:
    """`ShardState.add_columns` against one `add` per hit, replays and late hits included:
    the same snapshot, the same high-water mark, the same lifetime figures."""
    batches = kinesis_batches(simulated_lines, 700, 1)
    replayed = [batches[0], *batches[:3], batches[1], *batches[3:]]  # a re-read, then more
    by_add, by_columns = ShardState(SHARD), ShardState(SHARD)
    for batch in replayed:
        records = batch.records
        parsed = parse_batch([record.line for record in records])
        enriched = enricher.enrich_parsed(parsed)
        count_in_shard_order(by_columns, records, parsed, enriched)
        hits = iter(enriched.objects(parsed.hits()))
        rejected = dict(parsed.rejections)
        for row, record in enumerate(records):
            if row in rejected:
                by_add.add_rejected(record.sequence_number, record.sub_sequence_number)
            else:
                by_add.add(next(hits), record.sequence_number, record.sub_sequence_number)
    assert to_bytes(by_columns) == to_bytes(by_add)
    assert by_columns.high_water == by_add.high_water
    assert by_columns.stats == by_add.stats
    assert by_columns.stats.replays_skipped > 0
