"""How visitors behave: the requests of one session, planned when the session starts.

People land on the home page (or on the menu, from a search), their browser fetches the
stylesheet and images a moment after each page, they read for seconds to minutes, and most leave
before ordering: that is the funnel the dashboard shows. A browser keeps what it fetched, so a
returning visitor's images are cached or revalidated (304). Bots keep to their own habits:
crawlers read robots.txt and walk pages, link previewers fetch a page and its image, monitors
check on a fixed interval, scanners fire bursts of probes that end in 404.

All times are integer milliseconds since the epoch, so the output does not depend on how a
machine rounds floating point.
"""

from __future__ import annotations

import math
import operator
import random
from dataclasses import dataclass
from statistics import NormalDist

from service.simulator import site
from service.simulator.site import ASSETS, ORIGIN, PAGE_ASSETS, Kind
from service.simulator.useragents import BotKind
from service.simulator.visitors import Visitor


@dataclass(slots=True)
class Step:
    """One request as the server saw it: received at `at`, logged at `done`."""

    at: int
    done: int
    method: str
    path: str
    proto: str
    status: int
    size: str  # "-" when no body was sent
    referer: str
    kind: Kind
    visitor: Visitor


_BY_DONE = operator.attrgetter("done")

# Landing referers: (referer, weight). Search engines send only their origin nowadays.
_NEW_REFERERS = (
    ("https://www.google.com/", 38.0),
    ("-", 24.0),
    ("https://www.bing.com/", 5.0),
    ("https://duckduckgo.com/", 3.0),
    ("https://www.ecosia.org/", 1.0),
    ("https://search.yahoo.com/", 1.0),
    ("https://yandex.ru/", 1.0),
    ("https://www.facebook.com/", 5.0),
    ("https://l.instagram.com/", 4.0),
    ("https://t.co/", 2.0),
    ("https://www.reddit.com/", 2.0),
    ("android-app://com.google.android.googlequicksearchbox/", 3.0),
    ("https://www.google.com/maps/", 4.0),
    ("https://www.tripadvisor.com/", 2.0),
)
_RETURNING_REFERERS = (
    ("-", 60.0),
    ("https://www.google.com/", 30.0),
    ("https://www.bing.com/", 4.0),
)

BUY_NEW = 0.14  # chance an order follows a menu page, first-time visitor
BUY_RETURNING = 0.24
PAGE_ERROR_SHARE = 0.004  # 5xx on a page (a PHP fatal, the database briefly away)
ORDER_ERROR_SHARE = 0.015
ERROR_STATUSES = (500, 500, 500, 502, 503)
ORDER_REDIRECT_SHARE = 0.3  # orders answered 302 to the history page rather than 200
REVALIDATE_SHARE = 0.12  # cached assets the browser revalidates (304) rather than reuses
READ_MEDIAN_MS = {Kind.HOME: 14_000.0, Kind.MENU: 38_000.0, Kind.ORDER: 20_000.0}


def _weighted(rng: random.Random, table: tuple[tuple[str, float], ...]) -> str:
    total = sum(weight for _, weight in table)
    point = rng.random() * total
    for value, weight in table:
        point -= weight
        if point < 0:
            return value
    return table[-1][0]


# Standard normal quantiles at 4096 evenly spaced probabilities: a table look-up is several
# times cheaper than `random.gauss`, and this sits on the hot path of every request.
_NORMAL = tuple(NormalDist().inv_cdf((i + 0.5) / 4096) for i in range(4096))


def _lognormal_ms(rng: random.Random, median_ms: float, sigma: float, low: int, high: int) -> int:
    value = int(median_ms * math.exp(sigma * _NORMAL[int(rng.random() * 4096)]))
    return low if value < low else high if value > high else value


def _vary(rng: random.Random, base: int) -> str:
    """A generated page's size: the template's size give or take a few percent."""
    spread = base // 25
    return str(base - spread + int(rng.random() * (2 * spread + 1)))


class _HumanSession:
    """The pages and asset fetches of one browser session."""

    def __init__(self, rng: random.Random, visitor: Visitor, returning: bool) -> None:
        self.rng = rng
        self.visitor = visitor
        self.returning = returning
        self.steps: list[Step] = []
        self.latest = 0  # when the last response so far was complete

    def request(
        self, at: int, method: str, path: str, status: int, size: str, referer: str, kind: Kind
    ) -> Step:
        rng = self.rng
        if kind is Kind.STATIC:
            service = 2 + _lognormal_ms(rng, 25.0 if self.visitor.mobile else 8.0, 0.9, 0, 4000)
        elif status >= 500:
            service = _lognormal_ms(rng, 400.0, 1.2, 5, 6000)
        else:
            service = _lognormal_ms(rng, 180.0 if kind is Kind.ORDER else 55.0, 0.7, 8, 5000)
        visitor = self.visitor
        step = Step(
            at, at + service, method, path, visitor.proto, status, size, referer, kind, visitor
        )
        self.steps.append(step)
        if step.done > self.latest:
            self.latest = step.done
        return step

    def page(self, at: int, kind: Kind, path: str, referer: str, method: str) -> Step:
        """A page and the assets it pulls in; returns the page's own step."""
        rng = self.rng
        if rng.random() < (ORDER_ERROR_SHARE if kind is Kind.ORDER else PAGE_ERROR_SHARE):
            status = ERROR_STATUSES[rng.randrange(len(ERROR_STATUSES))]
            size = str(site.ERROR_SIZES[status])
            return self.request(at, method, path, status, size, referer, kind)
        if kind is Kind.PAGE:
            return self.request(at, method, path, 404, str(site.NOT_FOUND_SIZE), referer, kind)
        if kind is Kind.ORDER and rng.random() < ORDER_REDIRECT_SHARE:
            # Post/Redirect/Get: no body, and the browser fetches the order history at once.
            return self.request(at, method, path, 302, "-", referer, kind)
        size = _vary(rng, site.PAGE_SIZES[kind])
        page = self.request(at, method, path, 200, size, referer, kind)
        self.assets(page)
        return page

    def assets(self, page: Step) -> None:
        """What the browser fetches after parsing the page, minus what its cache already holds."""
        rng, visitor = self.rng, self.visitor
        page_url = ORIGIN + page.path
        at = page.done + _lognormal_ms(rng, 40.0, 0.6, 5, 2000)
        if page.path.endswith("=" + site.SEASONAL_CATEGORY):
            wanted = site.SEASONAL_ASSETS
        else:
            wanted = PAGE_ASSETS[page.kind]
        for index in wanted:
            asset = ASSETS[index]
            bit = 1 << index
            if asset.status == 200 and visitor.cached_assets & bit:
                if rng.random() < REVALIDATE_SHARE:
                    self.request(at, "GET", asset.path, 304, "-", page_url, Kind.STATIC)
            else:
                size = str(asset.size)
                self.request(at, "GET", asset.path, asset.status, size, page_url, Kind.STATIC)
                if asset.status == 200:
                    visitor.cached_assets |= bit
            at += int(rng.random() * 40)  # the browser requests them over a few connections
        favicon = 1 << site.FAVICON
        if not visitor.cached_assets & favicon:
            icon = ASSETS[site.FAVICON]
            self.request(at, "GET", icon.path, 200, str(icon.size), page_url, Kind.STATIC)
            visitor.cached_assets |= favicon

    def read_time(self, kind: Kind) -> int:
        """How long someone looks at a page before the next click."""
        median = READ_MEDIAN_MS.get(kind, 16_000.0)
        return _lognormal_ms(self.rng, median, 0.8, 1_500, 900_000)

    def landing(self, start: int) -> tuple[Kind, str, int]:
        rng = self.rng
        roll = rng.random()
        if self.returning and roll < 0.10:
            return Kind.HISTORY, site.HISTORY_PATH, start
        if roll < (0.30 if self.returning else 0.20):
            return Kind.MENU, site.MENU_PATH, start  # straight from a search result
        if not self.returning and roll < 0.215:
            return Kind.PAGE, site.OLD_MENU_PATH, start  # a stale link to the old menu page
        path = site.HOME_PATHS[0] if rng.random() < 0.6 else site.HOME_PATHS[1]
        return Kind.HOME, path, start

    def next_page(self, kind: Kind, buy: float) -> tuple[Kind, str, str] | None:
        """Where the visitor clicks next, or None when they leave."""
        rng = self.rng
        roll = rng.random()
        if kind is Kind.MENU:
            if roll < buy:
                return Kind.ORDER, site.ORDER_PATH, "POST"
            if roll < buy + 0.28:
                category = site.MENU_CATEGORIES[rng.randrange(len(site.MENU_CATEGORIES))]
                return Kind.MENU, f"{site.MENU_PATH}?category={category}", "GET"
            if roll < buy + 0.33:
                return Kind.HOME, site.HOME_PATHS[1], "GET"
        elif kind is Kind.HOME:
            if roll < 0.44:
                return Kind.MENU, site.MENU_PATH, "GET"
            if roll < (0.52 if self.returning else 0.46):
                return Kind.HISTORY, site.HISTORY_PATH, "GET"
        elif kind is Kind.HISTORY or kind is Kind.ORDER:
            if roll < 0.2:
                return Kind.MENU, site.MENU_PATH, "GET"
        elif roll < 0.55:  # the 404 page links home
            return Kind.HOME, site.HOME_PATHS[0], "GET"
        return None

    def run(self, start: int) -> list[Step]:
        rng = self.rng
        referer = _weighted(rng, _RETURNING_REFERERS if self.returning else _NEW_REFERERS)
        kind, path, at = self.landing(start)
        if kind is Kind.HOME and rng.random() < 0.08:  # typed without the slash: mod_dir's 301
            size = str(site.REDIRECT_SIZE)
            moved = self.request(at, "GET", site.HOME_NO_SLASH, 301, size, referer, Kind.HOME)
            at = moved.done + _lognormal_ms(rng, 60.0, 0.5, 5, 2000)
        buy = BUY_RETURNING if self.returning else BUY_NEW
        method = "GET"
        for _ in range(40):
            step = self.page(at, kind, path, referer, method)
            if step.status >= 500:
                if rng.random() < 0.6:  # they try again
                    at = step.done + _lognormal_ms(rng, 4_000.0, 0.6, 800, 60_000)
                    continue
                break
            if step.status == 302:
                # The redirect keeps the original referer (the menu page).
                at = step.done + _lognormal_ms(rng, 60.0, 0.5, 5, 1000)
                kind, path, method = Kind.HISTORY, site.HISTORY_PATH, "GET"
                self.page(at, kind, path, referer, method)
            referer = ORIGIN + path
            following = self.next_page(kind, buy)
            if following is None:
                break
            at = self.latest + self.read_time(kind)
            kind, path, method = following
        self.steps.sort(key=_BY_DONE)
        return self.steps


def human_steps(rng: random.Random, visitor: Visitor, start: int, returning: bool) -> list[Step]:
    """One person's session from `start`, ordered by the time each line is logged."""
    steps = _HumanSession(rng, visitor, returning).run(start)
    visitor.sessions += 1
    return steps


# Bots -------------------------------------------------------------------------------------------


def _bot_step(
    rng: random.Random,
    visitor: Visitor,
    at: int,
    request: tuple[str, str, Kind],
    status: int,
    size: str,
    proto: str = "HTTP/1.1",
) -> Step:
    method, path, kind = request
    service = _lognormal_ms(rng, 30.0 if kind is Kind.STATIC else 60.0, 0.7, 1, 5000)
    if method == "HEAD" or status == 304:
        size = "-"
    return Step(at, at + service, method, path, proto, status, size, "-", kind, visitor)


_CRAWL_HABITS = {  # kind: (share reading robots.txt first, pages per visit, median gap ms)
    BotKind.SEARCH: (0.55, (1, 6), 20_000.0),
    BotKind.SEO: (0.8, (3, 15), 3_000.0),
    BotKind.AI: (0.9, (2, 10), 5_000.0),
}


def _crawl(rng: random.Random, visitor: Visitor, start: int, kind: BotKind) -> list[Step]:
    robots_share, pages, gap_ms = _CRAWL_HABITS[kind]
    steps: list[Step] = []
    at = start
    if rng.random() < robots_share:
        robots = ("GET", site.ROBOTS_PATH, Kind.STATIC)
        steps.append(_bot_step(rng, visitor, at, robots, 200, str(site.ROBOTS_SIZE)))
        at += _lognormal_ms(rng, 2_000.0, 0.8, 100, 60_000)
    images_only = visitor.agent.startswith("Googlebot-Image")
    for _ in range(rng.randint(*pages)):
        if images_only:
            asset = ASSETS[site.IMAGES[rng.randrange(len(site.IMAGES))]]
            status = 304 if asset.status == 200 and rng.random() < 0.2 else asset.status
            request = ("GET", asset.path, Kind.STATIC)
            steps.append(_bot_step(rng, visitor, at, request, status, str(asset.size)))
        else:
            path, page_kind, status = site.CRAWLABLE[rng.randrange(len(site.CRAWLABLE))]
            method = "HEAD" if rng.random() < 0.04 else "GET"
            if status == 200:
                size = _vary(rng, site.PAGE_SIZES[page_kind])
            elif status == 301:
                size = str(site.REDIRECT_SIZE)
            else:
                size = str(site.NOT_FOUND_SIZE)
            steps.append(_bot_step(rng, visitor, at, (method, path, page_kind), status, size))
        at += _lognormal_ms(rng, gap_ms, 0.9, 200, 600_000)
    return steps


def _preview(rng: random.Random, visitor: Visitor, start: int) -> list[Step]:
    if rng.random() < 0.6:
        page: tuple[str, str, Kind] = ("GET", site.MENU_PATH, Kind.MENU)
    else:
        page = ("GET", site.HOME_PATHS[0], Kind.HOME)
    page_size = site.PAGE_SIZES[page[2]]
    first = _bot_step(rng, visitor, start, page, 200, _vary(rng, page_size))
    image = ASSETS[site.FRONT]
    at = first.done + rng.randrange(50, 900)
    picture = ("GET", image.path, Kind.STATIC)
    steps = [first, _bot_step(rng, visitor, at, picture, 200, str(image.size))]
    if rng.random() < 0.3:  # previewers often fetch twice (several cache nodes)
        at += rng.randrange(200, 3000)
        steps.append(_bot_step(rng, visitor, at, page, 200, _vary(rng, page_size)))
    return steps


def _monitor(rng: random.Random, visitor: Visitor, start: int) -> list[Step]:
    family = visitor.family
    assert family is not None
    interval = family.interval_s * 1000
    check = (family.method, site.HOME_PATHS[0], Kind.HOME)
    steps = []
    for number in range(rng.randint(3, 30)):
        at = start + number * interval + rng.randrange(0, 400)
        if rng.random() < 0.003:
            steps.append(_bot_step(rng, visitor, at, check, 503, str(site.ERROR_SIZES[503])))
        else:
            size = _vary(rng, site.PAGE_SIZES[Kind.HOME])
            steps.append(_bot_step(rng, visitor, at, check, 200, size))
    return steps


def _scan(rng: random.Random, visitor: Visitor, start: int) -> list[Step]:
    proto = "HTTP/1.0" if rng.random() < 0.25 else "HTTP/1.1"
    count = min(40, 1 + int(rng.expovariate(1 / 6.0)))
    steps, at = [], start
    for _ in range(count):
        method, path, status = site.PROBES[rng.randrange(len(site.PROBES))]
        size = {200: "10918", 403: "199"}.get(status, str(site.NOT_FOUND_SIZE))
        steps.append(_bot_step(rng, visitor, at, (method, path, Kind.PAGE), status, size, proto))
        at += _lognormal_ms(rng, 300.0, 1.0, 5, 20_000)
    return steps


def bot_steps(rng: random.Random, visitor: Visitor, start: int) -> list[Step]:
    """One bot visit from `start`, ordered by the time each line is logged."""
    family = visitor.family
    assert family is not None
    kind = family.kind
    if kind is BotKind.MONITOR:
        steps = _monitor(rng, visitor, start)
    elif kind is BotKind.SCANNER:
        steps = _scan(rng, visitor, start)
    elif kind is BotKind.SOCIAL:
        steps = _preview(rng, visitor, start)
    else:
        steps = _crawl(rng, visitor, start, kind)
    steps.sort(key=_BY_DONE)
    return steps
