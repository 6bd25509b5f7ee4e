"""`CallWatch` on real aiobotocore clients: failing spells start at the first failure after a
success and end at the next success; GetRecords is traced to its shard through the iterators.

Failures come from an endpoint that refuses connections (nothing listens on it); successes from
moto (`aws`). Nothing is faked: the watch sees botocore's own events for real calls.
"""

from __future__ import annotations

import socket

import pytest
from botocore.exceptions import EndpointConnectionError

from service import aws as service_aws
from service.aws import aws_client
from service.call_watch import CallWatch


def _refusing_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"  # closed again: nothing listens


async def test_a_failing_spell_starts_at_the_first_failure_and_counts_every_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", _refusing_endpoint())
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    service_aws.reset_session()
    clock = [100.0]
    watch = CallWatch(clock=lambda: clock[0])
    async with aws_client("s3", retries={"mode": "standard", "max_attempts": 1}) as s3:
        watch.attach(s3)
        for now in (100.0, 130.0):
            clock[0] = now
            with pytest.raises(EndpointConnectionError):
                await s3.put_object(Bucket="b", Key="k", Body=b"x")
    health = watch.operation(("s3", "PutObject"))
    assert (health.calls, health.failures) == (2, 2)
    assert health.failing_since == 100.0, "the spell started at the first failure"
    assert health.failing_for(160.0) == 60.0
    assert health.last_ok is None
    assert "EndpointConnectionError" in (health.last_error or "")
    assert watch.operation(("cloudwatch", "PutMetricData")).failing_for(160.0) == 0.0


@pytest.mark.integration
async def test_success_ends_the_spell_and_get_records_is_traced_to_its_shard(aws: str) -> None:
    watch = CallWatch()
    async with aws_client("kinesis") as kinesis, aws_client("s3") as s3:
        watch.attach(kinesis)
        watch.attach(s3)
        with pytest.raises(s3.exceptions.NoSuchBucket):
            await s3.put_object(Bucket="missing", Key="k", Body=b"x")
        assert watch.operation(("s3", "PutObject")).failing_since is not None
        await s3.create_bucket(Bucket="present")
        await s3.put_object(Bucket="present", Key="k", Body=b"x")
        health = watch.operation(("s3", "PutObject"))
        assert health.failing_since is None and health.last_ok is not None
        assert (health.calls, health.failures) == (2, 1)

        await kinesis.create_stream(StreamName="s", ShardCount=2)
        await kinesis.get_waiter("stream_exists").wait(StreamName="s")
        shards = [s["ShardId"] for s in (await kinesis.list_shards(StreamName="s"))["Shards"]]
        iterator = (
            await kinesis.get_shard_iterator(
                StreamName="s", ShardId=shards[1], ShardIteratorType="TRIM_HORIZON"
            )
        )["ShardIterator"]
        for _ in range(2):  # the second call uses the NextShardIterator of the first
            iterator = (await kinesis.get_records(ShardIterator=iterator))["NextShardIterator"]
        assert set(watch.last_fetches()) == {shards[1]}

    # An answer that is part of normal work (a conditional write that lost) is no failure.
    async with aws_client("dynamodb") as dynamodb:
        watch.attach(dynamodb)
        await dynamodb.create_table(
            TableName="t",
            KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        item = {"TableName": "t", "Item": {"k": {"S": "a"}}}
        condition = "attribute_not_exists(k)"
        await dynamodb.put_item(**item, ConditionExpression=condition)
        with pytest.raises(dynamodb.exceptions.ConditionalCheckFailedException):
            await dynamodb.put_item(**item, ConditionExpression=condition)
    put = watch.operation(("dynamodb", "PutItem"))
    assert (put.calls, put.failures, put.failing_since) == (2, 0, None)
