"""Retry schedules: exponential backoff with jitter."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from attrs import define, field

from contractspec.core import ConfigurationError

__all__ = ["RetryPolicy"]

_JITTER = ("full", "equal", "none")


def _positive_int(name: str) -> Callable[[Any, Any, Any], None]:
    def check(_inst: object, _attr: object, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(
                f"RetryPolicy.{name} must be a positive integer, got {value!r}",
                details={"field": name},
            )

    return check


def _non_negative(name: str) -> Callable[[Any, Any, Any], None]:
    def check(_inst: object, _attr: object, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigurationError(
                f"RetryPolicy.{name} must be a number of seconds >= 0, got {value!r}",
                details={"field": name},
            )

    return check


def _jitter(_inst: object, _attr: object, value: object) -> None:
    if value not in _JITTER:
        raise ConfigurationError(
            f"RetryPolicy.jitter must be one of {', '.join(_JITTER)}, got {value!r}",
            details={"field": "jitter"},
        )


@define(frozen=True)
class RetryPolicy:
    """How often and how far apart a failing delivery is retried.

    The delay before attempt `n + 1` (after `n` failures) is
    `d = min(max_delay, base_delay * multiplier ** (n - 1))`, then jittered: `full` draws
    uniformly from `[0, d]`, `equal` from `[d/2, d]`, `none` keeps `d`. This is "exponential
    backoff and jitter" as described by Marc Brooker (AWS Architecture Blog, 2015); full jitter
    spreads retries of many failing consumers the most.

    Attributes:
        max_attempts: Total attempts including the first (1 = never retry).
        base_delay: Delay after the first failure, in seconds.
        max_delay: Upper bound of any delay, in seconds.
        multiplier: Growth factor per failure (>= 1).
        jitter: `full` (default), `equal` or `none`.

    Raises:
        ConfigurationError: A field is out of range (the message names it).
    """

    max_attempts: int = field(default=3, validator=_positive_int("max_attempts"))
    base_delay: float = field(default=0.05, validator=_non_negative("base_delay"))
    max_delay: float = field(default=5.0, validator=_non_negative("max_delay"))
    multiplier: float = field(default=2.0, validator=_non_negative("multiplier"))
    jitter: str = field(default="full", validator=_jitter)

    def __attrs_post_init__(self) -> None:
        if self.multiplier < 1:
            raise ConfigurationError(
                f"RetryPolicy.multiplier must be >= 1, got {self.multiplier!r}",
                details={"field": "multiplier"},
            )

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after `failures` failed attempts (`failures >= 1`)."""
        exponent = max(failures - 1, 0)
        try:
            raw = self.base_delay * self.multiplier**exponent
        except OverflowError:
            raw = self.max_delay
        capped = min(self.max_delay, raw)
        draw = (rng or random).random()
        if self.jitter == "full":
            return capped * draw
        if self.jitter == "equal":
            return capped / 2 + capped / 2 * draw
        return capped

    def backoff(self, failures: int, rng: random.Random | None = None) -> timedelta:
        """`delay()` as a `timedelta` (for persisted `next_attempt_at` columns)."""
        return timedelta(seconds=self.delay(failures, rng))

    def gives_up_after(self, attempts: int) -> bool:
        """True once `attempts` attempts were made and none is left."""
        return attempts >= self.max_attempts
