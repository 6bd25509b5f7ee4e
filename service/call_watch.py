"""What the consumer's AWS calls have been doing, seen through botocore's own event hooks.

Readiness asks "has every held shard been read recently?" and "since when has a sink been
failing?". Both answers are in the calls the worker already makes, so instead of threading
timestamps through the reader and the sinks, the service watches its own clients: botocore
emits `after-call` (an HTTP answer, good or bad) and `after-call-error` (no answer: refused,
timed out) for every call. Nothing is faked or intercepted; a handler only writes down the
outcome and the time.

A GetRecords call names its shard only through an opaque iterator, so iterators are followed:
GetShardIterator's request names the shard and its answer the iterator; each GetRecords answer
hands on a `NextShardIterator` for the same shard.

Handlers run on the consumer's thread; readers on the web server's thread copy what they read
(`operations()`, `last_fetches()`), and every value is replaced whole, never mutated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

ARCHIVE_OPERATION: Final = ("s3", "PutObject")
"""Archive objects and state snapshots: the archive sink's writes."""
METRICS_OPERATION: Final = ("cloudwatch", "PutMetricData")
"""The CloudWatch sink's writes."""

EXPECTED_ERRORS: Final = frozenset(
    {"ConditionalCheckFailedException", "ResourceInUseException", "NoSuchKey", "404"}
)
"""Answers that are part of normal work (a lease row already there, a snapshot not written
yet): counted as calls, never the start of a failing spell."""

_SHARD_KEY: Final = "clickstream_shard"
_ITERATOR_KEY: Final = "clickstream_iterator"
_MAX_ITERATORS: Final = 4096
"""Iterators that never got an answer (expired, failed) are forgotten wholesale past this."""


@dataclass(frozen=True, slots=True)
class OperationHealth:
    """One (service, operation)'s record. Monotonic times; None when it never happened."""

    calls: int = 0
    failures: int = 0
    last_ok: float | None = None
    failing_since: float | None = None
    """The first failure after the last success: the start of the current failing spell."""
    last_error: str | None = None

    def failing_for(self, now: float) -> float:
        return 0.0 if self.failing_since is None else now - self.failing_since


class CallWatch:
    """Outcomes of every call of the clients it is attached to (module notes)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._operations: dict[tuple[str, str], OperationHealth] = {}
        self._last_fetch: dict[str, float] = {}
        self._iterators: dict[str, str] = {}

    def attach(self, client: Any) -> None:
        """Listen to one aiobotocore (or botocore) client's events."""
        events = client.meta.events
        events.register("before-parameter-build.kinesis.GetShardIterator", self._shard_named)
        events.register("before-parameter-build.kinesis.GetRecords", self._iterator_used)
        events.register("after-call", self._answered)
        events.register("after-call-error", self._unanswered)

    # ---- what readers see ---------------------------------------------------------------------

    def operations(self) -> dict[tuple[str, str], OperationHealth]:
        return dict(self._operations)

    def operation(self, key: tuple[str, str]) -> OperationHealth:
        return self._operations.get(key, OperationHealth())

    def last_fetches(self) -> dict[str, float]:
        """Shard id -> monotonic time of its last successful GetRecords."""
        return dict(self._last_fetch)

    # ---- handlers ------------------------------------------------------------------------------

    def _shard_named(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context[_SHARD_KEY] = params.get("ShardId")

    def _iterator_used(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        iterator = params.get("ShardIterator")
        context[_ITERATOR_KEY] = iterator
        context[_SHARD_KEY] = self._iterators.get(iterator) if iterator else None

    def _answered(
        self,
        event_name: str,
        http_response: Any,
        parsed: dict[str, Any],
        context: dict[str, Any],
        **_: Any,
    ) -> None:
        status = getattr(http_response, "status_code", 0)
        key = _operation_key(event_name)
        if status >= 300:
            code = str((parsed.get("Error") or {}).get("Code") or status)
            if code in EXPECTED_ERRORS:
                self._succeeded(key)
            else:
                self._failed(key, code)
            return
        self._succeeded(key)
        shard = context.get(_SHARD_KEY)
        if shard is None:
            return
        if key == ("kinesis", "GetShardIterator"):
            self._remember_iterator(parsed.get("ShardIterator"), shard)
        elif key == ("kinesis", "GetRecords"):
            self._iterators.pop(context.get(_ITERATOR_KEY) or "", None)
            self._remember_iterator(parsed.get("NextShardIterator"), shard)
            self._last_fetch = {**self._last_fetch, shard: self._clock()}

    def _unanswered(self, event_name: str, exception: BaseException, **_: Any) -> None:
        self._failed(_operation_key(event_name), f"{type(exception).__name__}: {exception}")

    def _remember_iterator(self, iterator: str | None, shard: str) -> None:
        if not iterator:
            return
        if len(self._iterators) >= _MAX_ITERATORS:
            self._iterators = {}
        self._iterators[iterator] = shard

    def _succeeded(self, key: tuple[str, str]) -> None:
        old = self._operations.get(key, OperationHealth())
        self._operations[key] = OperationHealth(
            old.calls + 1, old.failures, self._clock(), None, old.last_error
        )

    def _failed(self, key: tuple[str, str], error: str) -> None:
        old = self._operations.get(key, OperationHealth())
        since = old.failing_since if old.failing_since is not None else self._clock()
        self._operations[key] = OperationHealth(
            old.calls + 1, old.failures + 1, old.last_ok, since, error[:300]
        )


def _operation_key(event_name: str) -> tuple[str, str]:
    """'after-call.kinesis.GetRecords' -> ('kinesis', 'GetRecords')."""
    parts = event_name.split(".")
    return (parts[1], parts[2]) if len(parts) >= 3 else (event_name, "")
