"""shard_graph: a child is readable only once every parent (both of a merge) is at SHARD_END."""

from __future__ import annotations

from typing import Any

from consumers.shard_graph import (
    ShardInfo,
    children_of,
    readable_shards,
    shard_infos,
    waiting_on,
)

TOP = str(2**128 - 1)
HALF = str(2**127)


def shard(
    n: int,
    start: str = "0",
    end: str = TOP,
    parent: int | None = None,
    adjacent: int | None = None,
    closed: bool = False,
) -> dict[str, Any]:
    """A ListShards entry as Kinesis returns it."""
    entry: dict[str, Any] = {
        "ShardId": f"shardId-{n:012d}",
        "HashKeyRange": {"StartingHashKey": start, "EndingHashKey": end},
        "SequenceNumberRange": {"StartingSequenceNumber": "1"},
    }
    if parent is not None:
        entry["ParentShardId"] = f"shardId-{parent:012d}"
    if adjacent is not None:
        entry["AdjacentParentShardId"] = f"shardId-{adjacent:012d}"
    if closed:
        entry["SequenceNumberRange"]["EndingSequenceNumber"] = "9"
    return entry


def sid(n: int) -> str:
    return f"shardId-{n:012d}"


# 0 split into 1 and 2; then 1 and 2 merged into 3.
SPLIT_THEN_MERGE = shard_infos(
    [
        shard(0, closed=True),
        shard(1, "0", str(2**127 - 1), parent=0, closed=True),
        shard(2, HALF, TOP, parent=0, closed=True),
        shard(3, parent=1, adjacent=2),
    ]
)


def test_list_shards_entry_is_read_with_both_parents() -> None:
    merged = SPLIT_THEN_MERGE[sid(3)]
    assert merged == ShardInfo(sid(3), (sid(1), sid(2)), "0", TOP, closed=False)
    assert SPLIT_THEN_MERGE[sid(0)].parent_shard_ids == ()
    assert SPLIT_THEN_MERGE[sid(0)].closed


def test_split_children_wait_for_the_parent() -> None:
    assert readable_shards(SPLIT_THEN_MERGE, ended=set()) == [sid(0)]
    assert waiting_on(SPLIT_THEN_MERGE, set(), sid(1)) == [sid(0)]
    assert readable_shards(SPLIT_THEN_MERGE, ended={sid(0)}) == [sid(1), sid(2)]


def test_merge_child_waits_for_both_parents() -> None:
    assert readable_shards(SPLIT_THEN_MERGE, ended={sid(0), sid(1)}) == [sid(2)]
    assert waiting_on(SPLIT_THEN_MERGE, {sid(0), sid(1)}, sid(3)) == [sid(2)]
    assert readable_shards(SPLIT_THEN_MERGE, ended={sid(0), sid(2)}) == [sid(1)]
    assert readable_shards(SPLIT_THEN_MERGE, ended={sid(0), sid(1), sid(2)}) == [sid(3)]


def test_nothing_left_once_every_shard_ended() -> None:
    assert readable_shards(SPLIT_THEN_MERGE, ended=set(SPLIT_THEN_MERGE)) == []


def test_parents_trimmed_from_the_listing_count_as_finished() -> None:
    # Retention removed shards 0..2 from ListShards; the children still name them as parents.
    trimmed = {k: v for k, v in SPLIT_THEN_MERGE.items() if k == sid(3)}
    assert readable_shards(trimmed, ended=set()) == [sid(3)]
    only_one_gone = {k: v for k, v in SPLIT_THEN_MERGE.items() if k != sid(1)}
    assert readable_shards(only_one_gone, ended={sid(0)}) == [sid(2)]


def test_fresh_stream_shards_are_all_readable() -> None:
    shards = shard_infos([shard(0, "0", str(2**127 - 1)), shard(1, HALF, TOP)])
    assert readable_shards(shards, ended=set()) == [sid(0), sid(1)]


def test_children_of_finds_split_and_merge_children() -> None:
    assert children_of(SPLIT_THEN_MERGE, sid(0)) == [sid(1), sid(2)]
    assert children_of(SPLIT_THEN_MERGE, sid(1)) == [sid(3)]
    assert children_of(SPLIT_THEN_MERGE, sid(2)) == [sid(3)]
    assert children_of(SPLIT_THEN_MERGE, sid(3)) == []


def test_grandchildren_wait_for_the_whole_chain() -> None:
    # 0 -> (1, 2); 1 -> (3, 4). Shard 3 needs 1 ended, which needs 0 ended first.
    shards = shard_infos(
        [
            shard(0, closed=True),
            shard(1, "0", str(2**127 - 1), parent=0, closed=True),
            shard(2, HALF, TOP, parent=0),
            shard(3, "0", str(2**126 - 1), parent=1),
            shard(4, str(2**126), str(2**127 - 1), parent=1),
        ]
    )
    assert readable_shards(shards, ended=set()) == [sid(0)]
    assert readable_shards(shards, ended={sid(0)}) == [sid(1), sid(2)]
    assert readable_shards(shards, ended={sid(0), sid(1)}) == [sid(2), sid(3), sid(4)]
