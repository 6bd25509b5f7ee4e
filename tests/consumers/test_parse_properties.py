"""Properties of `consumers.parse`: lines built from generated fields give those fields back, and
no input whatsoever makes the parser raise."""

from __future__ import annotations

import ipaddress
from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers import parse
from consumers.models import REJECTION_REASONS, FileGeo, Hit, Rejection
from consumers.parse import MAX_LINE_BYTES, parse_line

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# Any character that can be written as UTF-8 (no lone surrogates).
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
# A word of a space-separated field: anything but an ASCII space.
word = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=" "), min_size=1)
# `%l` / `%u`: printable, no space, and none of the characters that delimit the fields after them.
identity_word = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters='"\\['),
    min_size=1,
    max_size=12,
)


def apache_escape(text: str) -> str:
    """What Apache's log escaping does to the two characters that matter to the syntax."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def dash_is_none(text: str) -> str | None:
    return None if text == "-" else text


@st.composite
def addresses(draw: st.DrawFn) -> tuple[str, str]:
    """(as logged, canonical) for IPv4, IPv6 and IPv4-mapped IPv6, in several spellings."""
    address = draw(st.ip_addresses())
    if isinstance(address, ipaddress.IPv6Address):
        logged = draw(st.sampled_from([str(address), address.exploded, address.exploded.upper()]))
        mapped = address.ipv4_mapped
        return logged, str(mapped) if mapped is not None else str(address)
    return str(address), str(address)


@st.composite
def aware_times(draw: st.DrawFn) -> datetime:
    offset = timedelta(minutes=draw(st.integers(-(23 * 60 + 59), 23 * 60 + 59)))
    moment = draw(st.datetimes(datetime(1000, 1, 2), datetime(9999, 12, 30)))
    return moment.replace(microsecond=0, tzinfo=timezone(offset))


def apache_time(moment: datetime) -> str:
    offset = moment.utcoffset()
    assert offset is not None
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    zone = f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    return (
        f"{moment.day:02d}/{MONTHS[moment.month - 1]}/{moment.year:04d}:"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d} {zone}"
    )


@st.composite
def access_lines(draw: st.DrawFn) -> tuple[bytes, Hit]:
    """A combined, combined + X-Forwarded-For, or common line, and the Hit it must give."""
    logged_ip, client_ip = draw(addresses())
    ident = draw(st.one_of(st.just("-"), identity_word))
    user = draw(st.one_of(st.just("-"), identity_word))
    moment = draw(aware_times())
    offset = moment.utcoffset()
    assert offset is not None
    method = draw(word)
    path = draw(word.filter(lambda w: "?" not in w))
    query = draw(st.one_of(st.none(), word.filter(lambda w: " " not in w), st.just("")))
    protocol = draw(st.sampled_from(["HTTP/1.0", "HTTP/1.1", "HTTP/2.0"]))
    status = draw(st.integers(100, 599))
    size = draw(st.one_of(st.none(), st.integers(0, 10**15)))
    referer = draw(st.one_of(st.just("-"), any_text))
    user_agent = draw(st.one_of(st.just("-"), any_text))
    forwarded_for = draw(st.one_of(st.just("-"), any_text))
    log_format = draw(st.sampled_from(["combined", "combined+xff", "common"]))
    ending = draw(st.sampled_from(["", "\n", "\r\n"]))

    target = path if query is None else f"{path}?{query}"
    line = (
        f"{logged_ip} {ident} {user} [{apache_time(moment)}] "
        f'"{apache_escape(f"{method} {target} {protocol}")}" {status} '
        f"{'-' if size is None else size}"
    )
    if log_format != "common":
        line += f' "{apache_escape(referer)}" "{apache_escape(user_agent)}"'
    if log_format == "combined+xff":
        line += f' "{apache_escape(forwarded_for)}"'
    combined = log_format != "common"
    expected = Hit(
        client_ip=client_ip,
        ident=dash_is_none(ident),
        user=dash_is_none(user),
        time=moment.timestamp(),
        utc_offset_minutes=int(offset.total_seconds()) // 60,
        method=method,
        path=path,
        query=query,
        protocol=protocol,
        status=status,
        bytes_sent=0 if size is None else size,
        referer=dash_is_none(referer) if combined else None,
        user_agent=dash_is_none(user_agent) if combined else None,
        forwarded_for=dash_is_none(forwarded_for) if log_format == "combined+xff" else None,
        log_format="common" if log_format == "common" else "combined",
    )
    return (line + ending).encode(), expected


@st.composite
def json_lines(draw: st.DrawFn) -> tuple[bytes, Hit]:
    """A line of the lab's JSON (its LogFormat or its simulated file), and the Hit it must give."""
    logged_ip, client_ip = draw(addresses())
    moment = draw(st.datetimes(datetime(1000, 1, 2), datetime(9999, 12, 30)))
    seconds = moment.replace(microsecond=0, tzinfo=UTC).timestamp()
    millis = moment.microsecond // 1000
    simulated_file = draw(st.booleans())
    path = draw(any_text.filter(lambda t: t and "?" not in t))
    query = draw(st.one_of(st.just(""), any_text.map(lambda t: "?" + t)))
    method = draw(st.one_of(st.sampled_from(["GET", "POST", "HEAD"]), word))
    status = draw(st.integers(100, 599))
    user_agent = draw(st.one_of(st.just("-"), any_text))
    referer = draw(st.one_of(st.just("-"), any_text))
    document: dict[str, object] = {
        "remoteIP": logged_ip,
        "request": path,
        "query": query,
        "method": method,
        "status": draw(st.sampled_from([str(status), status])),
        "referer": referer,
    }
    if simulated_file:
        document["time"] = moment.strftime("%Y-%m-%d %H:%M:%S")
        document["useragent"] = user_agent
        geo = draw(st.lists(st.text(max_size=12), min_size=5, max_size=5))
        document.update(zip(("country", "region", "city", "lat", "lon"), geo, strict=True))
        time, offset, file_geo = seconds, None, FileGeo(*map(dash_is_none, geo))
    else:
        document["time"] = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis:03d}Z"
        document["userAgent"] = user_agent
        time, offset, file_geo = seconds + millis / 1000, 0, None
    expected = Hit(
        client_ip=client_ip,
        ident=None,
        user=None,
        time=time,
        utc_offset_minutes=offset,
        method=method,
        path=path,
        query=query[1:] if query else None,
        protocol=None,
        status=status,
        bytes_sent=None,
        referer=dash_is_none(referer),
        user_agent=dash_is_none(user_agent),
        forwarded_for=None,
        log_format="json",
        file_geo=file_geo,
    )
    return orjson.dumps(document), expected


def assert_well_formed(result: Hit | Rejection) -> None:
    """Whatever came in, what comes out is usable by every later step and sink."""
    if isinstance(result, Rejection):
        assert result.reason in REJECTION_REASONS
        assert len(result.detail) <= 100
        return
    for f in fields(result):
        value = getattr(result, f.name)
        if isinstance(value, str):
            value.encode("utf-8")  # no lone surrogates: the archive can always encode it
    assert 100 <= result.status <= 599


def paths_agree(line: bytes) -> None:
    """The fast path gives either nothing or exactly what the careful path gives."""
    try:
        text = line.strip(b" \t\r\n").decode()
    except UnicodeDecodeError:
        return
    if text.startswith("{"):
        return
    quick = parse._parse_combined_quickly(text)
    if quick is not None:
        assert quick == parse._parse_access_line(text)


@given(access_lines())
@settings(max_examples=300, deadline=None)
def test_access_line_round_trip(case: tuple[bytes, Hit]) -> None:
    line, expected = case
    assert parse_line(line) == expected
    paths_agree(line)


@given(json_lines())
@settings(max_examples=200, deadline=None)
def test_json_line_round_trip(case: tuple[bytes, Hit]) -> None:
    line, expected = case
    assert parse_line(line) == expected


field_bytes = st.binary(max_size=40).filter(lambda b: b'"' not in b and b"\\" not in b)


@given(field_bytes, field_bytes)
@settings(max_examples=200, deadline=None)
def test_any_bytes_inside_quoted_fields_are_kept_as_text(referer: bytes, agent: bytes) -> None:
    """The invalid-UTF-8 decision: bad bytes become `\\xhh` text and the line still parses."""
    line = b'192.0.2.1 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "%s" "%s"' % (
        referer,
        agent,
    )
    parsed = parse_line(line)
    assert isinstance(parsed, Hit), parsed
    for field_value, raw in ((parsed.referer, referer), (parsed.user_agent, agent)):
        assert field_value == (None if raw == b"-" else raw.decode("utf-8", "backslashreplace"))


@given(st.lists(st.one_of(st.binary(min_size=1, max_size=1), st.integers(0, 255)), max_size=12))
@settings(max_examples=200, deadline=None)
def test_json_values_with_apache_hex_escapes_or_bad_bytes_still_parse(
    pieces: list[bytes | int],
) -> None:
    """Apache's JSON formats write non-printable bytes as `\\xhh` (not valid JSON); invalid
    UTF-8 is kept as the same text. Either way the line parses and the text reads `\\xhh`."""
    raw_agent = b""
    for piece in pieces:
        if isinstance(piece, int):
            raw_agent += b"\\x%02x" % piece  # what Apache writes for a non-printable byte
        elif piece not in (b'"', b"\\") and piece[0] >= 0x20:  # JSON would need these escaped
            raw_agent += piece
    expected = raw_agent.decode("utf-8", "backslashreplace")
    line = (
        b'{"time":"2023-02-22 03:38:18","remoteIP":"192.0.2.1","request":"/","status":"200",'
        b'"userAgent":"' + raw_agent + b'"}'
    )
    parsed = parse_line(line)
    assert isinstance(parsed, Hit), parsed
    assert parsed.user_agent == (None if expected == "-" else expected)


@given(st.binary(max_size=600))
@settings(max_examples=300, deadline=None)
def test_any_bytes_give_a_hit_or_a_rejection(raw: bytes) -> None:
    result = parse_line(raw)
    assert_well_formed(result)
    paths_agree(raw)


@st.composite
def mutated_lines(draw: st.DrawFn) -> bytes:
    """A valid line with a few bytes inserted, deleted or replaced: near misses, which random
    bytes almost never produce and which exercise every branch of the careful path."""
    line = bytearray(draw(st.one_of(access_lines(), json_lines()))[0])
    interesting = st.sampled_from([*b' "\\[]-?{}:/\x00\r\n\xff\xc3\x80\xe2'])
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(line)))
        action = draw(st.sampled_from(["insert", "delete", "replace", "cut"]))
        byte = draw(st.one_of(interesting, st.integers(0, 255)))
        if action == "insert":
            line.insert(position, byte)
        elif action == "cut":
            del line[position:]
        elif position < len(line):
            if action == "delete":
                del line[position]
            else:
                line[position] = byte
    return bytes(line)


@given(mutated_lines())
@settings(max_examples=300, deadline=None)
def test_mutated_lines_give_a_hit_or_a_rejection(raw: bytes) -> None:
    assert_well_formed(parse_line(raw))
    paths_agree(raw)


@given(st.binary(min_size=1, max_size=64), st.integers(MAX_LINE_BYTES - 64, MAX_LINE_BYTES + 64))
@settings(max_examples=30, deadline=None)
def test_huge_inputs_give_a_hit_or_a_rejection(chunk: bytes, size: int) -> None:
    raw = (chunk * (size // len(chunk) + 1))[:size]
    assert_well_formed(parse_line(raw))


@pytest.mark.slow
@given(st.one_of(st.binary(max_size=2000), mutated_lines()))
@settings(max_examples=3000, deadline=None)
def test_fuzz_many_inputs(raw: bytes) -> None:
    """The long hypothesis fuzz run (tests/consumers/fuzz_parse.py is the atheris one)."""
    assert_well_formed(parse_line(raw))
    paths_agree(raw)
