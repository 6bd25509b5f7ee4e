"""Bots and crawlers, told from the user agent by the maintained `crawler-user-agents` list.

This is the user-agent half of bot detection; the behavioural half (never loads assets, too
fast) needs a visitor's history and belongs to the stateful session step.

The list (PyPI `crawler-user-agents`, ~1,500 case-sensitive regular expressions) is what the
README's counting rules name, so a user agent is a bot here exactly when
`crawleruseragents.is_crawler(agent)` says so (a test checks the two agree on every example the
list ships). Its own matcher costs 100-1,000 µs a call: a real browser's agent must be tried
against every pattern. Two things make that affordable on the hot path:

- a bounded LRU per user-agent string: a café sees a few thousand distinct agents a day and
  each of them many times, so nearly every call is one cache hit (~0.1 µs);
- for the misses, an index instead of 1,500 searches: 97% of the patterns are plain text, and
  every other one (today) has a plain piece that any match must contain (`[wW]get` needs
  `get`). Patterns are filed under the first three characters of that piece; a user agent is
  scanned once, three characters at a time, and only the patterns filed under a trigram it
  contains are tried. A miss costs ~10-25 µs instead of ~130 µs. A pattern with no such piece
  (none today) is searched the ordinary way, so the answer never depends on the index.

Decisions:

- **No user agent** (logged `-`, or `""`, or blank) **is a bot.** Every browser sends one; what
  comes without is a script, a health check or a raw socket. The simulator never sends a human
  request without one, so this cannot disagree with the ground truth.
- Matching is case-sensitive, as the list's own `is_crawler` does by default and as its patterns
  are written (`[pP]ingdom` spells out the cases it means).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from typing import Any, Final

import crawleruseragents

try:  # the regular-expression parser, to find each pattern's required plain text
    from re import _parser as _regex_parser
    from re._constants import AT, BRANCH, LITERAL, SUBPATTERN
except ImportError:  # pragma: no cover - a Python without it just skips the index
    _regex_parser = None

DEFAULT_CACHE_SIZE: Final = 32_768  # distinct user agents remembered (~5 MB at most)
_TRIGRAM: Final = 3


def _required_pieces(items: Any) -> list[str] | None:
    """Plain texts of which any match of this parsed sequence must contain at least one.

    The longest run of literal characters in the sequence, if one is long enough; otherwise a
    group or alternation in it whose every branch has such a piece. None when nothing is certain.
    """
    longest, run = "", []
    for op, value in (*items, (None, None)):
        if op is LITERAL:
            run.append(chr(value))
            continue
        if len(run) > len(longest):
            longest = "".join(run)
        run = []
    if len(longest) >= _TRIGRAM:
        return [longest]
    for op, value in items:
        if op is SUBPATTERN:
            _group, add_flags, del_flags, sub = value
            if add_flags or del_flags:
                continue
            pieces = _required_pieces(sub.data if hasattr(sub, "data") else sub)
        elif op is BRANCH:
            pieces = []
            for branch in value[1]:
                found = _required_pieces(branch.data if hasattr(branch, "data") else branch)
                if found is None:
                    pieces = None
                    break
                pieces.extend(found)
        else:
            continue
        if pieces:
            return pieces
    return None


def analyse(pattern: str) -> tuple[bool, list[str] | None]:
    """For one list pattern: whether it is plain text (matches only itself), and the plain texts
    a matching user agent must contain one of (None when nothing is certain)."""
    if _regex_parser is None:
        return False, None
    try:
        parsed = _regex_parser.parse(pattern)
    except re.error:
        return False, None
    if parsed.state.flags & (re.IGNORECASE | re.VERBOSE):
        return False, None
    plain = all(op is LITERAL for op, _ in parsed.data)
    return plain, _required_pieces([(op, value) for op, value in parsed.data if op is not AT])


class CrawlerPatterns:
    """The list's patterns, indexed by a trigram of the plain text each one requires."""

    def __init__(self, patterns: Iterable[str]) -> None:
        index: dict[str, list[tuple[str, re.Pattern[str] | None]]] = {}
        unindexed: list[str] = []
        for pattern in dict.fromkeys(patterns):  # keep order, drop duplicates
            plain, pieces = analyse(pattern)
            if pieces is None:
                unindexed.append(pattern)
                continue
            # A plain pattern is decided by its text alone; any other needs its regex.
            regex = None if plain else re.compile(pattern)
            for piece in dict.fromkeys(pieces):
                index.setdefault(piece[:_TRIGRAM], []).append((piece, regex))
        self._index = {key: tuple(entries) for key, entries in index.items()}
        # Each on its own: a pattern may carry global flags, which cannot be joined with others.
        self._unindexed = tuple(re.compile(pattern) for pattern in unindexed)
        self.unindexed_count = len(unindexed)

    def search(self, agent: str) -> bool:
        """True when any pattern occurs in `agent` (what `re.search` would say for each)."""
        get = self._index.get
        for start in range(len(agent) - _TRIGRAM + 1):
            entries = get(agent[start : start + _TRIGRAM])
            if entries is None:
                continue
            for piece, regex in entries:
                if agent.startswith(piece, start) and (regex is None or regex.search(agent)):
                    return True
        return any(regex.search(agent) for regex in self._unindexed)


@functools.cache
def maintained_patterns() -> CrawlerPatterns:
    """The installed `crawler-user-agents` list, indexed once per process (~50 ms)."""
    return CrawlerPatterns(entry["pattern"] for entry in crawleruseragents.CRAWLER_USER_AGENTS_DATA)


class BotDetector:
    """Says whether a user agent belongs to a bot, by the maintained list (plus local additions).

    `extra_patterns` are regular expressions for bots the list does not know yet (a partner's
    monitor); they only ever add bots, so the list's verdicts stay the counting rule's.
    """

    def __init__(
        self,
        *,
        extra_patterns: Iterable[str] = (),
        cache_size: int = DEFAULT_CACHE_SIZE,
        patterns: CrawlerPatterns | None = None,
    ) -> None:
        self._patterns = patterns if patterns is not None else maintained_patterns()
        self._extra = tuple(re.compile(pattern) for pattern in extra_patterns)
        self.is_bot: Callable[[str | None], bool] = functools.lru_cache(maxsize=cache_size)(
            self._judge
        )

    def _judge(self, user_agent: str | None) -> bool:
        if user_agent is None or not user_agent.strip():
            return True
        if any(regex.search(user_agent) for regex in self._extra):
            return True
        return self._patterns.search(user_agent)

    def cache_info(self) -> functools._CacheInfo:
        return self.is_bot.cache_info()  # type: ignore[attr-defined]
