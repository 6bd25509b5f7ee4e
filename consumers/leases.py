"""The KCL-format lease table in DynamoDB: one row per shard, holding its owner and checkpoint.

The row format is the Kinesis Client Library's (DESIGN.md §4), so KCL tooling can read our table
and a KCL fleet could take over: hash key ``leaseKey`` (the shard id), ``leaseOwner``,
``leaseCounter`` (N), ``checkpoint`` (a sequence number or a sentinel: TRIM_HORIZON, LATEST,
AT_TIMESTAMP, SHARD_END), ``checkpointSubSequenceNumber`` (N), ``ownerSwitchesSinceCheckpoint``
(N), ``parentShardId`` (SS), ``childShardIds`` (SS), ``startingHashKey``, ``endingHashKey``.

Every write that changes a lease's owner or checkpoint is an UpdateItem conditional on the
``leaseCounter`` the caller last saw (and on the owner being us, where that matters), and bumps
the counter, as the KCL does. So a `Lease` value is a *fencing token*: whoever holds the current
counter may write, and a write with a stale one fails with `LeaseLostError` instead of
overwriting another worker's progress. That is all the single-worker consumer needs; the
multi-worker coordinator (renew timers, expiry on the observer's own clock, stealing) is meant to
sit on top of these same verbs (`list_leases`, `take`, `renew`, `evict`).

A checkpoint never moves backwards: the new position is compared with the one in the `Lease` the
caller holds, and the condition on the counter guarantees that this is still the row's value when
the write lands (a compare-and-set, without comparing 128-bit numbers inside DynamoDB, which
orders strings, not numbers).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from botocore.exceptions import ClientError

LEASE_KEY: Final = "leaseKey"
TRIM_HORIZON: Final = "TRIM_HORIZON"
LATEST: Final = "LATEST"
AT_TIMESTAMP: Final = "AT_TIMESTAMP"
SHARD_END: Final = "SHARD_END"
INITIAL_POSITIONS: Final = frozenset({TRIM_HORIZON, LATEST, AT_TIMESTAMP})
SENTINELS: Final = INITIAL_POSITIONS | {SHARD_END}


class LeaseError(Exception):
    """Base of the lease table's errors."""


class LeaseLostError(LeaseError):
    """The row changed since the caller read it (another worker took it, or a write of ours was
    superseded). The caller no longer owns the shard and must stop processing it, without a
    checkpoint (KCL: after "lease lost" a processor may not checkpoint)."""


class CheckpointOrderError(LeaseError, ValueError):
    """A checkpoint below the current one, or after SHARD_END: a caller bug, never retried."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A position in a shard: a sequence number (with the sub-sequence number of a user record of
    a KPL aggregated record; 0 for a plain record), or a sentinel."""

    sequence_number: str
    sub_sequence_number: int = 0

    def __post_init__(self) -> None:
        if self.sequence_number not in SENTINELS and not self.sequence_number.isdigit():
            raise ValueError(f"not a sequence number or sentinel: {self.sequence_number!r}")
        if self.sub_sequence_number < 0:
            raise ValueError("sub-sequence numbers are non-negative")

    @property
    def is_sentinel(self) -> bool:
        return self.sequence_number in SENTINELS

    @property
    def is_shard_end(self) -> bool:
        return self.sequence_number == SHARD_END

    def order_key(self) -> tuple[int, int, int]:
        """Initial positions before every sequence number, SHARD_END after all of them."""
        if self.sequence_number in INITIAL_POSITIONS:
            return (0, 0, 0)
        if self.sequence_number == SHARD_END:
            return (2, 0, 0)
        return (1, int(self.sequence_number), self.sub_sequence_number)


@dataclass(frozen=True, slots=True)
class Lease:
    """One row of the lease table, as last read or written by us."""

    lease_key: str
    lease_owner: str | None
    lease_counter: int
    checkpoint: Checkpoint
    owner_switches_since_checkpoint: int = 0
    parent_shard_ids: frozenset[str] = frozenset()
    child_shard_ids: frozenset[str] = frozenset()
    starting_hash_key: str | None = None
    ending_hash_key: str | None = None

    @property
    def shard_id(self) -> str:
        return self.lease_key

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Lease:
        """A DynamoDB item (low-level attribute-value shape) -> Lease."""

        def s(name: str) -> str | None:
            value = item.get(name)
            return None if value is None else value["S"]

        def n(name: str, default: int = 0) -> int:
            value = item.get(name)
            return default if value is None else int(value["N"])

        def ss(name: str) -> frozenset[str]:
            value = item.get(name)
            return frozenset() if value is None else frozenset(value["SS"])

        return cls(
            lease_key=item[LEASE_KEY]["S"],
            lease_owner=s("leaseOwner"),
            lease_counter=n("leaseCounter"),
            checkpoint=Checkpoint(
                s("checkpoint") or TRIM_HORIZON, n("checkpointSubSequenceNumber")
            ),
            owner_switches_since_checkpoint=n("ownerSwitchesSinceCheckpoint"),
            parent_shard_ids=ss("parentShardId"),
            child_shard_ids=ss("childShardIds"),
            starting_hash_key=s("startingHashKey"),
            ending_hash_key=s("endingHashKey"),
        )


def _is_conditional_failure(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


class LeaseTable:
    """Lease rows of one application (table) as seen by one worker (`owner`).

    The DynamoDB client is injected (an aiobotocore client the caller opened and will close); the
    constructor does no I/O. The table itself is created by setup (`service.resources`).
    """

    def __init__(self, dynamodb: Any, table_name: str, owner: str) -> None:
        if not owner:
            raise ValueError("a worker needs a non-empty owner id")
        self.dynamodb = dynamodb
        self.table_name = table_name
        self.owner = owner

    # ---- reading ------------------------------------------------------------------------------

    async def get(self, shard_id: str) -> Lease | None:
        response = await self.dynamodb.get_item(
            TableName=self.table_name, Key={LEASE_KEY: {"S": shard_id}}, ConsistentRead=True
        )
        item = response.get("Item")
        return None if item is None else Lease.from_item(item)

    async def read_checkpoint(self, shard_id: str) -> Checkpoint | None:
        """Where a reader of `shard_id` resumes (None: no row yet, so the initial position)."""
        lease = await self.get(shard_id)
        return None if lease is None else lease.checkpoint

    async def list_leases(self) -> list[Lease]:
        """Every row (a consistent scan, all pages), sorted by shard id."""
        leases: list[Lease] = []
        kwargs: dict[str, Any] = {"TableName": self.table_name, "ConsistentRead": True}
        while True:
            response = await self.dynamodb.scan(**kwargs)
            leases.extend(Lease.from_item(item) for item in response.get("Items", []))
            last = response.get("LastEvaluatedKey")
            if not last:
                break
            kwargs["ExclusiveStartKey"] = last
        return sorted(leases, key=lambda lease: lease.lease_key)

    # ---- creating -----------------------------------------------------------------------------

    async def create_lease(
        self,
        shard_id: str,
        parent_shard_ids: Iterable[str] = (),
        starting_hash_key: str | None = None,
        ending_hash_key: str | None = None,
        initial_position: str = TRIM_HORIZON,
    ) -> bool:
        """Add an unowned row for a shard if there is none; True if this call added it.

        Conditional on the row being absent, so a row that exists (with its checkpoint and owner)
        is never overwritten, however many workers discover the same shard.
        """
        if initial_position not in INITIAL_POSITIONS:
            raise ValueError(f"initial position must be one of {sorted(INITIAL_POSITIONS)}")
        item: dict[str, Any] = {
            LEASE_KEY: {"S": shard_id},
            "leaseCounter": {"N": "0"},
            "checkpoint": {"S": initial_position},
            "checkpointSubSequenceNumber": {"N": "0"},
            "ownerSwitchesSinceCheckpoint": {"N": "0"},
        }
        parents = sorted(set(parent_shard_ids))
        if parents:  # DynamoDB has no empty sets
            item["parentShardId"] = {"SS": parents}
        if starting_hash_key is not None:
            item["startingHashKey"] = {"S": starting_hash_key}
        if ending_hash_key is not None:
            item["endingHashKey"] = {"S": ending_hash_key}
        try:
            await self.dynamodb.put_item(
                TableName=self.table_name,
                Item=item,
                ConditionExpression="attribute_not_exists(leaseKey)",
            )
        except ClientError as error:
            if _is_conditional_failure(error):
                return False
            raise
        return True

    # ---- owning -------------------------------------------------------------------------------

    async def take(self, lease: Lease) -> Lease:
        """Become the owner of `lease` (unowned, expired, or ours after a restart).

        Conditional on the counter the caller saw: if anyone renewed or took it since, the take
        fails (`LeaseLostError`) rather than racing them.
        """
        switched = lease.lease_owner != self.owner
        return await self._update(
            lease,
            "SET leaseOwner = :me, leaseCounter = :next, ownerSwitchesSinceCheckpoint = :switches",
            {":switches": {"N": str(lease.owner_switches_since_checkpoint + int(switched))}},
            require_owner=False,
        )

    async def renew(self, lease: Lease) -> Lease:
        """Bump the counter of a lease we own, so observers see we are alive."""
        return await self._update(lease, "SET leaseCounter = :next", {})

    async def evict(self, lease: Lease) -> Lease:
        """Give up a lease we own (shutdown): the row stays, unowned, for anyone to take."""
        return await self._update(lease, "SET leaseCounter = :next REMOVE leaseOwner", {})

    async def steal(self, lease: Lease) -> Lease:
        """Take a live lease from its owner (fair-share rebalancing, `consumers.coordinator`).

        A `take` that also requires the row to still name the owner the caller saw, so a
        steal never lands on a lease that changed hands (or was evicted) since the snapshot it
        was decided on. The victim learns of it when its next renew or checkpoint fails.
        """
        if lease.lease_owner is None or lease.lease_owner == self.owner:
            raise ValueError(f"{lease.lease_key}: steal needs a lease another worker owns")
        return await self._update(
            lease,
            "SET leaseOwner = :me, leaseCounter = :next, ownerSwitchesSinceCheckpoint = :switches",
            {
                ":switches": {"N": str(lease.owner_switches_since_checkpoint + 1)},
                ":victim": {"S": lease.lease_owner},
            },
            require_owner=False,
            also_require="leaseOwner = :victim",
        )

    # ---- checkpoints --------------------------------------------------------------------------

    def may_write(self, shard_id: str) -> bool:
        """May a commit of `shard_id` start its side effects (S3, CloudWatch) now? A plain
        table cannot know before the conditional checkpoint, so yes; the coordinator's table
        (`consumers.coordinator.CoordinatedLeaseTable`) answers from its fence."""
        return True

    async def checkpoint(
        self, lease: Lease, sequence_number: str, sub_sequence_number: int
    ) -> Lease:
        """Record that everything up to and including (sequence, sub-sequence) is durable.

        Refuses (`CheckpointOrderError`) a position below the lease's current checkpoint or a
        checkpoint after SHARD_END; checkpointing the current position again is allowed (a retry
        after a lost response).
        """
        target = Checkpoint(sequence_number, sub_sequence_number)
        if target.is_sentinel:
            raise CheckpointOrderError(
                "checkpoint a sequence number here; SHARD_END through mark_shard_end"
            )
        self._check_forward(lease, target)
        return await self._update(
            lease,
            "SET checkpoint = :checkpoint, checkpointSubSequenceNumber = :sub, "
            "ownerSwitchesSinceCheckpoint = :zero, leaseCounter = :next",
            {
                ":checkpoint": {"S": sequence_number},
                ":sub": {"N": str(sub_sequence_number)},
                ":zero": {"N": "0"},
            },
        )

    async def mark_shard_end(self, lease: Lease, child_shard_ids: Iterable[str]) -> Lease:
        """The shard was read to its end and everything in it is durable: checkpoint SHARD_END
        and record its children (what lets a child start, DESIGN.md §4)."""
        children = sorted(set(child_shard_ids))
        self._check_forward(lease, Checkpoint(SHARD_END))
        expression = (
            "SET checkpoint = :checkpoint, checkpointSubSequenceNumber = :zero, "
            "ownerSwitchesSinceCheckpoint = :zero, leaseCounter = :next"
        )
        values: dict[str, Any] = {":checkpoint": {"S": SHARD_END}, ":zero": {"N": "0"}}
        if children:
            expression += ", childShardIds = :children"
            values[":children"] = {"SS": children}
        return await self._update(lease, expression, values)

    # ---- internals ----------------------------------------------------------------------------

    @staticmethod
    def _check_forward(lease: Lease, target: Checkpoint) -> None:
        current = lease.checkpoint
        if current.is_shard_end and not target.is_shard_end:
            raise CheckpointOrderError(f"{lease.lease_key} is at SHARD_END; nothing follows it")
        if target.order_key() < current.order_key():
            raise CheckpointOrderError(
                f"{lease.lease_key}: checkpoint {target} is below the current {current}"
            )

    async def _update(
        self,
        lease: Lease,
        update_expression: str,
        values: dict[str, Any],
        *,
        require_owner: bool = True,
        also_require: str | None = None,
    ) -> Lease:
        """One conditional UpdateItem: the counter is still the caller's (and, unless taking, the
        owner is us; and `also_require`, if given); the counter goes up by one. Returns the row
        as written."""
        condition = "leaseCounter = :expected"
        if also_require:
            condition += f" AND {also_require}"
        values = {
            **values,
            ":expected": {"N": str(lease.lease_counter)},
            ":next": {"N": str(lease.lease_counter + 1)},
        }
        if require_owner:
            condition += " AND leaseOwner = :me"
        if require_owner or ":me" in update_expression:
            values[":me"] = {"S": self.owner}
        try:
            response = await self.dynamodb.update_item(
                TableName=self.table_name,
                Key={LEASE_KEY: {"S": lease.lease_key}},
                UpdateExpression=update_expression,
                ConditionExpression=f"attribute_exists(leaseKey) AND {condition}",
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        except ClientError as error:
            if _is_conditional_failure(error):
                raise LeaseLostError(
                    f"lease {lease.lease_key} changed since counter {lease.lease_counter} "
                    f"(owner {lease.lease_owner!r}); {self.owner!r} no longer holds it"
                ) from None
            raise
        return Lease.from_item(response["Attributes"])
