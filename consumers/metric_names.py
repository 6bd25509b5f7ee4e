"""CloudWatch metric and dimension names: the contract between the metrics sink and the dashboard.

Both sides import these names, so a rename cannot silently leave the dashboard empty. The
namespace is configuration (`CLICKSTREAM_METRICS_NAMESPACE`), not a constant here.

Cost shapes the schema (DESIGN.md §8): every distinct name+dimensions combination is a billed
metric, so per-place metrics exist only for the top N cities (and regions); everything else is
folded into `OTHER` for every dimension value of that series. The full per-city breakdown lives
in the S3 archive, not in CloudWatch.

Series published:

- totals: every metric below with no dimensions;
- per city: `PAGE_VIEWS`, `VISITORS`, `MENU_VIEWERS`, `PURCHASERS` with `CITY_DIMENSIONS`
  (a city name alone is ambiguous: Portland, Oregon and Portland, Maine);
- per region: the same four with `REGION_DIMENSIONS`.

`VISITORS`, `MENU_VIEWERS` and `PURCHASERS` are published as increments: a visitor counts once,
in the minute in which they reach that funnel stage for the first time in 24 hours, so the
dashboard's `Sum` over any range up to a day is the number of distinct visitors who reached the
stage in it (what `/api/summary` and the ground truth report).
"""

from __future__ import annotations

from typing import Final

# Funnel and traffic (Unit: Count).
PAGE_VIEWS: Final = "PageViews"
VISITORS: Final = "Visitors"
MENU_VIEWERS: Final = "MenuViewers"
PURCHASERS: Final = "Purchasers"

# Pipeline health.
RECORDS_PROCESSED: Final = "RecordsProcessed"  # Count: log lines decoded from Kinesis
REJECTED_LINES: Final = "RejectedLines"  # Count: lines that did not parse (archived as rejects)
ITERATOR_AGE: Final = "IteratorAgeMilliseconds"  # Milliseconds: max MillisBehindLatest
ARCHIVE_FAILURES: Final = "ArchiveFailures"  # Count: S3 writes that failed (then retried)

FUNNEL_METRICS: Final = (VISITORS, MENU_VIEWERS, PURCHASERS)

# Dimensions.
CITY: Final = "City"
REGION: Final = "Region"
COUNTRY: Final = "Country"

CITY_DIMENSIONS: Final = (COUNTRY, REGION, CITY)
REGION_DIMENSIONS: Final = (COUNTRY, REGION)

# The value of every dimension of the series that sums all places outside the top N.
OTHER: Final = "Other"
OTHER_CITY: Final = OTHER
