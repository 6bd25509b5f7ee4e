"""How many lines the log should hold by any moment: the target the engine steers its arrivals by.

Bulk mode wants exactly N lines spread over a window, denser at busy hours (the same daily rhythm
that picks cities, plus a flat layer of bots); real-time mode wants R lines a second. Either way
the engine starts sessions at a rate that would meet the target on average and corrects for the
randomness of session lengths, so the N-th line lands just before the window's end.
"""

from __future__ import annotations

from typing import Protocol

from service.simulator.rhythm import MINUTE_MS, Rhythm


class Pace(Protocol):
    def line_rate(self, time_ms: int) -> float:
        """Lines per second wanted at this moment."""
        ...

    def target(self, time_ms: int) -> float:
        """Lines wanted in total from the start up to this moment."""
        ...


class BulkPace:
    """`lines` lines between `start_ms` and a little before `end_ms`, following `rhythm`.

    The little (`finish_early_ms`) leaves room for randomness: the engine stops at the N-th line
    wherever it falls, and lines never go past `end_ms`.
    """

    def __init__(
        self,
        rhythm: Rhythm,
        start_ms: int,
        end_ms: int,
        lines: int,
        bot_level: float,
        finish_early_ms: int,
    ) -> None:
        self.start_ms = start_ms
        self.first_minute = start_ms // MINUTE_MS - 1
        last_minute = end_ms // MINUTE_MS + 2
        # Activity per minute (the human level plus the flat bot level), and its running integral
        # in level-milliseconds from the beginning of the first minute.
        self._levels = [
            rhythm.level(minute * MINUTE_MS) + bot_level
            for minute in range(self.first_minute, last_minute + 1)
        ]
        self._integral = [0.0]
        for level in self._levels:
            self._integral.append(self._integral[-1] + level * MINUTE_MS)
        self._origin = self._cumulative(start_ms)
        finish = max(start_ms + 1, end_ms - finish_early_ms)
        self._scale = lines / max(self._cumulative(finish) - self._origin, 1e-9)

    def _index(self, time_ms: int) -> int:
        index = time_ms // MINUTE_MS - self.first_minute
        return min(max(index, 0), len(self._levels) - 1)

    def _cumulative(self, time_ms: int) -> float:
        index = self._index(time_ms)
        into_minute = time_ms - (self.first_minute + index) * MINUTE_MS
        return self._integral[index] + self._levels[index] * into_minute

    def line_rate(self, time_ms: int) -> float:
        return self._scale * self._levels[self._index(time_ms)] * 1000.0

    def target(self, time_ms: int) -> float:
        return self._scale * max(0.0, self._cumulative(time_ms) - self._origin)


class SteadyPace:
    """`rate` lines a second from `start_ms` on."""

    def __init__(self, rate: float, start_ms: int) -> None:
        self.rate = rate
        self.start_ms = start_ms

    def line_rate(self, time_ms: int) -> float:
        return self.rate

    def target(self, time_ms: int) -> float:
        return max(0, time_ms - self.start_ms) * self.rate / 1000.0
