"""Page classes and the counting rule: the simulator's site, classified as its truth counts it."""

from __future__ import annotations

import pytest

from consumers.pages import (
    DEFAULT_SITE_RULES,
    PageClassifier,
    SiteRules,
    classify,
    is_page_view,
    normalise_path,
    stage,
)
from service.simulator import site
from service.simulator.site import Kind

KIND_TO_PAGE = {
    Kind.HOME: "home",
    Kind.MENU: "menu",
    Kind.ORDER: "order",
    Kind.HISTORY: "other",
    Kind.PAGE: "other",
    Kind.STATIC: "static",
}


def _simulated_paths() -> list[tuple[str, Kind]]:
    """Every path the simulator emits, with the kind it gives it (query strings split off)."""
    paths = [(asset.path, Kind.STATIC) for asset in site.ASSETS]
    paths += [(site.ROBOTS_PATH, Kind.STATIC), (site.FAVICON_PATH, Kind.STATIC)]
    paths += [(p, Kind.HOME) for p in (*site.HOME_PATHS, site.HOME_NO_SLASH)]
    paths += [(site.MENU_PATH, Kind.MENU), (site.ORDER_PATH, Kind.ORDER)]
    paths += [(site.HISTORY_PATH, Kind.HISTORY), (site.OLD_MENU_PATH, Kind.PAGE)]
    paths += [(path.partition("?")[0], kind) for path, kind, _status in site.CRAWLABLE]
    paths += [(path, Kind.PAGE) for _method, path, _status in site.PROBES]
    return paths


@pytest.mark.parametrize(("path", "kind"), _simulated_paths())
def test_every_simulated_path_gets_the_simulators_kind(path: str, kind: Kind) -> None:
    assert classify(path) == KIND_TO_PAGE[kind]


@pytest.mark.parametrize(
    ("path", "page"),
    [
        ("/cafe/css/anything", "static"),  # by prefix, whatever the name
        ("/cafe/js/order", "static"),
        ("/elsewhere/font.woff2", "static"),  # by extension, wherever it is
        ("/elsewhere/photo.JPG", "static"),  # extensions ignore case
        ("/robots.txt", "static"),
        ("/cafe/robots.txt", "other"),  # only the root robots.txt is listed
        ("/cafe/Menu.php", "other"),  # paths are case-sensitive, as Apache's are
        ("/CAFE/CSS/x", "other"),
        ("/cafe/menu.php/", "other"),
        ("/cafe/index.html", "other"),
        ("/", "other"),
        ("", "other"),
        (None, "other"),  # a request line of "-"
        ("/cafe/%6denu.php", "menu"),  # as Apache decodes it
        ("//cafe//menu.php", "menu"),  # Apache merges slashes
        ("/cafe/processOrder.php", "order"),
        ("/cafe/images/menu.php", "static"),  # static wins
    ],
)
def test_edge_paths(path: str | None, page: str) -> None:
    assert classify(path) == page


def test_normalise_path_decodes_and_merges() -> None:
    assert normalise_path("/a%20b//c") == "/a b/c"
    assert normalise_path("/plain") == "/plain"


@pytest.mark.parametrize(
    ("page", "method", "status", "bot", "expected"),
    [
        ("home", "GET", 200, False, "visit"),
        ("home", "GET", 301, False, "visit"),  # /cafe -> /cafe/ counts, as the truth does
        ("home", "HEAD", 200, False, "visit"),
        ("menu", "GET", 200, False, "menu"),
        ("menu", "GET", 304, False, "menu"),
        ("menu", "POST", 200, False, "menu"),
        ("order", "POST", 200, False, "purchase"),
        ("order", "POST", 302, False, "purchase"),
        ("order", "GET", 200, False, "visit"),  # looking at the order page is no purchase
        ("order", "POST", 500, False, None),  # a failed order is no purchase (nor a page view)
        ("order", "POST", 404, False, None),
        ("other", "GET", 200, False, "visit"),  # order history and the like are visits
        ("static", "GET", 200, False, None),
        ("menu", "GET", 200, True, None),  # bots never count
        ("menu", "PUT", 200, False, None),
        ("menu", "OPTIONS", 200, False, None),
        ("menu", "get", 200, False, None),  # methods are case-sensitive (RFC 9110)
        ("other", None, 408, False, None),  # no request line
        ("menu", "GET", 199, False, None),
        ("menu", "GET", 400, False, None),
    ],
)
def test_stage_and_page_view(
    page: str, method: str | None, status: int, bot: bool, expected: str | None
) -> None:
    assert stage(page, method, status, is_bot=bot) == expected  # type: ignore[arg-type]
    assert is_page_view(page, method, status, is_bot=bot) is (expected is not None)  # type: ignore[arg-type]


def test_renamed_pages_are_configuration() -> None:
    rules = SiteRules.from_mapping(
        {
            "home": ["/", "/index.php"],
            "menu": ["/carte*"],
            "order": "/checkout/*",
            "static_prefixes": ["/assets/"],
            "static_extensions": [".CSS"],
            "static_paths": [],
            "page_view_statuses": range(200, 300),
        }
    )
    assert rules.menu == ("/carte*",)
    assert rules.order == ("/checkout/*",)  # a lone string is one pattern
    assert rules.static_extensions == (".css",)
    assert classify("/", rules) == "home"
    assert classify("/carte.php", rules) == "menu"
    assert classify("/carte/drinks", rules) == "menu"
    assert classify("/checkout/pay", rules) == "order"
    assert classify("/assets/x.png", rules) == "static"
    assert classify("/x.png", rules) == "other"  # .png is no longer listed
    assert classify("/cafe/menu.php", rules) == "other"
    assert stage("order", "POST", 200, is_bot=False, rules=rules) == "purchase"
    assert stage("home", "GET", 301, is_bot=False, rules=rules) is None


def test_wildcards_give_precedence_to_the_funnel_pages() -> None:
    rules = SiteRules(home=("/cafe*",), menu=("/cafe/menu*",))
    assert classify("/cafe/menu.php", rules) == "menu"
    assert classify("/cafe/processOrder.php", rules) == "order"
    assert classify("/cafe/about", rules) == "home"


@pytest.mark.parametrize(
    "bad",
    [
        {"nonsense": ["/x"]},
        {"home": ["cafe"]},
        {"home": [""]},
        {"static_extensions": ["css"]},
        {"page_view_statuses": [700]},
        {"page_view_statuses": []},
    ],
)
def test_bad_rules_are_refused_with_a_reason(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SiteRules.from_mapping(bad)


def test_rules_are_hashable_and_defaults_equal_a_fresh_instance() -> None:
    assert SiteRules() == DEFAULT_SITE_RULES
    assert hash(SiteRules(menu=["/cafe/menu.php"])) == hash(DEFAULT_SITE_RULES)  # type: ignore[arg-type]


def test_the_memo_stays_bounded() -> None:
    classifier = PageClassifier()
    for i in range(20_000):
        assert classifier.classify(f"/probe/{i}") == "other"
    assert classifier.classify("/cafe/menu.php") == "menu"
    assert len(classifier._memo) <= 16_384
    assert classifier.classify("/x" * 1000) == "other"  # long paths are not remembered
    assert "/x" * 1000 not in classifier._memo
