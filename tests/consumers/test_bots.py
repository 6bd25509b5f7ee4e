"""Bot verdicts: exactly the maintained list's, fast, for every agent the simulator sends."""

from __future__ import annotations

import random
import time

import crawleruseragents
import pytest

from consumers.bots import BotDetector, CrawlerPatterns, analyse, maintained_patterns
from service.simulator.useragents import BOT_FAMILIES, BROWSERS

LIST = crawleruseragents.CRAWLER_USER_AGENTS_DATA
INSTANCES = [agent for entry in LIST for agent in entry.get("instances", ())]
BOT_AGENTS = [agent for family in BOT_FAMILIES for agent in family.agents]
BROWSER_AGENTS = [browser.agent for browser in BROWSERS]


@pytest.fixture(scope="module")
def detector() -> BotDetector:
    return BotDetector()


@pytest.mark.parametrize("agent", BOT_AGENTS)
def test_every_simulated_bot_is_a_bot(agent: str, detector: BotDetector) -> None:
    assert detector.is_bot(agent)


@pytest.mark.parametrize("agent", BROWSER_AGENTS)
def test_no_simulated_browser_is_a_bot(agent: str, detector: BotDetector) -> None:
    assert not detector.is_bot(agent)


def test_the_index_agrees_with_the_list_on_all_its_examples() -> None:
    patterns = maintained_patterns()
    assert len(INSTANCES) > 1000
    disagreements = [
        agent
        for agent in (*INSTANCES, *BOT_AGENTS, *BROWSER_AGENTS)
        if patterns.search(agent) != crawleruseragents.is_crawler(agent)
    ]
    assert disagreements == []


def test_the_index_agrees_with_the_list_on_mangled_agents() -> None:
    """Examples cut, shifted, recased and spliced into browsers: near misses on both sides."""
    rng = random.Random(7)
    patterns = maintained_patterns()
    agents = []
    for agent in rng.sample(INSTANCES, 400):
        start = rng.randrange(len(agent))
        agents.append(agent[start : start + rng.randrange(3, 30)])  # a piece of it
        agents.append(agent.swapcase())  # case matters to the list
        agents.append(rng.choice(BROWSER_AGENTS) + " " + agent[rng.randrange(len(agent)) :])
        agents.append(agent[:-1])  # `...$` patterns lose their anchor
    agents += ["sentry/1", "x sentry/1", "xsentry/1", "AdsBot-Google", "AdsBot-Google-Mobile"]
    disagreements = [a for a in agents if patterns.search(a) != crawleruseragents.is_crawler(a)]
    assert disagreements == []


def test_every_pattern_of_the_list_today_is_indexed() -> None:
    """If the list ever gains a pattern with no plain piece, it is still searched, just slower."""
    assert maintained_patterns().unindexed_count == 0


@pytest.mark.parametrize(
    ("pattern", "plain", "pieces"),
    [
        ("Googlebot", True, ["Googlebot"]),
        ("Googlebot\\/", True, ["Googlebot/"]),
        ("^curl", False, ["curl"]),
        ("[wW]get", False, ["get"]),
        ("Automaton|Newsify Feed Fetcher", False, ["Automaton", "Newsify Feed Fetcher"]),
        ("(^| )sentry\\/", False, ["sentry/"]),
        ("(?i)bot", False, None),  # a pattern ignoring case cannot be indexed by exact text
        ("a.b", False, None),
        ("x(ab|c)", False, None),  # a branch without a long enough piece
    ],
)
def test_analyse(pattern: str, plain: bool, pieces: list[str] | None) -> None:
    assert analyse(pattern) == (plain, pieces)


def test_unindexable_patterns_are_still_searched() -> None:
    patterns = CrawlerPatterns(["(?i)robot", "a.b", "Spider"])
    assert patterns.unindexed_count == 2
    assert patterns.search("my ROBOT")
    assert patterns.search("axb")
    assert patterns.search("BigSpider")
    assert not patterns.search("spider")


@pytest.mark.parametrize("agent", [None, "", " ", "\t"])
def test_no_user_agent_is_a_bot(agent: str | None, detector: BotDetector) -> None:
    assert detector.is_bot(agent)


@pytest.mark.parametrize("agent", ["curl/8.5.0", "python-requests/2.32.3", "Wget/1.21.4"])
def test_scripts_are_bots_by_the_list(agent: str, detector: BotDetector) -> None:
    assert detector.is_bot(agent)


def test_extra_patterns_add_bots_and_never_remove_any() -> None:
    detector = BotDetector(extra_patterns=["^CafeMonitor/"])
    assert detector.is_bot("CafeMonitor/2.0")
    assert not detector.is_bot("Mozilla/5.0 CafeMonitor/2.0")
    assert detector.is_bot("Googlebot/2.1")


def test_verdicts_are_cached_per_agent_and_bounded() -> None:
    detector = BotDetector(cache_size=4)
    for _ in range(3):
        detector.is_bot(BROWSER_AGENTS[0])
    info = detector.cache_info()
    assert (info.hits, info.misses) == (2, 1)
    for agent in BROWSER_AGENTS[:10]:
        detector.is_bot(agent)
    assert detector.cache_info().currsize == 4


def test_a_miss_is_much_cheaper_than_the_lists_own_matcher() -> None:
    patterns = maintained_patterns()
    agents = BROWSER_AGENTS * 3

    def cost(check: object) -> float:
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for agent in agents:
                check(agent)  # type: ignore[operator]
            best = min(best, time.perf_counter() - started)
        return best

    assert cost(patterns.search) * 2 < cost(crawleruseragents.is_crawler)
