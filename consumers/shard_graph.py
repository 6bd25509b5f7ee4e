"""Which shards may be read now: the parent-before-child rule of resharding. Pure: no I/O.

After a split, a parent's records keyed to a hash range precede the child's records for the same
range; after a merge, *both* parents' records precede the merged child's. Reading a child before
every parent reached its end would hand a visitor's later lines on before their earlier ones (and a
checkpointed child could not be "rewound" for them). So a shard is readable only when each of its
parents is finished: at SHARD_END in the lease table, or gone from ListShards (trimmed after the
retention period, so nothing of it is left to read).

ListShards lists a shard with ``ParentShardId`` (split child, or the merged child's first parent)
and ``AdjacentParentShardId`` (the merged child's second parent). Its ``SequenceNumberRange`` has an
``EndingSequenceNumber`` once the shard is closed.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """One shard as ListShards describes it."""

    shard_id: str
    parent_shard_ids: tuple[str, ...]
    starting_hash_key: str
    ending_hash_key: str
    closed: bool

    @classmethod
    def from_list_shards(cls, shard: Mapping[str, Any]) -> ShardInfo:
        parents = tuple(
            p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p
        )
        hash_range = shard.get("HashKeyRange", {})
        return cls(
            shard_id=shard["ShardId"],
            parent_shard_ids=parents,
            starting_hash_key=str(hash_range.get("StartingHashKey", "")),
            ending_hash_key=str(hash_range.get("EndingHashKey", "")),
            closed="EndingSequenceNumber" in shard.get("SequenceNumberRange", {}),
        )


def shard_infos(shards: Iterable[Mapping[str, Any]]) -> dict[str, ShardInfo]:
    """ListShards' ``Shards`` (all pages) keyed by shard id."""
    return {s["ShardId"]: ShardInfo.from_list_shards(s) for s in shards}


def parents_finished(shard: ShardInfo, known: Collection[str], ended: Collection[str]) -> bool:
    """Every parent of `shard` is at SHARD_END, or no longer listed (`known`: listed shard ids)."""
    return all(p in ended or p not in known for p in shard.parent_shard_ids)


def readable_shards(shards: Mapping[str, ShardInfo], ended: Collection[str]) -> list[str]:
    """Shards to read now: not at SHARD_END themselves, every parent finished. Sorted by id, which
    is creation order in Kinesis (so older shards start first)."""
    return sorted(
        shard_id
        for shard_id, shard in shards.items()
        if shard_id not in ended and parents_finished(shard, shards, ended)
    )


def children_of(shards: Mapping[str, ShardInfo], shard_id: str) -> list[str]:
    """The shards that name `shard_id` as a parent (either kind): what GetRecords' ChildShards
    would say, for endpoints that do not return it (kinesalite)."""
    return sorted(s.shard_id for s in shards.values() if shard_id in s.parent_shard_ids)


def waiting_on(shards: Mapping[str, ShardInfo], ended: Collection[str], shard_id: str) -> list[str]:
    """The parents `shard_id` still waits for (for logs and health: why is this shard idle?)."""
    return [p for p in shards[shard_id].parent_shard_ids if p in shards and p not in ended]
