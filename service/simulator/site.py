"""What the café web server serves: its pages, static files, sizes and the paths bots probe.

Every path carries a `Kind` chosen here, by the simulator, from what the file *is*. The ground
truth counts with these kinds; the consumer classifies the same paths from the text of the log
line. Keeping the kind next to the path (rather than deriving it from the path) is what makes the
truth an independent code path: a test compares the two, and any disagreement is a bug in one
of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final


class Kind(IntEnum):
    """What a request is for, as the analytics care about it."""

    HOME = 0
    MENU = 1
    ORDER = 2  # POST /cafe/processOrder.php
    HISTORY = 3
    PAGE = 4  # any other non-static resource (an old bookmark, a probe, a sitemap)
    STATIC = 5  # stylesheets, images, scripts, fonts, favicon, robots.txt


# The site's public origin, as browsers put it in Referer headers.
ORIGIN: Final = "https://cafe.anycompany.example"

HOME_PATHS: Final = ("/cafe/", "/cafe/index.php")
HOME_NO_SLASH: Final = "/cafe"  # mod_dir answers 301 to /cafe/
MENU_PATH: Final = "/cafe/menu.php"
MENU_CATEGORIES: Final = ("pastries", "drinks", "desserts", "seasonal")
ORDER_PATH: Final = "/cafe/processOrder.php"
HISTORY_PATH: Final = "/cafe/orderHistory.php"
OLD_MENU_PATH: Final = "/cafe/old-menu.html"  # removed page, still bookmarked and crawled
FAVICON_PATH: Final = "/favicon.ico"
ROBOTS_PATH: Final = "/robots.txt"


@dataclass(frozen=True, slots=True)
class Asset:
    """A static file: fixed size (it is a file on disk), or a fixed 404 when it is missing."""

    path: str
    size: int
    status: int = 200


ASSETS: Final = (
    Asset("/cafe/css/styles.css", 6_842),
    Asset("/cafe/images/logo.png", 14_377),
    Asset("/cafe/images/Cafe-Front.jpg", 182_406),
    Asset("/cafe/images/Coffee-and-Pastries.jpg", 141_935),
    Asset("/cafe/images/Croissant.jpg", 48_112),
    Asset("/cafe/images/Donut.jpg", 41_870),
    Asset("/cafe/images/Chocolate-Chip-Cookie.jpg", 39_254),
    Asset("/cafe/images/Muffin.jpg", 44_031),
    Asset("/cafe/images/Strawberry-Blueberry-Tart.jpg", 52_669),
    Asset("/cafe/images/Strawberry-Tart.jpg", 50_418),
    Asset("/cafe/images/Coffee.jpg", 37_502),
    Asset("/cafe/images/Hot-Chocolate.jpg", 35_987),
    Asset("/cafe/images/Latte.jpg", 36_741),
    Asset("/cafe/images/seasonal-special.png", 196, status=404),  # a broken <img>, see below
    Asset("/cafe/js/order.js", 3_318),
    Asset(FAVICON_PATH, 1_150),  # browsers ask once, by themselves, and keep it
)
STYLESHEET, LOGO, FRONT, SPREAD = 0, 1, 2, 3
MENU_ITEMS: Final = tuple(range(4, 13))
BROKEN_IMAGE, ORDER_SCRIPT, FAVICON = 13, 14, 15
IMAGES: Final = (LOGO, FRONT, SPREAD, *MENU_ITEMS, BROKEN_IMAGE)

# Which assets each page pulls in, by index into ASSETS, in document order.
PAGE_ASSETS: Final[dict[Kind, tuple[int, ...]]] = {
    Kind.HOME: (STYLESHEET, LOGO, FRONT, SPREAD),
    Kind.MENU: (STYLESHEET, LOGO, *MENU_ITEMS, ORDER_SCRIPT),
    Kind.ORDER: (STYLESHEET, LOGO),
    Kind.HISTORY: (STYLESHEET, LOGO),
    Kind.PAGE: (STYLESHEET,),
}

# The seasonal category of the menu still links an image that was deleted: a steady trickle of
# 404s from real browsers, as most sites have.
SEASONAL_CATEGORY: Final = "seasonal"
SEASONAL_ASSETS: Final = (*PAGE_ASSETS[Kind.MENU], BROKEN_IMAGE)

# Typical generated HTML sizes in bytes; each response varies around these.
PAGE_SIZES: Final[dict[Kind, int]] = {
    Kind.HOME: 3_912,
    Kind.MENU: 8_604,
    Kind.ORDER: 2_731,
    Kind.HISTORY: 4_950,
    Kind.PAGE: 1_120,
}
NOT_FOUND_SIZE: Final = 196  # Apache's default 404 body for a short path
ERROR_SIZES: Final[dict[int, int]] = {500: 527, 502: 401, 503: 299, 504: 247}
ROBOTS_SIZE: Final = 67
REDIRECT_SIZE: Final = 233  # mod_dir's 301 body

# Paths vulnerability scanners try, with the café server's answer. (method, path, status)
PROBES: Final = (
    ("GET", "/.env", 404),
    ("GET", "/wp-login.php", 404),
    ("GET", "/wp-admin/setup-config.php", 404),
    ("GET", "/wordpress/wp-admin/setup-config.php", 404),
    ("POST", "/xmlrpc.php", 404),
    ("GET", "/.git/config", 404),
    ("GET", "/.htaccess", 403),
    ("GET", "/server-status", 403),
    ("GET", "/phpmyadmin/index.php", 404),
    ("GET", "/admin/", 404),
    ("GET", "/vendor/phpunit/phpunit/src/Util/PHP/eval-stdin.php", 404),
    ("GET", "/cgi-bin/luci/;stok=/locale", 404),
    ("POST", "/boaform/admin/formLogin", 404),
    ("GET", "/actuator/health", 404),
    ("GET", "/cafe/config.php.bak", 404),
    ("GET", "/cafe/.env", 404),
    ("GET", "/backup.zip", 404),
    ("GET", OLD_MENU_PATH, 404),
    ("GET", "/", 200),
)
# What search and AI crawlers fetch besides robots.txt: (path, kind, status).
CRAWLABLE: Final = (
    (HOME_PATHS[0], Kind.HOME, 200),
    (HOME_PATHS[1], Kind.HOME, 200),
    (HOME_NO_SLASH, Kind.HOME, 301),
    (MENU_PATH, Kind.MENU, 200),
    (MENU_PATH + "?category=pastries", Kind.MENU, 200),
    (MENU_PATH + "?category=drinks", Kind.MENU, 200),
    (HISTORY_PATH, Kind.HISTORY, 200),
    (OLD_MENU_PATH, Kind.PAGE, 404),
    ("/sitemap.xml", Kind.PAGE, 404),
)
