"""Helpers for the agent's tests (not fixtures: the stack fixtures live in tests/conftest.py)."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

from aws_kinesis_agg.deaggregator import iter_deaggregate_records
from hypothesis import strategies as st

from agent.shardmap import MAX_HASH_KEY, Shard, ShardMap

# Log lines as the agent meets them, for property tests on both sides of the stream: the
# agent packs them (tests/agent/test_records.py), the consumer unpacks them
# (tests/consumers/test_decode.py).
ips = st.ip_addresses().map(str)
combined_lines = st.builds(
    lambda ip, path: f'{ip} - - [22/Feb/2023:03:38:18 +0000] "GET {path} HTTP/1.1" 200 5'.encode(),
    ips,
    st.sampled_from(["/cafe", "/cafe/menu.php", "/cafe/processOrder.php"]),
)
lab_json_lines = st.builds(
    lambda ip: f'{{"time": "2023-02-22 03:38:18", "remoteIP": "{ip}"}}'.encode(), ips
)
junk_lines = st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"\t"))


def even_map(n: int, prefix: str = "shardId-") -> ShardMap:
    """Shards the way CreateStream splits the key space."""
    width = (MAX_HASH_KEY + 1) // n
    shards = []
    for i in range(n):
        end = MAX_HASH_KEY if i == n - 1 else (i + 1) * width - 1
        shards.append(Shard(f"{prefix}{i:012d}", i * width, end))
    return ShardMap(shards)


def deaggregate(records: Iterable[dict[str, Any]]) -> list[tuple[str, bytes]]:
    """(partition key, data) of every user record, through aws-kinesis-agg's own deaggregator.

    `records` are boto3-shaped (`Data`, `PartitionKey`, ...), as GetRecords returns them.
    """
    shaped = [
        {
            "Data": r["Data"],
            "PartitionKey": r["PartitionKey"],
            "SequenceNumber": r.get("SequenceNumber", "0"),
            "ApproximateArrivalTimestamp": r.get("ApproximateArrivalTimestamp", 0),
        }
        for r in records
    ]
    out = []
    for user in iter_deaggregate_records(shaped, data_format="Boto3"):
        kinesis = user["kinesis"]
        data = kinesis["data"]
        if kinesis.get("aggregated"):
            data = base64.b64decode(data)
        out.append((kinesis["partitionKey"], data))
    return out
