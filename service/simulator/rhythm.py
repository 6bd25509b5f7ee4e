"""The daily rhythm: people visit a café's site by their own clock, not by UTC.

Each city's activity follows its local solar time (UTC + longitude/15 h): quiet at night, rising
in the morning, a lunch peak and an evening peak. So at 12:00 UTC Europe is at lunch and the US
west coast asleep, and the mix of cities in the log shifts through the day as it does on a real
site. Everything is computed per minute and cached: a minute is far finer than the curve changes.
"""

from __future__ import annotations

import bisect
import math
import random

from service.simulator.catalog import Catalog, City

# Relative activity by local hour 0..23 (1.0 = the busiest hour), interpolated linearly.
ACTIVITY_BY_LOCAL_HOUR = (
    0.10, 0.06, 0.04, 0.03, 0.03, 0.05, 0.12, 0.30, 0.52, 0.62, 0.72, 0.90,
    0.98, 0.95, 0.72, 0.60, 0.62, 0.72, 0.88, 0.96, 0.90, 0.70, 0.45, 0.22,
)  # fmt: skip

# Share of human visitors whose address no geo database can place (carrier NAT, new ranges).
UNKNOWN_VISITOR_SHARE = 0.02

MINUTE_MS = 60_000
_DAY_MINUTES = 1440


def activity(local_hours: float) -> float:
    """Activity at a local time of day given in hours (any real number; wraps around midnight)."""
    hours = local_hours % 24.0
    low = math.floor(hours)
    frac = hours - low
    a = ACTIVITY_BY_LOCAL_HOUR[low % 24]
    b = ACTIVITY_BY_LOCAL_HOUR[(low + 1) % 24]
    return a + (b - a) * frac


def local_hours(city: City, time_ms: int) -> float:
    return (time_ms / 3_600_000.0 + city.utc_offset_hours) % 24.0


class Rhythm:
    """Per-minute human activity over all cities, and the matching choice of a visitor's city."""

    def __init__(self, catalog: Catalog) -> None:
        places = list(catalog.cities)
        total_weight = sum(city.weight for city in places)
        weights = [city.weight for city in places]
        if catalog.unknown is not None:
            places.append(catalog.unknown)
            weights.append(total_weight * UNKNOWN_VISITOR_SHARE / (1 - UNKNOWN_VISITOR_SHARE))
        self.places: tuple[City, ...] = tuple(places)
        self._weights = tuple(weights)
        self._total_weight = sum(weights)
        self._cache: dict[int, tuple[float, list[float]]] = {}

    def _minute(self, minute: int) -> tuple[float, list[float]]:
        cached = self._cache.get(minute)
        if cached is None:
            if len(self._cache) > 4096:
                self._cache.clear()
            mid_ms = minute * MINUTE_MS + MINUTE_MS // 2
            cumulative, running = [], 0.0
            for city, weight in zip(self.places, self._weights, strict=True):
                running += weight * activity(local_hours(city, mid_ms))
                cumulative.append(running)
            cached = (running / self._total_weight, cumulative)
            self._cache[minute] = cached
        return cached

    def level(self, time_ms: int) -> float:
        """Human activity at this moment, 0..1 (1 would mean every city at its busiest hour)."""
        return self._minute(time_ms // MINUTE_MS)[0]

    def daily_mean(self) -> float:
        """Mean level over a whole day; the same for every day, as the curve has no weekday."""
        return sum(self._minute(m)[0] for m in range(_DAY_MINUTES)) / _DAY_MINUTES

    def pick_city(self, rng: random.Random, time_ms: int) -> City:
        """A visitor's city, in proportion to weight times that city's local activity right now."""
        cumulative = self._minute(time_ms // MINUTE_MS)[1]
        index = bisect.bisect_right(cumulative, rng.random() * cumulative[-1])
        return self.places[min(index, len(self.places) - 1)]
