"""A `GeoLocator` that picks up a new database file without a restart (DESIGN.md §6).

In production `geoipupdate` (or a sidecar) replaces the City database every few days, usually by
writing a new file and renaming it over the old one. This wrapper notices and swaps readers:

- **Cheap to ask.** `lookup()` looks at the file at most once every `check_interval_s` (one
  `os.stat`); in between it costs one clock read more than the locator itself.
- **Changed** means a different (device, inode, size, mtime): a rename gives a new inode, an
  in-place copy a new size or mtime.
- **Atomic swap.** The new database is opened completely (and checked to be a City database)
  before it replaces the old one, with its own empty cache, so no answer ever mixes the two and
  no cached answer from the old one outlives it. The old reader is closed one check later, so a
  lookup that fetched it just before the swap (another thread) still finishes on an open file.
- **Failure keeps the old one.** A file that is missing, half-copied or not a City database is
  logged once (per distinct file state, not per check) and the old reader keeps answering; the
  next change of the file is tried again.

Replace the file by renaming a complete new one over it (what `geoipupdate` does). The reader
maps the file into memory, so rewriting the loaded file in place can crash a reader of any
kind, this one included; a rename leaves the old file intact until its last reader lets go.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from consumers.geo.locator import (
    DEFAULT_CACHE_SIZE,
    GeoDatabaseError,
    GeoLocator,
    Location,
    default_database_path,
)

log = logging.getLogger(__name__)

DEFAULT_CHECK_INTERVAL_S: Final = 60.0

FileState = tuple[int, int, int, int]  # device, inode, size, mtime (ns)


def file_state(path: Path) -> FileState | None:
    """What identifies one version of the file, or None when it cannot be looked at."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ReloadingGeoLocator:
    """Looks addresses up like a `GeoLocator`, reopening the database file when it changes.

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
        self._state = file_state(self.path)  # before opening: a change meanwhile is seen later
        self._locator = GeoLocator(self.path, cache_size=cache_size)
        self._cache_size = cache_size
        self._interval = check_interval_s
        self._clock = clock
        self._next_check = clock() + check_interval_s
        self._retired: GeoLocator | None = None
        self._failed_state: FileState | None = None
        self.reloads = 0

    @property
    def locator(self) -> GeoLocator:
        """The locator currently answering (replaced, not mutated, on reload)."""
        return self._locator

    @property
    def database_type(self) -> str:
        return self._locator.database_type

    def lookup(self, ip: str) -> Location:
        """As `GeoLocator.lookup` (never raises), after a reload if the file has changed."""
        if self._clock() >= self._next_check:
            self.check()
        return self._locator.lookup(ip)

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
            fresh = GeoLocator(self.path, cache_size=self._cache_size)
        except (GeoDatabaseError, OSError, ValueError) as exc:
            self._failed_state = state  # said once for this version of the file
            log.warning("geo database reload failed: %s; keeping the loaded one", exc)
            return False
        # Opening took time: if the file changed meanwhile, the next check sees a new state.
        self._retired, self._locator = self._locator, fresh
        self._state, self._failed_state = state, None
        self.reloads += 1
        log.info("reloaded geo database %s (%s)", self.path, fresh.database_type)
        return True

    def cache_info(self) -> functools._CacheInfo:
        return self._locator.cache_info()

    def close(self) -> None:
        if self._retired is not None:
            self._retired.close()
            self._retired = None
        self._locator.close()

    def __enter__(self) -> ReloadingGeoLocator:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
