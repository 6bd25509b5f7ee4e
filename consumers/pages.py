"""What a request was for, and whether it counts: the README's counting rules as configuration.

The defaults are the café's site exactly as the simulator builds it (service/simulator/site.py)
and as its ground truth counts it (service/simulator/truth.py), so the consumer and the truth
agree line for line; a café that renames a page overrides the patterns, not the code.

Decisions:

- **Case.** Page patterns and static prefixes are matched case-sensitively, as Apache maps URLs
  to files on Linux: `/cafe/Menu.php` is another resource (a 404 there, so never a page view
  anyway). Static *extensions* are matched case-insensitively: `Photo.JPG` is an image whatever
  its spelling, and counting it as a page would invent visitors.
- **Spelling.** Before matching, `%xx` escapes are decoded and runs of slashes merged, as Apache
  does before it maps a URL to a file (`/cafe/%6denu.php` and `/cafe//menu.php` are the menu when
  answered 200). Only 2xx/3xx answers count, so a spelling Apache itself refused cannot inflate
  anything. The query string is never part of the path (`consumers.parse` splits it off).
- **Precedence.** static, then order, menu, home, other: the first class whose patterns match
  wins, so a broad home pattern (`/cafe*`) cannot swallow the menu or the order page.
- **Stage.** Every page view reaches exactly one stage (`visit` at least), so "is a page view"
  and "has a stage" are the same question; `stage()` answers both at once on the hot path.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from fnmatch import translate
from typing import Any, Final
from urllib.parse import unquote

from consumers.models import FunnelStage, PageClass

_CACHE_LIMIT: Final = 16_384  # distinct paths remembered; cleared wholesale when full
_LONGEST_CACHED_PATH: Final = 512  # longer paths (probes, junk) are classified every time
_WILDCARDS: Final = frozenset("*?[")
_SLASHES: Final = re.compile(r"//+")


def _frozen_text(value: Iterable[str] | str, name: str) -> tuple[str, ...]:
    if isinstance(value, str):  # a lone string is one pattern, not a sequence of characters
        value = (value,)
    items = tuple(value)
    for item in items:
        if not isinstance(item, str) or not item:
            raise ValueError(f"{name}: every entry must be a non-empty string, got {item!r}")
    return items


@dataclass(frozen=True, slots=True)
class SiteRules:
    """The café's pages and counting rules (README, "Counting rules"); defaults = the simulator's.

    `home`, `menu`, `order` and `static_paths` are shell-style patterns (`fnmatch`: `*` also
    crosses `/`); a pattern without `*`, `?` or `[` is an exact path. `static_prefixes` are path
    prefixes, `static_extensions` path endings (case-insensitive, see the module docstring).
    A purchase is a page view of an `order` page with one of `purchase_methods`.
    """

    home: tuple[str, ...] = ("/cafe", "/cafe/", "/cafe/index.php")
    menu: tuple[str, ...] = ("/cafe/menu.php",)
    order: tuple[str, ...] = ("/cafe/processOrder.php",)
    static_prefixes: tuple[str, ...] = ("/cafe/css/", "/cafe/images/", "/cafe/js/")
    static_extensions: tuple[str, ...] = (
        ".css",
        ".js",
        ".png",
        ".jpg",
        ".jpeg",
        ".gif",
        ".svg",
        ".ico",
        ".webp",
        ".woff",
        ".woff2",
    )
    static_paths: tuple[str, ...] = ("/favicon.ico", "/robots.txt")
    page_view_methods: frozenset[str] = frozenset({"GET", "HEAD", "POST"})
    page_view_statuses: frozenset[int] = frozenset(range(200, 400))
    purchase_methods: frozenset[str] = frozenset({"POST"})

    def __post_init__(self) -> None:
        # Accept lists (from TOML or JSON) and store tuples, so the rules stay hashable.
        for name in ("home", "menu", "order", "static_prefixes", "static_paths"):
            items = _frozen_text(getattr(self, name), name)
            for item in items:
                if not item.startswith(("/", "*")):
                    raise ValueError(f"{name}: {item!r} must start with '/' (or a wildcard)")
            object.__setattr__(self, name, items)
        extensions = _frozen_text(self.static_extensions, "static_extensions")
        for extension in extensions:
            if not extension.startswith("."):
                raise ValueError(f"static_extensions: {extension!r} must start with '.'")
        object.__setattr__(self, "static_extensions", tuple(e.lower() for e in extensions))
        for name in ("page_view_methods", "purchase_methods"):
            object.__setattr__(self, name, frozenset(_frozen_text(getattr(self, name), name)))
        statuses = frozenset(int(s) for s in self.page_view_statuses)
        if not statuses or not all(100 <= s <= 599 for s in statuses):
            raise ValueError("page_view_statuses must be HTTP statuses (100-599)")
        object.__setattr__(self, "page_view_statuses", statuses)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> SiteRules:
        """Rules from configuration (a TOML table, say); unknown keys are an error, not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(f"unknown site rule(s): {', '.join(unknown)}")
        return cls(**dict(mapping))


DEFAULT_SITE_RULES: Final = SiteRules()


def _matcher(patterns: tuple[str, ...]) -> tuple[frozenset[str], re.Pattern[str] | None]:
    """Exact paths as a set (one hash look-up), wildcard patterns as one compiled regex."""
    exact = frozenset(p for p in patterns if not _WILDCARDS & set(p))
    wild = [translate(p) for p in patterns if _WILDCARDS & set(p)]
    return exact, (re.compile("|".join(wild)) if wild else None)


def normalise_path(path: str) -> str:
    """The path as Apache resolves it to a file: `%xx` decoded, repeated slashes merged."""
    if "%" in path:
        path = unquote(path)
    if "//" in path:
        path = _SLASHES.sub("/", path)
    return path


class PageClassifier:
    """`SiteRules` compiled for the hot path, with a bounded memo of paths already classified.

    Paths repeat endlessly (a café has a dozen pages and assets), so after the first few hits a
    classification is one dictionary look-up. Not thread-safe, and need not be: a consumer
    processes a shard's batch on one thread, and a memo race could only recompute an answer.
    """

    __slots__ = (
        "_classes",
        "_extensions",
        "_memo",
        "_page_methods",
        "_page_statuses",
        "_purchase_methods",
        "_static_prefixes",
        "rules",
    )

    def __init__(self, rules: SiteRules = DEFAULT_SITE_RULES) -> None:
        self.rules = rules
        self._static_prefixes = rules.static_prefixes
        self._extensions = rules.static_extensions
        self._classes: tuple[tuple[PageClass, frozenset[str], re.Pattern[str] | None], ...] = (
            ("static", *_matcher(rules.static_paths)),
            ("order", *_matcher(rules.order)),
            ("menu", *_matcher(rules.menu)),
            ("home", *_matcher(rules.home)),
        )
        self._page_methods = rules.page_view_methods
        self._page_statuses = rules.page_view_statuses
        self._purchase_methods = rules.purchase_methods
        self._memo: dict[str | None, PageClass] = {}

    def classify(self, path: str | None) -> PageClass:
        """The page class of a request path (no query string); None (no request line) is other."""
        page = self._memo.get(path)
        if page is not None:
            return page
        page = self._classify(path)
        if path is None or len(path) <= _LONGEST_CACHED_PATH:
            if len(self._memo) >= _CACHE_LIMIT:
                self._memo.clear()
            self._memo[path] = page
        return page

    def classify_many(self, paths: Sequence[str | None]) -> list[PageClass]:
        """`classify` for a column of paths: one C-level pass over the memo, then the misses."""
        pages: list[PageClass | None] = list(map(self._memo.get, paths))
        if None in pages:
            classify = self.classify
            for i, page in enumerate(pages):
                if page is None:
                    pages[i] = classify(paths[i])
        return pages  # type: ignore[return-value]

    def _classify(self, path: str | None) -> PageClass:
        if path is None:
            return "other"
        path = normalise_path(path)
        if path.startswith(self._static_prefixes) or path.lower().endswith(self._extensions):
            return "static"
        for page, exact, wild in self._classes:
            if path in exact or (wild is not None and wild.match(path) is not None):
                return page
        return "other"

    def stage(
        self, page: PageClass, method: str | None, status: int, *, is_bot: bool
    ) -> FunnelStage | None:
        """The funnel stage a request reaches, or None when it is not a page view.

        A page view: not a bot, not static, a counted method, answered with a counted status.
        """
        if (
            is_bot
            or page == "static"
            or status not in self._page_statuses
            or method not in self._page_methods
        ):
            return None
        if page == "menu":
            return "menu"
        if page == "order" and method in self._purchase_methods:
            return "purchase"
        return "visit"

    def is_page_view(
        self, page: PageClass, method: str | None, status: int, *, is_bot: bool
    ) -> bool:
        return self.stage(page, method, status, is_bot=is_bot) is not None


@functools.lru_cache(maxsize=8)
def classifier_for(rules: SiteRules) -> PageClassifier:
    """One shared, memoising classifier per set of rules (rules are hashable and immutable)."""
    return PageClassifier(rules)


def classify(path: str | None, rules: SiteRules = DEFAULT_SITE_RULES) -> PageClass:
    """home, menu, order, static or other, by the configured patterns."""
    return classifier_for(rules).classify(path)


def is_page_view(
    page: PageClass,
    method: str | None,
    status: int,
    *,
    is_bot: bool,
    rules: SiteRules = DEFAULT_SITE_RULES,
) -> bool:
    """The counting rule: not a bot, not static, answered 2xx/3xx, with GET, HEAD or POST."""
    return classifier_for(rules).is_page_view(page, method, status, is_bot=is_bot)


def stage(
    page: PageClass,
    method: str | None,
    status: int,
    *,
    is_bot: bool,
    rules: SiteRules = DEFAULT_SITE_RULES,
) -> FunnelStage | None:
    """visit, menu or purchase for a page view; None for anything that is not one."""
    return classifier_for(rules).stage(page, method, status, is_bot=is_bot)
