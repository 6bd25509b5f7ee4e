"""A local mirror of the S3 archive, for DuckDB.

The mirror keeps the archive's key layout under one directory (`events/dt=.../hour=.../
shard=.../*.parquet`, `rejects/...`), minus the archive prefix. It is incremental: an object
is downloaded when its key is new or its ETag changed (a replayed batch overwrites its object
under the same key, see `consumers.sinks.s3_archive`), and a local file whose object is gone
(lifecycle expiry, a wiped local stack) is removed, so the mirror never holds rows the
archive no longer has. Each file is written beside its final name and renamed into place, so
a query never reads half an object.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Final

from service.aws import aws_client

KINDS: Final = ("events", "rejects")
MANIFEST: Final = ".manifest.json"
CONCURRENT_DOWNLOADS: Final = 16
_DT: Final = re.compile(r"/dt=(\d{4}-\d{2}-\d{2})/")


@dataclass(frozen=True)
class SyncReport:
    downloaded: int
    unchanged: int
    removed: int
    bytes_downloaded: int

    def describe(self) -> str:
        return (
            f"{self.downloaded} objects downloaded ({self.bytes_downloaded / 1e6:.1f} MB), "
            f"{self.unchanged} unchanged, {self.removed} removed"
        )


def kind_prefix(prefix: str, kind: str) -> str:
    """The S3 key prefix of one kind, as `consumers.sinks.s3_archive.archive_key` builds keys."""
    stripped = prefix.strip("/")
    return f"{stripped}/{kind}/" if stripped else f"{kind}/"


def mirror_dir(cache_dir: Path, bucket: str, prefix: str) -> Path:
    """Where the mirror of one bucket and prefix lives in the cache directory."""
    path = cache_dir / "archive" / bucket
    return path / prefix.strip("/") if prefix.strip("/") else path


def in_range(key: str, since: date | None, until: date | None) -> bool:
    """Whether the key's `dt=` partition lies within [since, until] (keys without one: yes)."""
    match = _DT.search("/" + key)
    if match is None or (since is None and until is None):
        return True
    day = date.fromisoformat(match.group(1))
    return (since is None or day >= since) and (until is None or day <= until)


async def _list(s3: Any, bucket: str, prefix: str, since: date | None) -> list[dict[str, Any]]:
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    if since is not None:  # keys sort by dt: skip the partitions before `since`
        kwargs["StartAfter"] = f"{prefix}dt={since.isoformat()}"
    objects: list[dict[str, Any]] = []
    while True:
        response = await s3.list_objects_v2(**kwargs)
        objects += response.get("Contents", [])
        if not response.get("IsTruncated"):
            return objects
        kwargs["ContinuationToken"] = response["NextContinuationToken"]
        kwargs.pop("StartAfter", None)


def _read_manifest(root: Path) -> dict[str, str]:
    try:
        document = json.loads((root / MANIFEST).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {str(k): str(v) for k, v in document.items()} if isinstance(document, dict) else {}


def _write_manifest(root: Path, manifest: dict[str, str]) -> None:
    partial = root / (MANIFEST + ".tmp")
    partial.write_text(json.dumps(manifest, sort_keys=True))
    os.replace(partial, root / MANIFEST)


def sync_archive(
    bucket: str,
    prefix: str,
    root: Path,
    *,
    kinds: Iterable[str] = KINDS,
    since: date | None = None,
    until: date | None = None,
) -> SyncReport:
    """Bring the mirror under `root` up to date with the archive (for the given days only).

    Runs its own event loop: list, decide what changed, download (files are written off the
    loop), then remove what the archive no longer has and save the manifest.
    """
    kinds = tuple(kinds)
    root.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(root)
    strip = len(prefix.strip("/") + "/") if prefix.strip("/") else 0
    listed = asyncio.run(_list_kinds(bucket, prefix, kinds, since))
    wanted: dict[str, tuple[str, str, int]] = {}  # local path -> (key, etag, size)
    for item in listed:
        key = item["Key"]
        if key.endswith(".parquet") and in_range(key, since, until):
            wanted[key[strip:]] = (key, str(item.get("ETag", "")), int(item["Size"]))
    todo = [
        (local, key, etag)
        for local, (key, etag, size) in wanted.items()
        if manifest.get(local) != etag or not _has_size(root / local, size)
    ]
    sizes = asyncio.run(_download(bucket, [(key, root / local) for local, key, _ in todo]))
    for local, _, etag in todo:
        manifest[local] = etag
    removed = 0
    for kind in kinds:
        for path in sorted((root / kind).rglob("*.parquet")) if (root / kind).is_dir() else []:
            local = path.relative_to(root).as_posix()
            if local not in wanted and in_range(local, since, until):
                path.unlink()
                manifest.pop(local, None)
                removed += 1
    _write_manifest(root, manifest)
    return SyncReport(len(todo), len(wanted) - len(todo), removed, sum(sizes))


async def _list_kinds(
    bucket: str, prefix: str, kinds: tuple[str, ...], since: date | None
) -> list[dict[str, Any]]:
    async with aws_client("s3") as s3:
        listed: list[dict[str, Any]] = []
        for kind in kinds:
            listed += await _list(s3, bucket, kind_prefix(prefix, kind), since)
        return listed


def _store(path: Path, data: bytes) -> None:
    """Write beside the final name, then rename: a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_bytes(data)
    os.replace(partial, path)


async def _download(bucket: str, wanted: list[tuple[str, Path]]) -> list[int]:
    if not wanted:
        return []
    gate = asyncio.Semaphore(CONCURRENT_DOWNLOADS)
    async with aws_client("s3") as s3:

        async def fetch(key: str, path: Path) -> int:
            async with gate:
                response = await s3.get_object(Bucket=bucket, Key=key)
                data = await response["Body"].read()
            await asyncio.to_thread(_store, path, data)
            return len(data)

        return list(await asyncio.gather(*(fetch(key, path) for key, path in wanted)))


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False
