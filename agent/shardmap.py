"""Which open shard a partition key lands on, computed locally the way Kinesis does.

Kinesis routes a record by md5(partition key) read as a 128-bit big-endian integer, to the open
shard whose HashKeyRange covers it. Knowing that here lets the agent aggregate lines per target
shard (a KCL consumer drops sub-records whose key is outside its shard's range) and keep one put in
flight per shard. The map is a snapshot of ListShards: it goes stale on a reshard, which the
shipper notices (a put lands on a shard we did not predict) and answers by loading a new one.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_HASH_KEY = (1 << 128) - 1


def hash_key(partition_key: str) -> int:
    """The 128-bit hash key Kinesis derives from a partition key."""
    return int.from_bytes(hashlib.md5(partition_key.encode()).digest(), "big")


@dataclass(frozen=True, slots=True)
class Shard:
    shard_id: str
    starting_hash_key: int
    ending_hash_key: int

    @property
    def explicit_hash_key(self) -> str:
        """A hash key inside this shard, sent with aggregated records so Kinesis puts them here.

        The starting key is always inside the range, whatever its width.
        """
        return str(self.starting_hash_key)

    def covers(self, key: int) -> bool:
        return self.starting_hash_key <= key <= self.ending_hash_key


class ShardMapError(ValueError):
    """ListShards returned open shards that do not tile the hash key space."""


class ShardMap:
    """An immutable lookup from hash key to open shard. Build a new one to refresh."""

    __slots__ = ("_starts", "shards")

    def __init__(self, shards: Iterable[Shard]) -> None:
        ordered = sorted(shards, key=lambda s: s.starting_hash_key)
        if not ordered:
            raise ShardMapError("the stream has no open shard")
        expected = 0
        for shard in ordered:
            if shard.starting_hash_key != expected:
                # A gap or an overlap: a reshard is half done in this snapshot. Reload later.
                raise ShardMapError(
                    f"open shards do not tile the hash key space at {expected} ({shard.shard_id})"
                )
            expected = shard.ending_hash_key + 1
        if expected != MAX_HASH_KEY + 1:
            raise ShardMapError("open shards do not reach the top of the hash key space")
        self.shards: tuple[Shard, ...] = tuple(ordered)
        self._starts = [s.starting_hash_key for s in ordered]

    @classmethod
    def from_list_shards(cls, shards: Iterable[Mapping[str, Any]]) -> ShardMap:
        """Open shards (no EndingSequenceNumber) from ListShards' `Shards` entries."""
        return cls(
            Shard(
                shard_id=s["ShardId"],
                starting_hash_key=int(s["HashKeyRange"]["StartingHashKey"]),
                ending_hash_key=int(s["HashKeyRange"]["EndingHashKey"]),
            )
            for s in shards
            if "EndingSequenceNumber" not in s.get("SequenceNumberRange", {})
        )

    def index_of_key(self, key: int) -> int:
        """Position in `shards` of the shard covering hash key `key`."""
        return bisect.bisect_right(self._starts, key) - 1

    def shard_for(self, partition_key: str) -> Shard:
        return self.shards[self.index_of_key(hash_key(partition_key))]

    @property
    def shard_ids(self) -> frozenset[str]:
        return frozenset(s.shard_id for s in self.shards)

    def __len__(self) -> int:
        return len(self.shards)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ShardMap) and self.shards == other.shards

    def __hash__(self) -> int:
        return hash(self.shards)

    def __repr__(self) -> str:
        return f"ShardMap({[s.shard_id for s in self.shards]})"
