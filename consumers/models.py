"""Value types that flow through the consumers, in flow order: parsed line -> ... -> counters.

Each step owns one transformation and hands these on; none of them does I/O. The parser
(`consumers.parse`) turns one log line into a `Hit` or a `Rejection`; later steps add their own
types below (a shard record before, an enriched hit after), keeping this module the one place
where the shapes are defined.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from typing import Any, Final, Literal, TypeVar, get_args

from consumers.geo.locator import Location


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One log line as it came off a shard, after KPL deaggregation and the agent's envelope.

    The position (`sequence_number`, `sub_sequence_number`) is what a checkpoint records and what
    an archive key is derived from; `event_id` (file fingerprint + byte offset, see
    `agent.envelope`) is what makes a replayed line recognisable.
    """

    shard_id: str
    sequence_number: str
    sub_sequence_number: int
    arrival_time: float
    event_id: str
    line: bytes


LogFormat = Literal["combined", "common", "json"]
"""Which grammar a line was parsed with: Apache combined (optionally with a trailing quoted
X-Forwarded-For field), Apache common, or the course lab's JSON `LogFormat` named `cloudwatch`."""

RejectionReason = Literal[
    "empty",
    "too_long",
    "invalid_utf8",
    "unknown_format",
    "truncated",
    "bad_syntax",
    "bad_ip",
    "bad_timestamp",
    "bad_request",
    "bad_status",
    "bad_bytes",
    "json_invalid",
    "json_missing_field",
]
"""Why a line was rejected. A closed set, because each value becomes a metric label
(`clickstream_rejected_lines_total{reason}`) and an archive prefix, so it must stay small.

- `empty`: nothing but whitespace.
- `too_long`: longer than `consumers.parse.MAX_LINE_BYTES`; not even looked at.
- `invalid_utf8`: not valid UTF-8 *and* not a parseable line once the bad bytes are escaped
  (binary junk, a corrupted block); a line whose only fault is a few bad bytes inside a field
  is a `Hit`, not a rejection.
- `unknown_format`: neither an access-log line nor JSON (a PHP warning, a stray message).
- `truncated`: an access-log line that stops before its format is complete (unterminated
  quoted field, missing trailing fields).
- `bad_syntax`: the fields are there but not separated as the format requires (an unescaped
  quote, two lines glued together, extra fields of an unsupported `LogFormat`).
- `bad_ip`, `bad_timestamp`, `bad_request`, `bad_status`, `bad_bytes`: that field is malformed.
- `json_invalid`: starts like JSON but does not decode to an object.
- `json_missing_field`: a JSON object without `time`, `remoteIP`, `status` or `request`.
"""

REJECTION_REASONS: Final[frozenset[str]] = frozenset(get_args(RejectionReason))


@dataclass(frozen=True, slots=True)
class FileGeo:
    """Geography that the lab's simulated JSON file carries with each line, as strings.

    Kept only so the archive holds what the file said; counting geolocates the client address
    itself (DESIGN.md §7) because a file's own claim about where a visitor is cannot be trusted.
    """

    country: str | None
    region: str | None
    city: str | None
    lat: str | None
    lon: str | None


@dataclass(frozen=True, slots=True)
class Hit:
    """One access-log line that parsed: what the web server recorded about one request.

    Texts are as the server logged them, except that the two escapes that would otherwise break
    the line's own syntax (`\\"` and `\\\\`) are undone. Other escapes (Apache writes
    non-printable bytes as `\\xhh`) are kept as text, and so are invalid UTF-8 bytes, which the
    parser turns into the same `\\xhh` form; every text is therefore valid Unicode that any sink
    can encode.

    - `client_ip`: a valid address in canonical form (IPv6 compressed and lower case, an
      IPv4-mapped IPv6 address as plain IPv4, no zone id), so one client has one spelling.
    - `time`: UTC epoch seconds. `utc_offset_minutes` is the zone the line was written in
      (`+0200` -> 120), or None when the line carried no zone (the lab's naive times, read as UTC).
    - `method`, `path`, `protocol`: from the request line; all None when Apache logged `"-"` (a
      connection that sent no request, e.g. a 408 after a browser preconnect). `path` excludes
      the query; `query` is the text after the first `?` (None when there is no `?`).
    - `bytes_sent`: response body size; Apache's `-` is 0 (that is what `%b` means by it); None
      when the format does not record it (the lab's JSON).
    - `ident`, `user`, `referer`, `user_agent`, `forwarded_for`: None when logged as `-` or
      absent; an empty header logged as `""` stays `""`.
    - `file_geo`: the lab JSON file's own geography, if it had any.
    """

    client_ip: str
    ident: str | None
    user: str | None
    time: float
    utc_offset_minutes: int | None
    method: str | None
    path: str | None
    query: str | None
    protocol: str | None
    status: int
    bytes_sent: int | None
    referer: str | None
    user_agent: str | None
    forwarded_for: str | None
    log_format: LogFormat
    file_geo: FileGeo | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """A line that did not parse: counted by `reason`, archived under a rejects prefix.

    `detail` is a short human-readable hint (bounded in length) for whoever reads the archive;
    the raw line itself travels beside it, not in here.
    """

    reason: RejectionReason
    detail: str


_Frozen = TypeVar("_Frozen")


def mutable_twin(cls: type) -> type:
    """A mutable slots dataclass with `cls`'s fields and slot layout (see `fast_constructor`).

    Build one, then set its `__class__` to `cls`; a hot loop does that inline to save a call.
    """
    twin_fields: list[tuple[str, Any, Any]] = []
    for f in fields(cls):
        default = field() if f.default is MISSING else field(default=f.default)
        twin_fields.append((f.name, f.type, default))
    return make_dataclass(f"_Mutable{cls.__name__}", twin_fields, slots=True, eq=False)


def fast_constructor(cls: type[_Frozen]) -> Callable[..., _Frozen]:
    """A positional-argument constructor for a frozen slots dataclass that costs what a mutable
    one does.

    A frozen dataclass's `__init__` sets every field through `object.__setattr__`, which for
    `Hit`'s 16 fields is about 2.4 µs, more than the whole parse of a line. This builds a
    mutable twin with the very same slots, lets its plain `__init__` fill them, then relabels
    the object as `cls` (CPython allows `__class__` assignment between identical slot layouts).
    The result is an ordinary, immutable `cls` instance: equal, hashable and frozen like one made
    by `cls(...)`. Only for hot paths whose arguments are already validated.
    """
    twin = mutable_twin(cls)

    def construct(*args: Any) -> _Frozen:
        obj = twin(*args)
        obj.__class__ = cls
        return obj  # type: ignore[return-value]

    construct.__doc__ = f"Build a {cls.__name__} from positional arguments in field order."
    return construct


new_hit: Final[Callable[..., Hit]] = fast_constructor(Hit)
"""`Hit(...)` with positional arguments in field order, at mutable-dataclass speed."""


PageClass = Literal["home", "menu", "order", "static", "other"]
"""What a request was for, by configured path patterns (README, "Counting rules")."""

FunnelStage = Literal["visit", "menu", "purchase"]


@dataclass(frozen=True, slots=True)
class EnrichedHit:
    """A `Hit` with what the stateless enrichment concluded about it.

    - `client_ip`: the visitor's address: the logged one, or the one a trusted load balancer put
      in X-Forwarded-For (otherwise every hit behind a balancer would come from the balancer).
    - `visitor`: the visitor key, client address and user agent (DESIGN.md §7).
    - `is_bot`: judged from the user agent alone; behaviour (no assets, too fast) needs a
      visitor's history and is judged by the stateful session step.
    - `is_page_view`: the counting rule: not a bot, not static, answered 2xx/3xx, GET/HEAD/POST.
    - `stage`: the funnel stage this page view reaches (None for anything but a page view).
    """

    hit: Hit
    client_ip: str
    visitor: str
    location: Location
    is_bot: bool
    page: PageClass
    is_page_view: bool
    stage: FunnelStage | None
