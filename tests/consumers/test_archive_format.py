"""Archive format: the events and rejects schemas, read back with pyarrow and DuckDB; the IP
privacy modes; cutting a flush into hourly pieces."""

from __future__ import annotations

import hashlib
import hmac
import io
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from consumers.archive_format import (
    EVENT_SCHEMA,
    REJECT_SCHEMA,
    EventColumns,
    IpPrivacy,
    events_table,
    hash_ip,
    parquet_bytes,
    rejects_table,
    split_by_hour,
    truncate_ip,
)
from consumers.geo.locator import UNKNOWN_LOCATION, Location
from consumers.models import EnrichedHit, FileGeo, Hit, Rejection, UserRecord

SEATTLE = Location("Seattle", "Washington", "US", "NA", 47.6, -122.3)
T0 = datetime(2026, 11, 22, 7, 59, 0, tzinfo=UTC).timestamp()
SHARD = "shardId-000000000001"
KEY = b"k" * 32


def make_event(
    index: int,
    *,
    when: float = T0,
    ip: str = "198.51.100.23",
    shard: str = SHARD,
    location: Location = SEATTLE,
    forwarded_for: str | None = None,
    file_geo: FileGeo | None = None,
) -> tuple[UserRecord, EnrichedHit, str | None]:
    """One accepted event at position (1000 + index // 10, index % 10) of `shard`."""
    agent = "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"
    line = (
        f'{ip} - - [22/Nov/2026:07:59:00 +0000] "GET /cafe/menu.php?x={index} HTTP/1.1" 200 '
        f'512 "-" "{agent}"'
    ).encode()
    hit = Hit(
        ip, None, None, when, 0, "GET", "/cafe/menu.php", f"x={index}", "HTTP/1.1", 200, 512,
        None, agent, forwarded_for, "combined", file_geo,
    )  # fmt: skip
    enriched = EnrichedHit(hit, ip, f"{ip}\t{agent}", location, False, "menu", True, "menu")
    record = UserRecord(
        shard, str(1000 + index // 10), index % 10, when + 1.25, f"fp1:{index * 100}", line
    )
    return record, enriched, f"session-{index % 3}"


def events(*made: tuple[UserRecord, EnrichedHit, str | None], privacy: IpPrivacy | None = None):
    records, hits, sessions = zip(*made, strict=True)
    return events_table(records, hits, sessions, privacy or IpPrivacy())


def read_back(table: pa.Table) -> pa.Table:
    return pq.read_table(io.BytesIO(parquet_bytes(table)))


# ----------------------------------------------------------------------------- schema


def test_events_round_trip_through_parquet_with_sql_friendly_types() -> None:
    geo = FileGeo("US", "Oregon", "Portland", "45.5", "-122.7")
    table = events(
        make_event(0, file_geo=geo),
        make_event(1, when=T0 + 0.999, location=UNKNOWN_LOCATION, forwarded_for="10.0.0.1"),
    )
    back = read_back(table)

    assert back.schema.equals(EVENT_SCHEMA, check_metadata=False)
    assert back.schema.field("event_time").type == pa.timestamp("ms", tz="UTC")
    assert "dt" not in back.column_names and "hour" not in back.column_names
    rows = back.to_pylist()
    first, second = rows
    assert first["event_id"] == "fp1:0"
    assert first["event_time"] == datetime(2026, 11, 22, 7, 59, 0, tzinfo=UTC)
    assert second["event_time"].microsecond == 999_000
    assert first["arrival_time"] == datetime(2026, 11, 22, 7, 59, 1, 250_000, tzinfo=UTC)
    assert (first["city"], first["region"], first["country"]) == ("Seattle", "Washington", "US")
    assert first["latitude"] == pytest.approx(47.6)
    assert (second["city"], second["latitude"]) == ("Unknown", None)
    assert (first["file_city"], first["file_lat"]) == ("Portland", "45.5")
    assert second["file_city"] is None
    assert second["forwarded_for"] == "10.0.0.1"
    assert first["query_string"] == "x=0" and first["remote_user"] is None
    assert (first["status"], first["bytes_sent"], first["page_class"]) == (200, 512, "menu")
    assert (first["is_bot"], first["is_page_view"], first["funnel_stage"]) == (False, True, "menu")
    assert first["session_id"] == "session-0"
    assert (first["shard_id"], first["sequence_number"], first["sub_sequence_number"]) == (
        SHARD,
        "1000",
        0,
    )
    assert first["raw_line"].startswith(b"198.51.100.23 - - [22/Nov/2026")
    metadata = pq.read_schema(io.BytesIO(parquet_bytes(table))).metadata
    assert metadata[b"clickstream.archive"] == b"events"


def test_parquet_encoding_is_deterministic_and_compressed_with_zstd() -> None:
    table = events(*(make_event(i) for i in range(50)))
    body = parquet_bytes(table)
    assert body == parquet_bytes(table)
    column = pq.ParquetFile(io.BytesIO(body)).metadata.row_group(0).column(0)
    assert column.compression == "ZSTD"


def test_parallel_inputs_must_have_equal_lengths() -> None:
    record, hit, _ = make_event(0)
    with pytest.raises(ValueError, match="parallel"):
        events_table([record], [hit], [], IpPrivacy())


def test_rejects_keep_raw_bytes_reason_and_position() -> None:
    record = UserRecord(SHARD, "77", 3, T0, "fp1:900", b"\xff\xfe 203.0.113.9 garbage")
    table = rejects_table([record], [Rejection("invalid_utf8", "not UTF-8")], IpPrivacy())
    back = read_back(table)
    assert back.schema.equals(REJECT_SCHEMA, check_metadata=False)
    (row,) = back.to_pylist()
    assert row == {
        "event_id": "fp1:900",
        "reason": "invalid_utf8",
        "detail": "not UTF-8",
        "shard_id": SHARD,
        "sequence_number": "77",
        "sub_sequence_number": 3,
        "arrival_time": datetime.fromtimestamp(T0, UTC),
        "raw_line": b"\xff\xfe 203.0.113.9 garbage",
    }


def test_duckdb_reads_the_files_with_hive_partitions(tmp_path) -> None:
    duckdb = pytest.importorskip("duckdb")
    part = tmp_path / "events" / "dt=2026-11-22" / "hour=07" / "shard=s1"
    part.mkdir(parents=True)
    (part / "1000-00000.parquet").write_bytes(parquet_bytes(events(make_event(0), make_event(1))))
    glob = str(tmp_path / "events" / "**" / "*.parquet")
    rows = duckdb.sql(
        "SELECT dt, hour, count(*) AS n, epoch_ms(max(event_time)) AS newest_ms, "
        "any_value(city) AS city "
        f"FROM read_parquet('{glob}', hive_partitioning = true) GROUP BY dt, hour"
    ).fetchall()
    assert len(rows) == 1
    dt, hour, n, newest_ms, city = rows[0]
    assert (str(dt), int(hour), n, city) == ("2026-11-22", 7, 2, "Seattle")
    assert newest_ms == T0 * 1000  # timestamptz without pytz: compare epoch milliseconds


# ----------------------------------------------------------------------------- partitions


def test_split_by_hour_keeps_row_order_and_first_row_of_each_hour() -> None:
    times = [T0, T0 + 120, T0 + 30, T0 + 3700, T0 - 7200]  # 07:59, 08:01, 07:59, 09:00, 05:59
    table = events(*(make_event(i, when=t) for i, t in enumerate(times)))
    pieces = split_by_hour(table, "event_time")
    hours = [datetime.fromtimestamp(p.hour_start_ms / 1000, UTC).hour for p in pieces]
    assert hours == [5, 7, 8, 9]
    assert [p.first_row for p in pieces] == [4, 0, 1, 3]
    assert [p.table.column("event_id").to_pylist() for p in pieces] == [
        ["fp1:400"],
        ["fp1:0", "fp1:200"],
        ["fp1:100"],
        ["fp1:300"],
    ]
    assert split_by_hour(table.slice(0, 0), "event_time") == []


# ----------------------------------------------------------------------------- privacy


@pytest.mark.parametrize(
    ("address", "truncated"),
    [
        ("198.51.100.23", "198.51.100.0"),
        ("10.1.2.255", "10.1.2.0"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1::"),
        ("2001:db8:abcd:ffff::1", "2001:db8:abcd::"),
        ("::1", "::"),
        ("not-an-address", ""),
    ],
)
def test_truncate_ip_keeps_the_24_or_48_network(address: str, truncated: str) -> None:
    assert truncate_ip(address) == truncated


def test_hash_ip_is_a_keyed_hmac_truncated_to_16_bytes() -> None:
    expected = hmac.new(KEY, b"198.51.100.23", hashlib.sha256).hexdigest()[:32]
    assert hash_ip("198.51.100.23", KEY) == expected
    assert len(expected) == 32
    assert hash_ip("198.51.100.23", b"another key of 16+ bytes") != expected
    assert hash_ip("198.51.100.24", KEY) != expected


def test_privacy_mode_is_validated() -> None:
    with pytest.raises(ValueError, match="ip mode"):
        IpPrivacy("masked")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key"):
        IpPrivacy("hashed", b"short")


def test_privacy_applies_to_every_address_column_and_drops_the_raw_line() -> None:
    made = make_event(0, ip="2001:db8:7:8::9", forwarded_for="198.51.100.7:4431, unknown, [::1]")
    truncated = events(made, privacy=IpPrivacy("truncated")).to_pylist()[0]
    assert truncated["client_ip"] == truncated["logged_ip"] == "2001:db8:7::"
    assert truncated["forwarded_for"] == "198.51.100.0, unknown, ::"
    assert truncated["raw_line"] is None

    hashed = events(made, privacy=IpPrivacy("hashed", KEY)).to_pylist()[0]
    assert hashed["client_ip"] == hash_ip("2001:db8:7:8::9", KEY)
    assert hashed["forwarded_for"] == (
        f"{hash_ip('198.51.100.7', KEY)}, unknown, {hash_ip('::1', KEY)}"
    )
    assert hashed["raw_line"] is None

    full = events(made).to_pylist()[0]
    assert full["client_ip"] == "2001:db8:7:8::9"
    assert full["raw_line"] == made[0].line


def test_privacy_rewrites_addresses_inside_unparsed_text() -> None:
    raw = b'203.0.113.9 - - [22/Nov/2026:07:59:00 +0000] "GET / HTTP/1.1" x 2001:db8::5 1.2.3'
    rewritten = IpPrivacy("truncated").text(raw)
    assert rewritten == (
        b'203.0.113.0 - - [22/Nov/2026:07:59:00 +0000] "GET / HTTP/1.1" x 2001:db8:: 1.2.3'
    )
    assert IpPrivacy().text(raw) == raw
    record = UserRecord(SHARD, "1", 0, T0, "fp1:0", raw)
    table = rejects_table([record], [Rejection("bad_status", "x")], IpPrivacy("hashed", KEY))
    assert hash_ip("203.0.113.9", KEY).encode() in table.column("raw_line")[0].as_py()


def test_event_columns_fill_in_pieces_and_absorb_keep_row_order() -> None:
    made = [make_event(i) for i in range(7)]
    first, later = EventColumns(), EventColumns()
    first.extend(*columns_of(made[:3]))
    first.extend(*columns_of(made[3:4]))
    later.extend(*columns_of(made[4:]))
    first.absorb(later)
    assert len(first) == 7
    assert first.table(IpPrivacy()).equals(events(*made))
    assert len(EventColumns().table(IpPrivacy())) == 0


def columns_of(made: list[tuple[UserRecord, EnrichedHit, str | None]]) -> tuple[list, ...]:
    return tuple(list(column) for column in zip(*made, strict=True))


def test_rows_sealed_into_arrow_pieces_give_the_same_table_in_every_ip_mode() -> None:
    """`EventColumns` turns its lists into Arrow every `seal_rows` rows and applies the IP mode
    at the flush: the table must not depend on where the pieces were cut, absorb included."""
    geo = FileGeo("US", "Washington", "Seattle", "47.6", "-122.3")
    made = [
        make_event(
            i,
            ip=("198.51.100.23", "2001:db8:7:8::9", "203.0.113.5")[i % 3],
            forwarded_for=None if i % 4 else f"10.0.0.{i}, unknown",
            file_geo=geo if i % 5 == 0 else None,
        )
        for i in range(23)
    ]
    for privacy in (IpPrivacy(), IpPrivacy("truncated"), IpPrivacy("hashed", KEY)):
        whole = events(*made, privacy=privacy)
        first, later = EventColumns(seal_rows=2), EventColumns(seal_rows=3)
        for start in range(0, 15, 4):
            first.extend(*columns_of(made[start : min(start + 4, 15)]))
        later.extend(*columns_of(made[15:]))
        first.absorb(later)
        assert len(first) == len(made)
        pieces = first.table(privacy)
        assert pieces.equals(whole)
        assert read_back(pieces).equals(read_back(whole))
