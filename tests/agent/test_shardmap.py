import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.shardmap import MAX_HASH_KEY, Shard, ShardMap, ShardMapError, hash_key
from tests.agent.support import even_map


def test_hash_key_is_md5_big_endian() -> None:
    assert hash_key("1.2.3.4") == int(hashlib.md5(b"1.2.3.4").hexdigest(), 16)


@given(key=st.text(min_size=1, max_size=256), n=st.integers(min_value=1, max_value=16))
def test_every_key_lands_in_the_covering_shard(key: str, n: int) -> None:
    shard_map = even_map(n)
    shard = shard_map.shard_for(key)
    assert shard.covers(hash_key(key))
    assert shard.covers(int(shard.explicit_hash_key))


def test_edges() -> None:
    shard_map = even_map(2)
    first, second = shard_map.shards
    assert shard_map.shards[shard_map.index_of_key(0)] == first
    assert shard_map.shards[shard_map.index_of_key(first.ending_hash_key)] == first
    assert shard_map.shards[shard_map.index_of_key(second.starting_hash_key)] == second
    assert shard_map.shards[shard_map.index_of_key(MAX_HASH_KEY)] == second


def test_from_list_shards_keeps_only_open_shards() -> None:
    half = MAX_HASH_KEY // 2
    listed = [
        {
            "ShardId": "parent",
            "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": str(MAX_HASH_KEY)},
            "SequenceNumberRange": {"StartingSequenceNumber": "1", "EndingSequenceNumber": "9"},
        },
        {
            "ShardId": "right",
            "HashKeyRange": {"StartingHashKey": str(half + 1), "EndingHashKey": str(MAX_HASH_KEY)},
            "SequenceNumberRange": {"StartingSequenceNumber": "10"},
        },
        {
            "ShardId": "left",
            "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": str(half)},
            "SequenceNumberRange": {"StartingSequenceNumber": "10"},
        },
    ]
    shard_map = ShardMap.from_list_shards(listed)
    assert [s.shard_id for s in shard_map.shards] == ["left", "right"]
    assert shard_map.shard_ids == {"left", "right"}


@pytest.mark.parametrize(
    "shards",
    [
        [],
        [Shard("a", 0, 10)],
        [Shard("a", 0, 10), Shard("b", 12, MAX_HASH_KEY)],
        [Shard("a", 0, 10), Shard("b", 5, MAX_HASH_KEY)],
        [Shard("a", 1, MAX_HASH_KEY)],
    ],
)
def test_maps_that_do_not_tile_the_key_space_are_refused(shards: list[Shard]) -> None:
    with pytest.raises(ShardMapError):
        ShardMap(shards)


def test_equality_follows_the_shards() -> None:
    assert even_map(2) == even_map(2)
    assert even_map(2) != even_map(3)
