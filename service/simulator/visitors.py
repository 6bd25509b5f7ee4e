"""Who makes the requests: people (new and returning) and bots, each with an address and a browser.

A visitor's identity is (client IP, user agent), the same key the analytics use. Realistic
wrinkles the counters must cope with are made here on purpose: people come back hours later from
the same address and browser; several people share one office or carrier-NAT address with
different browsers; some are on IPv6; a few come from addresses no geo database can place.
"""

from __future__ import annotations

import bisect
import random
from collections import deque
from dataclasses import dataclass, field

from service.simulator.catalog import Catalog, City, Network, draw_address
from service.simulator.logformat import escape_field
from service.simulator.rhythm import Rhythm, activity, local_hours
from service.simulator.useragents import BOT_FAMILIES, BROWSERS, BotFamily

IPV6_HUMAN_SHARE = 0.11  # share of human visitors on IPv6 (where their city has IPv6 ranges)
RETURNING_SHARE = 0.22  # share of human sessions by someone who visited earlier
SHARED_ADDRESS_SHARE = 0.07  # new visitors behind an address another visitor already uses
HTTP2_SHARE = 0.65  # browsers that speak HTTP/2 to the café's Apache (mod_http2)
RETURN_AFTER_MS = 3_600_000  # "returning" means after at least an hour away
_ELIGIBLE_CAP = 20_000  # returning candidates kept; bounded memory on endless real-time runs
_SHARED_CAP = 8  # recent addresses remembered per city for sharing


@dataclass(slots=True, eq=False)
class Visitor:
    ip: str
    agent: str  # the user agent as sent (unescaped); with `ip` it is the visitor's identity
    agent_field: str  # the user agent as Apache logs it (quotes escaped)
    city: City | None  # None for bots: where a crawler sits is no analytics question
    bot: bool
    mobile: bool = False
    proto: str = "HTTP/1.1"
    family: BotFamily | None = None
    cached_assets: int = 0  # bit i set: the browser holds site.ASSETS[i] in its cache
    sessions: int = 0
    busy_until: int = 0  # a monitor's last planned check (its current round runs until then)
    key: tuple[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.key = (self.ip, self.agent)


def _cumulative(weights: list[float]) -> list[float]:
    running, out = 0.0, []
    for weight in weights:
        running += weight
        out.append(running)
    return out


def _pick(rng: random.Random, cumulative: list[float]) -> int:
    index = bisect.bisect_right(cumulative, rng.random() * cumulative[-1])
    return min(index, len(cumulative) - 1)


class Population:
    """Hands out the visitor for each new session, remembering enough to bring people back."""

    def __init__(self, catalog: Catalog, rhythm: Rhythm) -> None:
        self._rhythm = rhythm
        self._browser_cum = _cumulative([b.weight for b in BROWSERS])
        self._family_cum = _cumulative([f.weight for f in BOT_FAMILIES])
        self._bot_networks = {
            family.name: (
                tuple(Network.parse(n) for n in family.ipv4),
                tuple(Network.parse(n) for n in family.ipv6),
            )
            for family in BOT_FAMILIES
        }
        # Cities without IPv6 ranges cannot have IPv6 visitors; the others make up for them.
        weight_v6 = sum(c.weight for c in catalog.cities if c.ipv6)
        total = sum(c.weight for c in catalog.cities)
        self._ipv6_share = min(0.6, IPV6_HUMAN_SHARE * total / weight_v6) if weight_v6 else 0.0
        self._recent: deque[tuple[int, Visitor]] = deque()
        self._eligible: list[Visitor] = []
        self._shared: dict[str, list[Visitor]] = {}
        self._bots: dict[tuple[str, str], Visitor] = {}

    # People -------------------------------------------------------------------------------------

    def person(self, rng: random.Random, now_ms: int) -> tuple[Visitor, bool]:
        """The visitor of a new human session, and whether they have been here before."""
        self._promote(rng, now_ms)
        if self._eligible and rng.random() < RETURNING_SHARE:
            for _ in range(4):
                index = rng.randrange(len(self._eligible))
                candidate = self._eligible[index]
                city = candidate.city
                assert city is not None
                # People return at their own busy hours, not at 4 a.m. local time.
                if rng.random() < activity(local_hours(city, now_ms)):
                    self._eligible[index] = self._eligible[-1]
                    self._eligible.pop()
                    return candidate, True
        return self._new_person(rng, now_ms), False

    def session_ended(self, visitor: Visitor, last_ms: int) -> None:
        """Called once a human session is planned: the visitor may come back an hour after it."""
        self._recent.append((last_ms, visitor))

    def _promote(self, rng: random.Random, now_ms: int) -> None:
        recent, eligible = self._recent, self._eligible
        while recent and recent[0][0] <= now_ms - RETURN_AFTER_MS:
            visitor = recent.popleft()[1]
            if len(eligible) < _ELIGIBLE_CAP:
                eligible.append(visitor)
            else:
                eligible[rng.randrange(_ELIGIBLE_CAP)] = visitor

    def _new_person(self, rng: random.Random, now_ms: int) -> Visitor:
        city = self._rhythm.pick_city(rng, now_ms)
        browser = BROWSERS[_pick(rng, self._browser_cum)]
        proto = "HTTP/2.0" if rng.random() < HTTP2_SHARE else "HTTP/1.1"
        shared = self._shared.setdefault(city.name + "\0" + city.region + "\0" + city.country, [])
        if shared and rng.random() < SHARED_ADDRESS_SHARE:
            neighbour = shared[rng.randrange(len(shared))]
            if neighbour.agent != browser.agent:
                return Visitor(
                    neighbour.ip,
                    browser.agent,
                    escape_field(browser.agent),
                    city,
                    False,
                    browser.mobile,
                    proto,
                )
        ipv6 = bool(city.ipv6) and (not city.ipv4 or rng.random() < self._ipv6_share)
        ip = draw_address(rng, city.ipv6 if ipv6 else city.ipv4)
        visitor = Visitor(
            ip, browser.agent, escape_field(browser.agent), city, False, browser.mobile, proto
        )
        if len(shared) < _SHARED_CAP:
            shared.append(visitor)
        else:
            shared[rng.randrange(_SHARED_CAP)] = visitor
        return visitor

    # Bots ---------------------------------------------------------------------------------------

    def bot(self, rng: random.Random, now_ms: int) -> Visitor:
        """The bot of a new bot visit.

        A monitor is one installation with one address and agent, checking on its interval; while
        its current round of checks is still running, another kind of bot comes instead, so its
        checks never double up however busy the site is.
        """
        while True:
            family = BOT_FAMILIES[_pick(rng, self._family_cum)]
            agent = family.agents[rng.randrange(len(family.agents))]
            if not family.interval_s:
                break
            monitor = self._bots.get((family.name, agent))
            if monitor is None:
                break
            if monitor.busy_until < now_ms:
                return monitor
        ipv4, ipv6 = self._bot_networks[family.name]
        use_v6 = bool(ipv6) and rng.random() < 0.3
        ip = draw_address(rng, ipv6 if use_v6 else ipv4)
        visitor = Visitor(ip, agent, escape_field(agent), None, True, family=family)
        if family.interval_s:
            self._bots[(family.name, agent)] = visitor
        return visitor
