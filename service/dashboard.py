"""The CloudWatch dashboard that the café owner opens: the course lab's four rankings and more.

The lab built its rankings with Logs Insights queries over raw log lines; we rank published
metrics instead, with metric-math `SEARCH` (every per-place series of one metric) and `SORT`
(largest first, top N). That keeps the dashboard cheap to view (no log scanning) and makes it
pick up new cities by itself. Metric names come from `consumers.metric_names`, shared with the
sink that publishes them.
"""

from __future__ import annotations

import re
from typing import Any

from consumers import metric_names as m
from service.settings import Settings

RANKED = 10  # rows in each top-N widget
PERIOD_S = 300
ATTRIBUTION = "IP geolocation by DB-IP (https://db-ip.com), CC BY 4.0"

LAB_WIDGET_TITLES = (
    "Cities viewing the menu most",
    "Cities placing the most orders",
    "Regions visiting most",
    "Regions ordering most",
)

_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_/.\-]+$")


def _quote(name: str) -> str:
    """SEARCH schema names need double quotes when they contain spaces or other punctuation."""
    return name if _PLAIN_NAME.match(name) else '"' + name.replace('"', '\\"') + '"'


def _ranking(namespace: str, metric: str, dimensions: tuple[str, ...], place: str) -> str:
    """Top N places by one metric, the catch-all "Other" series left out of the ranking."""
    schema = ",".join(_quote(n) for n in (namespace, *dimensions))
    search = f'{{{schema}}} MetricName="{metric}" NOT {place}="{m.OTHER}"'
    return f"SORT(SEARCH('{search}', 'Sum', {PERIOD_S}), SUM, DESC, {RANKED})"


def _widget(x: int, y: int, w: int, h: int, properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "metric", "x": x, "y": y, "width": w, "height": h, "properties": properties}


def _ranking_widget(
    settings: Settings,
    region: str,
    title: str,
    metric: str,
    dimensions: tuple[str, ...],
    place: str,
    at: tuple[int, int],
) -> dict[str, Any]:
    expression = _ranking(settings.metrics_namespace, metric, dimensions, place)
    return _widget(
        *at,
        12,
        7,
        {
            "title": title,
            "region": region,
            "view": "bar",
            "stacked": False,
            "setPeriodToTimeRange": True,
            "metrics": [[{"expression": expression, "id": "ranked", "label": ""}]],
            "yAxis": {"left": {"min": 0, "showUnits": False}},
        },
    )


def dashboard_body(settings: Settings, region: str) -> dict[str, Any]:
    """The dashboard as a dict; PutDashboard takes it JSON-encoded."""
    ns = settings.metrics_namespace
    headline = _widget(
        0,
        0,
        24,
        4,
        {
            "title": "Café visitors (selected time range)",
            "region": region,
            "view": "singleValue",
            "stat": "Sum",
            "period": PERIOD_S,
            "setPeriodToTimeRange": True,
            "sparkline": True,
            "metrics": [
                [ns, m.VISITORS, {"label": "Visitors"}],
                [ns, m.MENU_VIEWERS, {"label": "Menu viewers"}],
                [ns, m.PURCHASERS, {"label": "Purchasers"}],
                [ns, m.PAGE_VIEWS, {"label": "Page views"}],
            ],
        },
    )
    rankings = [
        _ranking_widget(
            settings,
            region,
            LAB_WIDGET_TITLES[0],
            m.MENU_VIEWERS,
            m.CITY_DIMENSIONS,
            m.CITY,
            (0, 4),
        ),
        _ranking_widget(
            settings, region, LAB_WIDGET_TITLES[1], m.PURCHASERS, m.CITY_DIMENSIONS, m.CITY, (12, 4)
        ),
        _ranking_widget(
            settings,
            region,
            LAB_WIDGET_TITLES[2],
            m.VISITORS,
            m.REGION_DIMENSIONS,
            m.REGION,
            (0, 11),
        ),
        _ranking_widget(
            settings,
            region,
            LAB_WIDGET_TITLES[3],
            m.PURCHASERS,
            m.REGION_DIMENSIONS,
            m.REGION,
            (12, 11),
        ),
    ]
    funnel = _widget(
        0,
        18,
        12,
        6,
        {
            "title": "Funnel: visit → menu → purchase",
            "region": region,
            "view": "timeSeries",
            "stacked": False,
            "stat": "Sum",
            "period": PERIOD_S,
            "metrics": [
                [ns, m.VISITORS, {"id": "visitors", "label": "Visitors"}],
                [ns, m.MENU_VIEWERS, {"id": "menu", "label": "Menu viewers"}],
                [ns, m.PURCHASERS, {"id": "buyers", "label": "Purchasers"}],
            ],
            "yAxis": {"left": {"min": 0, "showUnits": False}},
        },
    )
    conversion = _widget(
        12,
        18,
        12,
        6,
        {
            "title": "Conversion (selected time range)",
            "region": region,
            "view": "singleValue",
            "stat": "Sum",
            "period": PERIOD_S,
            "setPeriodToTimeRange": True,
            "metrics": [
                [
                    {
                        "expression": "100 * menu / visitors",
                        "label": "Visitors who opened the menu %",
                    }
                ],
                [{"expression": "100 * buyers / visitors", "label": "Visitors who ordered %"}],
                [{"expression": "100 * buyers / menu", "label": "Menu viewers who ordered %"}],
                [ns, m.VISITORS, {"id": "visitors", "visible": False}],
                [ns, m.MENU_VIEWERS, {"id": "menu", "visible": False}],
                [ns, m.PURCHASERS, {"id": "buyers", "visible": False}],
            ],
        },
    )
    throughput = _widget(
        0,
        24,
        12,
        6,
        {
            "title": "Pipeline: records, rejected lines, archive failures",
            "region": region,
            "view": "timeSeries",
            "stacked": False,
            "stat": "Sum",
            "period": 60,
            "metrics": [
                [ns, m.RECORDS_PROCESSED, {"label": "Lines processed"}],
                [ns, m.REJECTED_LINES, {"label": "Rejected lines"}],
                [ns, m.ARCHIVE_FAILURES, {"label": "Archive failures"}],
            ],
            "yAxis": {"left": {"min": 0, "showUnits": False}},
        },
    )
    lag = _widget(
        12,
        24,
        12,
        6,
        {
            "title": "Pipeline: consumer lag (iterator age)",
            "region": region,
            "view": "timeSeries",
            "stacked": False,
            "stat": "Maximum",
            "period": 60,
            "metrics": [
                [ns, m.ITERATOR_AGE, {"label": "Consumer (ms behind latest)"}],
                [
                    "AWS/Kinesis",
                    "GetRecords.IteratorAgeMilliseconds",
                    "StreamName",
                    settings.stream,
                    {"label": f"Kinesis {settings.stream} (ms)"},
                ],
            ],
            "yAxis": {"left": {"min": 0}},
        },
    )
    footer = {
        "type": "text",
        "x": 0,
        "y": 30,
        "width": 24,
        "height": 2,
        "properties": {
            "markdown": (
                f"Stream `{settings.stream}` · archive `s3://{settings.bucket}` · namespace "
                f"`{ns}`. Cities and regions outside the top ones are summed as "
                f'"{m.OTHER}"; the archive keeps every city.\n\n{ATTRIBUTION}'
            )
        },
    }
    return {
        "start": "-PT6H",
        "periodOverride": "inherit",
        "widgets": [headline, *rankings, funnel, conversion, throughput, lag, footer],
    }
