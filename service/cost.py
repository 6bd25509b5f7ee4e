"""What the pipeline costs on AWS for a given traffic: `clickstream cost`.

The café asked for a figure before building (DESIGN.md §8), so the estimate follows the pipeline
as it is built and deployed (deploy/cloudformation.yaml), not a generic calculator: the agent's
KPL aggregation decides the Kinesis PUT units, the consumer's commit interval decides the S3
requests (one events object, one state snapshot and one snapshot LIST per shard per commit)
and the DynamoDB writes (one checkpoint per commit), and the top-N city rule decides how many
CloudWatch metrics exist. Every quantity is derived from a few named inputs (`Workload`) by
plain arithmetic, so a test can redo it by hand; every price comes from a dated table in the
repo (`service/prices/*.toml`) so the figures can be checked against their source.

Monthly means `hours_per_month` (730, AWS's convention) hours; a year is twelve such months at
steady state (storage at its full retention, which the first year only reaches at its end, so
the yearly figure is an upper bound for year one).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from consumers import metric_names as names
from consumers.sinks.cloudwatch import MAX_DATA_PER_CALL, METRIC_FAILURES

GIB = 1024**3
TIB = 1024**4
KIB = 1024

DEFAULT_PRICES = "aws-us-east-1.toml"

# Series the CloudWatch sink publishes without dimensions (consumers.metric_names).
TOTAL_SERIES = (
    names.PAGE_VIEWS,
    *names.FUNNEL_METRICS,
    names.RECORDS_PROCESSED,
    names.REJECTED_LINES,
    names.ITERATOR_AGE,
    names.ARCHIVE_FAILURES,
    METRIC_FAILURES,
)
# Per place (each top-N city, each top-N region, and each one's "Other").
PLACE_SERIES = (names.PAGE_VIEWS, *names.FUNNEL_METRICS)


@dataclass(frozen=True)
class PriceTable:
    """One region's list prices, with the date they were read and where from."""

    region: str
    currency: str
    as_of: str
    hours_per_month: float
    prices: dict[str, dict[str, Any]]
    path: str

    def __getitem__(self, service: str) -> dict[str, Any]:
        return self.prices[service]


def load_prices(path: Path | None = None) -> PriceTable:
    """The shipped table (us-east-1) unless a path is given (another region, newer prices)."""
    if path is None:
        text = resources.files("service.prices").joinpath(DEFAULT_PRICES).read_text()
        shown = f"service/prices/{DEFAULT_PRICES}"
    else:
        text, shown = path.read_text(), str(path)
    document = tomllib.loads(text)
    meta = {key: document.pop(key) for key in ("region", "currency", "as_of", "hours_per_month")}
    return PriceTable(**meta, prices=document, path=shown)


@dataclass(frozen=True)
class Workload:
    """The inputs of an estimate; the defaults describe the deployment in deploy/."""

    hits_per_day: int
    retention_days: int = 365
    # Traffic.
    line_bytes: int = 250  # an Apache combined line (the simulator's average: 252 bytes)
    envelope_bytes: int = 50  # event id and KPL framing the agent adds per line
    # Archive objects (measured on simulated traffic, zstd Parquet with the raw line kept): about
    # 32 bytes a row plus about 11 KB of footer and page headers per object, whatever its size.
    archive_bytes_per_hit: int = 32
    archive_bytes_per_object: int = 11_000
    # Kinesis.
    kinesis_mode: Literal["provisioned", "on-demand"] = "provisioned"
    shards: int = 2
    agent_linger_ms: int = 250
    # Fargate.
    tasks: int = 1
    vcpu: float = 0.5
    memory_gb: float = 1.0
    arch: Literal["x86_64", "arm64"] = "x86_64"
    public_ipv4: bool = True  # public subnet with a public address: no NAT gateway
    # Consumer commits (CLICKSTREAM_FLUSH_SECONDS / _RECORDS as the template sets them).
    flush_seconds: float = 60.0
    flush_records: int = 50_000
    lease_renewals_per_shard_hour: float = 360.0  # a renewal every 10 s
    lease_scans_per_hour: float = 360.0
    # S3.
    sse: Literal["s3", "kms"] = "s3"
    standard_days: int = 30
    standard_ia_days: int = 90  # from day 30 to day 90, then Glacier Instant Retrieval
    # CloudWatch.
    top_cities: int = 20
    metrics_interval_seconds: float = 60.0
    dashboards: int = 1
    alarms: int = 3
    log_bytes_per_commit: int = 300
    log_retention_days: int = 30
    # Athena.
    queries_per_day: float = 10.0
    days_scanned_per_query: float = 7.0
    object_reads_per_query_object: int = 2  # the Parquet footer, then the columns

    def __post_init__(self) -> None:
        if self.hits_per_day < 0:
            raise ValueError("hits per day must be >= 0")
        if self.retention_days < 1:
            raise ValueError("retention days must be >= 1")
        if self.shards < 1 or self.tasks < 1:
            raise ValueError("shards and tasks must be >= 1")


@dataclass(frozen=True)
class LineItem:
    service: str
    item: str
    quantity: float
    unit: str
    unit_price: float
    monthly: float


@dataclass(frozen=True)
class Estimate:
    workload: Workload
    prices: PriceTable
    items: list[LineItem]
    assumptions: list[str] = field(default_factory=list)

    @property
    def monthly(self) -> float:
        return sum(item.monthly for item in self.items)

    @property
    def yearly(self) -> float:
        return 12 * self.monthly

    def by_service(self) -> dict[str, float]:
        """Monthly cost per service, in the order the services first appear."""
        totals: dict[str, float] = {}
        for item in self.items:
            totals[item.service] = totals.get(item.service, 0.0) + item.monthly
        return totals

    def to_dict(self) -> dict[str, Any]:
        return {
            "workload": asdict(self.workload),
            "prices": {
                "region": self.prices.region,
                "currency": self.prices.currency,
                "as_of": self.prices.as_of,
                "table": self.prices.path,
            },
            "items": [asdict(item) for item in self.items],
            "services": {
                name: {"monthly": round(monthly, 2), "yearly": round(12 * monthly, 2)}
                for name, monthly in self.by_service().items()
            },
            "total": {"monthly": round(self.monthly, 2), "yearly": round(self.yearly, 2)},
            "assumptions": self.assumptions,
        }


def _item(service: str, item: str, quantity: float, unit: str, unit_price: float) -> LineItem:
    return LineItem(service, item, quantity, unit, unit_price, quantity * unit_price)


def commits_per_shard_day(w: Workload) -> float:
    """A shard commits when `flush_seconds` passed with data waiting, or `flush_records` came.

    Hits spread evenly over the shards (the partition key is the client address) and over the
    day, so a shard with data in every interval commits every interval; a quieter shard commits
    once per hit at most.
    """
    hits = w.hits_per_day / w.shards
    by_time = 86_400 / w.flush_seconds
    return min(hits, max(by_time, hits / w.flush_records))


def kinesis_records_per_day(w: Workload) -> float:
    """The agent sends a shard's waiting lines at most `agent_linger_ms` after the first one,
    packed into one aggregated record: below one line per linger window per shard each line
    is its own record; above it, one record per window."""
    windows = w.shards * 86_400 * 1000 / w.agent_linger_ms if w.agent_linger_ms else math.inf
    return min(w.hits_per_day, windows)


def cloudwatch_metric_count(w: Workload) -> int:
    """Distinct metrics (name + dimensions) the consumer publishes: the totals, then the four
    funnel series for each top-N city and top-N region and for each one's "Other"."""
    places = 2 * (w.top_cities + 1)
    return len(TOTAL_SERIES) + len(PLACE_SERIES) * places


def estimate(w: Workload, prices: PriceTable) -> Estimate:
    """The monthly line items for `w`; see the module docstring for what is counted."""
    hours = prices.hours_per_month
    days = hours / 24
    items: list[LineItem] = []
    notes: list[str] = []

    # Kinesis ----------------------------------------------------------------------------------
    k = prices["kinesis"]
    stream_bytes_day = w.hits_per_day * (w.line_bytes + w.envelope_bytes)
    records_day = kinesis_records_per_day(w)
    if w.kinesis_mode == "provisioned":
        items.append(
            _item(
                "Kinesis",
                f"shard-hours ({w.shards} provisioned shards)",
                w.shards * hours,
                "shard-hour",
                k["provisioned_shard_hour"],
            )
        )
        record_bytes = stream_bytes_day / records_day if records_day else 0.0
        units_per_record = max(1, math.ceil(record_bytes / k["put_payload_unit_bytes"]))
        items.append(
            _item(
                "Kinesis",
                "PUT payload units (25 KB each)",
                records_day * units_per_record * days / 1e6,
                "million units",
                k["provisioned_million_put_payload_units"],
            )
        )
    else:
        items.append(
            _item(
                "Kinesis",
                "on-demand stream-hours",
                hours,
                "stream-hour",
                k["on_demand_stream_hour"],
            )
        )
        record_bytes = stream_bytes_day / records_day if records_day else 0.0
        billed_kb = math.ceil(record_bytes / KIB) if records_day else 0
        items.append(
            _item(
                "Kinesis",
                "data in (records rounded up to 1 KB)",
                records_day * billed_kb * KIB * days / GIB,
                "GB",
                k["on_demand_ingest_gb"],
            )
        )
        items.append(
            _item(
                "Kinesis",
                "data out (one consumer)",
                stream_bytes_day * days / GIB,
                "GB",
                k["on_demand_retrieval_gb"],
            )
        )

    # Fargate ----------------------------------------------------------------------------------
    f = prices["fargate"]
    task_hours = w.tasks * hours
    items.append(
        _item(
            "Fargate",
            f"vCPU-hours ({w.tasks} × {w.vcpu:g} vCPU, {w.arch})",
            task_hours * w.vcpu,
            "vCPU-hour",
            f[f"{w.arch}_vcpu_hour"],
        )
    )
    items.append(
        _item(
            "Fargate",
            f"GB-hours ({w.tasks} × {w.memory_gb:g} GB)",
            task_hours * w.memory_gb,
            "GB-hour",
            f[f"{w.arch}_gb_hour"],
        )
    )
    if w.public_ipv4:
        items.append(
            _item(
                "Fargate", "public IPv4 address", task_hours, "address-hour", f["public_ipv4_hour"]
            )
        )

    # S3 ---------------------------------------------------------------------------------------
    s = prices["s3"]
    commits_day = w.shards * commits_per_shard_day(w)
    objects_day = commits_day  # one events object per commit (rejects and hour edges: rare)
    archive_day = (
        w.hits_per_day * w.archive_bytes_per_hit + objects_day * w.archive_bytes_per_object
    )
    object_bytes = archive_day / objects_day if objects_day else 0.0
    ia_from = min(w.standard_days, w.retention_days)
    glacier_from = min(w.standard_ia_days, w.retention_days)
    moved = object_bytes >= s["smallest_transitioned_object_bytes"]
    if moved:
        standard_days = ia_from
        ia_days = glacier_from - ia_from
        glacier_days = w.retention_days - glacier_from
    else:
        standard_days, ia_days, glacier_days = w.retention_days, 0, 0
        notes.append(
            f"Archive objects average {object_bytes / KIB:,.1f} KiB, below S3's 128 KiB "
            "lifecycle minimum: they stay in S3 Standard. Fewer, larger objects (a longer "
            "CLICKSTREAM_FLUSH_SECONDS) would let the lifecycle rule move them."
        )
    items.append(
        _item(
            "S3",
            f"archive in Standard ({standard_days} days kept)",
            archive_day * standard_days / GIB,
            "GB-month",
            s["standard_gb_month"],
        )
    )
    if ia_days:
        items.append(
            _item(
                "S3",
                f"archive in Standard-IA ({ia_days} days kept)",
                archive_day * ia_days / GIB,
                "GB-month",
                s["standard_ia_gb_month"],
            )
        )
    if glacier_days:
        items.append(
            _item(
                "S3",
                f"archive in Glacier Instant Retrieval ({glacier_days} days kept)",
                archive_day * glacier_days / GIB,
                "GB-month",
                s["glacier_ir_gb_month"],
            )
        )
    items.append(
        _item(
            "S3",
            "PUT/LIST requests (object, snapshot, LIST per commit)",
            3 * commits_day * days / 1000,
            "1,000 requests",
            s["thousand_put_requests"],
        )
    )
    if moved:
        objects_month = objects_day * days
        if ia_days:
            items.append(
                _item(
                    "S3",
                    "lifecycle transitions to Standard-IA",
                    objects_month / 1000,
                    "1,000 requests",
                    s["thousand_transitions_to_standard_ia"],
                )
            )
        if glacier_days:
            items.append(
                _item(
                    "S3",
                    "lifecycle transitions to Glacier IR",
                    objects_month / 1000,
                    "1,000 requests",
                    s["thousand_transitions_to_glacier_ir"],
                )
            )
    days_read = min(w.days_scanned_per_query, w.retention_days)
    gets_month = (
        w.queries_per_day * days * days_read * objects_day * w.object_reads_per_query_object
    )
    items.append(
        _item(
            "S3",
            "GET requests by Athena queries",
            gets_month / 1000,
            "1,000 requests",
            s["thousand_get_requests"],
        )
    )
    if w.sse == "kms":
        items.append(
            _item(
                "S3", "KMS key (SSE-KMS, bucket key on)", 1, "key-month", prices["kms"]["key_month"]
            )
        )

    # CloudWatch -------------------------------------------------------------------------------
    c = prices["cloudwatch"]
    metrics = cloudwatch_metric_count(w)
    calls_per_cycle = math.ceil(metrics / MAX_DATA_PER_CALL)
    items.append(
        _item(
            "CloudWatch",
            f"custom metrics (top {w.top_cities} cities and regions + Other)",
            metrics,
            "metric-month",
            c["metric_month"],
        )
    )
    items.append(
        _item(
            "CloudWatch",
            "PutMetricData requests",
            hours * 3600 / w.metrics_interval_seconds * calls_per_cycle / 1000,
            "1,000 requests",
            c["thousand_put_metric_data_requests"],
        )
    )
    items.append(
        _item("CloudWatch", "dashboards", w.dashboards, "dashboard-month", c["dashboard_month"])
    )
    items.append(_item("CloudWatch", "alarms", w.alarms, "alarm-month", c["standard_alarm_month"]))
    log_gb_day = commits_day * w.log_bytes_per_commit / GIB
    items.append(
        _item("CloudWatch", "Logs ingested", log_gb_day * days, "GB", c["logs_ingested_gb"])
    )
    items.append(
        _item(
            "CloudWatch",
            f"Logs stored ({w.log_retention_days} days)",
            log_gb_day * w.log_retention_days,
            "GB-month",
            c["logs_stored_gb_month"],
        )
    )

    # DynamoDB ---------------------------------------------------------------------------------
    d = prices["dynamodb"]
    writes_month = (
        w.shards * (commits_per_shard_day(w) + w.lease_renewals_per_shard_hour * 24) * days
    )
    items.append(
        _item(
            "DynamoDB",
            "lease table writes (checkpoints, renewals)",
            writes_month / 1e6,
            "million WRU",
            d["million_write_request_units"],
        )
    )
    items.append(
        _item(
            "DynamoDB",
            "lease table reads (lease scans)",
            w.lease_scans_per_hour * hours / 1e6,
            "million RRU",
            d["million_read_request_units"],
        )
    )

    # Athena -----------------------------------------------------------------------------------
    a = prices["athena"]
    per_query = max(a["minimum_bytes_per_query"], archive_day * days_read)
    items.append(
        _item(
            "Athena",
            f"data scanned ({w.queries_per_day:g} queries/day over {days_read:g} days each)",
            w.queries_per_day * days * per_query / TIB,
            "TB",
            a["tb_scanned"],
        )
    )

    notes[:0] = _assumptions(w, prices, metrics, commits_day)
    return Estimate(w, prices, items, notes)


def _assumptions(w: Workload, prices: PriceTable, metrics: int, commits_day: float) -> list[str]:
    return [
        f"Prices: AWS {prices.region} list prices in {prices.currency} as of {prices.as_of} "
        f"({prices.path}); free tiers not deducted; {prices.hours_per_month:g} hours a month.",
        f"Traffic: {w.hits_per_day:,} log lines a day, evenly spread; {w.line_bytes} bytes a "
        f"line plus {w.envelope_bytes} of envelope on the stream; "
        f"{w.archive_bytes_per_hit} bytes a line plus {w.archive_bytes_per_object:,} per "
        "object in the Parquet archive.",
        f"Kinesis {w.kinesis_mode}"
        + (f", {w.shards} shards" if w.kinesis_mode == "provisioned" else "")
        + f"; the agent waits at most {w.agent_linger_ms} ms per shard before sending "
        "(KPL aggregation packs the lines of that wait into one record); 24 h retention.",
        f"Consumer: {w.tasks} Fargate task of {w.vcpu:g} vCPU and {w.memory_gb:g} GB "
        f"({w.arch}) in a public subnet"
        + (" with a public IPv4 address" if w.public_ipv4 else "")
        + "; no NAT gateway (it would add about $33/month).",
        f"Commits: each shard commits every {w.flush_seconds:g} s while data arrives "
        f"(or every {w.flush_records:,} records): {commits_day:,.0f} a day in all, each "
        "one events object, one state snapshot and one LIST in S3 and a checkpoint in DynamoDB.",
        f"Archive kept {w.retention_days} days: Standard for {w.standard_days}, Standard-IA to "
        f"day {w.standard_ia_days}, then Glacier Instant Retrieval; encryption SSE-"
        f"{w.sse.upper()}.",
        f"CloudWatch: {metrics} custom metrics (top {w.top_cities} cities and regions with "
        f"their own series), published every {w.metrics_interval_seconds:g} s; "
        f"{w.dashboards} dashboard, {w.alarms} alarms; container logs kept "
        f"{w.log_retention_days} days.",
        f"Athena: {w.queries_per_day:g} queries a day, each over {w.days_scanned_per_query:g} "
        "days of the archive (partition projection prunes the rest; whole files counted, "
        "an upper bound: Parquet lets Athena read only the columns a query names).",
        "Not counted: data transfer out of AWS (the dashboards and queries stay in the "
        "region), the café's EC2 web server, Glue Data Catalog (free under a million objects).",
    ]


def _money(value: float) -> str:
    return f"${value:,.2f}"


def _quantity(value: float) -> str:
    if value == 0:
        return "0"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    return f"{value:.4g}"


def format_estimate(result: Estimate) -> str:
    """The breakdown as aligned text: line items, then per service, then the assumptions."""
    w, p = result.workload, result.prices
    lines = [
        f"Clickstream on AWS: {w.hits_per_day:,} hits a day "
        f"({w.hits_per_day * p.hours_per_month / 24:,.0f} a month), archive kept "
        f"{w.retention_days} days",
        f"Prices: {p.region}, {p.currency}, as of {p.as_of} ({p.path})",
        "",
    ]
    rows = [
        (
            i.service,
            i.item,
            f"{_quantity(i.quantity)} {i.unit}",
            f"${i.unit_price:g}",
            _money(i.monthly),
        )
        for i in result.items
    ]
    header = ("service", "item", "quantity a month", "unit price", "monthly")
    widths = [max(len(r[n]) for r in [header, *rows]) for n in range(5)]

    def row(cells: tuple[str, ...]) -> str:
        left = "  ".join(c.ljust(widths[n]) for n, c in enumerate(cells[:3]))
        return f"{left}  {cells[3].rjust(widths[3])}  {cells[4].rjust(widths[4])}"

    lines += [row(header), *(row(r) for r in rows), ""]
    services = result.by_service()
    name_w = max(len(n) for n in [*services, "total"])
    month_w = max(len(_money(v)) for v in [*services.values(), result.monthly])
    year_w = max(len(_money(12 * v)) for v in [*services.values(), result.monthly])
    lines.append(
        f"{'per service'.ljust(name_w)}  {'monthly'.rjust(month_w)}  {'yearly'.rjust(year_w)}"
    )
    for name, monthly in services.items():
        lines.append(
            f"{name.ljust(name_w)}  {_money(monthly).rjust(month_w)}  "
            f"{_money(12 * monthly).rjust(year_w)}"
        )
    lines.append(
        f"{'total'.ljust(name_w)}  {_money(result.monthly).rjust(month_w)}  "
        f"{_money(result.yearly).rjust(year_w)}"
    )
    lines += ["", "Assumptions:"]
    lines += [f"- {note}" for note in result.assumptions]
    return "\n".join(lines)
