"""The JSON the service answers with, as pydantic models: the OpenAPI schema at `/docs` and
`/openapi.json`, and what the tests check real answers against.

`Summary` contains the shape DESIGN.md §9 promises (`totals` and `cities` with their fields, the
same as the simulator's ground truth) and adds what a dashboard needs: regions, countries,
conversion rates, the per-minute trend, map coordinates, and the pipeline's own figures.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Window = Literal["5m", "1h", "24h"]


class Totals(BaseModel):
    page_views: int = Field(description="non-bot, non-static requests answered 2xx/3xx")
    visitors: int = Field(description="distinct (client IP, user agent) with a page view")
    menu_viewers: int = Field(description="distinct visitors who viewed the menu")
    purchasers: int = Field(description="distinct visitors who placed an order")
    rejected_lines: int = Field(description="lines that did not parse")
    late_lines: int = Field(0, description="lines too late for their minute")


class Conversion(BaseModel):
    menu_rate: float = Field(description="menu viewers / visitors (0 when no visitors)")
    purchase_rate: float = Field(description="purchasers / visitors")
    menu_to_purchase_rate: float = Field(description="purchasers / menu viewers")


class PlaceCounts(BaseModel):
    visitors: int
    menu_viewers: int
    purchasers: int
    page_views: int
    menu_rate: float
    purchase_rate: float


class CityRow(PlaceCounts):
    city: str
    region: str
    country: str = Field(description="ISO 3166-1 alpha-2 code")
    continent: str
    latitude: float | None = Field(None, description="for the map; None if not known yet")
    longitude: float | None = None


class RegionRow(PlaceCounts):
    region: str
    country: str
    continent: str


class CountryRow(PlaceCounts):
    country: str
    continent: str


class TrendPoint(BaseModel):
    minute: str = Field(description="start of the minute, ISO 8601 UTC")
    page_views: int


class Pipeline(BaseModel):
    lines_processed: int = Field(description="log lines this service's consumer has processed")
    commits: int
    shards: int = Field(description="shards this worker holds")
    millis_behind_latest: int = Field(description="the furthest-behind shard's lag")


class ShardSnapshotSource(BaseModel):
    owner: str | None = Field(description="the worker holding the shard")
    checkpoint: str = Field(description="the checkpoint whose state snapshot was read")
    age_s: float = Field(description="seconds since the snapshot was read")


class Fleet(BaseModel):
    """Where this summary's numbers come from: every worker's summary counts the whole
    fleet's shards (a visitor stays on one shard, so per-shard distinct counts add up)."""

    scope: Literal["fleet"]
    worker_id: str = Field(description="the worker that answered")
    local: list[str] = Field(description="shards processed by this worker, to the last record")
    snapshots: dict[str, ShardSnapshotSource] = Field(
        description="shards held by other workers, counted from their last committed snapshot"
    )
    ended: list[str] = Field(description="shards read to their end (resharded), by anyone")
    missing: list[str] = Field(
        description="shards another worker holds and has not committed yet: not in these numbers"
    )


class Summary(BaseModel):
    """Counts for the window ending with the newest event minute any shard has seen."""

    window: Window
    from_: str | None = Field(None, alias="from", description="first minute of the window")
    newest_event_time: str | None
    totals: Totals
    conversion: Conversion
    cities: list[CityRow] = Field(description="by visitors, descending, then by name")
    regions: list[RegionRow]
    countries: list[CountryRow]
    trend: list[TrendPoint] = Field(description="page views per minute, oldest first")
    pipeline: Pipeline
    fleet: Fleet | None = Field(None, description="which shards are counted, and from where")


class CheckResult(BaseModel):
    ok: bool
    detail: str


class ReadinessReport(BaseModel):
    ready: bool
    reasons: list[str] = Field(description="'<check>: <detail>' of every failing check")
    checks: dict[str, CheckResult]


class Liveness(BaseModel):
    status: Literal["ok", "failing"]
    consumer: str


class Problem(BaseModel):
    detail: str
