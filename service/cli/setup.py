"""`clickstream setup`: create the stream, bucket, lease table and dashboard if missing.

Exit codes: 0 all present or created; 1 something exists but differs from the settings (setup
changed nothing there; an operator must decide); 2 AWS could not be used at all (unreachable
endpoint, no credentials, access denied), reported in one line without a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from botocore.exceptions import (
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)

from service.aws import region_name
from service.local_stack import use_local_stack_if_running
from service.resources import ResourceError, ensure_resources, format_report
from service.settings import Settings

HELP = "create the stream, bucket, lease table and dashboard"


def configure(parser: argparse.ArgumentParser) -> None:
    """No options: everything comes from the settings (CLICKSTREAM_*) and botocore's env."""


def _where() -> str:
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    return endpoint if endpoint else f"AWS in {region_name()}"


def run(args: argparse.Namespace, settings: Settings) -> int:
    use_local_stack_if_running(settings.state_dir)  # logs where it points
    try:
        statuses = asyncio.run(ensure_resources(settings))
    except ResourceError as exc:
        cause = exc.cause
        if isinstance(cause, NoCredentialsError | PartialCredentialsError):
            message = (
                f"no usable AWS credentials for {_where()} ({cause}); set AWS_PROFILE or "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or start `clickstream local-aws`"
            )
        elif isinstance(cause, EndpointConnectionError):
            message = f"cannot reach {exc.endpoint or _where()}: {cause}"
        else:
            message = str(exc)
        print(f"clickstream setup: {message}", file=sys.stderr)
        return 2
    print(format_report(statuses), flush=True)
    return 1 if any(s.status == "differs" for s in statuses) else 0
