"""Estimate how long a repeated operation still takes, and format durations."""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable

__all__ = ["ETATimer", "RemainingTimer", "nicetime"]


class RemainingTimer:
    """Estimates the remaining time of an operation done in ``goal`` steps.

    Each call counts one step done. The average speed since the timer was
    created gives the estimated time for the steps that are left.

    Args:
        goal: the number of calls until the operation is assumed to be done.
        clock: monotonic clock in seconds; replace it to test without waiting.

    Example:
        >>> timer = RemainingTimer(100)
        >>> for batch in range(100):
        ...     remaining = timer()  # seconds left, as a float
    """

    def __init__(self, goal: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.goal = goal
        self.count = 0
        self._clock = clock
        self._start = clock()

    def remaining(self) -> float:
        """Return the estimated remaining seconds without counting a step.

        Returns:
            Seconds left as a float; ``math.inf`` before the first step,
            0.0 once ``goal`` steps are done.
        """
        left = self.goal - self.count
        if left <= 0:
            return 0.0
        if self.count == 0:
            return math.inf
        elapsed = self._clock() - self._start
        return max(0.0, elapsed * left / self.count)

    def __call__(self, n: int = 1) -> float:
        """Count ``n`` steps done and return the estimated remaining seconds.

        Args:
            n: number of steps done since the last call.

        Returns:
            Remaining seconds as a float (0.0 once ``goal`` is reached).
        """
        self.count += n
        return self.remaining()


class ETATimer(RemainingTimer):
    """A RemainingTimer that returns the estimated time of arrival instead.

    Calling it counts a step and returns a local ``datetime.datetime``: now plus
    the remaining time, or None while no estimate exists (before any step).

    Args:
        goal: the number of calls until the operation is assumed to be done.
        clock: monotonic clock in seconds; replace it to test without waiting.
    """

    def __call__(self, n: int = 1) -> datetime.datetime | None:  # type: ignore[override]
        """Count ``n`` steps done and return the estimated time of arrival.

        Args:
            n: number of steps done since the last call.

        Returns:
            Local naive datetime of the estimated end, or None when unknown.
        """
        remaining = super().__call__(n)
        if not math.isfinite(remaining):
            return None
        return datetime.datetime.now() + datetime.timedelta(seconds=remaining)


def nicetime(seconds: float) -> str:
    """Format a duration in seconds as a short string, rounded to whole seconds.

    Formats: ``"MM:SS"`` below one hour, ``"H:MM:SS"`` below one day and
    ``"Nd HH:MM:SS"`` beyond; negative durations get a leading ``-``;
    ``inf``/``nan`` (no estimate yet) give ``"--:--"``.

    Args:
        seconds: duration in seconds.

    Returns:
        String representation of the duration.

    Example:
        >>> nicetime(3725)
        '1:02:05'
        >>> nicetime(90061)
        '1d 01:01:01'
    """
    if not math.isfinite(seconds):
        return "--:--"
    total = round(abs(seconds))
    sign = "-" if seconds < 0 and total else ""
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{sign}{days}d {hours:02d}:{minutes:02d}:{secs:02d}"
    if hours:
        return f"{sign}{hours}:{minutes:02d}:{secs:02d}"
    return f"{sign}{minutes:02d}:{secs:02d}"
