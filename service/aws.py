"""aiobotocore clients configured the same way everywhere.

One `AioSession` per process: creating a session loads botocore's service models and resolves
credentials, which is slow and (for the ECS task role) a network call, so it is done once. The
endpoint is deliberately not an argument: botocore reads `AWS_ENDPOINT_URL` and
`AWS_ENDPOINT_URL_<SERVICE>` itself, so production (nothing set), moto and kinesalite are all
configured by environment alone and no code path can forget to pass it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session

DEFAULT_REGION = "us-east-1"

# Connect fast (a refused or black-holed endpoint should surface in seconds, not minutes); read
# long enough for a large GetRecords or S3 PUT. Standard retry mode adds jittered backoff and
# retries throttling errors, which the legacy mode does not do consistently.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
MAX_ATTEMPTS = 3

_session: AioSession | None = None
_session_pid: int | None = None


def session() -> AioSession:
    """The process's session; a forked child gets its own, since sessions hold event-loop state."""
    global _session, _session_pid
    if _session is None or _session_pid != os.getpid():
        _session = get_session()
        _session_pid = os.getpid()
    return _session


def reset_session() -> None:
    """Forget cached credentials, e.g. after the environment was pointed at another stack."""
    global _session, _session_pid
    _session = None
    _session_pid = None


def region_name() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def client_config(**overrides: Any) -> AioConfig:
    """The shared defaults; callers override single fields (e.g. a longer read timeout)."""
    base = AioConfig(
        retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
    )
    return base.merge(AioConfig(**overrides)) if overrides else base


@asynccontextmanager
async def aws_client(service_name: str, **config_overrides: Any) -> AsyncIterator[Any]:
    """An aiobotocore client for `service_name`, closed (with its connection pool) on exit."""
    async with session().create_client(
        service_name, region_name=region_name(), config=client_config(**config_overrides)
    ) as client:
        yield client
