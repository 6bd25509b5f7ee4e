"""Per-shard state snapshots in S3, one per checkpoint, named by the checkpoint's position.

The format is `consumers.state_store`; this module decides where the bytes live. The key is a
function of the shard and the checkpoint position alone::

    <prefix>state/shard=<shard id>/<sequence>-<sub-sequence>.snap
    <prefix>state/shard=<shard id>/SHARD_END.snap

so the lease row's checkpoint *names* exactly one snapshot, and no pointer has to be written
beside it (a second write that could be torn from the first). The order that makes this safe is
the checkpoint's (`consumers.checkpoint`): the snapshot for position P is written, and durable,
before the lease row says P. A crash between the two leaves an orphan snapshot that no
checkpoint names; the next commit at a later position collects it.

Garbage collection runs only after a newer checkpoint is durable: every snapshot of the shard
other than the one the current checkpoint names is then unreachable. A snapshot written for a
position the lease never reached (crash before step 4) is unreachable too, and a later replay to
the same position rewrites the same key.

The S3 client is injected (aiobotocore); the constructor does no I/O.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from botocore.exceptions import ClientError

from consumers.counters import ShardState
from consumers.leases import SHARD_END, Checkpoint
from consumers.sessions import BotRule
from consumers.state_store import from_bytes, to_bytes
from consumers.windows import Lateness

log = logging.getLogger(__name__)

SUFFIX: Final = ".snap"


class SnapshotMissingError(Exception):
    """The checkpoint names a snapshot that is not in S3: the state for the records before the
    checkpoint is gone, so counting on from here would silently undercount. Raised, never
    papered over with a fresh state."""


def snapshot_prefix(shard_id: str, prefix: str = "") -> str:
    return f"{prefix}state/shard={shard_id}/"


def snapshot_key(shard_id: str, position: Checkpoint, prefix: str = "") -> str:
    """The one key for the state as of `position` (a sequence number or SHARD_END)."""
    if position.is_shard_end:
        name = SHARD_END
    elif position.is_sentinel:
        raise ValueError(f"no snapshot belongs to the initial position {position.sequence_number}")
    else:
        name = f"{position.sequence_number}-{position.sub_sequence_number}"
    return snapshot_prefix(shard_id, prefix) + name + SUFFIX


class SnapshotStore:
    """Writes, reads and collects one application's shard snapshots in one bucket."""

    def __init__(self, s3: Any, bucket: str, prefix: str = "") -> None:
        self._s3 = s3
        self.bucket = bucket
        self.prefix = prefix

    async def save(self, state: ShardState, position: Checkpoint) -> str:
        """Write the state as of `position`; returns the key once S3 has it (a PUT is durable
        when it returns)."""
        key = snapshot_key(state.shard_id, position, self.prefix)
        await self._s3.put_object(Bucket=self.bucket, Key=key, Body=to_bytes(state))
        return key

    async def load(
        self,
        shard_id: str,
        position: Checkpoint,
        *,
        lateness: Lateness | None = None,
        bot_rule: BotRule | None = None,
    ) -> ShardState | None:
        """The state the checkpoint names; None for an initial position (nothing processed yet).

        Raises `SnapshotMissingError` when a real checkpoint's snapshot is absent."""
        if position.is_sentinel and not position.is_shard_end:
            return None
        key = snapshot_key(shard_id, position, self.prefix)
        try:
            response = await self._s3.get_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise SnapshotMissingError(
                    f"{shard_id} is checkpointed at {position} but s3://{self.bucket}/{key} "
                    "is missing"
                ) from None
            raise
        async with response["Body"] as body:
            data = await body.read()
        return from_bytes(data, lateness=lateness, bot_rule=bot_rule)

    async def collect(self, shard_id: str, keep: Checkpoint) -> int:
        """Delete the shard's snapshots other than the one `keep` names. Call only once the
        checkpoint at `keep` is durable. Returns how many were deleted; failures are logged and
        left for the next call (garbage costs storage, never correctness)."""
        keep_key = snapshot_key(shard_id, keep, self.prefix)
        doomed: list[str] = []
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": snapshot_prefix(shard_id, self.prefix),
        }
        try:
            while True:
                response = await self._s3.list_objects_v2(**kwargs)
                doomed += [
                    item["Key"]
                    for item in response.get("Contents", [])
                    if item["Key"] != keep_key and item["Key"].endswith(SUFFIX)
                ]
                if not response.get("IsTruncated"):
                    break
                kwargs["ContinuationToken"] = response["NextContinuationToken"]
            for start in range(0, len(doomed), 1000):
                chunk = doomed[start : start + 1000]
                await self._s3.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True},
                )
        except (ClientError, OSError) as error:
            log.warning("could not collect old snapshots of %s: %s", shard_id, error)
            return 0
        return len(doomed)
