"""Apache's combined log format, written the way Apache writes it.

`LogFormat "%h %l %u %t \\"%r\\" %>s %b \\"%{Referer}i\\" \\"%{User-Agent}i\\"" combined`:
`%t` is the time the request was *received*, in English month names whatever the locale, and the
line is written when the response completes, so lines are in completion order and their
timestamps can step back a second or two. `%b` is "-" when no body was sent (HEAD, 304, many
redirects). Quotes and backslashes inside header values are escaped with a backslash.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.simulator.sessions import Step

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def escape_field(value: str) -> str:
    """Escape a header value as mod_log_config does (`\\"` for a quote, `\\\\` for a backslash)."""
    if '"' in value or "\\" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"')
    return value


def apache_time(epoch_seconds: int) -> str:
    """`21/Nov/2026:11:59:59 +0000`: always UTC, month names independent of the machine's locale."""
    t = time.gmtime(epoch_seconds)
    return (
        f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year:04d}:"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
    )


class LineFormatter:
    """Turns steps into log lines; caches the time text, which many neighbouring lines share."""

    def __init__(self) -> None:
        self._times: dict[int, str] = {}

    def time_text(self, epoch_seconds: int) -> str:
        text = self._times.get(epoch_seconds)
        if text is None:
            if len(self._times) > 2048:
                self._times.clear()
            text = self._times[epoch_seconds] = apache_time(epoch_seconds)
        return text

    def line(self, step: Step) -> str:
        visitor = step.visitor
        return (
            f'{visitor.ip} - - [{self.time_text(step.at // 1000)}] "{step.method} {step.path} '
            f'{step.proto}" {step.status} {step.size} "{step.referer}" "{visitor.agent_field}"\n'
        )
