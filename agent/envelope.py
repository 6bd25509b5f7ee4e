"""The user-record payload that crosses Kinesis, shared by the agent and the consumer.

Every line travels as ``<event id> TAB <raw line bytes>``. The event id is
``f"{file.fingerprint}:{offset}"``: the fingerprint names the file across renames (and tells a
recycled inode apart), the byte offset names the line inside it. Both are fixed once the line is
written, so a line sent twice (a retry after a lost response, a replay after a crash) carries the
same id both times and the consumer can recognise the duplicate.

The line itself is carried byte for byte, never decoded: invalid UTF-8 must reach the consumer so
it can reject and count it, and tabs inside the line are harmless because only the first tab
separates. The consumer imports this module, so it stays dependency-free.
"""

from __future__ import annotations

SEPARATOR = b"\t"


def event_id(fingerprint: str, offset: int) -> str:
    """The deterministic id of the line starting at byte `offset` of the file `fingerprint`."""
    return f"{fingerprint}:{offset}"


def encode_payload(event_id: str, line: bytes) -> bytes:
    """The bytes Kinesis carries for one line. The id must not contain a tab (ours never do)."""
    return event_id.encode() + SEPARATOR + line


def decode_payload(payload: bytes) -> tuple[str, bytes]:
    """(event id, raw line bytes). Raises ValueError for a payload that is not ours."""
    eid, sep, line = payload.partition(SEPARATOR)
    if not sep:
        raise ValueError(
            f"not a clickstream payload: no tab after the event id in {payload[:80]!r}"
        )
    try:
        return eid.decode(), line
    except UnicodeDecodeError:
        raise ValueError(
            f"not a clickstream payload: event id is not UTF-8: {eid[:80]!r}"
        ) from None
