"""How fast `consumers.parse` parses: lines/s, CPU seconds per million lines, peak RSS.

    .venv/bin/python bench/parse_throughput.py [FILE] [--lines N] [--seed S] [--source ...]

With FILE, parses that file's lines. Without, parses N (default 1,000,000) lines of café
traffic: from `clickstream simulate` when it is available (`--source simulator`), otherwise
from the small generator below (`--source builtin`, `--lab-json` for the lab's JSON format),
which is made in memory and mimics the café's traffic closely enough for a throughput figure:
a few thousand returning visitors (8% IPv6) each loading a page and its assets within a second,
a few bots, 404s, query strings, rare user agents with escaped quotes, 0.2% malformed lines.

Lines are parsed in batches of `--batch` (a Kinesis record's worth) and the results dropped
after counting, as the consumer does, so peak RSS reflects the input plus the parser's memo
caches, not a million retained `Hit`s. The target for the whole processing path is
>= 150,000 lines/s on one core; the parser should take a small share of that.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from consumers.models import Rejection
from consumers.parse import parse_lines

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
PAGES = (
    ("GET", "/cafe", 0.25),
    ("GET", "/cafe/index.php", 0.10),
    ("GET", "/cafe/menu.php", 0.35),
    ("GET", "/cafe/menu.php?category=pastries", 0.08),
    ("POST", "/cafe/processOrder.php", 0.12),
    ("GET", "/cafe/orderHistory.php", 0.10),
)
ASSETS = (
    "/cafe/css/styles.css",
    "/cafe/js/app.js",
    "/cafe/images/Coffee-and-Pastries.jpg",
    "/cafe/images/Cup-of-Hot-Chocolate.jpg",
    "/cafe/images/Strawberry-Tarts.jpg",
    "/favicon.ico",
)
BROWSERS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{v}.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.{v} Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_{v} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
    "Mozilla/5.0 (Linux; Android 14; Pixel {v}) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{v}.0 Mobile Safari/537.36",
)
# A user agent with quotes in it, which Apache escapes: rare, but it takes the escape-aware path.
QUOTED_AGENT = 'Mozilla/5.0 (compatible; \\"Cafe Monitor\\" 1.0; +https://monitor.example)'
BOTS = (
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "python-requests/2.31.0",
)
MALFORMED = (
    "PHP Warning:  Undefined variable $cart in /var/www/html/cafe/processOrder.php on line 42",
    '203.0.113.77 - - [21/Nov/2026:11:59:59 +0000] "GET /cafe/men',
    "\x16\x03\x01\\xc0\\xfe junk",
)


def builtin_lines(
    count: int, seed: int, lab_json: bool = False, span: int = 6 * 3600
) -> list[bytes]:
    """`count` lines of café-like traffic over `span` seconds, deterministic for a seed.

    Apache combined format, or with `lab_json` the course lab's JSON `LogFormat`.
    """
    rng = random.Random(seed)
    visitors = []
    for i in range(5000):
        if rng.random() < 0.08:
            ip = f"2001:db8:{rng.randrange(65536):x}::{rng.randrange(1, 65536):x}"
        else:
            ip = f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{i % 250 + 1}"
        agent = rng.choice(BROWSERS).format(v=rng.randrange(100, 131))
        if rng.random() < 0.002:
            agent = QUOTED_AGENT
        visitors.append((ip, agent))
    start = 1_795_000_000
    lines: list[bytes] = []

    def add(
        ip: str,
        now: int,
        method: str,
        target: str,
        status: int,
        size: str,
        referer: str,
        agent: str,
    ) -> None:
        t = time.gmtime(now)
        if lab_json:
            path, _, query = target.partition("?")
            document = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{rng.randrange(1000):03d}Z",
                "remoteIP": ip,
                "request": path,
                "query": f"?{query}" if query else "",
                "method": method,
                "status": str(status),
                "userAgent": agent.replace('\\"', '"'),
                "referer": referer,
            }
            # json, not orjson: orjson's bytes keep a large spare buffer each, inflating RSS.
            lines.append(json.dumps(document, separators=(",", ":")).encode())
            return
        stamp = (
            f"{t.tm_mday:02d}/{MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
        )
        lines.append(
            f'{ip} - - [{stamp}] "{method} {target} HTTP/1.1" {status} {size} "{referer}" '
            f'"{agent}"'.encode()
        )

    while len(lines) < count:
        now = start + span * len(lines) // count
        if rng.random() < 0.002:
            lines.append(rng.choice(MALFORMED).encode())
            continue
        if rng.random() < 0.05:
            ip, agent = f"66.249.{rng.randrange(64, 96)}.{rng.randrange(256)}", rng.choice(BOTS)
        else:
            ip, agent = visitors[int(rng.paretovariate(1.2) * 40) % len(visitors)]
        roll, acc = rng.random(), 0.0
        method, page = PAGES[-1][:2]
        for candidate_method, candidate_page, share in PAGES:
            acc += share
            if roll < acc:
                method, page = candidate_method, candidate_page
                break
        status = 404 if rng.random() < 0.02 else (302 if method == "POST" else 200)
        size = "-" if status == 302 else str(rng.randrange(200, 9000))
        referer = rng.choice(("-", "http://cafe.example.com/cafe"))
        add(ip, now, method, page, status, size, referer, agent)
        for asset in rng.sample(ASSETS, rng.randrange(0, 4)):
            status, size = (304, "-") if rng.random() < 0.4 else (200, str(rng.randrange(1, 90000)))
            add(ip, now, "GET", asset, status, size, f"http://cafe.example.com{page}", agent)
    return lines[:count]


def simulated_lines(count: int, seed: int) -> list[bytes] | None:
    """Lines from `clickstream simulate`, or None when the command is not (yet) usable."""
    command = shutil.which("clickstream") or str(Path(sys.executable).with_name("clickstream"))
    if not Path(command).exists():
        return None
    with tempfile.TemporaryDirectory(prefix="parse-bench-") as directory:
        out = Path(directory) / "access_log"
        run = subprocess.run(
            [
                command,
                "simulate",
                "--lines",
                str(count),
                "--seed",
                str(seed),
                "--out",
                str(out),
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode != 0 or not out.exists():
            print(f"simulator unavailable: {run.stderr.strip()[:200]}", file=sys.stderr)
            return None
        return out.read_bytes().splitlines()


def batches(lines: list[bytes], size: int) -> Iterator[list[bytes]]:
    for start in range(0, len(lines), size):
        yield lines[start : start + size]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path, help="an access log to parse")
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines to generate")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--source", choices=("auto", "simulator", "builtin"), default="auto", help="generator"
    )
    parser.add_argument("--batch", type=int, default=500, help="lines per parse_lines call")
    parser.add_argument(
        "--lab-json", action="store_true", help="built-in generator: the lab's JSON format"
    )
    args = parser.parse_args(argv)

    if args.file is not None:
        lines, source = args.file.read_bytes().splitlines(), str(args.file)
    else:
        lines = None
        if args.source in ("auto", "simulator") and not args.lab_json:
            lines = simulated_lines(args.lines, args.seed)
            source = "clickstream simulate"
            if lines is None and args.source == "simulator":
                sys.exit("clickstream simulate did not produce lines")
        if lines is None:
            lines = builtin_lines(args.lines, args.seed, args.lab_json)
            source = "built-in generator" + (" (lab JSON)" if args.lab_json else "")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    reasons: Counter[str] = Counter()
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    for batch in batches(lines, args.batch):
        for result in parse_lines(batch):
            if type(result) is Rejection:
                reasons[result.reason] += 1
    cpu = time.process_time() - cpu_started
    wall = time.perf_counter() - wall_started
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    count = len(lines)
    print(f"source            {source}")
    print(f"lines             {count:,} ({sum(map(len, lines)) / max(count, 1):.0f} bytes avg)")
    print(f"lines/s (CPU)     {count / cpu:,.0f}")
    print(f"lines/s (wall)    {count / wall:,.0f}")
    print(f"CPU s per 1M      {cpu / count * 1e6:.2f}")
    print(f"peak RSS          {rss_peak / 1024:.0f} MiB ({rss_before / 1024:.0f} MiB with input)")
    print(f"rejected          {sum(reasons.values()):,} {dict(reasons.most_common())}")


if __name__ == "__main__":
    main()
