"""Real user-agent strings: browsers people use, and the crawlers, monitors and scanners that visit.

Every bot string here must be recognised by the maintained `crawler-user-agents` list and no
browser string may be (a test checks both), because that list is how the consumer tells bots
from people. The simulator itself never consults the list: it knows who is a bot because it
decided so, which keeps the ground truth independent of the consumer's classifier.

Bots also come from the address ranges they really use (Googlebot from 66.249.64.0/19, Bing from
Microsoft's ranges, scanners from cloud hosts), so a log reader sees familiar neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final


@dataclass(frozen=True, slots=True)
class Browser:
    agent: str
    weight: float  # relative share among human visitors
    mobile: bool


_WIN = "Mozilla/5.0 (Windows NT 10.0; Win64; x64)"
_MAC = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)"
_WEBKIT = "AppleWebKit/537.36 (KHTML, like Gecko)"
_IOS_SAFARI = "AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{v} Mobile/15E148 Safari/604.1"

BROWSERS: Final = (
    Browser(f"{_WIN} {_WEBKIT} Chrome/142.0.0.0 Safari/537.36", 14.0, False),
    Browser(f"{_WIN} {_WEBKIT} Chrome/141.0.0.0 Safari/537.36", 6.0, False),
    Browser(f"{_WIN} {_WEBKIT} Chrome/139.0.0.0 Safari/537.36", 2.0, False),
    Browser(f"{_WIN} {_WEBKIT} Chrome/142.0.0.0 Safari/537.36 Edg/142.0.0.0", 5.0, False),
    Browser(f"{_WIN} {_WEBKIT} Chrome/141.0.0.0 Safari/537.36 Edg/141.0.0.0", 2.0, False),
    Browser(
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:145.0) Gecko/20100101 Firefox/145.0",
        3.0,
        False,
    ),
    Browser(
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:140.0) Gecko/20100101 Firefox/140.0",
        1.0,
        False,
    ),
    Browser(f"{_MAC} {_WEBKIT} Chrome/142.0.0.0 Safari/537.36", 5.0, False),
    Browser(
        f"{_MAC} AppleWebKit/605.1.15 (KHTML, like Gecko) Version/26.1 Safari/605.1.15", 4.0, False
    ),
    Browser(
        f"{_MAC} AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.6 Safari/605.1.15", 1.5, False
    ),
    Browser(
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:145.0) Gecko/20100101 Firefox/145.0",
        1.0,
        False,
    ),
    Browser(
        f"Mozilla/5.0 (X11; Linux x86_64) {_WEBKIT} Chrome/142.0.0.0 Safari/537.36", 1.0, False
    ),
    Browser(
        "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:145.0) Gecko/20100101 Firefox/145.0", 0.6, False
    ),
    Browser(
        f"Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) {_WEBKIT} Chrome/142.0.0.0 Safari/537.36",
        0.6,
        False,
    ),
    Browser(
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_6 like Mac OS X) " + _IOS_SAFARI.format(v="26.1"),
        12.0,
        True,
    ),
    Browser(
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_6_2 like Mac OS X) " + _IOS_SAFARI.format(v="18.6"),
        5.0,
        True,
    ),
    Browser(
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_7 like Mac OS X) " + _IOS_SAFARI.format(v="17.7"),
        2.0,
        True,
    ),
    Browser(
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_6 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) CriOS/142.0.7444.128 Mobile/15E148 Safari/604.1",
        2.0,
        True,
    ),
    Browser(
        "Mozilla/5.0 (iPad; CPU OS 18_6 like Mac OS X) " + _IOS_SAFARI.format(v="26.1"),
        1.5,
        True,
    ),
    Browser(
        f"Mozilla/5.0 (Linux; Android 10; K) {_WEBKIT} Chrome/142.0.0.0 Mobile Safari/537.36",
        16.0,
        True,
    ),
    Browser(
        f"Mozilla/5.0 (Linux; Android 10; K) {_WEBKIT} Chrome/141.0.0.0 Mobile Safari/537.36",
        5.0,
        True,
    ),
    Browser(
        f"Mozilla/5.0 (Linux; Android 10; K) {_WEBKIT} SamsungBrowser/28.0 "
        "Chrome/130.0.0.0 Mobile Safari/537.36",
        3.0,
        True,
    ),
    Browser("Mozilla/5.0 (Android 15; Mobile; rv:145.0) Gecko/145.0 Firefox/145.0", 1.0, True),
    Browser(
        f"Mozilla/5.0 (Linux; Android 10; K) {_WEBKIT} Chrome/142.0.0.0 Mobile Safari/537.36 "
        "EdgA/142.0.0.0",
        0.5,
        True,
    ),
)


class BotKind(StrEnum):
    SEARCH = "search"  # search engines: robots.txt, then pages at a polite pace
    SEO = "seo"  # backlink and SEO crawlers: faster, more pages
    AI = "ai"  # AI training and answer crawlers
    SOCIAL = "social"  # link previews: a page and its share image, within a second
    MONITOR = "monitor"  # uptime checks on a fixed interval
    SCANNER = "scanner"  # vulnerability probes and scripts: bursts of 404s


@dataclass(frozen=True, slots=True)
class BotFamily:
    name: str
    kind: BotKind
    agents: tuple[str, ...]
    weight: float  # relative share of bot sessions
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...] = ()
    interval_s: int = 0  # monitors: seconds between checks
    method: str = "GET"  # monitors that only check headers use HEAD


_COMPAT = "Mozilla/5.0 (compatible; {})"
_AI_COMPAT = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; {})"

BOT_FAMILIES: Final = (
    BotFamily(
        "Googlebot",
        BotKind.SEARCH,
        (
            _COMPAT.format("Googlebot/2.1; +http://www.google.com/bot.html"),
            "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 "
            "(KHTML, like Gecko) Chrome/142.0.7444.175 Mobile Safari/537.36 "
            "(compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Googlebot-Image/1.0",
        ),
        10.0,
        ("66.249.64.0/19",),
        ("2001:4860:4801::/48",),
    ),
    BotFamily(
        "bingbot",
        BotKind.SEARCH,
        (
            _COMPAT.format("bingbot/2.0; +http://www.bing.com/bingbot.htm"),
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; "
            "+http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36",
        ),
        7.0,
        ("157.55.39.0/24", "207.46.13.0/24", "40.77.167.0/24"),
    ),
    BotFamily(
        "YandexBot",
        BotKind.SEARCH,
        (_COMPAT.format("YandexBot/3.0; +http://yandex.com/bots"),),
        2.0,
        ("5.255.231.0/24", "213.180.203.0/24"),
    ),
    BotFamily(
        "Baiduspider",
        BotKind.SEARCH,
        (_COMPAT.format("Baiduspider/2.0; +http://www.baidu.com/search/spider.html"),),
        1.5,
        ("116.179.32.0/24", "220.181.108.0/24"),
    ),
    BotFamily(
        "DuckDuckBot",
        BotKind.SEARCH,
        ("DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)",),
        1.0,
        ("20.191.45.0/24", "40.88.21.0/24"),
    ),
    BotFamily(
        "Applebot",
        BotKind.SEARCH,
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like "
            "Gecko) Version/13.1.1 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)",
        ),
        1.5,
        ("17.241.208.0/24", "17.241.227.0/24"),
    ),
    BotFamily(
        "SeznamBot",
        BotKind.SEARCH,
        (
            _COMPAT.format(
                "SeznamBot/4.0; +https://o-seznam.cz/napoveda/vyhledavani/en/seznambot-crawler/"
            ),
        ),
        0.5,
        ("77.75.74.0/24",),
    ),
    BotFamily(
        "PetalBot",
        BotKind.SEARCH,
        (_COMPAT.format("PetalBot;+https://webmaster.petalsearch.com/site/petalbot"),),
        1.0,
        ("114.119.128.0/19",),
    ),
    BotFamily(
        "AhrefsBot",
        BotKind.SEO,
        (_COMPAT.format("AhrefsBot/7.0; +http://ahrefs.com/robot/"),),
        4.0,
        ("54.36.148.0/24", "54.36.149.0/24", "51.222.253.0/24"),
    ),
    BotFamily(
        "SemrushBot",
        BotKind.SEO,
        (_COMPAT.format("SemrushBot/7~bl; +http://www.semrush.com/bot.html"),),
        3.0,
        ("185.191.171.0/24", "85.208.96.0/24"),
    ),
    BotFamily(
        "MJ12bot",
        BotKind.SEO,
        (_COMPAT.format("MJ12bot/v1.4.8; http://mj12bot.com/"),),
        1.0,
        ("144.76.0.0/16",),
    ),
    BotFamily(
        "DotBot",
        BotKind.SEO,
        (_COMPAT.format("DotBot/1.2; +https://opensiteexplorer.org/dotbot; help@moz.com"),),
        1.0,
        ("216.244.66.0/24",),
    ),
    BotFamily(
        "DataForSeoBot",
        BotKind.SEO,
        (_COMPAT.format("DataForSeoBot/1.0; +https://dataforseo.com/dataforseo-bot"),),
        0.5,
        ("136.243.0.0/16",),
    ),
    BotFamily(
        "GPTBot",
        BotKind.AI,
        (_AI_COMPAT.format("GPTBot/1.2; +https://openai.com/gptbot"),),
        3.0,
        ("20.171.207.0/24", "52.230.152.0/24"),
    ),
    BotFamily(
        "OAI-SearchBot",
        BotKind.AI,
        (_AI_COMPAT.format("OAI-SearchBot/1.0; +https://openai.com/searchbot"),),
        1.0,
        ("20.42.10.0/24",),
    ),
    BotFamily(
        "ClaudeBot",
        BotKind.AI,
        (_AI_COMPAT.format("ClaudeBot/1.0; +claudebot@anthropic.com"),),
        2.0,
        ("216.73.216.0/24",),
    ),
    BotFamily(
        "PerplexityBot",
        BotKind.AI,
        (_AI_COMPAT.format("PerplexityBot/1.0; +https://perplexity.ai/perplexitybot"),),
        1.0,
        ("44.221.181.0/24",),
    ),
    BotFamily(
        "Bytespider",
        BotKind.AI,
        (
            "Mozilla/5.0 (Linux; Android 5.0) AppleWebKit/537.36 (KHTML, like Gecko) Mobile "
            "Safari/537.36 (compatible; Bytespider; spider-feedback@bytedance.com)",
        ),
        2.0,
        ("47.128.0.0/14",),
    ),
    BotFamily(
        "Amazonbot",
        BotKind.AI,
        (
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; Amazonbot/0.1; "
            "+https://developer.amazon.com/support/amazonbot) Chrome/119.0.6045.214 Safari/537.36",
        ),
        1.0,
        ("52.70.240.0/24",),
    ),
    BotFamily(
        "CCBot",
        BotKind.AI,
        ("CCBot/2.0 (https://commoncrawl.org/faq/)",),
        0.5,
        ("18.97.9.0/24",),
    ),
    BotFamily(
        "facebookexternalhit",
        BotKind.SOCIAL,
        (
            "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
            "meta-externalagent/1.1 (+https://developers.facebook.com/docs/sharing/webmasters/crawler)",
        ),
        2.5,
        ("69.63.176.0/20", "173.252.64.0/18"),
        ("2a03:2880:f000::/36",),
    ),
    BotFamily("Twitterbot", BotKind.SOCIAL, ("Twitterbot/1.0",), 1.0, ("199.16.156.0/22",)),
    BotFamily(
        "Slackbot",
        BotKind.SOCIAL,
        ("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",),
        0.8,
        ("54.172.0.0/15",),
    ),
    BotFamily(
        "LinkedInBot",
        BotKind.SOCIAL,
        ("LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",),
        0.5,
        ("108.174.0.0/20",),
    ),
    BotFamily(
        "UptimeRobot",
        BotKind.MONITOR,
        ("Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)",),
        0.8,
        ("69.162.124.224/28", "216.144.250.150/32"),
        interval_s=300,
        method="HEAD",
    ),
    BotFamily(
        "Uptime-Kuma",
        BotKind.MONITOR,
        ("Uptime-Kuma/1.23.16",),
        1.0,
        ("95.216.110.37/32",),
        interval_s=60,
    ),
    BotFamily(
        "Pingdom",
        BotKind.MONITOR,
        ("Mozilla/5.0 (compatible; pingdom.com_bot_version_1.4; +http://www.pingdom.com/)",),
        0.6,
        ("5.172.196.188/32", "185.180.12.64/28"),
        interval_s=60,
    ),
    BotFamily(
        "StatusCake",
        BotKind.MONITOR,
        ("StatusCake_Uptime_Checker/1.0",),
        0.4,
        ("37.235.48.0/24",),
        interval_s=300,
        method="HEAD",
    ),
    BotFamily(
        "curl",
        BotKind.SCANNER,
        ("curl/8.5.0", "curl/7.88.1", "curl/8.14.1"),
        3.0,
        ("167.99.0.0/16", "159.89.0.0/16"),
        ("2604:a880:400::/40",),
    ),
    BotFamily(
        "python-requests",
        BotKind.SCANNER,
        ("python-requests/2.32.3", "python-requests/2.31.0", 'python-requests/2.28.1 "probe"'),
        3.0,
        ("43.135.0.0/16", "43.153.0.0/16", "51.38.0.0/16"),
    ),
    BotFamily(
        "Go-http-client",
        BotKind.SCANNER,
        ("Go-http-client/1.1", "Go-http-client/2.0", '"Go-http-client/1.1"'),
        2.5,
        ("45.148.10.0/24", "194.180.49.0/24"),
    ),
    BotFamily(
        "zgrab",
        BotKind.SCANNER,
        ("Mozilla/5.0 zgrab/0.x",),
        1.5,
        ("45.79.0.0/16", "139.162.0.0/16"),
    ),
    BotFamily(
        "Nmap",
        BotKind.SCANNER,
        (_COMPAT.format("Nmap Scripting Engine; https://nmap.org/book/nse.html"),),
        0.5,
        ("193.41.206.0/24",),
    ),
    BotFamily(
        "CensysInspect",
        BotKind.SCANNER,
        (_COMPAT.format("CensysInspect/1.1; +https://about.censys.io/"),),
        1.0,
        ("162.142.125.0/24", "167.94.138.0/24"),
        ("2602:80d:1000::/44",),
    ),
    BotFamily(
        "Expanse",
        BotKind.SCANNER,
        (
            "Expanse, a Palo Alto Networks company, searches across the global IPv4 space "
            "multiple times per day to identify customers&#39; presences on the Internet. If you "
            "would like to be excluded from our scans, please send IP addresses/domains to: "
            "scaninfo@paloaltonetworks.com",
        ),
        1.0,
        ("205.210.31.0/24", "198.235.24.0/24"),
    ),
    BotFamily("Wget", BotKind.SCANNER, ("Wget/1.21.4",), 0.5, ("188.166.0.0/16",)),
)
