"""Standard (Vixie) cron expressions on top of APScheduler 3.x triggers.

APScheduler 3's `CronTrigger.from_crontab` differs from cron in two ways this module corrects:

* day-of-week numbers: cron counts 0 (and 7) as Sunday, APScheduler 3 counts 0 as Monday
  (APScheduler issue #286). Numbers, ranges and steps are translated to day names.
* day-of-month *and* day-of-week both restricted: cron fires when **either** matches
  (`0 0 1,15 * 1` is "the 1st, the 15th and every Monday"); a single APScheduler trigger requires
  both. Such expressions become an `OrTrigger` of two cron triggers.

It also accepts the `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight` and
`@hourly` macros and names for months and weekdays (`jan`, `mon-fri`).
"""

from __future__ import annotations

from datetime import tzinfo
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

__all__ = ["cron_trigger"]

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DAY_INDEX = {name: i for i, name in enumerate(_DAY_NAMES)}


def _day_number(token: str) -> int:
    token = token.strip().lower()
    if token in _DAY_INDEX:
        return _DAY_INDEX[token]
    if not token.isdigit() or not 0 <= int(token) <= 7:
        raise ValueError(f"day of week {token!r} is not 0-7 or a day name (sun, mon, ...)")
    return int(token) % 7


def _day_of_week(field: str) -> str:
    """Translate a cron day-of-week field into an explicit APScheduler list of day names."""
    if field in ("*", "?"):
        return "*"
    days: set[int] = set()
    for item in field.split(","):
        rng, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ValueError(f"day-of-week step {step_text!r} must be a positive integer")
            step = int(step_text)
        if rng in ("*", "?"):
            start, end = 0, 6
        elif "-" in rng:
            lo, hi = rng.split("-", 1)
            start, end = _day_number(lo), _day_number(hi)
            if hi.strip() == "7":
                end = 7
            if end < start:
                raise ValueError(f"day-of-week range {rng!r} runs backwards")
        else:
            start = _day_number(rng)
            end = 6 if step_text else start
        days.update(d % 7 for d in range(start, end + 1, step))
    # APScheduler 3 numbers Monday as 0, so hand it names, which mean the same in both.
    return ",".join(_DAY_NAMES[d] for d in sorted(days))


def cron_trigger(expression: str, timezone: tzinfo) -> BaseTrigger:
    """Build an APScheduler trigger with standard cron semantics.

    Args:
        expression: Five fields (`minute hour day month day_of_week`) or a macro (`@daily`).
        timezone: The zone wall-clock times are read in (DST transitions follow APScheduler).

    Returns:
        A `CronTrigger`, or an `OrTrigger` when both day fields are restricted.

    Raises:
        ValueError: A malformed expression (the message names the field).
    """
    text = " ".join(expression.split())
    text = MACROS.get(text.lower(), text)
    fields = text.split(" ")
    if len(fields) != 5:
        raise ValueError(
            f"a cron expression has 5 fields (minute hour day month day_of_week), got "
            f"{len(fields)} in {expression!r}"
        )
    minute, hour, day, month, dow = fields
    names = ("minute", "hour", "day", "month", "day_of_week")
    day_of_week = _day_of_week(dow)
    kwargs: dict[str, Any] = {"minute": minute, "hour": hour, "month": month, "timezone": timezone}

    def make(**extra: str) -> CronTrigger:
        try:
            return CronTrigger(**kwargs, **extra)
        except ValueError as exc:
            field = "expression"
            for name, value in zip(names, (minute, hour, day, month, day_of_week), strict=True):
                try:
                    CronTrigger(**{name: value}, timezone=timezone)
                except ValueError:
                    field = name
                    break
            raise ValueError(f"invalid cron {field} in {expression!r}: {exc}") from None

    if day not in ("*", "?") and day_of_week != "*":
        return OrTrigger([make(day=day), make(day_of_week=day_of_week)])
    return make(day=day, day_of_week=day_of_week)
