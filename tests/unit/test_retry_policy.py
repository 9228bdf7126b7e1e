"""RetryPolicy: exponential backoff with jitter, bounded attempts, checked arguments."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from outbox_events import ConfigurationError, RetryPolicy


def test_defaults_match_the_documented_policy() -> None:
    policy = RetryPolicy()
    bases = [RetryPolicy(jitter=0).delay(n) for n in range(1, 11)]

    assert policy.max_attempts == 10
    assert bases[:3] == [1.0, 2.0, 4.0], "defaults must start at 1 s and double"
    assert max(bases) == 300.0, "defaults must cap at 5 min"


def test_delays_grow_without_jitter_and_stop_at_max_delay() -> None:
    policy = RetryPolicy(initial_delay=1, max_delay=20, multiplier=3, jitter=0)
    delays = [policy.delay(n) for n in range(1, 7)]

    assert delays == [1, 3, 9, 20, 20, 20]


def test_delay_bounds_with_jitter_never_decrease_and_never_exceed_max_delay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = RetryPolicy(initial_delay=0.5, max_delay=60, multiplier=2, jitter=0.3)
    attempts = range(1, 30)
    monkeypatch.setattr(random, "random", lambda: 0.0)
    highest = [policy.delay(n) for n in attempts]
    monkeypatch.setattr(random, "random", lambda: 1.0 - 1e-12)
    lowest = [policy.delay(n) for n in attempts]

    assert highest == sorted(highest), f"upper bounds decreased: {highest}"
    assert lowest == sorted(lowest), f"lower bounds decreased: {lowest}"
    assert max(highest) == 60
    for high, low in zip(highest, lowest, strict=True):
        assert low == pytest.approx(high * 0.7), "jitter took away more than its fraction"


def test_jittered_delays_stay_within_their_bounds_and_spread_out() -> None:
    policy = RetryPolicy(initial_delay=10, max_delay=100, jitter=0.5)
    samples = [policy.delay(2) for _ in range(500)]

    assert all(10 <= delay <= 20 for delay in samples), f"out of [10, 20]: {samples}"
    assert len(set(samples)) > 1, "jitter did not spread the delays"


def test_delay_stays_at_max_delay_for_very_many_attempts() -> None:
    policy = RetryPolicy(max_attempts=100_000, jitter=0)

    assert policy.delay(5000) == policy.max_delay
    assert RetryPolicy(initial_delay=0, max_delay=0).delay(5000) == 0


def test_gives_up_once_max_attempts_have_failed() -> None:
    policy = RetryPolicy(max_attempts=3)

    assert [policy.gives_up_after(n) for n in range(1, 5)] == [False, False, True, True]
    assert RetryPolicy(max_attempts=1).gives_up_after(1), "max_attempts=1 means no retry"


@pytest.mark.parametrize(
    "arguments",
    [
        {"max_attempts": 0},
        {"max_attempts": 2.5},
        {"max_attempts": True},
        {"max_attempts": "3"},
        {"initial_delay": -1},
        {"initial_delay": 10, "max_delay": 5},
        {"initial_delay": math.nan},
        {"max_delay": math.inf},
        {"initial_delay": "1"},
        {"multiplier": 0.5},
        {"multiplier": math.nan},
        {"jitter": -0.1},
        {"jitter": 1.5},
        {"jitter": math.nan},
    ],
    ids=repr,
)
def test_invalid_arguments_are_a_configuration_error(arguments: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**arguments)
