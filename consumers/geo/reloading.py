"""The service's geolocation: a `GeoLocator` that follows its database file, with a block cache.

**Reloading.** In production `geoipupdate` (or a sidecar) replaces the City database every few
days, usually by writing a new file and renaming it over the old one. This wrapper notices and
swaps readers without a restart (DESIGN.md §6):

- **Cheap to ask.** `lookup()` looks at the file at most once every `check_interval_s` (one
  `os.stat`); in between it costs one clock read.
- **Changed** means a different (device, inode, size, mtime): a rename gives a new inode, an
  in-place copy a new size or mtime.
- **Atomic swap.** The new database is opened completely (and checked to be a City database)
  before it replaces the old one, with empty caches, so no answer ever mixes the two and no
  cached answer from the old one outlives it. The old readers are closed one check later, so a
  lookup that fetched them just before the swap (another thread) still finishes on an open file.
- **Failure keeps the old one.** A file that is missing, half-copied or not a City database is
  logged once (per distinct file state, not per check) and the old reader keeps answering; the
  next change of the file is tried again.

Replace the file by renaming a complete new one over it (what `geoipupdate` does). Readers map
the file into memory, so rewriting the loaded file in place can crash a reader of any kind,
this one included; a rename leaves the old file intact until its last reader lets go.

**Caches.** `GeoLocator` caches per address, but a first lookup costs ~30 µs (address parsing,
`is_global`, geoip2's model objects), and real traffic brings many addresses seen once: in the
simulator's, 7% of hits come from an address not seen before, which alone would cost 2-3 µs a
hit, more than the rest of enrichment together. Those addresses crowd into few networks (20,000
addresses in ~1,650 database networks, mostly /21-/24). So an IPv4 address seen for the first
time is looked for by its /24 (the text before its last dot): when the database network holding
an address covers its whole /24 (known from `maxminddb`'s prefix length, ~3 µs), every address
of that /24 gets the same answer, and the answer is remembered for the block; IPv6 addresses
(a new one per visitor, usually) likewise by their /48. Blocks that are
not uniform and anything unusual go to the locator as before, so every answer is the
locator's own (a test compares them over the whole embedded database). In front of both, a plain
dictionary per address answers repeat visitors in one look-up. All caches belong to one version
of the file and go with it.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import maxminddb

from consumers.geo.locator import (
    DEFAULT_CACHE_SIZE,
    GeoDatabaseError,
    GeoLocator,
    Location,
    default_database_path,
)

log = logging.getLogger(__name__)

DEFAULT_CHECK_INTERVAL_S: Final = 60.0
BLOCK_CACHE_LIMIT: Final = 65_536  # /24 blocks remembered; cleared wholesale when full
ADDRESS_MEMO_LIMIT: Final = 131_072  # addresses remembered (~15 MB); cleared wholesale when full
_LONGEST_ADDRESS: Final = 64
_OCTETS: Final = frozenset(str(i) for i in range(256))  # the canonical spellings of an octet
# /24s in which Python's `is_global` (hence the locator's answer) differs from address to
# address: every IANA special-purpose IPv4 range smaller than a /24 lies in these two.
_MIXED_BLOCKS: Final = frozenset({"192.0.0", "255.255.255"})
_NOT_UNIFORM: Final = None  # a block whose addresses must be looked up one by one
_UNSEEN: Final = object()

FileState = tuple[int, int, int, int]  # device, inode, size, mtime (ns)


def _v6_block(text: str) -> int:
    return int(ipaddress.IPv6Address(text)) >> 80


# The same for IPv6 /48s: the IANA special-purpose ranges smaller than a /48 (::1, ::, the
# IPv4-mapped and NAT64 /96s, the discard-only 100::/64, the global 2001:1::x in 2001::/23).
_MIXED_V6_BLOCKS: Final = frozenset(map(_v6_block, ("::", "64:ff9b::", "100::", "2001:1::")))


def block_of(ip: str) -> str | int | None:
    """The block an address is looked for by: an IPv4 /24 as the text before its last dot, an
    IPv6 /48 as its top 48 bits; None for anything else (a zone id, an IPv4-mapped address)."""
    block, dot, last = ip.rpartition(".")
    if dot:
        return block if last in _OCTETS else None  # the block's text is checked when learnt
    if ":" in ip and "%" not in ip:
        try:
            address = ipaddress.IPv6Address(ip)
        except ValueError:
            return None
        if address.ipv4_mapped is None and str(address) == ip:
            return int(address) >> 80
    return None


def file_state(path: Path) -> FileState | None:
    """What identifies one version of the file, or None when it cannot be looked at."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class _Database:
    """One version of the file, opened twice: `GeoLocator` for answers, `maxminddb` for the size
    of the network an address is in (which the locator does not expose)."""

    def __init__(self, path: Path, cache_size: int) -> None:
        self.locator = GeoLocator(path, cache_size=cache_size)
        try:
            self.networks = maxminddb.open_database(str(path), maxminddb.MODE_AUTO)
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            self.locator.close()
            raise GeoDatabaseError(f"{path}: {exc}") from None
        self.blocks: dict[str | int, Location | None] = {}
        self.addresses: dict[str, Location] = {}

    def close(self) -> None:
        self.blocks.clear()
        self.addresses.clear()
        self.locator.close()
        self.networks.close()


class ReloadingGeoLocator:
    """Looks addresses up like a `GeoLocator` (the same answers), following the file.

    The constructor opens the file and raises `GeoDatabaseError` if it cannot: at startup a
    missing database is a configuration error. Only later failures are logged and survived.
    """

    def __init__(
        self,
        path: Path | str | None = None,
        *,
        check_interval_s: float = DEFAULT_CHECK_INTERVAL_S,
        cache_size: int = DEFAULT_CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path) if path is not None else default_database_path()
        self._cache_size = cache_size
        state = file_state(self.path)
        self._db = _Database(self.path, cache_size)
        # Both readers must have opened the same version: if the file changed meanwhile, the
        # first check (which sees a state other than None) opens it again.
        self._state = state if file_state(self.path) == state else None
        self._interval = check_interval_s
        self._clock = clock
        self._next_check = clock() + check_interval_s
        self._retired: _Database | None = None
        self._failed_state: FileState | None = None
        self.reloads = 0

    @property
    def locator(self) -> GeoLocator:
        """The locator currently answering (replaced, not mutated, on reload)."""
        return self._db.locator

    @property
    def database_type(self) -> str:
        return self._db.locator.database_type

    def lookup(self, ip: str) -> Location:
        """As `GeoLocator.lookup` (never raises), after a reload if the file has changed."""
        if self._clock() >= self._next_check:
            self.check()
        try:
            location = self._db.addresses.get(ip)
        except TypeError:  # unhashable: not an address
            return self._db.locator.lookup(ip)
        return location if location is not None else self._lookup_first(ip)

    def _lookup_first(self, ip: str) -> Location:
        """An address not in the memo: by its block when possible, else by the locator."""
        db = self._db
        location = None
        if type(ip) is str:
            block = block_of(ip)
            if block is not None:
                known = db.blocks.get(block, _UNSEEN)
                if known is _UNSEEN:
                    location = self._learn_block(db, ip, block)
                elif known is not _NOT_UNIFORM:
                    location = known  # type: ignore[assignment]
        if location is None:
            location = db.locator.lookup(ip)
        if type(ip) is str and len(ip) <= _LONGEST_ADDRESS:
            if len(db.addresses) >= ADDRESS_MEMO_LIMIT:
                db.addresses.clear()
            db.addresses[ip] = location
        return location

    def _learn_block(self, db: _Database, ip: str, block: str | int) -> Location:
        """The locator's answer for `ip`, remembered for its block if the whole block shares it."""
        location = db.locator.lookup(ip)
        if isinstance(block, str):
            size, mixed = 24, _MIXED_BLOCKS
        else:
            size, mixed = 48, _MIXED_V6_BLOCKS
        uniform = False
        if block not in mixed:
            try:
                # An IPv4 block's text is only trusted once one of its addresses is canonical.
                canonical = size == 48 or str(ipaddress.IPv4Address(ip)) == ip
                _record, prefix_len = db.networks.get_with_prefix_len(ip)
            except ValueError:  # not an address, or IPv6 asked of an IPv4 database
                canonical = False
            uniform = canonical and prefix_len <= size
        if len(db.blocks) >= BLOCK_CACHE_LIMIT:
            db.blocks.clear()
        db.blocks[block] = location if uniform else _NOT_UNIFORM
        return location

    def check(self) -> bool:
        """Look at the file now; reload it if it changed. True when a new database was loaded."""
        self._next_check = self._clock() + self._interval
        if self._retired is not None:
            self._retired.close()
            self._retired = None
        state = file_state(self.path)
        if state == self._state or (state is not None and state == self._failed_state):
            return False
        if state is None:  # gone (mid-rename, deleted): said once, until it is back
            self._state = self._failed_state = None
            log.warning("geo database %s cannot be read; keeping the loaded one", self.path)
            return False
        try:
            fresh = _Database(self.path, self._cache_size)
        except (GeoDatabaseError, OSError, ValueError) as exc:
            self._failed_state = state  # said once for this version of the file
            log.warning("geo database reload failed: %s; keeping the loaded one", exc)
            return False
        if file_state(self.path) != state:  # replaced again while opening: next time
            fresh.close()
            return False
        self._retired, self._db = self._db, fresh
        self._state, self._failed_state = state, None
        self.reloads += 1
        log.info("reloaded geo database %s (%s)", self.path, fresh.locator.database_type)
        return True

    def cache_info(self) -> functools._CacheInfo:
        """The locator's own cache's figures: lookups the memo or a block answers never reach it."""
        return self._db.locator.cache_info()

    @property
    def blocks_cached(self) -> int:
        return sum(1 for location in self._db.blocks.values() if location is not _NOT_UNIFORM)

    def close(self) -> None:
        if self._retired is not None:
            self._retired.close()
            self._retired = None
        self._db.close()

    def __enter__(self) -> ReloadingGeoLocator:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
