"""Examples for `consumers.parse`: real lines, every odd field the issue names, every rejection."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from consumers import parse
from consumers.models import REJECTION_REASONS, FileGeo, Hit, Rejection, new_hit
from consumers.parse import MAX_LINE_BYTES, parse_line, parse_lines

REAL_LOG = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real_apache_10k.log"

# The first line of the real log (elastic/examples, May 2015).
REAL_LINE = (
    b'83.149.9.216 - - [17/May/2015:10:05:03 +0000] "GET /presentations/logstash-monitorama-2013'
    b'/images/kibana-search.png HTTP/1.1" 200 203023 "http://semicomplete.com/presentations/'
    b'logstash-monitorama-2013/" "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_9_1) AppleWebKit/537.36'
    b' (KHTML, like Gecko) Chrome/32.0.1700.77 Safari/537.36"'
)
# 10/Oct/2000:13:55:36 -0700 is 20:55:36 UTC.
OCT_10_2000_20_55_36_UTC = 971211336.0
HEAD = b"203.0.113.9 - - [10/Oct/2000:13:55:36 -0700] "


def hit(line: bytes) -> Hit:
    result = parse_line(line)
    assert isinstance(result, Hit), result
    return result


def rejection(line: bytes) -> Rejection:
    result = parse_line(line)
    assert isinstance(result, Rejection), result
    return result


# -- Apache combined and common -------------------------------------------------------------------


def test_real_combined_line_gives_every_field() -> None:
    assert parse_line(REAL_LINE) == Hit(
        client_ip="83.149.9.216",
        ident=None,
        user=None,
        time=1431857103.0,
        utc_offset_minutes=0,
        method="GET",
        path="/presentations/logstash-monitorama-2013/images/kibana-search.png",
        query=None,
        protocol="HTTP/1.1",
        status=200,
        bytes_sent=203023,
        referer="http://semicomplete.com/presentations/logstash-monitorama-2013/",
        user_agent=(
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_9_1) AppleWebKit/537.36 (KHTML, like Gecko)"
            " Chrome/32.0.1700.77 Safari/537.36"
        ),
        forwarded_for=None,
        log_format="combined",
    )


def test_common_line_from_the_apache_documentation() -> None:
    line = b'127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326'
    assert parse_line(line) == Hit(
        "127.0.0.1",
        None,
        "frank",
        OCT_10_2000_20_55_36_UTC,
        -420,
        "GET",
        "/apache_pb.gif",
        None,
        "HTTP/1.0",
        200,
        2326,
        None,
        None,
        None,
        "common",
    )


def test_line_endings_and_surrounding_whitespace_are_not_part_of_the_line() -> None:
    assert parse_line(REAL_LINE + b"\r\n") == parse_line(REAL_LINE) == parse_line(REAL_LINE + b"\n")


@pytest.mark.parametrize(
    ("logged", "canonical"),
    [
        ("2001:db8::1", "2001:db8::1"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("::1", "::1"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # IPv4 client on a dual-stack socket
        ("fe80::1%eth0", "fe80::1"),
        ("192.0.2.7", "192.0.2.7"),
    ],
)
def test_client_address_is_canonical(logged: str, canonical: str) -> None:
    line = logged.encode() + b' - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "-" "-"'
    assert hit(line).client_ip == canonical


def test_dash_fields_are_none_and_empty_quoted_fields_stay_empty() -> None:
    dashes = hit(HEAD + b'"GET / HTTP/1.1" 304 - "-" "-"')
    assert (dashes.ident, dashes.user, dashes.referer, dashes.user_agent) == (None,) * 4
    assert dashes.bytes_sent == 0  # %b writes '-' for zero bytes
    empties = hit(HEAD + b'"GET / HTTP/1.1" 200 5 "" ""')
    assert (empties.referer, empties.user_agent) == ("", "")


def test_escaped_quotes_and_backslashes_are_undone_other_escapes_kept() -> None:
    line = HEAD + rb'"GET /a\"b HTTP/1.1" 200 5 "http://x/\"q\"" "Mozilla \"X\" \\ \x1b[31m\n"'
    parsed = hit(line)
    assert parsed.path == '/a"b'
    assert parsed.referer == 'http://x/"q"'
    assert parsed.user_agent == r'Mozilla "X" \ \x1b[31m\n'


def test_escaped_quote_at_the_end_of_a_field() -> None:
    parsed = hit(HEAD + rb'"GET / HTTP/1.1" 200 5 "-" "ends with \\" "ends with quote\""')
    assert parsed.user_agent == "ends with \\"
    assert parsed.forwarded_for == 'ends with quote"'


@pytest.mark.parametrize(
    ("request_line", "method", "path", "query", "protocol"),
    [
        (b"PROPFIND /dav/ HTTP/1.1", "PROPFIND", "/dav/", None, "HTTP/1.1"),
        (b"get /cafe HTTP/1.1", "get", "/cafe", None, "HTTP/1.1"),
        (
            rb"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            r"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            None,
            None,
            None,
        ),
        (b"GET /", "GET", "/", None, None),  # HTTP/0.9
        (b"GET /a b HTTP/1.1", "GET", "/a b", None, "HTTP/1.1"),
        (b"GET  /double-space  HTTP/1.1", "GET", "/double-space", None, "HTTP/1.1"),
        (b"GET /menu.php?item=7&size= HTTP/1.1", "GET", "/menu.php", "item=7&size=", "HTTP/1.1"),
        (b"GET /menu.php? HTTP/1.1", "GET", "/menu.php", "", "HTTP/1.1"),
        (b"GET http://example.com/x HTTP/1.1", "GET", "http://example.com/x", None, "HTTP/1.1"),
        (b"-", None, None, None, None),  # no request line: Apache's 408
        (b"", None, None, None, None),
    ],
)
def test_odd_request_lines_are_data(
    request_line: bytes,
    method: str | None,
    path: str | None,
    query: str | None,
    protocol: str | None,
) -> None:
    parsed = hit(HEAD + b'"' + request_line + b'" 400 226 "-" "-"')
    assert (parsed.method, parsed.path, parsed.query, parsed.protocol) == (
        method,
        path,
        query,
        protocol,
    )


def test_dash_request_is_a_hit_without_a_path() -> None:
    parsed = hit(b'198.51.100.4 - - [10/Oct/2000:13:55:36 -0700] "-" 408 -')
    assert parsed.status == 408
    assert parsed.path is None and parsed.method is None
    assert parsed.log_format == "common"


def test_trailing_forwarded_for_field() -> None:
    parsed = hit(HEAD + b'"GET / HTTP/1.1" 200 5 "-" "curl/8" "198.51.100.1, 10.0.0.2"')
    assert parsed.forwarded_for == "198.51.100.1, 10.0.0.2"
    assert parsed.log_format == "combined"
    assert hit(HEAD + b'"GET / HTTP/1.1" 200 5 "-" "curl/8" "-"').forwarded_for is None


@pytest.mark.parametrize(
    ("stamp", "epoch", "offset"),
    [
        (b"10/Oct/2000:13:55:36 -0700", OCT_10_2000_20_55_36_UTC, -420),
        (b"11/Oct/2000:02:25:36 +0530", OCT_10_2000_20_55_36_UTC, 330),
        (b"10/Oct/2000:20:55:36 +0000", OCT_10_2000_20_55_36_UTC, 0),
        (b"01/Jan/1970:00:00:00 +0000", 0.0, 0),
        (b"29/Feb/2024:23:59:59 -1200", 1709294399.0, -720),
    ],
)
def test_time_zone_offsets_are_converted_to_utc(stamp: bytes, epoch: float, offset: int) -> None:
    parsed = hit(b"192.0.2.1 - - [" + stamp + b'] "GET / HTTP/1.1" 200 5 "-" "-"')
    assert (parsed.time, parsed.utc_offset_minutes) == (epoch, offset)


def test_invalid_utf8_inside_a_field_is_kept_as_escaped_text() -> None:
    parsed = hit(HEAD + b'"GET /caf\xe9 HTTP/1.1" 200 5 "-" "Bot \xff\xfe/1.0"')
    assert parsed.path == r"/caf\xe9"
    assert parsed.user_agent == r"Bot \xff\xfe/1.0"
    assert hit(HEAD + b'"GET /caf\xc3\xa9 HTTP/1.1" 200 5 "-" "-"').path == "/café"


def test_nul_and_control_bytes_inside_quoted_fields_are_data() -> None:
    assert hit(HEAD + b'"GET / HTTP/1.1" 200 5 "-" "a\x00b\rc\td"').user_agent == "a\x00b\rc\td"


def test_fast_and_careful_paths_agree() -> None:
    lines = [
        REAL_LINE,
        HEAD + b'"GET / HTTP/1.1" 200 5 "-" "-"',
        HEAD + b'"GET /a?b HTTP/1.1" 304 - "" ""',
        HEAD + b'"-" 408 - "-" "-"',
        b'::ffff:10.1.2.3 alice bob [01/Jan/1970:00:00:00 +0000] "x" 599 0 "r" "u"',
        rb'192.0.2.1 - bob [01/Jan/1970:00:00:00 +0000] "GET / HTTP/1.1" 200 5 "\\" "\\\""',
    ]
    for line in lines:
        text = line.decode()
        quick = parse._parse_combined_quickly(text)
        assert quick is not None
        assert quick == parse._parse_access_line(text)


def test_a_bracket_in_ident_or_user_is_left_to_the_careful_path() -> None:
    # Found by the atheris fuzzer: ' [' inside the head moved where the careful path saw [time].
    line = '192.0.2.1 [ - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "-" "-"'
    assert parse._parse_combined_quickly(line) is None
    assert rejection(line.encode()).reason == "bad_syntax"


# -- The course lab's JSON ------------------------------------------------------------------------


def test_lab_logformat_json_line() -> None:
    line = (
        b'{"time":"2023-02-22T03:38:18.123Z", "process":"1234",'
        b' "filename":"/var/www/html/cafe/menu.php",'
        b' "remoteIP":"203.0.113.9", "host":"cafe.example.com", "request":"/cafe/menu.php",'
        b' "query":"?item=3", "method":"GET", "status":"200",'
        b' "userAgent":"Mozilla/5.0 (X11; Linux x86_64)", "referer":"-" }'
    )
    assert parse_line(line) == Hit(
        "203.0.113.9",
        None,
        None,
        1677037098.123,
        0,
        "GET",
        "/cafe/menu.php",
        "item=3",
        None,
        200,
        None,
        None,
        "Mozilla/5.0 (X11; Linux x86_64)",
        None,
        "json",
    )


def test_lab_simulated_file_json_line() -> None:
    line = (
        b'{"time": "2023-02-22 03:38:18", "remoteIP": "2001:DB8::7",'
        b' "request": "/cafe/processOrder.php",'
        b' "query": "", "method": "POST", "status": "200", "useragent": "Mozilla/5.0",'
        b' "referer": "http://cafe.example.com/cafe/menu.php", "country": "United States",'
        b' "region": "Washington", "city": "Seattle", "lat": "47.6062", "lon": "-122.3321"}'
    )
    parsed = hit(line)
    assert (parsed.time, parsed.utc_offset_minutes) == (1677037098.0, None)  # naive: read as UTC
    assert parsed.client_ip == "2001:db8::7"
    assert (parsed.method, parsed.path, parsed.query) == ("POST", "/cafe/processOrder.php", None)
    assert parsed.user_agent == "Mozilla/5.0"
    assert parsed.referer == "http://cafe.example.com/cafe/menu.php"
    assert parsed.file_geo == FileGeo(
        "United States", "Washington", "Seattle", "47.6062", "-122.3321"
    )


@pytest.mark.parametrize(
    ("time_text", "epoch", "offset"),
    [
        ("2023-02-22 03:38:18", 1677037098.0, None),
        ("2023-02-22T03:38:18.123Z", 1677037098.123, 0),
        ("2023-02-22T04:38:18+01:00", 1677037098.0, 60),
        ("[22/Feb/2023:03:38:18 +0000]", 1677037098.0, 0),
    ],
)
def test_json_time_styles(time_text: str, epoch: float, offset: int | None) -> None:
    line = f'{{"time":"{time_text}","remoteIP":"192.0.2.1","request":"/","status":200}}'.encode()
    parsed = hit(line)
    assert parsed.time == pytest.approx(epoch, abs=1e-6)
    assert parsed.utc_offset_minutes == offset


def test_json_with_a_whole_request_line_and_apache_hex_escapes() -> None:
    line = (
        rb'{"time":"2023-02-22 03:38:18","remoteIP":"192.0.2.1","request":"GET /x?y=1 HTTP/1.1",'
        rb'"status":"404","userAgent":"bad \xff byte \\x not an escape"}'
    )
    parsed = hit(line)
    assert (parsed.method, parsed.path, parsed.query, parsed.protocol) == (
        "GET",
        "/x",
        "y=1",
        "HTTP/1.1",
    )
    assert parsed.user_agent == r"bad \xff byte \x not an escape"


def test_json_with_invalid_utf8_in_a_value_still_parses() -> None:
    line = b"{" + JSON_OK + b',"userAgent":"caf\xe9"}'
    assert hit(line).user_agent == r"caf\xe9"


# -- Rejections -----------------------------------------------------------------------------------

JSON_OK = b'"time":"2023-02-22 03:38:18","remoteIP":"192.0.2.1","request":"/","status":"200"'
REJECTED = [
    ("empty", b""),
    ("empty", b"  \t\r\n"),
    ("too_long", HEAD + b'"GET /' + b"a" * MAX_LINE_BYTES + b' HTTP/1.1" 200 5 "-" "-"'),
    ("invalid_utf8", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"),
    ("invalid_utf8", b'\xff\xfe [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5'),
    (
        "unknown_format",
        b"PHP Warning:  Undefined variable $item in /var/www/html/cafe/menu.php on line 12",
    ),
    ("unknown_format", b"[Wed Oct 11 14:32:52 2000] [error] [client 127.0.0.1] client denied"),
    ("unknown_format", b"\x00\x00\x00\x00"),
    ("unknown_format", b"[1, 2, 3]"),
    ("truncated", b"192.0.2.1"),
    ("truncated", b"192.0.2.1 - - [10/Oct/2000:13:5"),
    ("truncated", HEAD[:-1]),
    ("truncated", HEAD + b'"GET / HTTP/1.1" 200'),
    ("truncated", HEAD + b'"GET / HTTP/1.1" 200 5 "-"'),
    ("truncated", HEAD + b'"GET / HTTP/1.1" 200 5 "-" "Mozilla/5.0 (compatible; Googlebot/2.1'),
    ("truncated", HEAD + b'"GET / HTTP/1.1" 200 5 "-" "ends in an escaped quote\\"'),
    (
        "bad_syntax",
        HEAD + b'"GET / HTTP/1.1" 200 5 "-" "-"' + HEAD + b'"GET / HTTP/1.1" 200 5 "-" "-"',
    ),
    ("bad_syntax", HEAD + b'"GET / HTTP/1.1" 200 5 "-" "Mozilla "unescaped" quote"'),
    ("bad_syntax", HEAD + b'"GET / HTTP/1.1" 200 5 "-" "-" 1234'),
    ("bad_syntax", HEAD + b'"GET / HTTP/1.1"200 5 "-" "-"'),
    ("bad_syntax", b'192.0.2.1 - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "-" "-"'),
    ("bad_ip", b'cafe.example.com - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "-" "-"'),
    ("bad_ip", b'256.1.1.1 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "-" "-"'),
    ("bad_ip", b'010.1.1.1 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "-" "-"'),
    ("bad_timestamp", b'192.0.2.1 - - [30/Feb/2023:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "-" "-"'),
    ("bad_timestamp", b'192.0.2.1 - - [10/Okt/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "-" "-"'),
    ("bad_timestamp", b'192.0.2.1 - - [10/Oct/2000:24:00:00 -0700] "GET / HTTP/1.1" 200 5 "-" "-"'),
    ("bad_timestamp", b'192.0.2.1 - - [10/Oct/2000:13:55:36 0700] "GET / HTTP/1.1" 200 5 "-" "-"'),
    ("bad_timestamp", b'192.0.2.1 - - [2000-10-10 13:55:36] "GET / HTTP/1.1" 200 5 "-" "-"'),
    ("bad_timestamp", '192.0.2.1 - - [١٠/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5'.encode()),
    ("bad_status", HEAD + b'"GET / HTTP/1.1" 20 5 "-" "-"'),
    ("bad_status", HEAD + b'"GET / HTTP/1.1" 600 5 "-" "-"'),
    ("bad_status", HEAD + b'"GET / HTTP/1.1" 099 5 "-" "-"'),
    ("bad_status", HEAD + b'"GET / HTTP/1.1" OK 5'),
    ("bad_bytes", HEAD + b'"GET / HTTP/1.1" 200 12a "-" "-"'),
    ("bad_bytes", HEAD + b'"GET / HTTP/1.1" 200 -5 "-" "-"'),
    ("bad_bytes", HEAD + '"GET / HTTP/1.1" 200 １２ "-" "-"'.encode()),
    ("bad_request", b"{" + JSON_OK.replace(b'"request":"/"', b'"request":5') + b"}"),
    ("bad_request", b'{"method":["GET"],' + JSON_OK + b"}"),
    ("bad_ip", b"{" + JSON_OK.replace(b"192.0.2.1", b"localhost") + b"}"),
    ("bad_timestamp", b"{" + JSON_OK.replace(b"03:38:18", b"03:61:18") + b"}"),
    ("bad_status", b"{" + JSON_OK.replace(b'"200"', b"true") + b"}"),
    ("json_invalid", b'{"time": "2023-02-22 03:38:18", "remoteIP": '),
    ("json_invalid", b'{"userAgent": "\\ud800", ' + JSON_OK + b"}"),
    ("invalid_utf8", b"{\xff\xfe}"),
    ("json_missing_field", b'{"time":"2023-02-22 03:38:18","request":"/","status":"200"}'),
    ("json_missing_field", b"{}"),
]


@pytest.mark.parametrize(
    ("reason", "line"), REJECTED, ids=[f"{r}-{i}" for i, (r, _) in enumerate(REJECTED)]
)
def test_rejections_name_the_reason(reason: str, line: bytes) -> None:
    rejected = rejection(line)
    assert rejected.reason == reason
    assert len(rejected.detail) <= 100
    assert rejected.detail.isprintable()


def test_every_rejection_reason_has_an_example() -> None:
    assert {reason for reason, _ in REJECTED} == REJECTION_REASONS


def test_length_limit_is_inclusive() -> None:
    frame = HEAD + b'"GET / HTTP/1.1" 200 5 "-" "'
    longest = frame + b"a" * (MAX_LINE_BYTES - len(frame) - 1) + b'"'
    assert len(longest) == MAX_LINE_BYTES
    assert hit(longest).user_agent == "a" * (MAX_LINE_BYTES - len(frame) - 1)
    assert rejection(longest[:-1] + b'a"').reason == "too_long"


def test_invalid_utf8_rejection_says_what_else_was_wrong() -> None:
    assert rejection(b"\xff\xfe junk").detail.startswith("unknown_format")


def test_hostile_lines_cost_linear_time() -> None:
    escapes = HEAD + b'"GET / HTTP/1.1" 200 5 "-" "' + b'\\"' * 30_000 + b'"'
    quotes = HEAD + b'"GET / HTTP/1.1" 200 5 ' + b'"" ' * 20_000
    started = time.process_time()
    assert hit(escapes).user_agent == '"' * 30_000
    assert rejection(quotes).reason == "bad_syntax"
    assert rejection(b"1" * MAX_LINE_BYTES).reason == "unknown_format"
    assert time.process_time() - started < 0.5


# -- API and value types --------------------------------------------------------------------------


def test_parse_lines_keeps_order_and_count() -> None:
    results = parse_lines([REAL_LINE, b"", b"{}", REAL_LINE])
    assert [type(r).__name__ for r in results] == ["Hit", "Rejection", "Rejection", "Hit"]


def test_fast_constructed_hit_is_an_ordinary_frozen_hit() -> None:
    args = (
        "192.0.2.1",
        None,
        None,
        0.0,
        0,
        "GET",
        "/",
        None,
        "HTTP/1.1",
        200,
        5,
        None,
        None,
        None,
        "combined",
    )
    fast, slow = new_hit(*args, None), Hit(*args)
    assert type(fast) is Hit
    assert fast == slow and hash(fast) == hash(slow)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.status = 500  # type: ignore[misc]


def test_memo_caches_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parse, "_CACHE_LIMIT", 50)
    memos = (parse._addresses, parse._requests, parse._status_sizes, parse._apache_stamps)
    for memo in memos:  # earlier tests may have filled them past this test's small limit
        memo.clear()
    for i in range(200):
        stamp = f"10/Oct/2000:13:{i % 60:02d}:36 -0700"
        line = f'10.0.{i}.1 - - [{stamp}] "GET /{i} HTTP/1.0" 200 {i} "-" "agent/{i}"'
        assert isinstance(parse_line(line.encode()), parse.Hit)
    assert all(memo for memo in memos), "the loop must go through every memo"
    assert all(len(memo) <= 50 for memo in memos)


# -- The real log ---------------------------------------------------------------------------------


@pytest.mark.skipif(not REAL_LOG.exists(), reason=f"{REAL_LOG} not present")
def test_real_apache_log_parses_except_its_one_truncated_line() -> None:
    lines = REAL_LOG.read_bytes().splitlines()
    assert len(lines) == 10_000
    results = parse_lines(lines)
    rejected = {i: r for i, r in enumerate(results) if isinstance(r, Rejection)}
    # Line 8,899 stops in the middle of Googlebot's user agent: no closing quote, genuinely cut.
    assert {i + 1: r.reason for i, r in rejected.items()} == {8899: "truncated"}
    assert all(lines[i].count(b'"') % 2 == 1 for i in rejected)
    hits = [r for r in results if isinstance(r, Hit)]
    assert sum(h.status == 200 for h in hits) == 9126 - 1  # the truncated line was a 200
    assert sum(h.method == "GET" for h in hits) == 9951
    assert all(h.log_format == "combined" and h.utc_offset_minutes == 0 for h in hits)
    first, last = min(h.time for h in hits), max(h.time for h in hits)
    assert (first, last) == (1431857100.0, 1432155959.0)  # 2015-05-17 10:05:00 .. 05-20 21:05:59
    for line in lines:  # the fast path never disagrees with the careful one
        text = line.decode()
        quick = parse._parse_combined_quickly(text)
        assert quick is None or quick == parse._parse_access_line(text)
