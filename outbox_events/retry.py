"""When a failed delivery is tried again."""

from __future__ import annotations

import dataclasses
import math
import random

from outbox_events.exceptions import ConfigurationError

MAX_ATTEMPTS = 10
INITIAL_DELAY = 1.0  # seconds
MAX_DELAY = 300.0  # seconds
MULTIPLIER = 2.0
JITTER = 0.5  # fraction of the delay that is randomised away


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter and a bounded number of attempts.

    The n-th failed attempt waits ``min(initial_delay * multiplier ** (n - 1), max_delay)``
    seconds, less a random part of up to ``jitter`` of it; once ``max_attempts`` attempts have
    failed the delivery is dead-lettered.

    Args:
        max_attempts: Attempts per destination before dead-lettering (counting the first).
        initial_delay: Seconds before the first retry.
        max_delay: Upper bound of the delay, in seconds.
        multiplier: Growth of the delay from one attempt to the next.
        jitter: Fraction (0 to 1) of each delay that is random, so that retries spread out.
    """

    max_attempts: int = MAX_ATTEMPTS
    initial_delay: float = INITIAL_DELAY
    max_delay: float = MAX_DELAY
    multiplier: float = MULTIPLIER
    jitter: float = JITTER

    def __post_init__(self) -> None:
        if not _is_int(self.max_attempts) or self.max_attempts < 1:
            raise ConfigurationError(
                f"max_attempts must be an int of at least 1, got {self.max_attempts!r}"
            )
        for label in ("initial_delay", "max_delay", "multiplier", "jitter"):
            value = getattr(self, label)
            if not _is_finite_number(value):
                raise ConfigurationError(f"{label} must be a finite number, got {value!r}")
        if self.initial_delay < 0 or self.max_delay < self.initial_delay:
            raise ConfigurationError(
                "delays must satisfy 0 <= initial_delay <= max_delay, got "
                f"initial_delay={self.initial_delay}, max_delay={self.max_delay}"
            )
        if self.multiplier < 1:
            raise ConfigurationError(f"multiplier must be at least 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError(f"jitter must be between 0 and 1, got {self.jitter}")

    def gives_up_after(self, attempts: int) -> bool:
        """Whether a delivery that has failed ``attempts`` times is dead-lettered."""
        return attempts >= self.max_attempts

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        return self._base_delay(attempts) * (1 - self.jitter * random.random())

    def _base_delay(self, attempts: int) -> float:
        if self.initial_delay == 0:
            return 0.0
        try:
            grown = self.initial_delay * self.multiplier ** max(attempts - 1, 0)
        except OverflowError:  # far past max_delay already
            return float(self.max_delay)
        return float(min(grown, self.max_delay))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value)
