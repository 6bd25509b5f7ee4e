"""Which content a file holds: a fingerprint of its first line, stable from the moment it exists.

A device+inode pair alone is not an identity: the kernel hands a deleted file's inode to the next
file created (the classic "new log resumes at the old offset" bug of inode-keyed agents). A hash
of the file's first bytes is: two different logs practically never share their first line (an
access-log line carries a timestamp, a client address and a request). Keying checkpoints by the
fingerprint also makes a *copy* of a file (copytruncate's `access_log.1`) the same identity as the
content it copies, so reading can continue in the copy at the byte where it stopped in the
original.

The fingerprint covers the first line, newline included, or the first `FINGERPRINT_MAX_BYTES` if
the first line is longer than that. Either way the covered bytes never change once they exist
(logs are append-only), so the identity of a growing file never changes. A file whose first line is
not complete yet has *no* identity: it is left alone until its first newline arrives, which costs
nothing, because a file without a complete line has nothing to ship anyway (half lines are never
shipped).

Two different contents can still share a first line (a fixed header, a file written again with
the same first line). Then the tailer tells a copy from another content by the bytes before the
position where reading stopped, and gives another content a key of its own (`distinct_key`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from agent.models import FileIdentity

# Long enough that a first line of any realistic log is covered whole; short enough that checking
# it on every poll is one small pread.
FINGERPRINT_MAX_BYTES = 1024
_DIGEST_BYTES = 16


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """The digest, and how many leading bytes it covers (needed to check it again later)."""

    digest: str
    length: int


def fingerprint_of_head(head: bytes, max_bytes: int = FINGERPRINT_MAX_BYTES) -> Fingerprint | None:
    """The fingerprint of a file starting with `head`, or None while its first line is unfinished.

    `head` is whatever the file's first bytes are now (possibly more than the fingerprint covers).
    """
    newline = head.find(b"\n", 0, max_bytes)
    if newline >= 0:
        covered = head[: newline + 1]
    elif len(head) >= max_bytes:
        covered = head[:max_bytes]
    else:
        return None
    digest = hashlib.blake2b(covered, digest_size=_DIGEST_BYTES).hexdigest()
    return Fingerprint(digest, len(covered))


def read_fingerprint(fd: int, max_bytes: int = FINGERPRINT_MAX_BYTES) -> Fingerprint | None:
    """The fingerprint of the open file `fd` (positioned reads: the fd's offset is not moved)."""
    return fingerprint_of_head(os.pread(fd, max_bytes, 0), max_bytes)


def still_holds(fd: int, fingerprint: Fingerprint) -> bool:
    """Whether the file still starts with the fingerprinted bytes.

    False after a truncation or a copytruncate, even when the file has already grown back past the
    reader's position, which a size check alone would miss.
    """
    head = os.pread(fd, fingerprint.length, 0)
    if len(head) != fingerprint.length:
        return False
    return hashlib.blake2b(head, digest_size=_DIGEST_BYTES).hexdigest() == fingerprint.digest


def file_identity(
    stat: os.stat_result, fingerprint: Fingerprint, key: str | None = None
) -> FileIdentity:
    """The identity of an open file; `key` when its content needs one of its own (below)."""
    return FileIdentity(stat.st_dev, stat.st_ino, key if key is not None else fingerprint.digest)


def distinct_key(digest: str, device: int, inode: int, generation: int) -> str:
    """A key for a content whose first line another content already has.

    Two different contents can start with the same bytes: logs with a fixed header line, a file
    deleted and written again, a file truncated and rewritten. The fingerprint alone would give
    them one checkpoint and colliding event ids, so the second gets a key derived from the file
    it lives in (device, inode) and a generation, which a restart can compute again from the same
    file. (A *copy* of a content keeps the content's key: that is how copytruncate's copy
    continues where reading stopped.)
    """
    name = f"{digest}:{device}:{inode}:{generation}".encode()
    return hashlib.blake2b(name, digest_size=_DIGEST_BYTES).hexdigest()
