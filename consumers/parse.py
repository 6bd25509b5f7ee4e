"""Parse one access-log line into a `Hit`, or say exactly why it is not one (`Rejection`).

Pure (no I/O; the only state is memo caches, which never change an answer) and it never raises:
the consumer must keep going whatever a café's log holds, so every malformed line becomes a
`Rejection` with a reason from a closed set (see `consumers.models.RejectionReason`).

Three grammars, told apart by the first byte:

- Apache *combined* `%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i"`, optionally followed
  by a quoted `"%{X-Forwarded-For}i"` (the usual addition behind a load balancer);
- Apache *common*: the same without referer and user agent;
- the course lab's JSON `LogFormat` named `cloudwatch` (a line starting with `{`).

Speed: the whole processing path must do >= 150,000 lines/s on one core, so the parser gets a
small share of that. A well-formed combined line takes the fast path: one `str.split('"')`
(an escape-aware split when the line holds a backslash), fields found at fixed offsets, and four
dictionary look-ups, because addresses, timestamps, request lines and status-with-size repeat
from line to line and are validated once and memoised. No regular expression runs per line.
Everything else, including every rejection, goes to a careful path that names the first bad
field; the two paths are checked against each other by the property tests and the fuzzer.

Decisions (each one is tested):

- **Invalid UTF-8** is decoded with `backslashreplace`: each bad byte becomes the text `\\xhh`,
  which is exactly how Apache itself writes a non-printable byte in a log field. A line whose
  structure is intact (say, a stray Latin-1 byte in a user agent) is therefore still a `Hit`,
  every text in it is valid Unicode that the archive and JSON encoders accept, and the original
  bytes remain readable. A line that is not valid UTF-8 *and* does not parse is rejected as
  `invalid_utf8` (binary junk, a corrupted block), whatever else is wrong with it.
- **A request of `"-"`** (or `""`) is a `Hit` with `method`, `path`, `query` and `protocol` None.
  Apache writes it when a connection sent no request line (a 408 after a browser's speculative
  preconnect, a health check that only opened a socket): a well-formed record of a real client,
  not a broken line. It is never a page view because it has no path.
- **Odd request lines** are data when the line's structure is intact: `PROPFIND`, `get`, a
  garbage token, HTTP/0.9 (`GET /`), a path with spaces. Only the structure decides rejection.
- **Escapes**: inside quoted fields `\\"` and `\\\\` are undone (Apache escapes `"` and `\\` so
  they cannot break its syntax); any other escape (`\\x1b`, `\\n`) stays as text. A quote that is
  not escaped ends the field; a line that then does not fit its format is `bad_syntax`.
- **Client address**: must be a valid IPv4 or IPv6 address (a hostname from `HostnameLookups On`
  is `bad_ip`); it is canonicalised so that one client has one spelling.
- **Times**: Apache's `[dd/Mon/yyyy:HH:MM:SS +zzzz]` honours its offset; the lab's naive
  `2023-02-22 03:38:18` is read as UTC (the lab's EC2 instance ran in UTC); the ISO form with
  `Z` or an offset is honoured.
- **Length**: lines over `MAX_LINE_BYTES` are `too_long` without being scanned.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime
from itertools import compress, repeat
from operator import add, eq, getitem, is_, itemgetter
from typing import Any, Final, TypeVar

import orjson

from consumers.models import (
    FileGeo,
    Hit,
    LogFormat,
    Rejection,
    RejectionReason,
    mutable_twin,
    new_hit,
)

MAX_LINE_BYTES: Final = 64 * 1024
"""Longest line looked at. Apache caps a request line and each header at 8,190 bytes by default
(`LimitRequestLine`, `LimitRequestFieldSize`), and escaping can at most quadruple them, so a
genuine combined line stays well under this; anything longer is junk or an attack, and refusing
it up front keeps the cost of a hostile line bounded."""

_DETAIL_CHARS: Final = 80
_CACHE_LIMIT: Final = 65_536  # entries per memo; cleared wholesale when full (cheap, rare)
_LONGEST_ADDRESS: Final = 64  # longer than any IPv6 text with a zone id worth accepting
_WHITESPACE: Final = b" \t\r\n"
_MONTHS: Final = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_STATUS: Final = {str(code): code for code in range(100, 600)}
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_MutableHit: Final = mutable_twin(Hit)  # see consumers.models.fast_constructor
_FILE_GEO_KEYS: Final = frozenset(("country", "region", "city", "lat", "lon"))

# An Apache `\xhh` escape (a backslash preceded by an even number of backslashes, then `x`) is
# not valid JSON; Apache's JSON log formats write it anyway for non-printable bytes.
_JSON_HEX_ESCAPE: Final = re.compile(r"(?<!\\)((?:\\\\)*)\\x")

_LONGEST_MEMO_KEY: Final = 256  # longer texts are parsed every time rather than remembered

_Request = tuple[str | None, str | None, str | None, str | None]  # method, path, query, protocol

# Memo caches. Keys are bounded in length, and each cache is cleared when it reaches
# _CACHE_LIMIT, so memory stays bounded whatever the input (a few tens of MB at worst).
_requests: dict[str, _Request] = {}  # request line -> its fields
_status_sizes: dict[str, tuple[int, int]] = {}  # ' 200 5326 ' -> (status, bytes)
_addresses: dict[str, str] = {}  # text -> canonical address, or "" when not an address
_apache_stamps: dict[str, tuple[float, int]] = {}  # 'dd/Mon/yyyy:HH:MM:SS +zzzz' -> time
_apache_hours: dict[str, int] = {}  # 'dd/Mon/yyyy:HH' -> epoch of that hour, naive
_iso_seconds: dict[str, float] = {}  # 'yyyy-mm-dd HH:MM:SS' (or with T) -> epoch, naive


def parse_line(raw: bytes) -> Hit | Rejection:
    """Parse one line (with or without its line ending); never raises."""
    if len(raw) > MAX_LINE_BYTES:
        return Rejection("too_long", f"{len(raw)} bytes, limit {MAX_LINE_BYTES}")
    line = raw.strip(_WHITESPACE)
    if not line:
        return Rejection("empty", "")
    if line[0] == 0x7B:  # "{"
        return _parse_json(line)
    try:
        text = line.decode()
    except UnicodeDecodeError:
        return _unless_parsed(_parse_access_line(line.decode("utf-8", "backslashreplace")))
    return _parse_combined_quickly(text) or _parse_access_line(text)


def parse_lines(lines: Iterable[bytes]) -> list[Hit | Rejection]:
    """Parse a batch (e.g. the lines of one Kinesis record), one result per line, in order."""
    parse = parse_line
    return [parse(raw) for raw in lines]


# -- A batch at a time, in columns ----------------------------------------------------------------

HIT_FIELDS: Final[tuple[str, ...]] = tuple(f.name for f in fields(Hit))
"""`Hit`'s fields in order: the order of `ParsedBatch.columns`."""

_NONE_IF_DASH: Final[dict[str, None]] = {"-": None}  # `.get(x, x)`: None for "-", else x
_PLACEHOLDER: Final = b'0.0.0.0 - - [01/Jan/2000:00:00:00 +0000] "-" 200 0 "-" "-"'
"""Stands in, inside the columnar pass, for a line that pass does not take (its row is then
filled from `parse_line`); any line with the fast path's exact shape would do."""


@dataclass(slots=True)
class ParsedBatch:
    """A batch of lines parsed into columns: what `parse_lines` says, without an object per line.

    - `columns`: one list per `Hit` field, in `HIT_FIELDS` order, one entry per accepted line;
    - `hit_rows`: the batch index of each accepted line (ascending, parallel to the columns);
    - `rejections`: (batch index, `Rejection`) of every other line, ascending.

    Why columns: the archive stores columns, and the later steps each need a few fields of a
    line, so building a 16-field `Hit` per line only to read its fields back cost more than
    the parsing itself. `hits()` builds the objects for whoever still wants them.
    """

    columns: list[list[Any]]
    hit_rows: list[int]
    rejections: list[tuple[int, Rejection]]

    def __len__(self) -> int:
        return len(self.hit_rows)

    def column(self, name: str) -> list[Any]:
        return self.columns[HIT_FIELDS.index(name)]

    def hits(self) -> list[Hit]:
        """The accepted lines as `Hit`s, in order (equal to what `parse_line` returns)."""
        out: list[Hit] = list(map(_MutableHit, *self.columns))
        for hit in out:
            hit.__class__ = Hit
        return out

    def results(self, size: int) -> list[Hit | Rejection]:
        """One result per line of the batch of `size` lines: `parse_lines`'s answer."""
        out: list[Hit | Rejection] = [None] * size  # type: ignore[list-item]
        for row, hit in zip(self.hit_rows, self.hits(), strict=True):
            out[row] = hit
        for row, rejection in self.rejections:
            out[row] = rejection
        return out


def parse_batch(lines: Sequence[bytes]) -> ParsedBatch:
    """Parse a batch into columns; line for line the same answers as `parse_lines`.

    Plain combined lines (exactly six quotes, no backslash, valid UTF-8, not too long: nearly
    every line of a real log) are cut all at once: the batch is joined with `"` and split once,
    so each line's seven pieces sit at fixed strides, and each kind of piece (head, request,
    status and size) is looked up in its memo for the whole column by C-level `map`s. A line
    whose head, status or shape the fast path would refuse, and every other line, goes to
    `parse_line`, so both paths give the same answer by construction (and by
    `tests/consumers/test_parse_batch.py`).
    """
    n = len(lines)
    if not n:
        return ParsedBatch([[] for _ in HIT_FIELDS], [], [])
    quotes = list(map(bytes.count, lines, repeat(b'"')))
    slow: list[int] = []  # rows for parse_line
    if quotes.count(6) != n or max(map(len, lines)) > MAX_LINE_BYTES:
        slow = [
            i
            for i, (count, raw) in enumerate(zip(quotes, lines, strict=True))
            if count != 6 or len(raw) > MAX_LINE_BYTES
        ]
    chosen = _without(lines, slow)
    joined = b'"'.join(chosen)
    if b"\\" in joined:
        slow += [i for i, raw in enumerate(chosen) if b"\\" in raw]
        chosen = _without(lines, slow)
        joined = b'"'.join(chosen)
    try:
        text = joined.decode()
    except UnicodeDecodeError:
        slow += [i for i, raw in enumerate(chosen) if not _is_utf8(raw)]
        text = b'"'.join(_without(lines, slow)).decode()
    parts = text.split('"')
    if len(parts) != 7 * n:  # cannot happen (six quotes a line); never trust it blindly
        return _parse_slowly(lines)
    head_columns = _head_columns(parts[0::7], slow)
    middles, request_lines = parts[2::7], parts[1::7]
    sizes = list(map(_status_sizes.get, middles))
    requests = list(map(_requests.get, request_lines))
    gaps, ends = parts[4::7], parts[6::7]
    if gaps.count(" ") != n:
        slow += [i for i, gap in enumerate(gaps) if gap != " "]
    if ends.count("") != n:
        slow += [i for i, end in enumerate(ends) if end]
    sizes = _filled(sizes, middles, _status_sizes, _parse_status_and_size)
    if None in sizes:  # not a status and a size: the careful path says why
        for i in _missing(sizes):
            sizes[i] = (0, 0)
            slow.append(i)
    requests = _filled(requests, request_lines, _requests, _request_fields)
    referers, agents = parts[3::7], parts[5::7]
    # Transposed by one C-level getter per field (faster than `zip(*rows)` over thousands).
    methods, paths, queries, protocols = (list(map(get, requests)) for get in _GET_FIELD[:4])
    statuses, bytes_sent = (list(map(get, sizes)) for get in _GET_FIELD[:2])
    columns: list[list[Any]] = [
        *head_columns,
        methods,
        paths,
        queries,
        protocols,
        statuses,
        bytes_sent,
        list(map(_NONE_IF_DASH.get, referers, referers)),
        list(map(_NONE_IF_DASH.get, agents, agents)),
        [None] * n,
        ["combined"] * n,
        [None] * n,
    ]
    if not slow:
        return ParsedBatch(columns, list(range(n)), [])
    keep = [True] * n
    rejections: list[tuple[int, Rejection]] = []
    for i in sorted(set(slow)):
        result = parse_line(lines[i])
        if isinstance(result, Rejection):
            keep[i] = False
            rejections.append((i, result))
        else:
            for column, value in zip(columns, _hit_values(result), strict=True):
                column[i] = value
    if not rejections:
        return ParsedBatch(columns, list(range(n)), [])
    return ParsedBatch(
        [list(compress(column, keep)) for column in columns],
        list(compress(range(n), keep)),
        rejections,
    )


def _missing(values: list[Any]) -> list[int]:
    """Indices of the None entries (memo misses) of a column."""
    return list(compress(range(len(values)), map(is_, values, repeat(None))))


_Value = TypeVar("_Value")


def _filled(
    values: list[_Value | None],
    keys: list[str],
    memo: dict[str, _Value],
    compute: Callable[[str], _Value | None],
) -> list[_Value | None]:
    """A column looked up in `memo` (`values`, None where it missed) with the misses filled:
    `compute` (which memoises what it can) runs once per distinct missing key, since a batch
    repeats its own new pieces, then the column is looked up again. What is still missing
    (too long to memoise, a memo cleared meanwhile, or not valid) is computed row by row;
    None stays where `compute` says None."""
    if None not in values:
        return values
    for key in dict.fromkeys(compress(keys, map(is_, values, repeat(None)))):
        compute(key)
    values = list(map(memo.get, keys))
    if None in values:
        for i in _missing(values):
            values[i] = compute(keys[i])
    return values


def _without(lines: Sequence[bytes], rows: list[int]) -> Sequence[bytes]:
    """`lines` with each of `rows` replaced by `_PLACEHOLDER`."""
    if not rows:
        return lines
    chosen = list(lines)
    for i in rows:
        chosen[i] = _PLACEHOLDER
    return chosen


def _is_utf8(raw: bytes) -> bool:
    if raw.isascii():
        return True
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def _hit_values(hit: Hit) -> tuple[Any, ...]:
    return tuple(getattr(hit, name) for name in HIT_FIELDS)


def _parse_slowly(lines: Sequence[bytes]) -> ParsedBatch:
    """`parse_batch` one line at a time (the answer for any batch, only slower)."""
    results = parse_lines(lines)
    hits = [(i, r) for i, r in enumerate(results) if not isinstance(r, Rejection)]
    rejections = [(i, r) for i, r in enumerate(results) if isinstance(r, Rejection)]
    columns = [list(values) for values in zip(*(_hit_values(h) for _, h in hits), strict=True)]
    return ParsedBatch(columns or [[] for _ in HIT_FIELDS], [i for i, _ in hits], rejections)


_Head = tuple[str, str | None, str | None, float, int]  # client_ip, ident, user, time, offset
_STAMP: Final = slice(-28, -2)  # where a head's time is: 'host ident user [<here>] '
_OPENING: Final = slice(-30, -28)
_CLOSING: Final = slice(-2, None)
_PLAIN_IDENTITY: Final = "- -"


def _head_columns(heads: list[str], slow: list[int]) -> list[list[Any]]:
    """client_ip, ident, user, time and utc_offset_minutes of each head (what precedes a
    combined line's first quote: `'host ident user [dd/Mon/yyyy:HH:MM:SS +zzzz] '`), under
    exactly the fast path's rules (`_parse_head`); rows those rules refuse are added to `slow`.

    Every step is a C-level `map` over the column (cut at the first space and at fixed
    distances from the end, look the address and the time up in their memos); only rows that
    miss a memo or look unusual take a Python step of their own.
    """
    n = len(heads)
    spaces = list(map(str.find, heads, repeat(" ")))
    hosts = list(map(getitem, heads, map(slice, repeat(0), spaces)))
    stamps = list(map(getitem, heads, repeat(_STAMP)))
    ips: list[str | None] = list(map(_addresses.get, hosts))
    whens: list[tuple[float, int] | None] = list(map(_apache_stamps.get, stamps))
    identities = list(map(getitem, heads, map(slice, map(add, spaces, repeat(1)), repeat(-30))))
    idents: list[str | None] = [None] * n
    users: list[str | None] = [None] * n
    odd: set[int] = set()  # rows for `_parse_head`'s own judgement
    if (
        identities.count(_PLAIN_IDENTITY) != n
        or list(map(getitem, heads, repeat(_CLOSING))).count("] ") != n
        or list(map(getitem, heads, repeat(_OPENING))).count(" [") != n
        or min(spaces) <= 0
    ):
        odd.update(
            i
            for i, (head, space, identity) in enumerate(zip(heads, spaces, identities, strict=True))
            if identity != _PLAIN_IDENTITY
            or space <= 0
            or head[_CLOSING] != "] "
            or head[_OPENING] != " ["
        )
    ips = _filled(ips, hosts, _addresses, _canonical_address)
    if "" in ips:  # not an address
        odd.update(compress(range(n), map(eq, ips, repeat(""))))
    whens = _filled(whens, stamps, _apache_stamps, _apache_time)
    if None in whens:  # not a time
        odd.update(_missing(whens))
    for i in odd:
        head = _parse_head(heads[i])
        if head is None:
            slow.append(i)
            head = _NO_HEAD
        ips[i], idents[i], users[i] = head[:3]
        whens[i] = head[3:]  # type: ignore[assignment]
    return [ips, idents, users, list(map(_GET_FIELD[0], whens)), list(map(_GET_FIELD[1], whens))]


_GET_FIELD: Final = tuple(itemgetter(i) for i in range(4))
_NO_HEAD: Final[_Head] = ("", None, None, 0.0, 0)


def _parse_head(head: str) -> _Head | None:
    """The fields before a combined line's request (`'host ident user [dd/Mon/yyyy:HH:MM:SS
    +zzzz] '`): one rule for the line-at-a-time fast path (`_parse_combined_quickly`) and the
    batch path, so both accept exactly the same heads."""
    sp = head.find(" ")
    if sp <= 0 or head[-2:] != "] " or head[-30:-28] != " [":
        return None
    client_ip = _addresses.get(head[:sp])
    if client_ip is None:
        client_ip = _canonical_address(head[:sp])
    when = _apache_stamps.get(head[-28:-2])
    if when is None:
        when = _apache_time(head[-28:-2])
    if not client_ip or when is None:
        return None
    identity = head[sp + 1 : -30]
    if identity == "- -":
        ident = user = None
    else:
        # A '[' can make the careful path see the time field start earlier: let it decide.
        words = identity.split(" ")
        if len(words) != 2 or not words[0] or not words[1] or "[" in identity:
            return None
        ident = None if words[0] == "-" else words[0]
        user = None if words[1] == "-" else words[1]
    return (client_ip, ident, user, when[0], when[1])


# -- Apache combined / common ---------------------------------------------------------------------


def _parse_combined_quickly(s: str) -> Hit | None:
    """The fast path: a plain combined line, or None to let `_parse_access_line` decide.

    It accepts only lines on which `_parse_access_line` returns the very same `Hit` (exactly the
    combined field layout) and leaves every other line, and every rejection, to that careful
    path. One `split('"')` (or its escape-aware twin) cuts the line; the head's fields sit at
    fixed distances from its ends, and every piece that repeats across lines (address, time,
    request, status with size) is looked up in a memo, so a typical line costs a split, four
    dictionary look-ups and the `Hit` itself.
    """
    if "\\" in s:
        parts = _split_escaped(s)
        if parts is None:
            return None
    else:
        parts = s.split('"')
    if len(parts) != 7 or parts[4] != " " or parts[6]:
        return None
    fields = _parse_head(parts[0])  # 'host ident user [dd/Mon/yyyy:HH:MM:SS +zzzz] '
    if fields is None:
        return None
    client_ip, ident, user, time, utc_offset_minutes = fields
    status_and_size = _status_sizes.get(parts[2])
    if status_and_size is None:
        status_and_size = _parse_status_and_size(parts[2])
        if status_and_size is None:
            return None
    request = _requests.get(parts[1])
    if request is None:
        request = _request_fields(parts[1])
    method, path, query, protocol = request
    status, bytes_sent = status_and_size
    referer = parts[3]
    user_agent = parts[5]
    hit = _MutableHit(
        client_ip,
        ident,
        user,
        time,
        utc_offset_minutes,
        method,
        path,
        query,
        protocol,
        status,
        bytes_sent,
        None if referer == "-" else referer,
        None if user_agent == "-" else user_agent,
        None,
        "combined",
        None,
    )
    hit.__class__ = Hit
    return hit  # type: ignore[return-value]


def _parse_status_and_size(between: str) -> tuple[int, int] | None:
    """` 200 5326 ` (between a combined line's request and referer) as (status, bytes); memoised."""
    words = between.split(" ")
    if len(words) != 4 or words[0] or words[3]:
        return None
    status = _STATUS.get(words[1])
    bytes_sent = _size(words[2])
    if status is None or bytes_sent is None:
        return None
    result = (status, bytes_sent)
    if len(between) <= _LONGEST_MEMO_KEY:
        if len(_status_sizes) >= _CACHE_LIMIT:
            _status_sizes.clear()
        _status_sizes[between] = result
    return result


def _size(text: str) -> int | None:
    """`%b`: digits, or `-`, which is Apache's way of writing 0."""
    if text == "-":
        return 0
    if text.isdigit() and text.isascii() and len(text) <= 19:
        return int(text)
    return None


def _parse_access_line(s: str) -> Hit | Rejection:
    """Parse `%h %l %u %t "%r" %>s %b ["%{Referer}i" "%{User-Agent}i" ["%{X-Forwarded-For}i"]]`.

    The careful path: any line, escapes honoured, and for a line that does not parse, the reason
    of the first field (in line order) that is wrong.
    """
    sp = s.find(" ")
    if sp < 0:
        if _canonical_address(s):
            return Rejection("truncated", "line ends after the client address")
        return Rejection("unknown_format", _clip(s))
    host = s[:sp]
    client_ip = _addresses.get(host)
    if client_ip is None:
        client_ip = _canonical_address(host)
    if not client_ip:
        if " [" in s and '] "' in s:
            return Rejection("bad_ip", _clip(host))
        return Rejection("unknown_format", _clip(s))

    lb = s.find(" [", sp)
    if lb < 0:
        return Rejection("truncated", "no [time] field")
    identity = s[sp + 1 : lb].split(" ")
    if len(identity) != 2 or not identity[0] or not identity[1]:
        return Rejection("bad_syntax", "expected 'ident user' between address and [time]")
    ident, user = identity
    rb = s.find("]", lb)
    if rb < 0:
        return Rejection("truncated", "unterminated [time] field")
    stamp = s[lb + 2 : rb]
    when = _apache_stamps.get(stamp)
    if when is None:
        when = _apache_time(stamp)
        if when is None:
            return Rejection("bad_timestamp", _clip(stamp))
    if s[rb + 1 : rb + 3] != ' "':
        if len(s) <= rb + 2:
            return Rejection("truncated", "line ends after [time]")
        return Rejection("bad_syntax", "expected ' \"' after [time]")

    rest = s[rb + 2 :]  # from the request's opening quote
    if "\\" in rest:
        parts = _split_escaped(rest)
        if parts is None:
            return Rejection("truncated", "unterminated quoted field")
    else:
        parts = rest.split('"')
        if not len(parts) & 1:
            return Rejection("truncated", "unterminated quoted field")
    n = len(parts)

    words = parts[2].split(" ")
    if n == 3:  # common: the line ends after %b
        if len(words) != 3 or words[0]:
            if len(words) < 3 and not words[0]:
                return Rejection("truncated", "line ends before status and size")
            return Rejection("bad_syntax", _clip(parts[2]))
    elif len(words) != 4 or words[0] or words[3]:
        return Rejection("bad_syntax", _clip(parts[2]))
    status = _STATUS.get(words[1])
    if status is None:
        return Rejection("bad_status", _clip(words[1]))
    bytes_sent = _size(words[2])
    if bytes_sent is None:
        return Rejection("bad_bytes", _clip(words[2]))

    forwarded_for = referer = user_agent = None
    if n == 3:
        log_format: LogFormat = "common"
    elif n == 7 and parts[4] == " " and not parts[6]:
        log_format = "combined"
    elif n == 9 and parts[4] == " " and parts[6] == " " and not parts[8]:
        log_format = "combined"
        forwarded_for = None if parts[7] == "-" else parts[7]
    elif n == 5 and not parts[4]:
        return Rejection("truncated", "line ends after the referer")
    else:
        return Rejection("bad_syntax", f"{n // 2} quoted fields")
    if n > 3:
        referer = None if parts[3] == "-" else parts[3]
        user_agent = None if parts[5] == "-" else parts[5]

    request = _requests.get(parts[1])
    if request is None:
        request = _request_fields(parts[1])
    return new_hit(
        client_ip,
        None if ident == "-" else ident,
        None if user == "-" else user,
        when[0],
        when[1],
        *request,
        status,
        bytes_sent,
        referer,
        user_agent,
        forwarded_for,
        log_format,
        None,
    )


def _request_fields(request: str) -> _Request:
    """(method, path, query, protocol) of a request line, as Apache logged it; memoised.

    Never fails: `"-"` and `""` (no request line at all) give all None; HTTP/0.9 (`GET /`) has
    no protocol; a target with spaces (which Apache logs verbatim before answering 400) is
    rejoined; a lone garbage token is the method. Only ASCII spaces separate words, as for
    Apache. `path` is the target up to the first `?`, `query` what follows it.
    """
    words = request.split(" ")
    if len(words) == 3 and words[0] and words[1] and words[2].startswith("HTTP/"):
        method, target, protocol = words
    else:
        method, target, protocol = _split_odd_request(words)
    if target is None:
        result: _Request = (method, None, None, protocol)
    else:
        path, question_mark, query = target.partition("?")
        result = (method, path, query if question_mark else None, protocol)
    if len(request) <= _LONGEST_MEMO_KEY:
        if len(_requests) >= _CACHE_LIMIT:
            _requests.clear()
        _requests[request] = result
    return result


def _split_odd_request(words: list[str]) -> tuple[str | None, str | None, str | None]:
    """Method, target and protocol of a request line that is not `METHOD target HTTP/x`."""
    words = [w for w in words if w]
    if not words or words == ["-"]:
        return None, None, None
    method = words[0]
    protocol = None
    if len(words) > 1 and words[-1].startswith("HTTP/"):
        protocol = words.pop()
    target = " ".join(words[1:]) or None
    return method, target, protocol


def _split_escaped(rest: str) -> list[str] | None:
    """`rest.split('"')` for a line whose quoted fields use Apache's backslash escapes.

    Odd items are the quoted fields' contents with `\\"` and `\\\\` undone (other escapes are kept
    as text); even items are what lies between them. None when a quoted field is unterminated.
    Linear in the line's length, however many backslashes it holds.
    """
    parts: list[str] = []
    pos = 0
    while True:
        opening = rest.find('"', pos)
        if opening < 0:
            parts.append(rest[pos:])
            return parts
        parts.append(rest[pos:opening])
        chunks: list[str] = []
        i = opening + 1
        closing = rest.find('"', i)
        while True:
            if closing < 0:
                return None
            backslash = rest.find("\\", i, closing)
            if backslash < 0:
                chunks.append(rest[i:closing])
                break
            chunks.append(rest[i:backslash])
            escaped = rest[backslash + 1 : backslash + 2]
            if escaped == '"' or escaped == "\\":
                chunks.append(escaped)
                i = backslash + 2
                if backslash + 1 == closing:  # that quote was data: look for the real one
                    closing = rest.find('"', i)
            else:
                chunks.append("\\")
                i = backslash + 1
        parts.append("".join(chunks))
        pos = closing + 1


def _apache_time(stamp: str) -> tuple[float, int] | None:
    """UTC epoch seconds and offset in minutes of `dd/Mon/yyyy:HH:MM:SS +zzzz`, memoised."""
    if len(stamp) != 26:
        return None
    hour = _apache_hours.get(stamp[:14])
    if hour is None:
        hour = _apache_hour(stamp[:14])
        if hour is None:
            return None
        if len(_apache_hours) >= _CACHE_LIMIT:
            _apache_hours.clear()
        _apache_hours[stamp[:14]] = hour
    if stamp[14] != ":" or stamp[17] != ":" or stamp[20] != " " or stamp[21] not in "+-":
        return None
    minute, second, offset_hours, offset_minutes = (
        stamp[15:17],
        stamp[18:20],
        stamp[22:24],
        stamp[24:26],
    )
    digits = minute + second + offset_hours + offset_minutes
    if not (digits.isdigit() and digits.isascii()):
        return None
    m, sec, oh, om = int(minute), int(second), int(offset_hours), int(offset_minutes)
    if m > 59 or sec > 59 or oh > 23 or om > 59:
        return None
    offset = oh * 60 + om
    if stamp[21] == "-":
        offset = -offset
    result = (float(hour + m * 60 + sec - offset * 60), offset)
    if len(_apache_stamps) >= _CACHE_LIMIT:
        _apache_stamps.clear()
    _apache_stamps[stamp] = result
    return result


def _apache_hour(day_hour: str) -> int | None:
    """Epoch seconds (as if UTC) of `dd/Mon/yyyy:HH`, or None if it is not a real hour."""
    if day_hour[2] != "/" or day_hour[6] != "/" or day_hour[11] != ":":
        return None
    day, year, hour = day_hour[0:2], day_hour[7:11], day_hour[12:14]
    month = _MONTHS.get(day_hour[3:6])
    digits = day + year + hour
    if month is None or not (digits.isdigit() and digits.isascii()) or int(hour) > 23:
        return None
    try:
        ordinal = date(int(year), month, int(day)).toordinal()
    except ValueError:
        return None
    return (ordinal - _EPOCH_ORDINAL) * 86400 + int(hour) * 3600


def _canonical_address(text: str) -> str:
    """The canonical spelling of an IP address, or "" if `text` is not one; memoised.

    IPv6 is compressed and lower-cased; an IPv4-mapped IPv6 address (what Apache logs for IPv4
    clients on a dual-stack socket) becomes plain IPv4; a zone id (`%eth0`) is dropped. So one
    client has one spelling, for the visitor key and for geolocation.
    """
    if len(text) > _LONGEST_ADDRESS:
        return ""
    if _CANONICAL_IPV4.fullmatch(text) is not None:
        canonical = text  # what `str(ip_address(text))` gives, at a tenth of the cost
    else:
        canonical = _canonical_address_slowly(text)
    if len(_addresses) >= _CACHE_LIMIT:
        _addresses.clear()
    _addresses[text] = canonical
    return canonical


_CANONICAL_IPV4: Final = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
)
"""A dotted quad already in canonical form (decimal octets up to 255, no leading zeros): most
new client addresses, and `ipaddress` would only hand the same text back."""


def _canonical_address_slowly(text: str) -> str:
    """`_canonical_address` by `ipaddress` (any IPv4 or IPv6 spelling), not memoised."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        canonical = ""
    else:
        if isinstance(address, ipaddress.IPv6Address):
            mapped = address.ipv4_mapped
            canonical = str(mapped) if mapped is not None else str(address).partition("%")[0]
        else:
            canonical = str(address)
    return canonical


# -- The course lab's JSON -------------------------------------------------------------------------


def _parse_json(line: bytes) -> Hit | Rejection:
    """Parse one line of the lab's JSON `LogFormat` (see `_hit_from_json` for the fields)."""
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError as error:
        return _parse_json_leniently(line, error)
    if not isinstance(document, dict):
        return Rejection("json_invalid", f"a JSON {type(document).__name__}, not an object")
    return _hit_from_json(document)


def _parse_json_leniently(line: bytes, error: orjson.JSONDecodeError) -> Hit | Rejection:
    """Second chance for JSON that Apache wrote with `\\xhh` escapes or that has invalid UTF-8.

    Apache's JSON log formats are plain `LogFormat` strings, so a non-printable byte in a field
    comes out as `\\xhh`, which JSON does not allow; invalid UTF-8 gets the same `\\xhh` form
    (see the module's decisions). Both are turned into a literal backslash and retried.
    """
    try:
        text = line.decode()
        valid_utf8 = True
    except UnicodeDecodeError:
        text = line.decode("utf-8", "backslashreplace")
        valid_utf8 = False
    repaired = _JSON_HEX_ESCAPE.sub(r"\1\\\\x", text)
    try:
        document = orjson.loads(repaired)
    except orjson.JSONDecodeError:
        result: Hit | Rejection = Rejection("json_invalid", _clip(str(error)))
    else:
        if isinstance(document, dict):
            result = _hit_from_json(document)
        else:
            result = Rejection("json_invalid", f"a JSON {type(document).__name__}, not an object")
    return result if valid_utf8 else _unless_parsed(result)


def _hit_from_json(document: dict[str, Any]) -> Hit | Rejection:
    """A `Hit` from the lab's fields.

    `time`, `remoteIP`, `status` and `request` are required. `request` is Apache's `%U` (path
    only) with `query` (`%q`: `?...` or empty) and `method` (`%m`) beside it; a `request` that
    holds a whole request line (`%r`, as some variants log it) is split like Apache's. The user
    agent key is `userAgent` in the lab's `LogFormat` and `useragent` in its simulated file.
    """
    time_value = document.get("time")
    address_value = document.get("remoteIP")
    status_value = document.get("status")
    request_value = document.get("request")
    if time_value is None or address_value is None or status_value is None or not request_value:
        missing = [
            key
            for key in ("time", "remoteIP", "status", "request")
            if document.get(key) is None or document.get(key) == ""
        ]
        if missing:
            return Rejection("json_missing_field", ", ".join(missing))

    client_ip = _addresses.get(address_value) if isinstance(address_value, str) else ""
    if client_ip is None:
        client_ip = _canonical_address(address_value)
    if not client_ip:
        return Rejection("bad_ip", _clip(str(address_value)))
    when = _json_time(time_value) if isinstance(time_value, str) else None
    if when is None:
        return Rejection("bad_timestamp", _clip(str(time_value)))
    if isinstance(status_value, str):
        status = _STATUS.get(status_value)
    elif type(status_value) is int and 100 <= status_value <= 599:
        status = status_value
    else:
        status = None
    if status is None:
        return Rejection("bad_status", _clip(str(status_value)))
    method_value = document.get("method")
    if not isinstance(request_value, str) or not isinstance(method_value, str | None):
        return Rejection("bad_request", _clip(f"{method_value!r} {request_value!r}"))

    protocol = None
    if method_value is None and " " in request_value:
        method, target, protocol = _split_odd_request(request_value.split(" "))
    else:
        method, target = method_value, request_value
    if target is None:
        path = query = None
    else:
        path, question_mark, query_in_path = target.partition("?")
        query = query_in_path if question_mark else None
        query_value = document.get("query")
        if isinstance(query_value, str) and query_value:
            query = query_value.removeprefix("?")

    user_agent = document.get("userAgent")
    if user_agent is None:
        user_agent = document.get("useragent")
    geo = None
    if not _FILE_GEO_KEYS.isdisjoint(document):
        geo = FileGeo(
            _json_text(document.get("country")),
            _json_text(document.get("region")),
            _json_text(document.get("city")),
            _json_text(document.get("lat")),
            _json_text(document.get("lon")),
        )
    hit = _MutableHit(
        client_ip,
        None,
        None,
        when[0],
        when[1],
        method,
        path,
        query,
        protocol,
        status,
        None,
        _json_text(document.get("referer")),
        _json_text(user_agent),
        None,
        "json",
        geo,
    )
    hit.__class__ = Hit
    return hit  # type: ignore[return-value]


def _json_text(value: object) -> str | None:
    """An optional text field: `-` and absent are None; a number keeps its JSON spelling."""
    if isinstance(value, str):
        return None if value == "-" else value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _json_time(text: str) -> tuple[float, int | None] | None:
    """UTC epoch seconds and offset in minutes (None for a naive time, read as UTC).

    Fast, memoised forms: `2023-02-22 03:38:18` (the lab's simulated file) and
    `2023-02-22T03:38:18.123Z` (the lab's `LogFormat`). Also Apache's `[22/Feb/2023:03:38:18
    +0000]` (`%t`) and whatever else `datetime.fromisoformat` reads.
    """
    n = len(text)
    if n == 19 or (
        n == 24 and text[19] == "." and text[23] == "Z" and text[20:23].isdigit() and text.isascii()
    ):
        seconds = _iso_seconds.get(text[:19])
        if seconds is None:
            seconds = _iso_naive_seconds(text[:19])
            if seconds is None:
                return None
        if n == 19:
            return seconds, None
        return seconds + int(text[20:23]) / 1000, 0
    if n == 28 and text[0] == "[" and text[27] == "]":
        return _apache_time(text[1:27])
    if n > 40:
        return None
    try:
        moment = datetime.fromisoformat(text)
        offset = moment.utcoffset()
        if offset is None:
            return moment.replace(tzinfo=UTC).timestamp(), None
        return moment.timestamp(), int(offset.total_seconds() // 60)
    except (ValueError, OverflowError):
        return None


def _iso_naive_seconds(text: str) -> float | None:
    """Epoch seconds (as if UTC) of `yyyy-mm-dd HH:MM:SS` or `yyyy-mm-ddTHH:MM:SS`, memoised."""
    if (
        text[4] != "-"
        or text[7] != "-"
        or text[10] not in " T"
        or text[13] != ":"
        or text[16] != ":"
    ):
        return None
    fields = (text[0:4], text[5:7], text[8:10], text[11:13], text[14:16], text[17:19])
    digits = "".join(fields)
    if not (digits.isdigit() and digits.isascii()):
        return None
    year, month, day, hour, minute, second = (int(f) for f in fields)
    try:
        ordinal = date(year, month, day).toordinal()
    except ValueError:
        return None
    if hour > 23 or minute > 59 or second > 59:
        return None
    seconds = float((ordinal - _EPOCH_ORDINAL) * 86400 + hour * 3600 + minute * 60 + second)
    if len(_iso_seconds) >= _CACHE_LIMIT:
        _iso_seconds.clear()
    _iso_seconds[text] = seconds
    return seconds


# -- Shared ----------------------------------------------------------------------------------------


def _unless_parsed(result: Hit | Rejection) -> Hit | Rejection:
    """For a line that was not valid UTF-8: a parsed line stands, a failure is `invalid_utf8`."""
    if isinstance(result, Rejection):
        reason: RejectionReason = "invalid_utf8"
        return Rejection(reason, _clip(f"{result.reason}: {result.detail}"))
    return result


def _clip(text: str) -> str:
    """A bounded, printable excerpt for a rejection's detail."""
    text = text[: _DETAIL_CHARS + 1]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) > _DETAIL_CHARS:
        text = text[:_DETAIL_CHARS] + "…"
    return text
