"""Ground truth: what the pipeline must report for a simulated log, counted from what was simulated.

The counts come from the simulator's own knowledge of each request (who sent it, whether that is
a bot, what kind of resource it is, how it was answered), never from re-reading the log text. The
consumer reaches the same numbers the other way round (parsing, geolocating, matching user
agents against the crawler list), so agreement between the two is evidence both are right.

Counting rules (the project's definitions; the consumer implements the same):

- **static file**: a path (query string ignored) under `/cafe/css/`, `/cafe/images/` or
  `/cafe/js/`, or ending in `.css .js .png .jpg .jpeg .gif .svg .ico .webp .woff .woff2`;
  `/favicon.ico` and `/robots.txt` are static too.
- **bot**: the user agent is a crawler, bot, monitor or script (the `crawler-user-agents` list).
- **page view**: a request by a non-bot, for a non-static path, answered 2xx or 3xx, with method
  GET, HEAD or POST.
- **menu view**: a page view of `/cafe/menu.php` (any query string).
- **purchase**: a page view with method POST to `/cafe/processOrder.php` (so 2xx/3xx only: an
  order answered 500 is not a purchase).
- **visitor**: a distinct (client IP, user agent) with at least one page view. **Menu viewers** and
  **purchasers** are the distinct visitors with at least one menu view or purchase. A visitor's
  city, region and country are those of its IP address ("Unknown" when the geo database cannot
  place it).
- **page_views**: the number of page views. **rejected_lines**: lines that do not parse.

The JSON has the shape of `GET /api/summary` (DESIGN.md §9): `totals`, `cities` sorted by visitors
descending then city name, plus `regions` and a few fields describing the run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.simulator.catalog import UNKNOWN, City
from service.simulator.sessions import Step
from service.simulator.site import Kind
from service.simulator.visitors import Visitor

_PAGE_METHODS = frozenset({"GET", "HEAD", "POST"})


@dataclass(slots=True)
class _Place:
    city: str
    region: str
    country: str
    continent: str
    visitors: int = 0
    menu_viewers: int = 0
    purchasers: int = 0
    page_views: int = 0


@dataclass(slots=True)
class _Progress:
    """How far one visitor got; `place` is where their address resolves."""

    place: _Place
    menu: bool = False
    purchase: bool = False


class GroundTruth:
    """Accumulates the truth one emitted request (or malformed line) at a time."""

    def __init__(self, **run_facts: Any) -> None:
        self.run_facts = run_facts
        self.lines = 0
        self.bot_lines = 0
        self.static_lines = 0
        self.ipv6_lines = 0
        self.rejected_lines = 0
        self.page_views = 0
        self.first_second: int | None = None
        self.last_second: int | None = None
        self._visitors: dict[tuple[str, str], _Progress] = {}
        self._places: dict[tuple[str, str, str], _Place] = {}

    def _place(self, city: City | None) -> _Place:
        if city is None or not city.known:
            key = (UNKNOWN, UNKNOWN, UNKNOWN)
            continent = UNKNOWN
        else:
            key = (city.name, city.region, city.country)
            continent = city.continent
        place = self._places.get(key)
        if place is None:
            place = self._places[key] = _Place(*key, continent)
        return place

    def _seen(self, second: int) -> None:
        if self.first_second is None or second < self.first_second:
            self.first_second = second
        if self.last_second is None or second > self.last_second:
            self.last_second = second

    def add_malformed(self) -> None:
        self.lines += 1
        self.rejected_lines += 1

    def add(self, step: Step) -> None:
        self.lines += 1
        self._seen(step.at // 1000)
        visitor: Visitor = step.visitor
        if ":" in visitor.ip:
            self.ipv6_lines += 1
        if visitor.bot:
            self.bot_lines += 1
            return
        kind = step.kind
        if kind is Kind.STATIC:
            self.static_lines += 1
            return
        if not 200 <= step.status < 400 or step.method not in _PAGE_METHODS:
            return
        self.page_views += 1
        progress = self._visitors.get(visitor.key)
        if progress is None:
            progress = self._visitors[visitor.key] = _Progress(self._place(visitor.city))
            progress.place.visitors += 1
        place = progress.place
        place.page_views += 1
        if kind is Kind.MENU and not progress.menu:
            progress.menu = True
            place.menu_viewers += 1
        elif kind is Kind.ORDER and step.method == "POST" and not progress.purchase:
            progress.purchase = True
            place.purchasers += 1

    # Reporting ----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        places = sorted(
            (p for p in self._places.values() if p.visitors),
            key=lambda p: (-p.visitors, p.city, p.region, p.country),
        )
        regions: dict[tuple[str, str], dict[str, Any]] = {}
        for place in places:
            region = regions.setdefault(
                (place.region, place.country),
                {
                    "region": place.region,
                    "country": place.country,
                    "visitors": 0,
                    "menu_viewers": 0,
                    "purchasers": 0,
                    "page_views": 0,
                },
            )
            for field in ("visitors", "menu_viewers", "purchasers", "page_views"):
                region[field] += getattr(place, field)
        visitors = len(self._visitors)
        return {
            **self.run_facts,
            "lines": self.lines,
            "bot_lines": self.bot_lines,
            "static_lines": self.static_lines,
            "ipv6_lines": self.ipv6_lines,
            "first_time": _iso(self.first_second),
            "last_time": _iso(self.last_second),
            "totals": {
                "page_views": self.page_views,
                "visitors": visitors,
                "menu_viewers": sum(1 for p in self._visitors.values() if p.menu),
                "purchasers": sum(1 for p in self._visitors.values() if p.purchase),
                "rejected_lines": self.rejected_lines,
            },
            "cities": [
                {
                    "city": p.city,
                    "region": p.region,
                    "country": p.country,
                    "continent": p.continent,
                    "visitors": p.visitors,
                    "menu_viewers": p.menu_viewers,
                    "purchasers": p.purchasers,
                    "page_views": p.page_views,
                }
                for p in places
            ],
            "regions": sorted(
                regions.values(), key=lambda r: (-r["visitors"], r["region"], r["country"])
            ),
        }

    def write(self, path: Path) -> None:
        """Write atomically: a reader never sees half a truth file."""
        partial = path.with_name(path.name + ".tmp")
        partial.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        os.replace(partial, path)


def _iso(second: int | None) -> str | None:
    if second is None:
        return None
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
