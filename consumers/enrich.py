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

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import add, is_not
from typing import TYPE_CHECKING, Any, Final, Protocol

from consumers.bots import BotDetector
from consumers.client_address import TrustedProxies
from consumers.geo.locator import Location
from consumers.models import (
    EnrichedHit,
    FunnelStage,
    Hit,
    PageClass,
    fast_constructor,
    mutable_twin,
)
from consumers.pages import DEFAULT_SITE_RULES, PageClassifier, SiteRules

if TYPE_CHECKING:
    from consumers.parse import ParsedBatch

new_enriched_hit: Final[Callable[..., EnrichedHit]] = fast_constructor(EnrichedHit)
"""`EnrichedHit(...)` with positional arguments in field order, at mutable-dataclass speed."""

VISITOR_SEPARATOR: Final = "\t"

_MutableEnrichedHit: Final = mutable_twin(EnrichedHit)  # see consumers.models.fast_constructor
_EMPTY_IF_NONE: Final[dict[None, str]] = {None: ""}  # `.get(x, x)`: "" for None, else x
_STAGE_CACHE_LIMIT: Final = 4096  # (page, method, status, bot) combinations; cleared when full


class Locates(Protocol):
    """What enrichment needs of geolocation: `GeoLocator` and `ReloadingGeoLocator` both fit."""

    def lookup(self, ip: str) -> Location: ...


def visitor_key(client_ip: str, user_agent: str | None) -> str:
    """The visitor's identity for distinct counts and sessions (see the module docstring)."""
    return client_ip + VISITOR_SEPARATOR + (user_agent or "")


@dataclass(slots=True)
class EnrichedColumns:
    """`EnrichedHit`'s own fields for a batch of hits, one list per field, in the hits' order.

    What `Enricher.enrich_columns` returns: the archive takes the lists as they are, and
    `objects` builds the `EnrichedHit`s for a consumer that wants one object per hit.
    """

    client_ip: list[str]
    visitor: list[str]
    location: list[Location]
    is_bot: list[bool]
    page: list[PageClass]
    is_page_view: list[bool]
    stage: list[FunnelStage | None]

    def __len__(self) -> int:
        return len(self.client_ip)

    def by_name(self) -> dict[str, list[Any]]:
        """The columns by `EnrichedHit` field name (what the archive's columns take)."""
        return {name: getattr(self, name) for name in self.__slots__}

    def objects(self, hits: Sequence[Hit]) -> list[EnrichedHit]:
        """One `EnrichedHit` per hit (parallel to the columns), equal to `enrich_batch`'s."""
        out: list[EnrichedHit] = list(
            map(
                _MutableEnrichedHit,
                hits,
                self.client_ip,
                self.visitor,
                self.location,
                self.is_bot,
                self.page,
                self.is_page_view,
                self.stage,
            )
        )
        for enriched in out:
            enriched.__class__ = EnrichedHit
        return out


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
        self._stage_memo: dict[tuple[PageClass, str | None, int, bool], FunnelStage | None] = {}

    def enrich_parsed(self, parsed: ParsedBatch) -> EnrichedColumns:
        """`enrich_columns` of a parsed batch's hit columns: the one place that knows which
        of the parser's columns enrichment reads."""
        column = parsed.column
        return self.enrich_columns(
            column("client_ip"),
            column("user_agent"),
            column("path"),
            column("method"),
            column("status"),
            column("forwarded_for"),
        )

    def enrich_columns(
        self,
        client_ips: Sequence[str],
        user_agents: Sequence[str | None],
        paths: Sequence[str | None],
        methods: Sequence[str | None],
        statuses: Sequence[int],
        forwarded_for: Sequence[str | None],
    ) -> EnrichedColumns:
        """`enrich_batch` for hits given as columns (e.g. `consumers.parse.ParsedBatch`'s):
        the same verdicts, worked out once per distinct value of what each depends on
        (address, user agent, path, and page with method, status and bot verdict), then
        spread over the rows by C-level `map`s instead of a Python step per hit."""
        ips: Sequence[str] = client_ips
        proxies = self.trusted_proxies
        if proxies and any(forwarded_for):
            resolve = proxies.client_address
            ips = [
                resolve(ip, header) if header else ip
                for ip, header in zip(client_ips, forwarded_for, strict=True)
            ]
        bots = list(map(self.bots.is_bot, user_agents))
        pages = self.pages.classify_many(paths)
        stages = self._stages(pages, methods, statuses, bots)
        lookup = self.geo.lookup
        distinct = dict.fromkeys(ips)
        places = dict(zip(distinct, map(lookup, distinct), strict=True))
        return EnrichedColumns(
            list(ips),
            list(
                map(
                    add,
                    map(add, ips, repeat(VISITOR_SEPARATOR)),
                    map(_EMPTY_IF_NONE.get, user_agents, user_agents),
                )
            ),
            list(map(places.__getitem__, ips)),
            bots,
            pages,
            list(map(is_not, stages, repeat(None))),
            stages,
        )

    def _stages(
        self,
        pages: list[PageClass],
        methods: Sequence[str | None],
        statuses: Sequence[int],
        bots: list[bool],
    ) -> list[FunnelStage | None]:
        """`PageClassifier.stage` per row, memoised by its four arguments (a handful of
        combinations on a real site)."""
        memo = self._stage_memo
        keys = list(zip(pages, methods, statuses, bots, strict=True))
        stages: list[FunnelStage | None] = list(map(memo.get, keys, repeat(False)))  # type: ignore[arg-type]
        if False in stages:
            stage_of = self.pages.stage
            for i, stage in enumerate(stages):
                if stage is False:
                    page, method, status, bot = key = keys[i]
                    stage = memo.get(key, False)
                    if stage is False:
                        stage = stage_of(page, method, status, is_bot=bot)
                        if len(memo) >= _STAGE_CACHE_LIMIT:
                            memo.clear()
                        memo[key] = stage
                    stages[i] = stage
        return stages

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
