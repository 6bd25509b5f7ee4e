"""The trusted X-Forwarded-For rule: the right-most untrusted address, and only behind a proxy."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumers.client_address import TrustedProxies, canonical_address

BALANCERS = TrustedProxies(["10.0.0.0/8", "2001:db8:ffff::/48", "192.0.2.7"])


@pytest.mark.parametrize(
    ("logged", "forwarded_for", "expected"),
    [
        # Not from a trusted proxy: the header is the client's own claim and is ignored.
        ("203.0.113.9", "198.51.100.1", "203.0.113.9"),
        # From the balancer: the client it saw.
        ("10.1.2.3", "198.51.100.1", "198.51.100.1"),
        # A forged left part is not believed: the right-most untrusted address wins.
        ("10.1.2.3", "1.1.1.1, 198.51.100.1", "198.51.100.1"),
        # Chained trusted proxies are skipped.
        ("10.1.2.3", "1.1.1.1, 198.51.100.1, 10.9.9.9, 192.0.2.7", "198.51.100.1"),
        # Junk entries are ignored, wherever they are.
        ("10.1.2.3", "198.51.100.1, unknown", "198.51.100.1"),
        ("10.1.2.3", "198.51.100.1,, _hidden ,", "198.51.100.1"),
        # Everything trusted: the left-most is the best we know.
        ("10.1.2.3", "10.0.0.5, 10.0.0.6", "10.0.0.5"),
        # Nothing usable: the logged address.
        ("10.1.2.3", "unknown", "10.1.2.3"),
        ("10.1.2.3", "", "10.1.2.3"),
        ("10.1.2.3", None, "10.1.2.3"),
        # Ports and brackets, as some balancers write them; canonical spelling.
        ("10.1.2.3", "198.51.100.1:51234", "198.51.100.1"),
        ("10.1.2.3", "[2001:DB8:0::1]:443", "2001:db8::1"),
        ("10.1.2.3", "2001:0db8:0000::0001", "2001:db8::1"),
        ("10.1.2.3", "::ffff:198.51.100.1", "198.51.100.1"),
        ("10.1.2.3", " fe80::1%eth0 ", "fe80::1"),
        # An IPv6 balancer, and an IPv4-mapped spelling of a trusted IPv4 proxy.
        ("2001:db8:ffff::1", "198.51.100.1", "198.51.100.1"),
        ("10.1.2.3", "198.51.100.1, ::ffff:10.0.0.1", "198.51.100.1"),
        ("192.0.2.7", "198.51.100.1", "198.51.100.1"),
        ("192.0.2.8", "198.51.100.1", "192.0.2.8"),
    ],
)
def test_the_standard_algorithm(logged: str, forwarded_for: str | None, expected: str) -> None:
    assert BALANCERS.client_address(logged, forwarded_for) == expected


def test_by_default_nothing_is_trusted_and_the_header_is_never_read() -> None:
    proxies = TrustedProxies()
    assert not proxies
    assert proxies.client_address("10.1.2.3", "198.51.100.1") == "10.1.2.3"


def test_a_bad_network_is_refused_with_its_text() -> None:
    with pytest.raises(ValueError, match=r"10\.0\.0\.0/33"):
        TrustedProxies(["10.0.0.0/33"])


def test_answers_are_remembered_and_the_memo_is_bounded() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    for i in range(70_000):
        proxies.client_address("10.0.0.1", f"198.51.{i // 256 % 256}.{i % 256}, {i}")
    assert len(proxies._resolved) <= 65_536
    assert proxies.client_address("10.0.0.1", "x" * 5000 + ", 198.51.100.1") == "198.51.100.1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        ("1.2.3.4:80", "1.2.3.4"),
        ("[::1]:80", "::1"),
        ("[::1]", "::1"),
        ("unknown", None),
        ("", None),
        ("1.2.3", None),
        ("1.2.3.4:80:90", None),
        ("x" * 100, None),
    ],
)
def test_canonical_address(text: str, expected: str | None) -> None:
    assert canonical_address(text) == expected


@given(
    client=st.ip_addresses(v=4).filter(lambda a: not a.is_private),
    proxies=st.lists(st.ip_addresses(network="10.0.0.0/8"), max_size=4),
    forged=st.lists(st.one_of(st.ip_addresses(), st.text(max_size=8)), max_size=3),
)
def test_a_client_cannot_forge_its_way_past_the_balancers(
    client: ipaddress.IPv4Address, proxies: list[ipaddress.IPv4Address], forged: list[object]
) -> None:
    """Whatever the client wrote first, the hop the first trusted proxy saw is the answer."""
    header = ", ".join([*map(str, forged), str(client), *map(str, proxies)]).replace("\n", "")
    assert BALANCERS.client_address("10.255.0.1", header) == str(client)
