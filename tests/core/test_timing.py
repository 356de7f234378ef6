from __future__ import annotations

import datetime
import math

import pytest

from crumpets.core.timing import ETATimer, RemainingTimer, nicetime


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_remaining_from_average_speed():
    clock = FakeClock()
    timer = RemainingTimer(10, clock=clock)
    assert timer.remaining() == math.inf
    clock.now += 2.0
    assert timer() == pytest.approx(18.0)  # 1 step in 2 s, 9 left
    clock.now += 2.0
    assert timer() == pytest.approx(16.0)  # 2 steps in 4 s, 8 left
    clock.now += 8.0
    assert timer(4) == pytest.approx(8.0)  # 6 steps in 12 s, 4 left
    assert timer.count == 6


def test_remaining_is_zero_at_and_beyond_goal():
    clock = FakeClock()
    timer = RemainingTimer(2, clock=clock)
    clock.now += 1
    timer()
    assert timer() == 0.0
    assert timer() == 0.0


def test_eta_is_now_plus_remaining():
    clock = FakeClock()
    timer = ETATimer(4, clock=clock)
    clock.now += 30.0
    before = datetime.datetime.now()
    eta = timer()  # 1 step in 30 s, 3 left: 90 s
    after = datetime.datetime.now()
    assert isinstance(eta, datetime.datetime)
    delta = datetime.timedelta(seconds=90)
    assert before + delta <= eta <= after + delta
    assert isinstance(timer, RemainingTimer)


def test_eta_unknown_before_first_step():
    timer = ETATimer(4, clock=FakeClock())
    assert timer(0) is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "00:00"),
        (5, "00:05"),
        (59.6, "01:00"),
        (61, "01:01"),
        (3599, "59:59"),
        (3600, "1:00:00"),
        (3725, "1:02:05"),
        (86399, "23:59:59"),
        (86400, "1d 00:00:00"),
        (90061, "1d 01:01:01"),
        (-75, "-01:15"),
        (-0.2, "00:00"),
        (math.inf, "--:--"),
        (math.nan, "--:--"),
    ],
)
def test_nicetime(seconds, text):
    assert nicetime(seconds) == text
