"""The kinesalite fixtures: loopback only, real aiobotocore calls, a clean server per test."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from service.aws import aws_client
from tests.conftest import ServerProcess

pytestmark = pytest.mark.integration


def _non_loopback_address() -> str | None:
    """An address of this host other than 127.x, if it has one (to prove we did not bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for a UDP connect
        except OSError:
            return None
        address = str(sock.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


async def wait_active(kinesis: Any, stream: str) -> None:
    """createStreamMs=0 makes a stream ACTIVE on kinesalite's next tick, not within the call, and
    a stream still CREATING refuses records ("not found"); a loaded machine shows the gap."""
    for _ in range(1000):
        summary = (await kinesis.describe_stream_summary(StreamName=stream))[
            "StreamDescriptionSummary"
        ]
        if summary["StreamStatus"] == "ACTIVE":
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{stream} is still {summary['StreamStatus']}")


async def test_create_stream_and_list_shards(kinesalite: str) -> None:
    async with aws_client("kinesis") as kinesis:
        assert kinesis.meta.endpoint_url == kinesalite
        await kinesis.create_stream(StreamName="probe", ShardCount=3)
        await wait_active(kinesis, "probe")
        shards = (await kinesis.list_shards(StreamName="probe"))["Shards"]
    assert [s["ShardId"] for s in shards] == [
        "shardId-000000000000",
        "shardId-000000000001",
        "shardId-000000000002",
    ]


async def test_each_test_starts_without_streams(kinesalite: str) -> None:
    """Runs after the test above (file order): its stream is gone."""
    async with aws_client("kinesis") as kinesis:
        assert (await kinesis.list_streams())["StreamNames"] == []
        await kinesis.create_stream(StreamName="probe", ShardCount=1)  # the name is free again


async def test_only_kinesis_goes_to_kinesalite(kinesalite: str, aws: str) -> None:
    """With both fixtures, Kinesis goes to kinesalite and everything else to moto."""
    async with aws_client("kinesis") as kinesis, aws_client("s3") as s3:
        assert kinesis.meta.endpoint_url == kinesalite
        assert s3.meta.endpoint_url == aws
        await kinesis.create_stream(StreamName="probe", ShardCount=1)
        await s3.create_bucket(Bucket="probe")


def test_bound_to_loopback_only(kinesalite_endpoint: str) -> None:
    port = urlsplit(kinesalite_endpoint).port
    assert urlsplit(kinesalite_endpoint).hostname == "127.0.0.1"
    other = _non_loopback_address()
    if other is None:
        pytest.skip("this host has no non-loopback IPv4 address to probe")
    with pytest.raises(OSError), socket.create_connection((other, port), timeout=1):
        pass


async def test_factory_persists_streams_across_restarts(
    kinesalite_factory: Callable[..., ServerProcess],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    data = tmp_path / "kinesalite-data"
    first = kinesalite_factory(data)
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", f"http://127.0.0.1:{first.value}")
    async with aws_client("kinesis") as kinesis:
        await kinesis.create_stream(StreamName="durable", ShardCount=1)
        await wait_active(kinesis, "durable")
        await kinesis.put_record(StreamName="durable", Data=b"kept", PartitionKey="k")
    assert first.stop() == 0

    second = kinesalite_factory(data)
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", f"http://127.0.0.1:{second.value}")
    async with aws_client("kinesis") as kinesis:
        iterator = (
            await kinesis.get_shard_iterator(
                StreamName="durable",
                ShardId="shardId-000000000000",
                ShardIteratorType="TRIM_HORIZON",
            )
        )["ShardIterator"]
        records = (await kinesis.get_records(ShardIterator=iterator))["Records"]
    assert [r["Data"] for r in records] == [b"kept"]
