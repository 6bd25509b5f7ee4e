"""Fingerprints: stable while a file grows, changed when its first bytes change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.identity import (
    FINGERPRINT_MAX_BYTES,
    file_identity,
    fingerprint_of_head,
    read_fingerprint,
    still_holds,
)


def test_no_fingerprint_until_the_first_line_is_complete() -> None:
    assert fingerprint_of_head(b"") is None
    assert fingerprint_of_head(b"203.0.113.9 - - [21/Nov/2026") is None
    assert fingerprint_of_head(b"203.0.113.9 - - [21/Nov/2026]\n") is not None


def test_fingerprint_covers_the_first_line_and_does_not_change_as_the_file_grows() -> None:
    first = b"203.0.113.9 - - [21/Nov/2026:10:00:00 +0000] GET /cafe\n"
    alone = fingerprint_of_head(first)
    grown = fingerprint_of_head(first + b"second line\nthird")
    assert alone is not None
    assert alone == grown
    assert alone.length == len(first)


def test_a_first_line_longer_than_the_limit_is_covered_up_to_the_limit() -> None:
    head = b"x" * (FINGERPRINT_MAX_BYTES - 1)
    assert fingerprint_of_head(head) is None  # not enough bytes yet: wait
    fingerprint = fingerprint_of_head(head + b"xx")
    assert fingerprint is not None
    assert fingerprint.length == FINGERPRINT_MAX_BYTES
    assert fingerprint_of_head(head + b"x" * 5000 + b"\n") == fingerprint


def test_different_first_lines_give_different_fingerprints() -> None:
    one = fingerprint_of_head(b"GET /cafe 10:00:00\n")
    two = fingerprint_of_head(b"GET /cafe 10:00:01\n")
    assert one is not None and two is not None
    assert one.digest != two.digest


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "access_log"
    path.write_bytes(b"first line of the log\nsecond\n")
    return path


def test_still_holds_while_appending_but_not_after_truncation(log_file: Path) -> None:
    fd = os.open(log_file, os.O_RDONLY)
    try:
        fingerprint = read_fingerprint(fd)
        assert fingerprint is not None
        with log_file.open("ab") as f:
            f.write(b"third\n")
        assert still_holds(fd, fingerprint)
        with log_file.open("r+b") as f:
            f.truncate(0)
        assert not still_holds(fd, fingerprint)
        # Grown back past the old size with other content: a size check would miss this.
        log_file.write_bytes(b"a different first line after copytruncate\n" * 10)
        assert not still_holds(fd, fingerprint)
    finally:
        os.close(fd)


def test_identity_is_device_inode_and_fingerprint(log_file: Path) -> None:
    fd = os.open(log_file, os.O_RDONLY)
    try:
        fingerprint = read_fingerprint(fd)
        assert fingerprint is not None
        identity = file_identity(os.fstat(fd), fingerprint)
    finally:
        os.close(fd)
    st = log_file.stat()
    assert (identity.device, identity.inode) == (st.st_dev, st.st_ino)
    assert identity.key == fingerprint.digest
    # Renaming keeps the identity: same inode, same first bytes.
    moved = log_file.rename(log_file.with_name("access_log.1"))
    fd = os.open(moved, os.O_RDONLY)
    try:
        again = read_fingerprint(fd)
        assert again is not None
        assert file_identity(os.fstat(fd), again) == identity
    finally:
        os.close(fd)
