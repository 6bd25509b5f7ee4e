"""The visitor's address: the logged client, or the one a trusted proxy vouches for.

Behind a load balancer Apache logs the balancer as the client of every request, which would turn
all visitors into one, in the balancer's city. The balancer appends the address it saw to
X-Forwarded-For, and a log format that records that header (`consumers.parse` reads it as the
combined format's optional last field) lets us recover the visitor with the standard algorithm
(nginx `real_ip_recursive`, Apache `mod_remoteip`):

- if the logged address is not a trusted proxy, it *is* the visitor (the header, if any, was
  written by the client and proves nothing);
- otherwise walk X-Forwarded-For from the right (the newest hop first), skipping addresses of
  trusted proxies; the first address that is not trusted is the visitor;
- if every address in the header is trusted, the left-most one is the best we know.

Entries that are not addresses (`unknown`, obfuscated identifiers, junk) are ignored: skipped,
neither trusted nor an answer. A client cannot exploit that, because the first proxy always
appends the client's real address to the right of anything it forged; only a *trusted* proxy
that hides its client behind `unknown` would let the entries left of it (the client's own) be
read, so do not list such a proxy as trusted.

A port (`1.2.3.4:5678`, `[2001:db8::1]:443`, as some balancers write) is dropped. Answers are
spelled canonically, as `consumers.parse` spells `client_ip` (IPv6 compressed and lower case,
IPv4-mapped IPv6 as IPv4, no zone id), so one visitor has one key however their address came.

The default is no trusted proxies: the logged address is used and the header is never read,
because trusting it by default would let any client choose its own address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

_CACHE_LIMIT: Final = 65_536  # entries per memo; cleared wholesale when full
_LONGEST_ENTRY: Final = 64  # longer than any address with a port worth reading
_LONGEST_HEADER: Final = 1024  # a longer header is still resolved, just not remembered

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def canonical_address(text: str) -> str | None:
    """The canonical spelling of an address in a header entry, or None when it is not one."""
    text = text.strip()
    if not text or len(text) > _LONGEST_ENTRY:
        return None
    if text.startswith("["):  # [v6] or [v6]:port
        text = text[1 : text.find("]")] if "]" in text else text[1:]
    elif text.count(":") == 1:  # v4:port (an IPv6 address has at least two colons)
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        return str(mapped) if mapped is not None else str(address).partition("%")[0]
    return str(address)


class TrustedProxies:
    """The configured proxy networks and the X-Forwarded-For rule that goes with them.

    Both memos are bounded: the set of balancer addresses is small, and a visitor's header
    repeats on every request of their visit, so steady traffic costs two dictionary look-ups.
    """

    def __init__(self, networks: Iterable[str | Network] = ()) -> None:
        parsed: list[Network] = []
        for network in networks:
            if isinstance(network, str):
                try:
                    network = ipaddress.ip_network(network.strip(), strict=False)
                except ValueError:
                    raise ValueError(f"not a network (CIDR) or address: {network!r}") from None
            parsed.append(network)
        self.networks: tuple[Network, ...] = tuple(parsed)
        self._v4 = tuple(n for n in parsed if n.version == 4)
        self._v6 = tuple(n for n in parsed if n.version == 6)
        self._trusted: dict[str, bool] = {}
        self._resolved: dict[tuple[str, str], str] = {}

    def __bool__(self) -> bool:
        """False when nothing is trusted: the caller can skip the rule altogether."""
        return bool(self.networks)

    def is_trusted(self, address: str) -> bool:
        """Whether a canonical address belongs to a trusted proxy."""
        trusted = self._trusted.get(address)
        if trusted is None:
            trusted = self._is_trusted(address)
            if len(self._trusted) >= _CACHE_LIMIT:
                self._trusted.clear()
            self._trusted[address] = trusted
        return trusted

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        networks = self._v4 if ip.version == 4 else self._v6
        return any(ip in network for network in networks)

    def client_address(self, logged: str, forwarded_for: str | None) -> str:
        """The visitor's address, given the logged client and the X-Forwarded-For it sent."""
        if not forwarded_for or not self.networks or not self.is_trusted(logged):
            return logged
        key = (logged, forwarded_for)
        address = self._resolved.get(key)
        if address is None:
            address = self._walk(logged, forwarded_for)
            if len(forwarded_for) <= _LONGEST_HEADER:
                if len(self._resolved) >= _CACHE_LIMIT:
                    self._resolved.clear()
                self._resolved[key] = address
        return address

    def _walk(self, logged: str, forwarded_for: str) -> str:
        leftmost_trusted = None
        for entry in reversed(forwarded_for.split(",")):
            address = canonical_address(entry)
            if address is None:
                continue
            if not self.is_trusted(address):
                return address
            leftmost_trusted = address
        return leftmost_trusted or logged
