"""LeaseTable against moto's DynamoDB: KCL attribute names, conditional writes, no going back."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from consumers.leases import (
    SHARD_END,
    TRIM_HORIZON,
    Checkpoint,
    CheckpointOrderError,
    Lease,
    LeaseLostError,
    LeaseTable,
)
from service.aws import aws_client
from service.resources import ensure_lease_table

pytestmark = pytest.mark.integration

TABLE = "test-leases"
SEQ_1 = "49590338271490256608559692538361571095921575989136588801"
SEQ_2 = "49590338271490256608559692538361571095921575989136588999"


@pytest.fixture
async def dynamodb(aws: str) -> AsyncIterator[Any]:
    async with aws_client("dynamodb") as client:
        await ensure_lease_table(client, TABLE)
        yield client


@pytest.fixture
def table(dynamodb: Any) -> LeaseTable:
    return LeaseTable(dynamodb, TABLE, owner="worker-a")


async def raw_item(dynamodb: Any, shard_id: str) -> dict[str, Any]:
    response = await dynamodb.get_item(
        TableName=TABLE, Key={"leaseKey": {"S": shard_id}}, ConsistentRead=True
    )
    return response["Item"]


async def test_new_lease_row_has_the_kcl_attributes(table: LeaseTable, dynamodb: Any) -> None:
    assert await table.create_lease(
        "shardId-000000000003",
        parent_shard_ids=["shardId-000000000002", "shardId-000000000001"],
        starting_hash_key="0",
        ending_hash_key="340282366920938463463374607431768211455",
    )
    assert await raw_item(dynamodb, "shardId-000000000003") == {
        "leaseKey": {"S": "shardId-000000000003"},
        "leaseCounter": {"N": "0"},
        "checkpoint": {"S": "TRIM_HORIZON"},
        "checkpointSubSequenceNumber": {"N": "0"},
        "ownerSwitchesSinceCheckpoint": {"N": "0"},
        "parentShardId": {"SS": ["shardId-000000000001", "shardId-000000000002"]},
        "startingHashKey": {"S": "0"},
        "endingHashKey": {"S": "340282366920938463463374607431768211455"},
    }
    lease = await table.get("shardId-000000000003")
    assert lease is not None and lease.lease_owner is None
    assert lease.parent_shard_ids == {"shardId-000000000001", "shardId-000000000002"}


async def test_create_never_overwrites_an_existing_row(table: LeaseTable) -> None:
    assert await table.create_lease("shardId-0")
    lease = await table.take(await _get(table, "shardId-0"))
    lease = await table.checkpoint(lease, SEQ_1, 4)
    assert not await table.create_lease("shardId-0")
    again = await _get(table, "shardId-0")
    assert again.checkpoint == Checkpoint(SEQ_1, 4) and again.lease_owner == "worker-a"


async def test_take_checkpoint_and_shard_end(table: LeaseTable, dynamodb: Any) -> None:
    await table.create_lease("shardId-0")
    lease = await table.take(await _get(table, "shardId-0"))
    assert (lease.lease_owner, lease.lease_counter, lease.owner_switches_since_checkpoint) == (
        "worker-a",
        1,
        1,
    )
    lease = await table.checkpoint(lease, SEQ_1, 7)
    assert lease.checkpoint == Checkpoint(SEQ_1, 7)
    assert lease.owner_switches_since_checkpoint == 0
    assert lease.lease_counter == 2
    lease = await table.renew(lease)
    assert lease.lease_counter == 3
    lease = await table.mark_shard_end(lease, ["shardId-2", "shardId-1"])
    item = await raw_item(dynamodb, "shardId-0")
    assert item["checkpoint"] == {"S": SHARD_END}
    assert item["checkpointSubSequenceNumber"] == {"N": "0"}
    assert set(item["childShardIds"]["SS"]) == {"shardId-1", "shardId-2"}
    assert lease.checkpoint.is_shard_end


async def test_checkpoint_never_goes_backwards(table: LeaseTable) -> None:
    await table.create_lease("shardId-0")
    lease = await table.take(await _get(table, "shardId-0"))
    lease = await table.checkpoint(lease, SEQ_2, 3)
    for seq, sub in ((SEQ_1, 900), (SEQ_2, 2)):
        with pytest.raises(CheckpointOrderError):
            await table.checkpoint(lease, seq, sub)
    # The same position again (a retry after a lost response) is fine; sub-sequence order counts.
    lease = await table.checkpoint(lease, SEQ_2, 3)
    lease = await table.checkpoint(lease, SEQ_2, 4)
    assert await table.read_checkpoint("shardId-0") == Checkpoint(SEQ_2, 4)
    assert await table.read_checkpoint("shardId-unknown") is None
    lease = await table.mark_shard_end(lease, [])
    with pytest.raises(CheckpointOrderError):
        await table.checkpoint(lease, SEQ_2, 5)
    with pytest.raises(CheckpointOrderError):
        await table.checkpoint(lease, TRIM_HORIZON, 0)


async def test_a_stale_lease_cannot_write(table: LeaseTable, dynamodb: Any) -> None:
    """A second worker took the lease: the first one's checkpoint and renew fail, its progress
    does not overwrite the new owner's."""
    await table.create_lease("shardId-0")
    mine = await table.take(await _get(table, "shardId-0"))
    other = LeaseTable(dynamodb, TABLE, owner="worker-b")
    theirs = await other.take(await _get(table, "shardId-0"))
    assert theirs.lease_owner == "worker-b" and theirs.owner_switches_since_checkpoint == 2
    theirs = await other.checkpoint(theirs, SEQ_1, 0)
    with pytest.raises(LeaseLostError):
        await table.checkpoint(mine, SEQ_2, 0)
    with pytest.raises(LeaseLostError):
        await table.renew(mine)
    with pytest.raises(LeaseLostError):
        await table.take(mine)  # counter moved on: taking needs a fresh read
    assert (await _get(table, "shardId-0")).checkpoint == Checkpoint(SEQ_1, 0)


async def test_owner_condition_holds_even_with_the_right_counter(
    table: LeaseTable, dynamodb: Any
) -> None:
    await table.create_lease("shardId-0")
    theirs = await LeaseTable(dynamodb, TABLE, owner="worker-b").take(
        await _get(table, "shardId-0")
    )
    with pytest.raises(LeaseLostError):
        await table.checkpoint(theirs, SEQ_1, 0)  # not ours, though the counter is current


async def test_evict_leaves_an_unowned_row_with_its_checkpoint(table: LeaseTable) -> None:
    await table.create_lease("shardId-0")
    lease = await table.take(await _get(table, "shardId-0"))
    lease = await table.checkpoint(lease, SEQ_1, 1)
    lease = await table.evict(lease)
    assert lease.lease_owner is None and lease.checkpoint == Checkpoint(SEQ_1, 1)
    again = await table.take(lease)  # after a restart, the same worker takes it back
    assert again.lease_owner == "worker-a"


async def test_steal_needs_the_owner_and_counter_it_was_decided_on(
    table: LeaseTable, dynamodb: Any
) -> None:
    await table.create_lease("shardId-0")
    other = LeaseTable(dynamodb, TABLE, owner="worker-b")
    theirs = await other.take(await _get(table, "shardId-0"))
    with pytest.raises(ValueError):
        await other.steal(theirs)  # one's own lease is renewed, not stolen
    stolen = await table.steal(theirs)
    assert (stolen.lease_owner, stolen.lease_counter) == ("worker-a", theirs.lease_counter + 1)
    assert stolen.owner_switches_since_checkpoint == theirs.owner_switches_since_checkpoint + 1
    with pytest.raises(LeaseLostError):
        await other.renew(theirs)  # the victim learns on its next write
    # Evicted since the snapshot, with the same counter it was decided on plus one: no steal.
    evicted = await table.evict(stolen)
    with pytest.raises(LeaseLostError):
        await other.steal(dataclasses.replace(evicted, lease_owner="worker-a"))
    with pytest.raises(ValueError):
        await other.steal(evicted)  # unowned: that is a take
    assert (await _get(table, "shardId-0")).lease_owner is None


async def test_list_leases_reads_every_row(table: LeaseTable) -> None:
    ids = [f"shardId-{i:012d}" for i in range(30)]
    for shard_id in reversed(ids):
        await table.create_lease(shard_id)
    leases = await table.list_leases()
    assert [lease.lease_key for lease in leases] == ids
    assert all(lease.checkpoint == Checkpoint(TRIM_HORIZON) for lease in leases)


def test_checkpoint_order() -> None:
    low, high = Checkpoint(SEQ_1, 10), Checkpoint(SEQ_2, 0)
    assert Checkpoint(TRIM_HORIZON).order_key() < low.order_key() < high.order_key()
    assert high.order_key() < Checkpoint(SHARD_END).order_key()
    assert Checkpoint("9", 0).order_key() < Checkpoint("10", 0).order_key()  # numbers, not text
    with pytest.raises(ValueError):
        Checkpoint("12a")


async def _get(table: LeaseTable, shard_id: str) -> Lease:
    lease = await table.get(shard_id)
    assert lease is not None
    return lease
