"""The stateless enrichment step: one `Hit` in, one `EnrichedHit` out, in any order.

It adds what can be concluded from a single line: who the visitor is (their address, behind a
trusted balancer too, and the visitor key), where they are, whether the user agent is a bot,
what the request was for and whether it counts (page view, funnel stage). What needs history
(sessions, bots judged by behaviour, distinct counts) is the stateful steps' business.

Pure given the geo reader: no I/O but the database file `GeoLocator` maps (and, with
`ReloadingGeoLocator`, an occasional `stat` of it). Every judgement is memoised by what it
depends on alone (user agent, path, address, X-Forwarded-For), each memo bounded, so on real
traffic a hit costs a handful of dictionary look-ups and one object; `enrich_batch` is the hot
path (a Kinesis record's lines at a time) and `enrich` the same for one hit.

The visitor key is `client_ip + "\\t" + (user_agent or "")`: the address the visitor was
resolved to and the user agent as parsed (escapes undone), the (client IP, user agent) pair of
the README's counting rules. A tab cannot occur in an address, so the key splits back into its
two parts at its first tab; no user agent and an empty one are the same key (both are bots).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final, Protocol

from consumers.bots import BotDetector
from consumers.client_address import TrustedProxies
from consumers.geo.locator import Location
from consumers.models import EnrichedHit, Hit, fast_constructor
from consumers.pages import DEFAULT_SITE_RULES, PageClassifier, SiteRules

new_enriched_hit: Final[Callable[..., EnrichedHit]] = fast_constructor(EnrichedHit)
"""`EnrichedHit(...)` with positional arguments in field order, at mutable-dataclass speed."""

VISITOR_SEPARATOR: Final = "\t"


class Locates(Protocol):
    """What enrichment needs of geolocation: `GeoLocator` and `ReloadingGeoLocator` both fit."""

    def lookup(self, ip: str) -> Location: ...


def visitor_key(client_ip: str, user_agent: str | None) -> str:
    """The visitor's identity for distinct counts and sessions (see the module docstring)."""
    return client_ip + VISITOR_SEPARATOR + (user_agent or "")


class Enricher:
    """Geolocation, bot verdict, page class and counting rule for each hit.

    `trusted_proxies`: the balancers whose X-Forwarded-For is believed (`TrustedProxies` or
    CIDR strings); none by default, so the logged address is the visitor's.
    """

    def __init__(
        self,
        geo: Locates,
        bots: BotDetector | None = None,
        rules: SiteRules = DEFAULT_SITE_RULES,
        trusted_proxies: TrustedProxies | Iterable[str] = (),
    ) -> None:
        self.geo = geo
        self.bots = bots if bots is not None else BotDetector()
        self.rules = rules
        self.pages = PageClassifier(rules)
        self.trusted_proxies = (
            trusted_proxies
            if isinstance(trusted_proxies, TrustedProxies)
            else TrustedProxies(trusted_proxies)
        )

    def enrich(self, hit: Hit) -> EnrichedHit:
        return self.enrich_batch((hit,))[0]

    def enrich_batch(self, hits: Iterable[Hit]) -> list[EnrichedHit]:
        """One `EnrichedHit` per hit, in the same order."""
        lookup = self.geo.lookup
        is_bot = self.bots.is_bot
        classify = self.pages.classify
        stage_of = self.pages.stage
        proxies = self.trusted_proxies if self.trusted_proxies else None
        construct = new_enriched_hit
        enriched: list[EnrichedHit] = []
        append = enriched.append
        for hit in hits:
            ip = hit.client_ip
            if proxies is not None and hit.forwarded_for:
                ip = proxies.client_address(ip, hit.forwarded_for)
            agent = hit.user_agent
            bot = is_bot(agent)
            page = classify(hit.path)
            # Bots and static files (two hits in three) are never page views: skip the rule.
            if bot or page == "static":
                stage = None
            else:
                stage = stage_of(page, hit.method, hit.status, is_bot=False)
            append(
                construct(
                    hit,
                    ip,
                    ip + "\t" + agent if agent else ip + "\t",
                    lookup(ip),
                    bot,
                    page,
                    stage is not None,
                    stage,
                )
            )
        return enriched
