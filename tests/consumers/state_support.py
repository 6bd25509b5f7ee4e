"""Builders for the state tests: enriched hits without a parser or a geo database.

The stateful step only reads an `EnrichedHit`'s judgements (visitor, location, bot, page class,
page view, stage) and the event time, so the tests build them directly and stay independent of
enrichment's rules.
"""

from __future__ import annotations

from consumers.geo.locator import Location
from consumers.models import EnrichedHit, FunnelStage, Hit, PageClass

T0 = 1_795_000_000 - 1_795_000_000 % 86_400  # a UTC midnight in 2026, a minute boundary too

SEATTLE = Location("Seattle", "Washington", "US", "NA")
PORTLAND_OR = Location("Portland", "Oregon", "US", "NA")
PORTLAND_ME = Location("Portland", "Maine", "US", "NA")
LYON = Location("Lyon", "Auvergne-Rhone-Alpes", "FR", "EU")

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"

_PAGES: dict[str, tuple[PageClass, FunnelStage | None, str, str]] = {
    "home": ("home", "visit", "GET", "/cafe/"),
    "menu": ("menu", "menu", "GET", "/cafe/menu.php"),
    "order": ("order", "purchase", "POST", "/cafe/processOrder.php"),
    "static": ("static", None, "GET", "/cafe/css/styles.css"),
    "other": ("other", "visit", "GET", "/cafe/orderHistory.php"),
}


def hit(
    at: float,
    ip: str = "198.51.100.1",
    page: str = "home",
    *,
    agent: str = BROWSER,
    location: Location = SEATTLE,
    bot: bool = False,
    status: int = 200,
) -> EnrichedHit:
    """One request as enrichment would describe it; `page` is home/menu/order/static/other."""
    page_class, stage, method, path = _PAGES[page]
    counted = not bot and page_class != "static" and 200 <= status < 400
    raw = Hit(
        ip, None, None, float(at), 0, method, path, None, "HTTP/1.1", status, 100, None, agent,
        None, "combined",
    )  # fmt: skip
    return EnrichedHit(
        raw,
        ip,
        f"{ip}\t{agent}",
        location,
        bot,
        page_class,
        counted,
        stage if counted else None,
    )


class Feeder:
    """Hands hits to a state with increasing shard positions, as a shard reader would."""

    def __init__(self, start: int = 1) -> None:
        self.sequence = start

    def __call__(self, state: object, *hits: EnrichedHit) -> None:
        for one in hits:
            state.add(one, self.sequence)  # type: ignore[attr-defined]
            self.sequence += 1
