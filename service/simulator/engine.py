"""The traffic engine: starts sessions over time and merges their requests into one log stream.

Sessions arrive as a Poisson process whose rate follows the pace (lines wanted per second) divided
by the expected lines per session; each arrival is a person (city chosen by local time, maybe a
returning visitor) or a bot, in the mix that makes bots `BOT_LINE_SHARE` of the lines. A session's
requests are planned when it starts; a heap keyed by each request's completion time merges all
sessions in flight, which is the order in which Apache writes them.

Comparing the lines logged so far with the pace's target and nudging the arrival rate by the
difference keeps the randomness of session lengths from accumulating, so bulk mode's N-th line
falls just before the end of its window and real-time mode holds its rate. Sessions start up to
20 minutes before the window (their earlier requests dropped), so the log opens mid-traffic as a
real one does.

Everything random comes from one seeded `random.Random`, consumed in an order that depends only
on the seed and the arguments: the same inputs give the same bytes on any machine.
"""

from __future__ import annotations

import functools
import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass

from service.simulator.catalog import Catalog
from service.simulator.logformat import LineFormatter
from service.simulator.malformed import malformed_line
from service.simulator.pacing import BulkPace, Pace, SteadyPace
from service.simulator.rhythm import Rhythm
from service.simulator.sessions import Step, bot_steps, human_steps
from service.simulator.useragents import BOT_FAMILIES, BROWSERS
from service.simulator.visitors import RETURNING_SHARE, Population, Visitor

BOT_LINE_SHARE = 0.15
DEFAULT_MALFORMED_SHARE = 0.002
MAX_WARMUP_MS = 20 * 60_000
# Warm-up work is wasted (its early lines are dropped), so it is capped at about this many lines;
# in real time it also delays the first line, so the cap is lower there.
_WARMUP_LINES = 50_000
_REALTIME_WARMUP_LINES = 20_000
_CALIBRATION_SEED = 20261121
_CALIBRATION_SESSIONS = 1500


@dataclass(frozen=True, slots=True)
class SessionShape:
    """Average session facts the arrival rate is derived from (measured, not assumed)."""

    human_lines: float  # lines per human session
    bot_lines: float  # lines per bot session


@functools.cache
def measure_sessions() -> SessionShape:
    """Plan sample sessions with a fixed private seed and average them.

    Uses its own generator, so it draws nothing from the run's random stream; the answer never
    changes, so it is computed once per process.
    """
    rng = random.Random(_CALIBRATION_SEED)
    human_lines = human_weighted = 0.0
    for number in range(_CALIBRATION_SESSIONS):
        browser = BROWSERS[number % len(BROWSERS)]
        person = Visitor("192.0.2.1", browser.agent, browser.agent, None, False, browser.mobile)
        for returning, weight in ((False, 1 - RETURNING_SHARE), (True, RETURNING_SHARE)):
            steps = human_steps(rng, person, 0, returning)
            human_lines += weight * len(steps)
            human_weighted += weight
    bot_lines = 0.0
    total_weight = sum(family.weight for family in BOT_FAMILIES)
    bot_sessions = 0.0
    for family in BOT_FAMILIES:
        share = family.weight / total_weight
        runs = max(4, round(_CALIBRATION_SESSIONS * share))
        for _ in range(runs):
            bot = Visitor(
                "192.0.2.2", family.agents[0], family.agents[0], None, True, family=family
            )
            steps = bot_steps(rng, bot, 0)
            bot_lines += share / runs * len(steps)
        bot_sessions += share
    per_human = human_lines / human_weighted
    per_bot = bot_lines / bot_sessions
    return SessionShape(per_human, per_bot)


class TrafficEngine:
    """Yields the log in write order: a `Step` per request, a `str` per malformed line.

    `bot_level` is the bots' share of activity on the same scale as the rhythm's human level;
    `steering_ms` is how quickly a shortfall or excess of planned lines is corrected.
    """

    def __init__(
        self,
        rng: random.Random,
        catalog: Catalog,
        pace: Pace,
        start_ms: int,
        horizon_ms: int | None,
        *,
        rhythm: Rhythm | None = None,
        malformed_share: float = DEFAULT_MALFORMED_SHARE,
        bot_level: float,
        steering_ms: int,
        warmup_ms: int = MAX_WARMUP_MS,
    ) -> None:
        self.rng = rng
        self.rhythm = rhythm or Rhythm(catalog)
        self.population = Population(catalog, self.rhythm)
        self.pace = pace
        self.start_ms = start_ms
        self.horizon_ms = horizon_ms
        self.malformed_share = malformed_share
        self.bot_level = bot_level
        self.steering_ms = steering_ms
        self.warmup_ms = warmup_ms
        self.shape = measure_sessions()
        self.emitted = 0  # requests yielded so far

    def _plan(self, now: int) -> list[Step]:
        """Start one session at `now`; return its requests that fall inside the window."""
        rng = self.rng
        level = self.rhythm.level(now)
        human_rate = level / self.shape.human_lines
        bot_rate = self.bot_level / self.shape.bot_lines
        if rng.random() * (human_rate + bot_rate) < bot_rate:
            bot = self.population.bot(rng, now)
            start = now
            family = bot.family
            if family is not None and family.interval_s and bot.busy_until:
                # A monitor keeps its phase: the next round starts on its schedule.
                interval = family.interval_s * 1000
                start = bot.busy_until + interval
                if start < now:
                    start += -(-(now - start) // interval) * interval
            steps = bot_steps(rng, bot, start)
            bot.busy_until = max(step.at for step in steps)
        else:
            person, returning = self.population.person(rng, now)
            steps = human_steps(rng, person, now, returning)
            self.population.session_ended(person, steps[-1].done)
        start, horizon = self.start_ms, self.horizon_ms
        if horizon is None:
            kept = [step for step in steps if step.at >= start]
        else:
            kept = [step for step in steps if start <= step.at <= horizon]
            for step in kept:
                if step.done > horizon:
                    step.done = horizon  # logged at the very end of the window
        return kept

    def _next_gap_ms(self, now: int) -> int:
        """Time to the next session start: exponential, at the rate the pace asks for now."""
        shape = self.shape
        level = self.rhythm.level(now)
        wanted = self.pace.line_rate(now) * (1.0 - self.malformed_share)
        total_level = level + self.bot_level
        lines_per_session = 1.0 / (
            level / total_level / shape.human_lines + self.bot_level / total_level / shape.bot_lines
        )
        gain = 1.0
        if now >= self.start_ms and wanted > 0:
            target = self.pace.target(now) * (1.0 - self.malformed_share)
            gain = 1.0 + (target - self.emitted) / (wanted * self.steering_ms / 1000.0)
            gain = min(4.0, max(0.25, gain))
        sessions_per_second = wanted * gain / lines_per_session
        return int(self.rng.expovariate(sessions_per_second) * 1000.0)

    def events(self) -> Iterator[Step | str]:
        rng = self.rng
        heap: list[tuple[int, int, list[Step], int]] = []
        order = 0  # tie-break for equal times: first planned, first logged
        malformed_odds = self.malformed_share / (1.0 - self.malformed_share)
        formatter = LineFormatter()
        horizon = self.horizon_ms
        arrival = self.start_ms - self.warmup_ms
        heappush, heapreplace, heappop = heapq.heappush, heapq.heapreplace, heapq.heappop
        while True:
            while heap and heap[0][0] <= arrival:
                _, _, steps, index = heap[0]
                step = steps[index]
                if malformed_odds and rng.random() < malformed_odds:
                    yield malformed_line(formatter.line(step), rng, step.at // 1000)
                self.emitted += 1
                yield step
                index += 1
                order += 1
                if index < len(steps):
                    heapreplace(heap, (steps[index].done, order, steps, index))
                else:
                    heappop(heap)
            steps = self._plan(arrival)
            if steps:
                order += 1
                heappush(heap, (steps[0].done, order, steps, 0))
            arrival += self._next_gap_ms(arrival)
            if horizon is not None and arrival > horizon:
                arrival = horizon


def bulk_engine(
    rng: random.Random,
    catalog: Catalog,
    *,
    lines: int,
    start_ms: int,
    end_ms: int,
    malformed_share: float = DEFAULT_MALFORMED_SHARE,
) -> TrafficEngine:
    """`lines` lines timestamped within [start_ms, end_ms], denser at busy local hours."""
    rhythm = Rhythm(catalog)
    span = end_ms - start_ms
    minutes = range(start_ms // 60_000, end_ms // 60_000 + 1)
    mean_level = sum(rhythm.level(m * 60_000) for m in minutes) / len(minutes)
    bot_level = BOT_LINE_SHARE / (1.0 - BOT_LINE_SHARE) * mean_level
    finish_early = min(120_000, span // 100)
    pace = BulkPace(rhythm, start_ms, end_ms, lines, bot_level, finish_early)
    return TrafficEngine(
        rng,
        catalog,
        pace,
        start_ms,
        end_ms,
        rhythm=rhythm,
        malformed_share=malformed_share,
        bot_level=bot_level,
        steering_ms=max(30_000, min(600_000, span // 12)),
        warmup_ms=min(MAX_WARMUP_MS, span // 10, int(_WARMUP_LINES * span / lines)),
    )


def steady_engine(
    rng: random.Random,
    catalog: Catalog,
    *,
    rate: float,
    start_ms: int,
    malformed_share: float = DEFAULT_MALFORMED_SHARE,
) -> TrafficEngine:
    """`rate` lines a second from `start_ms` on, with no end."""
    rhythm = Rhythm(catalog)
    bot_level = BOT_LINE_SHARE / (1.0 - BOT_LINE_SHARE) * rhythm.daily_mean()
    return TrafficEngine(
        rng,
        catalog,
        SteadyPace(rate, start_ms),
        start_ms,
        None,
        rhythm=rhythm,
        malformed_share=malformed_share,
        bot_level=bot_level,
        steering_ms=30_000,
        warmup_ms=min(MAX_WARMUP_MS, int(_REALTIME_WARMUP_LINES / rate * 1000)),
    )
