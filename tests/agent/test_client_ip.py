import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.client_ip import client_ip, json_remote_ip, normalise_ip
from consumers.models import Rejection
from consumers.parse import parse_lines
from tests.agent.support import combined_lines, lab_json_lines


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'1.2.3.4 - - [22/Feb/2023:03:38:18 +0000] "GET /cafe HTTP/1.1" 200 5', "1.2.3.4"),
        (b'2001:DB8::1 - - [22/Feb/2023:03:38:18 +0000] "GET / HTTP/1.1" 200 5', "2001:db8::1"),
        (b"9.8.7.6", "9.8.7.6"),
        (b'{"time": "2023-02-22 03:38:18", "remoteIP": "5.6.7.8", "request": "/"}', "5.6.7.8"),
        (b'{"time":"2023-02-22 03:38:18","remoteIP":"::1","request":"/"}', "::1"),
    ],
)
def test_client_ip_of_known_formats(line: bytes, expected: str) -> None:
    assert client_ip(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"garbage line",
        b"\xff\xfe - - bad",
        b"www.example.com - - [22/Feb/2023:03:38:18 +0000] hostname lookups",
        b'{"time": "2023-02-22", "request": "/"}',
        b'{"remoteIP": 12, "x": "1.2.3.4"}',
        b'{"remoteIP": "not-an-ip"}',
        b'{"remoteIP": "1.2.3.4',
        b"999.1.1.1 - -",
        b"1.2.3\x00.4 - - [22/Feb/2023:03:38:18 +0000]",  # a NUL byte: inet_pton raises ValueError
        b"::1\x00 - -",
        b'{"remoteIP": "1.2.3.4\x00"}',
    ],
)
def test_no_client_ip(line: bytes) -> None:
    assert client_ip(line) is None


def test_json_value_is_taken_raw() -> None:
    assert json_remote_ip(b'{"remoteIP" : "1.2.3.4"}') == b"1.2.3.4"


@given(
    st.one_of(
        st.ip_addresses().map(str), st.text(alphabet="0123456789abcdefABCDEF:.%", max_size=45)
    )
)
def test_normalise_agrees_with_ipaddress(text: str) -> None:
    try:
        expected: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(text)
    except ValueError:
        expected = None
    got = normalise_ip(text.encode())
    if expected is None:
        assert got is None
        return
    if isinstance(expected, ipaddress.IPv6Address):
        if expected.ipv4_mapped is not None:
            expected = expected.ipv4_mapped
        else:
            expected = ipaddress.IPv6Address(str(expected).partition("%")[0])
    assert got is not None and ipaddress.ip_address(got) == expected
    assert normalise_ip(got.encode()) == got  # canonical: stable under a second pass


def combined_line_of(address: object) -> bytes:
    return f'{address} - - [22/Feb/2023:03:38:18 +0000] "GET / HTTP/1.1" 200 5'.encode()


@given(st.one_of(combined_lines, lab_json_lines, st.ip_addresses().map(combined_line_of)))
def test_the_partition_key_is_the_client_the_consumer_parses(line: bytes) -> None:
    """The consumer routes a visitor by the MD5 of its parsed client address (which child shard
    inherits it after a reshard), so the agent's key must be that very spelling."""
    [parsed] = parse_lines([line])
    if isinstance(parsed, Rejection):
        return
    assert client_ip(line) == parsed.client_ip


@pytest.mark.parametrize(
    ("text", "canonical"),
    [("::ffff:1.2.3.4", "1.2.3.4"), ("::FFFF:10.0.0.1", "10.0.0.1"), ("fe80::1%eth0", "fe80::1")],
)
def test_mapped_and_zoned_addresses_are_spelled_as_the_consumer_does(
    text: str, canonical: str
) -> None:
    assert normalise_ip(text.encode()) == canonical
    line = f'{text} - - [22/Feb/2023:03:38:18 +0000] "GET / HTTP/1.1" 200 5'.encode()
    [parsed] = parse_lines([line])
    assert not isinstance(parsed, Rejection) and parsed.client_ip == canonical == client_ip(line)


@given(st.binary(max_size=80))
def test_any_bytes_give_an_address_or_none(line: bytes) -> None:
    """The agent must ship every line: finding its key may fail, never raise."""
    got = client_ip(line)
    assert got is None or ipaddress.ip_address(got)
