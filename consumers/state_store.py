"""Snapshot format of a `ShardState`: bytes that a checkpoint can reference (an S3 object per
shard and checkpoint, written by the checkpoint step, not here).

Pure functions only: `to_bytes(state)` and `from_bytes(data)`; where the bytes live is the
sink's business. A restored state is the saved one, field for field (visitor slots, free list,
sweep cursor, buckets, running window sums, increments, publish cursor, high-water mark), so
restore + replay of the records after the checkpoint ends exactly where an uninterrupted run
ends, and snapshotting the two gives the same bytes.

Layout (version 2: the visitor columns gained the route key)::

    b"CLKSTATE" | u16 version | zlib(frames)
    frames = frame*, frame = u64 length (little endian) | payload
    frame 0: orjson of the scalar fields, places, small per-minute dicts and array lengths
    then one frame per visitor column (`consumers.sessions.COLUMNS` order), the free list, and
    three packed-cell maps (buckets, window sums, increments), each as four arrays.

Arrays are written little endian whatever the machine, and packed 128-bit cells as two 64-bit
halves, so a snapshot moves between workers of any architecture. A version this code does not
know is refused rather than guessed at.
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from collections.abc import Iterator
from typing import Any, Final

import orjson

from consumers.counters import ShardState, ShardStats
from consumers.sessions import COLUMNS, BotRule, VisitorTable
from consumers.windows import Lateness

MAGIC: Final = b"CLKSTATE"
FORMAT_VERSION: Final = 2
_HEADER: Final = struct.Struct("<8sH")
_LENGTH: Final = struct.Struct("<Q")
_LOW64: Final = (1 << 64) - 1
_COMPRESSION_LEVEL: Final = 1
"""Fast: a snapshot is written at every checkpoint; level 1 already shrinks it several fold."""


class SnapshotError(ValueError):
    """The bytes are not a shard state snapshot this code can read; the message says why."""


def _array_bytes(values: array[Any]) -> memoryview | bytes:
    """The array's little-endian bytes; on a little-endian machine a view, not a copy (a
    million visitors' columns are tens of MB, and a snapshot is taken at every checkpoint)."""
    if sys.byteorder != "little" and values.itemsize > 1:
        values = array(values.typecode, values)
        values.byteswap()
        return values.tobytes()
    return memoryview(values).cast("B")


def _array_from(typecode: str, data: memoryview) -> array[Any]:
    values = array(typecode)
    values.frombytes(data)
    if sys.byteorder != "little" and values.itemsize > 1:
        values.byteswap()
    return values


def _cells_arrays(cells_by_key: dict[int, dict[int, int]]) -> list[array[Any]]:
    """key -> place -> packed, as (keys, lengths) and (places, low, high) arrays."""
    keys, lengths = array("q"), array("I")
    places, low, high = array("I"), array("Q"), array("Q")
    for key in sorted(cells_by_key):
        cells = cells_by_key[key]
        keys.append(key)
        lengths.append(len(cells))
        for place, packed in cells.items():
            places.append(place)
            low.append(packed & _LOW64)
            high.append(packed >> 64)
    return [keys, lengths, places, low, high]


def _cells_from(
    keys: array[int], lengths: array[int], places: array[int], low: array[int], high: array[int]
) -> dict[int, dict[int, int]]:
    result: dict[int, dict[int, int]] = {}
    at = 0
    for key, length in zip(keys, lengths, strict=True):
        end = at + length
        result[key] = {places[i]: low[i] | (high[i] << 64) for i in range(at, end)}
        at = end
    return result


_CELL_TYPECODES: Final = ("q", "I", "I", "Q", "Q")


def to_bytes(state: ShardState) -> bytes:
    """Encode a shard's whole state; the result is self-describing (magic, version)."""
    visitors = state.visitors
    meta = {
        "shard_id": state.shard_id,
        "lateness": [state.lateness.grace_seconds, state.lateness.allowed_lateness_seconds],
        "bot_rule": [state.bot_rule.min_page_views, state.bot_rule.within_seconds],
        "places": state.places,
        "newest_time": state.newest_time,
        "rejected": sorted(state.rejected.items()),
        "late": sorted(state.late.items()),
        "rejected_unplaced": state.rejected_unplaced,
        "rejected_increments": sorted(state.rejected_increments.items()),
        "published_through": state.published_through,
        # Sequence numbers exceed 64 bits: kept as decimal text.
        "high_water": None
        if state.high_water is None
        else [str(state.high_water[0]), state.high_water[1]],
        # replays_skipped is left out: it describes one process's run (how many re-delivered
        # records it skipped), so a restored shard starts it afresh and restore + replay
        # snapshots to the same bytes as an uninterrupted run.
        "stats": [
            state.stats.hits,
            state.stats.bot_lines,
            state.stats.behaviour_bot_views,
            state.stats.too_late,
        ],
        "sweep_cursor": visitors.sweep_cursor,
    }
    frames: list[memoryview | bytes] = [orjson.dumps(meta)]
    frames.extend(_array_bytes(getattr(visitors, name)) for name, _ in COLUMNS)
    frames.append(_array_bytes(visitors.free))
    for cells in (state.buckets, state.window_sums, state.increments):
        frames.extend(_array_bytes(part) for part in _cells_arrays(cells))
    # Compressed frame by frame: the uncompressed body is never held whole.
    compressor = zlib.compressobj(_COMPRESSION_LEVEL)
    parts = [_HEADER.pack(MAGIC, FORMAT_VERSION)]
    for frame in frames:
        parts.append(compressor.compress(_LENGTH.pack(len(frame))))
        parts.append(compressor.compress(frame))
    parts.append(compressor.flush())
    return b"".join(parts)


def _frames(body: bytes) -> Iterator[memoryview]:
    view = memoryview(body)
    at = 0
    while at < len(view):
        if at + _LENGTH.size > len(view):
            raise SnapshotError("snapshot is truncated (frame length)")
        (length,) = _LENGTH.unpack_from(view, at)
        at += _LENGTH.size
        if at + length > len(view):
            raise SnapshotError("snapshot is truncated (frame body)")
        yield view[at : at + length]
        at += length


def from_bytes(
    data: bytes, *, lateness: Lateness | None = None, bot_rule: BotRule | None = None
) -> ShardState:
    """Decode `to_bytes` output; raises `SnapshotError` for anything else.

    The rules the state was built with are in the snapshot and are kept unless the caller
    passes new ones (configuration changed across the restart): a replay after the restore
    then follows the new rules, which is what the operator asked for.
    """
    if len(data) < _HEADER.size:
        raise SnapshotError("too short to be a shard state snapshot")
    magic, version = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError("not a shard state snapshot (bad magic)")
    if version != FORMAT_VERSION:
        raise SnapshotError(f"snapshot format version {version}; this code reads {FORMAT_VERSION}")
    try:
        body = zlib.decompress(data[_HEADER.size :])
    except zlib.error as error:
        raise SnapshotError(f"snapshot body does not decompress: {error}") from None
    frames = _frames(body)
    try:
        meta = orjson.loads(next(frames))
        visitors = VisitorTable()
        for name, typecode in COLUMNS:
            setattr(visitors, name, _array_from(typecode, next(frames)))
        visitors.free = _array_from("I", next(frames))
        visitors.sweep_cursor = meta["sweep_cursor"]
        cell_maps = []
        for _ in range(3):
            parts = [_array_from(code, next(frames)) for code in _CELL_TYPECODES]
            cell_maps.append(_cells_from(*parts))
    except StopIteration:
        raise SnapshotError("snapshot is missing frames") from None
    if next(frames, None) is not None:
        raise SnapshotError("snapshot has unexpected trailing frames")
    lengths = {len(getattr(visitors, name)) for name, _ in COLUMNS}
    if len(lengths) != 1:
        raise SnapshotError("visitor columns differ in length")
    visitors.rebuild_index()
    places = [tuple(place) for place in meta["places"]]
    high_water = meta["high_water"]
    state = ShardState(
        shard_id=meta["shard_id"],
        lateness=lateness or Lateness(*meta["lateness"]),
        bot_rule=bot_rule or BotRule(*meta["bot_rule"]),
        visitors=visitors,
        places=places,  # type: ignore[arg-type]
        place_index={place[:3]: index for index, place in enumerate(places)},  # type: ignore[misc]
        newest_time=meta["newest_time"],
        buckets=cell_maps[0],
        window_sums=cell_maps[1],
        rejected=dict(meta["rejected"]),
        late=dict(meta["late"]),
        rejected_unplaced=meta["rejected_unplaced"],
        increments=cell_maps[2],
        rejected_increments=dict(meta["rejected_increments"]),
        published_through=meta["published_through"],
        high_water=None if high_water is None else (int(high_water[0]), high_water[1]),
        stats=ShardStats(
            hits=meta["stats"][0],
            bot_lines=meta["stats"][1],
            behaviour_bot_views=meta["stats"][2],
            too_late=meta["stats"][3],
        ),
    )
    return state
