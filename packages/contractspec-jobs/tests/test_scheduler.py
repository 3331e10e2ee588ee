"""Schedules: standard cron semantics, persisted fire times, misfires, racing schedulers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from jobs_app import Report, nightly_report

from contractspec.core import SpecDefinitionError, SpecRegistry
from contractspec.core.testing import FakeClock
from contractspec.jobs import Fire, JobQueue, JobStatus, Scheduler, define_job, define_schedule

reports = define_schedule(nightly_report, cron="0 3 * * *", payload=Report(day="today"))
every_15 = define_schedule(
    nightly_report,
    name="crm.report.quarter_hourly",
    interval=timedelta(minutes=15),
    payload={"day": "q"},
    misfire_grace=None,
    coalesce=False,
)


def fires(spec_cron: str, start: datetime, n: int, tz: str = "UTC") -> list[str]:
    spec = define_schedule(nightly_report, cron=spec_cron, timezone=tz, payload={"day": "x"})
    out: list[str] = []
    at = start
    for _ in range(n):
        nxt = spec.next_fire_time(at)
        assert nxt is not None
        out.append(nxt.astimezone(ZoneInfo(tz)).strftime("%a %Y-%m-%d %H:%M"))
        at = nxt
    return out


def test_cron_weekday_numbers_follow_cron_not_apscheduler_3() -> None:
    """Day-of-week 0 and 7 are Sunday and 1-5 is Monday to Friday, as in standard cron."""
    jan1 = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday
    assert fires("0 3 * * 0", jan1, 2) == ["Sun 2024-01-07 03:00", "Sun 2024-01-14 03:00"]
    assert fires("0 3 * * 7", jan1, 1) == ["Sun 2024-01-07 03:00"]
    assert fires("30 9 * * 1-5", datetime(2024, 1, 5, 10, tzinfo=UTC), 2) == [
        "Mon 2024-01-08 09:30",
        "Tue 2024-01-09 09:30",
    ]
    assert fires("0 0 * * */2", jan1, 4) == [
        "Tue 2024-01-02 00:00",
        "Thu 2024-01-04 00:00",
        "Sat 2024-01-06 00:00",
        "Sun 2024-01-07 00:00",
    ]
    assert fires("0 0 * * 5-7", jan1, 3) == [
        "Fri 2024-01-05 00:00",
        "Sat 2024-01-06 00:00",
        "Sun 2024-01-07 00:00",
    ]


def test_cron_day_of_month_or_day_of_week() -> None:
    """With both day fields restricted, cron fires when either matches (1st, 15th, and Mondays)."""
    assert fires("0 0 1,15 * 1", datetime(2024, 1, 1, 1, tzinfo=UTC), 4) == [
        "Mon 2024-01-08 00:00",
        "Mon 2024-01-15 00:00",
        "Mon 2024-01-22 00:00",
        "Mon 2024-01-29 00:00",
    ]
    assert fires("0 0 1,15 * 1", datetime(2024, 1, 30, tzinfo=UTC), 2) == [
        "Thu 2024-02-01 00:00",
        "Mon 2024-02-05 00:00",
    ]


def test_cron_steps_ranges_names_macros_and_time_zones() -> None:
    """Steps, ranges, month/day names, macros and DST-aware zones all work."""
    jan1 = datetime(2024, 1, 1, tzinfo=UTC)
    assert fires("*/20 9-10 * jan,feb mon-fri", jan1, 4) == [
        "Mon 2024-01-01 09:00",
        "Mon 2024-01-01 09:20",
        "Mon 2024-01-01 09:40",
        "Mon 2024-01-01 10:00",
    ]
    assert fires("@weekly", jan1, 1) == ["Sun 2024-01-07 00:00"]
    assert fires("@monthly", jan1, 2) == ["Thu 2024-02-01 00:00", "Fri 2024-03-01 00:00"]
    # 03:00 Paris is 02:00 UTC in winter and 01:00 UTC in summer (DST began 2024-03-31).
    spec = define_schedule(
        nightly_report, cron="0 3 * * *", timezone="Europe/Paris", payload={"day": "x"}
    )
    winter = spec.next_fire_time(datetime(2024, 3, 30, tzinfo=UTC))
    summer = spec.next_fire_time(datetime(2024, 3, 31, 12, tzinfo=UTC))
    assert winter == datetime(2024, 3, 30, 2, tzinfo=UTC)
    assert summer == datetime(2024, 4, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "0 3 * *"}, "a cron expression has 5 fields"),
        ({"cron": "61 3 * * *"}, "invalid cron minute in '61 3 * * *'"),
        ({"cron": "0 3 * * 8"}, "day of week '8' is not 0-7"),
        ({"cron": "0 3 * * *", "interval": 60}, "give exactly one of cron="),
        ({}, "give exactly one of cron="),
        ({"interval": -5}, "interval must be positive"),
        ({"cron": "0 3 * * *", "timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"cron": "0 3 * * *", "payload": {"day": 3}}, "its payload is payload for job"),
    ],
)
def test_bad_schedules_are_refused_at_definition(kwargs: dict[str, object], message: str) -> None:
    """Malformed crons, zones, intervals and payloads raise SpecDefinitionError saying what is wrong."""
    kwargs.setdefault("payload", {"day": "x"})
    with pytest.raises(SpecDefinitionError) as info:
        define_schedule(nightly_report, **kwargs)  # type: ignore[arg-type]
    assert message in info.value.message


async def test_scheduler_enqueues_each_fire_once_with_its_time(
    queue: JobQueue, clock: FakeClock
) -> None:
    """The first pass only records the next fire; due fires are enqueued with unique keys."""
    clock.set(datetime(2024, 1, 1, 2, 59, tzinfo=UTC))
    scheduler = Scheduler(queue, [reports])
    assert await scheduler.tick() == []
    assert await scheduler.next_wakeup() == datetime(2024, 1, 1, 3, tzinfo=UTC)
    clock.set(datetime(2024, 1, 1, 3, 0, 5, tzinfo=UTC))
    assert await scheduler.tick() == [
        Fire("crm.report.nightly", datetime(2024, 1, 1, 3, tzinfo=UTC), True)
    ]
    assert await scheduler.tick() == []
    (job,) = await queue.list()
    assert (job.type, job.payload, job.unique_key, job.scheduled_at) == (
        "crm.report.nightly",
        {"day": "today"},
        "schedule:crm.report.nightly:2024-01-01T03:00:00+00:00",
        datetime(2024, 1, 1, 3, tzinfo=UTC),
    )
    assert await scheduler.next_wakeup() == datetime(2024, 1, 2, 3, tzinfo=UTC)


async def test_racing_schedulers_enqueue_a_fire_time_once(
    queue: JobQueue, clock: FakeClock
) -> None:
    """Several scheduler instances on one store enqueue each fire time exactly once."""
    import asyncio

    clock.set(datetime(2024, 1, 1, 2, tzinfo=UTC))
    schedulers = [Scheduler(queue, [reports, every_15]) for _ in range(3)]
    await schedulers[0].tick()
    clock.set(datetime(2024, 1, 1, 3, 1, tzinfo=UTC))
    await asyncio.gather(*(s.tick() for s in schedulers))
    await asyncio.gather(*(s.tick() for s in schedulers))
    keys = sorted(j.unique_key or "" for j in await queue.list())
    assert keys == [
        "schedule:crm.report.nightly:2024-01-01T03:00:00+00:00",
        "schedule:crm.report.quarter_hourly:2024-01-01T02:15:00+00:00",
        "schedule:crm.report.quarter_hourly:2024-01-01T02:30:00+00:00",
        "schedule:crm.report.quarter_hourly:2024-01-01T02:45:00+00:00",
        "schedule:crm.report.quarter_hourly:2024-01-01T03:00:00+00:00",
    ]


async def test_misfires_beyond_grace_are_skipped_and_coalesced(
    queue: JobQueue, clock: FakeClock
) -> None:
    """After downtime, fires older than misfire_grace are skipped; the rest coalesce into one."""
    hourly = define_schedule(
        nightly_report,
        name="crm.report.hourly",
        cron="0 * * * *",
        payload={"day": "h"},
        misfire_grace=timedelta(hours=2, minutes=30),
    )
    clock.set(datetime(2024, 1, 1, 0, 30, tzinfo=UTC))
    scheduler = Scheduler(queue, [hourly])
    await scheduler.tick()
    clock.set(datetime(2024, 1, 1, 6, 10, tzinfo=UTC))  # down from 00:30 to 06:10
    handled = await scheduler.tick()
    assert [(f.fire_time.hour, f.enqueued) for f in handled] == [
        (1, False),
        (4, False),
        (5, False),
        (6, True),
    ]
    (job,) = await queue.list()
    assert job.scheduled_at == datetime(2024, 1, 1, 6, tzinfo=UTC)


async def test_schedule_state_survives_a_restart(queue: JobQueue, clock: FakeClock) -> None:
    """A new scheduler (after a restart) resumes from the stored next fire, catching up late fires."""
    clock.set(datetime(2024, 1, 1, 2, 50, tzinfo=UTC))
    await Scheduler(queue, [reports]).tick()
    clock.set(datetime(2024, 1, 1, 3, 4, tzinfo=UTC))  # within the default 5-minute grace
    restarted = Scheduler(queue, [reports])
    assert await restarted.tick() == [
        Fire("crm.report.nightly", datetime(2024, 1, 1, 3, tzinfo=UTC), True)
    ]
    assert (await queue.counts())[JobStatus.QUEUED] == 1


async def test_changed_schedule_definition_restarts_from_now(
    queue: JobQueue, clock: FakeClock
) -> None:
    """When a schedule's cron changes, its stored fire time is recomputed instead of firing stale."""
    clock.set(datetime(2024, 1, 1, 1, tzinfo=UTC))
    await Scheduler(queue, [reports]).tick()
    moved = define_schedule(nightly_report, cron="30 4 * * *", payload={"day": "today"})
    scheduler = Scheduler(queue, SpecRegistry(nightly_report, moved))
    await scheduler.tick()
    assert await scheduler.next_wakeup() == datetime(2024, 1, 1, 4, 30, tzinfo=UTC)


def test_interval_fire_times_are_aligned_for_every_instance() -> None:
    """Interval schedules fire at anchor + k * interval, whatever time a scheduler starts."""
    a = every_15.next_fire_time(datetime(2024, 5, 5, 10, 7, 13, tzinfo=UTC))
    b = every_15.next_fire_time(datetime(2024, 5, 5, 10, 14, 59, tzinfo=UTC))
    assert a == b == datetime(2024, 5, 5, 10, 15, tzinfo=UTC)


def test_schedules_and_jobs_register_in_the_spec_registry() -> None:
    """Job, schedule and trigger specs live in core's SpecRegistry next to other kinds."""
    from contractspec.jobs import on_event

    trigger = on_event("billing.invoice.overdue", enqueue=nightly_report)
    registry = SpecRegistry(nightly_report, reports, trigger)
    assert registry.kinds() == ["job", "job_trigger", "schedule"]
    assert registry.get_spec("job", "crm.report.nightly") is nightly_report
    assert registry.get_spec("job_trigger", "billing.invoice.overdue -> crm.report.nightly") == (
        trigger
    )
    ir = registry.to_ir()["specs"]
    (job_ir,) = ir["job"]
    assert (job_ir["name"], job_ir["queue"], job_ir["priority"], job_ir["max_attempts"]) == (
        "crm.report.nightly",
        "reports",
        5,
        5,
    )
    assert sorted(job_ir["schemas"]) == ["payload", "result"]
    assert [s["cron"] for s in ir["schedule"]] == ["0 3 * * *"]
    assert [t["event"] for t in ir["job_trigger"]] == ["billing.invoice.overdue"]
    other = define_job("crm.report.nightly", payload=Report, version=2)
    registry.register(other)
    assert registry.versions("crm.report.nightly", kind="job") == [1, 2]
