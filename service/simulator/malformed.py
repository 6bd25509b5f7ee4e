"""Lines that are not log lines, of the kinds real access logs contain.

Each one must be unparseable by any reasonable combined-format parser, so that "rejected lines"
has one right answer: a line cut off inside its request (a crash mid-write, a disk that filled),
binary junk with invalid UTF-8 (a TLS handshake or a corrupted block), a message some other
program wrote to the wrong file (PHP warnings), and a timestamp in a foreign shape (a
misconfigured `LogFormat`). None is blank and none contains a newline.

Junk bytes are carried in the `str` as surrogate escapes, so the writers encode every line with
`errors="surrogateescape"` and the bytes come out exactly as chosen here.
"""

from __future__ import annotations

import random
import time

_PHP_MESSAGES = (
    "PHP Warning:  Undefined variable $cart in /var/www/html/cafe/processOrder.php on line 42",
    "PHP Notice:  Undefined index: category in /var/www/html/cafe/menu.php on line 17",
    "PHP Fatal error:  Uncaught mysqli_sql_exception: Too many connections in "
    "/var/www/html/cafe/getAppParameters.php:31",
    "PHP Deprecated:  Creation of dynamic property Order::$notes is deprecated in "
    "/var/www/html/cafe/order.php on line 12",
    "AH00558: httpd: Could not reliably determine the server's fully qualified domain name, "
    "using 127.0.1.1. Set the 'ServerName' directive globally to suppress this message",
    "[mpm_event:notice] [pid 1187:tid 1187] AH00489: Apache/2.4.62 () configured -- resuming "
    "normal operations",
)

# Bytes that never occur in a log line: invalid UTF-8 lead and continuation bytes, TLS records.
_JUNK_START = (b"\x16\x03\x01", b"\xff\xfe", b"\x80\x81", b"\xc3\x28", b"\xfe\xed\xfa\xce")
_JUNK_BYTES = bytes(b for b in range(1, 256) if b not in (0x0A, 0x0D))


def truncated(line: str, rng: random.Random) -> str:
    """The line cut inside its quoted request: the request quote never closes."""
    opening = line.index('"')
    closing = line.index('"', opening + 1)
    cut = rng.randrange(opening + 1, closing)
    return line[:cut] + "\n"


def junk(rng: random.Random) -> str:
    head = _JUNK_START[rng.randrange(len(_JUNK_START))]
    body = bytes(_JUNK_BYTES[rng.randrange(len(_JUNK_BYTES))] for _ in range(rng.randint(8, 90)))
    # 0xC0 is never valid UTF-8, so the line is invalid whatever the random body holds.
    return (head + b"\xc0" + body).decode("utf-8", "surrogateescape") + "\n"


def stray_message(rng: random.Random, epoch_seconds: int) -> str:
    message = _PHP_MESSAGES[rng.randrange(len(_PHP_MESSAGES))]
    if rng.random() < 0.5:
        return message + "\n"
    # As PHP's error_log() stamps it: [21-Nov-2026 11:59:59 UTC] PHP Warning: ...
    t = time.gmtime(epoch_seconds)
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    stamp = f"{t.tm_mday:02d}-{months[t.tm_mon - 1]}-{t.tm_year} {t.tm_hour:02d}:{t.tm_min:02d}"
    return f"[{stamp}:{t.tm_sec:02d} UTC] {message}\n"


def bad_timestamp(line: str, rng: random.Random, epoch_seconds: int) -> str:
    """The line with its `[...]` time replaced by a shape no Apache `%t` has."""
    t = time.gmtime(epoch_seconds)
    shapes = (
        f"{t.tm_year}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}Z",
        str(epoch_seconds),
        f"{t.tm_year}-{t.tm_mon:02d}-{t.tm_mday:02d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}",
        "-",
    )
    start, end = line.index("["), line.index("]")
    return line[: start + 1] + shapes[rng.randrange(len(shapes))] + line[end:]


def malformed_line(line: str, rng: random.Random, epoch_seconds: int) -> str:
    """A malformed line in place of (or beside) the well-formed `line` of the same moment."""
    roll = rng.random()
    if roll < 0.35:
        return truncated(line, rng)
    if roll < 0.6:
        return junk(rng)
    if roll < 0.85:
        return stray_message(rng, epoch_seconds)
    return bad_timestamp(line, rng, epoch_seconds)
