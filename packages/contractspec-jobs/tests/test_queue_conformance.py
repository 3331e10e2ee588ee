"""One conformance suite for every JobQueue adapter: memory, SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from jobs_app import Email, invoice_reminder, send_email

from contractspec.core import MemoryUnitOfWork, SpecValidationError, UnitOfWork
from contractspec.core.testing import FakeClock
from contractspec.jobs import (
    Job,
    JobQueue,
    JobStatus,
    LeaseLostError,
    UnknownJobTypeError,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
ZERO = dict.fromkeys(JobStatus, 0)


def counts(**non_zero: int) -> dict[JobStatus, int]:
    return {**ZERO, **{JobStatus(k): v for k, v in non_zero.items()}}


def unit_of_work(queue: JobQueue) -> UnitOfWork:
    uow = getattr(queue, "unit_of_work", None)
    return uow if uow is not None else MemoryUnitOfWork()


async def test_enqueue_stores_a_queued_job_with_spec_defaults(queue: JobQueue) -> None:
    """An enqueued job is stored queued, with the spec's queue, priority and attempts."""
    job_id = await queue.enqueue("crm.report.nightly", {"day": "2024-01-01"})
    assert job_id == "job-000001"
    job = await queue.get(job_id)
    assert job == Job(
        id="job-000001",
        type="crm.report.nightly",
        payload={"day": "2024-01-01"},
        status=JobStatus.QUEUED,
        queue="reports",
        priority=5,
        attempts=0,
        max_attempts=5,
        scheduled_at=T0,
        created_at=T0,
    )
    assert await queue.get("nope") is None


async def test_bad_payload_is_rejected_at_enqueue(queue: JobQueue) -> None:
    """A payload that fails validation raises SpecValidationError naming the field; nothing is stored."""
    with pytest.raises(SpecValidationError) as info:
        await queue.enqueue("mail.send", {"to": "x", "subject": 3})
    assert [e["field"] for e in info.value.errors] == ["to", "subject"]
    assert info.value.message.startswith("invalid payload for job mail.send@1: to: String should")
    assert await queue.counts() == ZERO


async def test_unknown_type_and_bad_options_are_rejected(queue: JobQueue) -> None:
    """Unknown job types and invalid options are refused with errors that name them."""
    with pytest.raises(UnknownJobTypeError) as unknown:
        await queue.enqueue("mail.sned", {"to": "ada@example.com"})
    assert "registered: billing.reminder, crm.report.nightly, mail.send" in unknown.value.message
    with pytest.raises(SpecValidationError) as option:
        await queue.enqueue("mail.send", {"to": "ada@example.com"}, delay_s=3)
    assert option.value.details["field"] == "delay_s"
    with pytest.raises(SpecValidationError) as when:
        await queue.enqueue(
            "mail.send", {"to": "ada@example.com"}, scheduled_at=datetime(2024, 1, 2)
        )
    assert "scheduled_at= of 'mail.send' must be a timezone-aware datetime" in when.value.message
    with pytest.raises(SpecValidationError):
        await queue.enqueue("mail.send", {"to": "ada@example.com"}, priority="high")
    assert await queue.counts() == ZERO


async def test_lease_order_priority_then_time_and_delays(queue: JobQueue, clock: FakeClock) -> None:
    """Leases take due jobs by priority (high first), then scheduled time; delayed jobs wait."""
    later = await queue.enqueue("mail.send", {"to": "late@x.io"}, delay=timedelta(minutes=5))
    low = await queue.enqueue("mail.send", {"to": "low@x.io"})
    high = await queue.enqueue("mail.send", {"to": "high@x.io"}, priority=10)
    low2 = await queue.enqueue("mail.send", {"to": "low2@x.io"})
    leased = await queue.lease(worker_id="w1", limit=10, queues=["default"])
    assert [j.id for j in leased] == [high, low, low2]
    assert {j.status for j in leased} == {JobStatus.RUNNING}
    assert [j.attempts for j in leased] == [1, 1, 1]
    assert [j.worker_id for j in leased] == ["w1", "w1", "w1"]
    assert leased[0].leased_until == T0 + timedelta(seconds=30)
    assert await queue.lease(worker_id="w2", limit=10, queues=["default"]) == []
    clock.advance(timedelta(minutes=5))
    again = await queue.lease(worker_id="w2", limit=10, queues=["default"])
    assert [j.id for j in again] == [later]


async def test_lease_respects_limit_queues_and_never_double_leases(queue: JobQueue) -> None:
    """Each due job is leased once; `limit` and `queues` bound what one lease returns."""
    ids = [await queue.enqueue("mail.send", {"to": f"u{i}@x.io"}) for i in range(5)]
    report = await queue.enqueue("crm.report.nightly", {"day": "d"})
    first = await queue.lease(worker_id="a", limit=2, queues=["default"])
    second = await queue.lease(worker_id="b", limit=10, queues=["default"])
    assert [j.id for j in first] == ids[:2]
    assert [j.id for j in second] == ids[2:]
    reports = await queue.lease(worker_id="c", limit=10, queues=["reports", "default"])
    assert [j.id for j in reports] == [report]
    with pytest.raises(SpecValidationError):
        await queue.lease(worker_id="c", limit=0)


async def test_complete_stores_result_and_checks_the_lease(
    queue: JobQueue, clock: FakeClock
) -> None:
    """Completing marks the job succeeded with its result; a wrong token raises LeaseLostError."""
    job_id = await queue.enqueue("crm.report.nightly", {"day": "d"})
    (job,) = await queue.lease(worker_id="w", queues=["reports"])
    assert job.lease_token is not None
    with pytest.raises(LeaseLostError):
        await queue.complete(job_id, "not-the-token", {"rows": 1})
    clock.advance(2)
    await queue.complete(job_id, job.lease_token, {"rows": 7})
    done = await queue.get(job_id)
    assert done is not None
    assert (done.status, done.result, done.finished_at, done.lease_token, done.leased_until) == (
        JobStatus.SUCCEEDED,
        {"rows": 7},
        T0 + timedelta(seconds=2),
        None,
        None,
    )
    with pytest.raises(LeaseLostError):
        await queue.complete(job_id, job.lease_token, {"rows": 7})


async def test_fail_retries_until_max_attempts_then_dead(queue: JobQueue, clock: FakeClock) -> None:
    """A failed run is retried at `retry_at`; the run that uses the last attempt goes dead."""
    job_id = await queue.enqueue("mail.send", {"to": "ada@x.io"})  # max_attempts=3
    statuses = []
    for attempt in range(1, 4):
        (job,) = await queue.lease(worker_id="w", queues=["default"])
        assert job.attempts == attempt
        assert job.lease_token is not None
        status = await queue.fail(
            job_id, job.lease_token, f"boom {attempt}", retry_at=clock.now() + timedelta(seconds=10)
        )
        statuses.append(status)
        assert await queue.lease(worker_id="w", queues=["default"]) == []
        clock.advance(10)
    assert statuses == [JobStatus.FAILED, JobStatus.FAILED, JobStatus.DEAD]
    dead = await queue.get(job_id)
    assert dead is not None
    assert (dead.status, dead.attempts, dead.last_error) == (JobStatus.DEAD, 3, "boom 3")
    assert dead.finished_at == T0 + timedelta(seconds=20)
    assert await queue.counts() == counts(dead=1)


async def test_fail_without_retry_dead_letters_at_once(queue: JobQueue) -> None:
    """`fail(retry_at=None)` sends the job to dead letter even with attempts left."""
    job_id = await queue.enqueue("mail.send", {"to": "ada@x.io"})
    (job,) = await queue.lease(worker_id="w", queues=["default"])
    assert job.lease_token is not None
    assert await queue.fail(job_id, job.lease_token, "no handler", retry_at=None) is JobStatus.DEAD
    assert [j.id for j in await queue.list(status="dead")] == [job_id]


async def test_expired_lease_is_recovered_and_old_holder_is_locked_out(
    queue: JobQueue, clock: FakeClock
) -> None:
    """A lease that expires (dead worker) is requeued by recover_expired; its old token is void."""
    job_id = await queue.enqueue("mail.send", {"to": "ada@x.io"})
    (job,) = await queue.lease(worker_id="w1", queues=["default"], lease_for=timedelta(seconds=5))
    assert job.lease_token is not None
    clock.advance(4)
    assert await queue.heartbeat(job_id, job.lease_token, lease_for=timedelta(seconds=5)) is True
    clock.advance(4)
    assert await queue.recover_expired() == 0  # the heartbeat moved the expiry to t=9s
    clock.advance(2)
    assert await queue.recover_expired() == 1
    recovered = await queue.get(job_id)
    assert recovered is not None
    assert (recovered.status, recovered.attempts, recovered.lease_token) == (
        JobStatus.QUEUED,
        1,
        None,
    )
    assert recovered.last_error is not None
    assert "lease expired" in recovered.last_error
    assert await queue.heartbeat(job_id, job.lease_token, lease_for=timedelta(seconds=5)) is False
    (again,) = await queue.lease(worker_id="w2", queues=["default"])
    assert again.attempts == 2
    with pytest.raises(LeaseLostError):
        await queue.complete(job_id, job.lease_token)
    assert again.lease_token is not None
    await queue.complete(job_id, again.lease_token)
    assert await queue.counts() == counts(succeeded=1)


async def test_expired_lease_out_of_attempts_goes_dead(queue: JobQueue, clock: FakeClock) -> None:
    """A job whose every attempt died with its worker is dead-lettered, never stuck in running."""
    job_id = await queue.enqueue("mail.send", {"to": "ada@x.io"}, max_attempts=1)
    await queue.lease(worker_id="w1", queues=["default"], lease_for=timedelta(seconds=1))
    clock.advance(5)
    assert await queue.recover_expired() == 1
    job = await queue.get(job_id)
    assert job is not None
    assert job.status is JobStatus.DEAD
    assert job.last_error is not None
    assert job.last_error.endswith("no attempts left")


async def test_release_gives_the_job_back_without_counting_the_attempt(queue: JobQueue) -> None:
    """Released jobs (graceful shutdown) are queued again with their attempt uncounted."""
    job_id = await queue.enqueue("mail.send", {"to": "ada@x.io"})
    (job,) = await queue.lease(worker_id="w", queues=["default"])
    assert job.lease_token is not None
    await queue.release(job_id, job.lease_token)
    back = await queue.get(job_id)
    assert back is not None
    assert (back.status, back.attempts) == (JobStatus.QUEUED, 0)


async def test_cancel_and_retry(queue: JobQueue) -> None:
    """Cancel stops queued and running jobs (heartbeats then fail); retry requeues with fresh attempts."""
    queued = await queue.enqueue("mail.send", {"to": "a@x.io"})
    running = await queue.enqueue("mail.send", {"to": "b@x.io"})
    assert await queue.cancel(queued) is True
    (job,) = await queue.lease(worker_id="w", queues=["default"])
    assert job.id == running
    assert job.lease_token is not None
    assert await queue.cancel(running) is True
    assert await queue.heartbeat(running, job.lease_token, lease_for=timedelta(seconds=30)) is False
    assert await queue.cancel(running) is False
    assert await queue.counts() == counts(cancelled=2)
    assert await queue.retry(queued) is True
    assert await queue.retry("missing") is False
    again = await queue.get(queued)
    assert again is not None
    assert (again.status, again.attempts, again.finished_at) == (JobStatus.QUEUED, 0, None)


async def test_unique_key_deduplicates_enqueues(queue: JobQueue) -> None:
    """A second job with the same unique key is not added: enqueue returns the first job's id."""
    first = await queue.enqueue(invoice_reminder, Email(to="ada@x.io"))
    second = await queue.enqueue("billing.reminder", {"to": "ada@x.io", "subject": "again"})
    other = await queue.enqueue("billing.reminder", {"to": "bob@x.io"})
    explicit = await queue.enqueue("mail.send", {"to": "c@x.io"}, unique_key="k1")
    explicit2 = await queue.enqueue("mail.send", {"to": "d@x.io"}, unique_key="k1")
    assert second == first
    assert other != first
    assert explicit2 == explicit
    job = await queue.get(first)
    assert job is not None
    assert (job.unique_key, job.payload["subject"]) == ("reminder:ada@x.io", "hello")
    assert await queue.counts() == counts(queued=3)


async def test_unique_keys_are_scoped_by_org(queue: JobQueue) -> None:
    """Org B enqueueing org A's unique key gets a job of its own; within an org, and among jobs
    without an org, the key still deduplicates (issue 14)."""
    a = await queue.enqueue(invoice_reminder, {"to": "ada@x.io", "subject": "a"}, org_id="org-a")
    b = await queue.enqueue(invoice_reminder, {"to": "ada@x.io", "subject": "b"}, org_id="org-b")
    a_again = await queue.enqueue(invoice_reminder, {"to": "ada@x.io"}, org_id="org-a")
    b_again = await queue.enqueue(invoice_reminder, {"to": "ada@x.io"}, org_id="org-b")
    orgless = await queue.enqueue(invoice_reminder, {"to": "ada@x.io", "subject": "none"})
    orgless_again = await queue.enqueue(invoice_reminder, {"to": "ada@x.io"})
    assert len({a, b, orgless}) == 3
    assert (a_again, b_again, orgless_again) == (a, b, orgless)
    stored = {
        job.id: (job.org_id, job.unique_key, job.payload["subject"]) for job in await queue.list()
    }
    assert stored == {
        a: ("org-a", "reminder:ada@x.io", "a"),
        b: ("org-b", "reminder:ada@x.io", "b"),
        orgless: (None, "reminder:ada@x.io", "none"),
    }
    # A batch and a caller's transaction are scoped the same way.
    c_first, c_second = await queue.enqueue_many(
        [(invoice_reminder, {"to": "ada@x.io"}), (invoice_reminder, {"to": "bob@x.io"})],
        org_id="org-c",
    )
    assert c_first not in (a, b, orgless)
    assert await queue.enqueue_many(
        [(invoice_reminder, {"to": "ada@x.io"}), (invoice_reminder, {"to": "bob@x.io"})],
        org_id="org-c",
    ) == [c_first, c_second]
    tx = await unit_of_work(queue).begin()
    d = await queue.enqueue(invoice_reminder, {"to": "ada@x.io"}, org_id="org-d", tx=tx)
    b_in_tx = await queue.enqueue(invoice_reminder, {"to": "ada@x.io"}, org_id="org-b", tx=tx)
    await tx.commit()
    assert d not in (a, b, orgless, c_first)
    assert b_in_tx == b
    assert await queue.counts() == counts(queued=6)


async def test_enqueue_in_a_transaction_exists_iff_it_commits(queue: JobQueue) -> None:
    """With `tx=`, the job is stored when the transaction commits and never when it rolls back."""
    uow = unit_of_work(queue)
    tx = await uow.begin()
    rolled = await queue.enqueue("mail.send", {"to": "a@x.io"}, tx=tx)
    keyed = await queue.enqueue("billing.reminder", {"to": "k@x.io"}, tx=tx)
    await tx.rollback()
    assert await queue.get(rolled) is None
    assert await queue.get(keyed) is None
    tx = await uow.begin()
    kept = await queue.enqueue("mail.send", {"to": "b@x.io"}, tx=tx)
    kept_keyed = await queue.enqueue("billing.reminder", {"to": "k@x.io"}, tx=tx)
    await tx.commit()
    assert await queue.counts() == counts(queued=2)
    assert {j.id for j in await queue.list()} == {kept, kept_keyed}


async def _dead(queue: JobQueue, org_id: str | None = None) -> str:
    job_id = await queue.enqueue("mail.send", {"to": "d@x.io"}, org_id=org_id)
    (job,) = await queue.lease(worker_id="w")
    assert job.id == job_id
    assert job.lease_token is not None
    await queue.fail(job_id, job.lease_token, "boom", retry_at=None)
    return job_id


async def test_discard_cancels_dead_and_failed_jobs_only(queue: JobQueue, clock: FakeClock) -> None:
    """discard turns a dead or a failed job cancelled (finished now); other statuses stay."""
    dead = await _dead(queue)
    failed = await queue.enqueue("mail.send", {"to": "f@x.io"})
    (job,) = await queue.lease(worker_id="w")
    assert job.lease_token is not None
    await queue.fail(failed, job.lease_token, "boom", retry_at=clock.now() + timedelta(hours=1))
    queued = await queue.enqueue("mail.send", {"to": "q@x.io"}, delay=60)
    clock.advance(5)
    assert await queue.discard(dead) is True
    assert await queue.discard(failed) is True
    assert await queue.discard(queued) is False
    assert await queue.discard(dead) is False
    assert await queue.discard("nope") is False
    for job_id in (dead, failed):
        found = await queue.get(job_id)
        assert found is not None
        assert (found.status, found.finished_at, found.last_error) == (
            JobStatus.CANCELLED,
            T0 + timedelta(seconds=5),
            "boom",
        )
    assert await queue.counts() == counts(cancelled=2, queued=1)


async def test_retry_and_discard_in_a_transaction_take_effect_iff_it_commits(
    queue: JobQueue,
) -> None:
    """With `tx=`, retry and discard roll back with the transaction; get(tx=) sees them inside."""
    uow = unit_of_work(queue)
    a, b = await _dead(queue), await _dead(queue)
    tx = await uow.begin()
    assert await queue.retry(a, tx=tx) is True
    assert await queue.discard(b, tx=tx) is True
    inside = await queue.get(a, tx=tx)
    assert inside is not None
    assert inside.status is JobStatus.QUEUED
    seen = await queue.browse(org_id=None, tx=tx)
    assert [j.status for j in seen] == [JobStatus.CANCELLED, JobStatus.QUEUED]
    await tx.rollback()
    assert [(await queue.get(i)).status for i in (a, b)] == [JobStatus.DEAD, JobStatus.DEAD]  # type: ignore[union-attr]
    tx = await uow.begin()
    assert await queue.retry(a, tx=tx) is True
    assert await queue.discard(b, tx=tx) is True
    await tx.commit()
    assert [(await queue.get(i)).status for i in (a, b)] == [  # type: ignore[union-attr]
        JobStatus.QUEUED,
        JobStatus.CANCELLED,
    ]


async def test_browse_is_one_org_newest_first_with_a_keyset_cursor(
    queue: JobQueue, clock: FakeClock
) -> None:
    """browse selects exactly one org (None: jobs without one), newest first, after `before`."""
    ids = []
    for i in range(5):
        if i % 2 == 0:
            clock.advance(1)  # pairs share created_at: the id orders them
        ids.append(await _dead(queue, org_id="o1"))
    other = await _dead(queue, org_id="o2")
    bare = await _dead(queue)
    await queue.enqueue("mail.send", {"to": "q@x.io"}, org_id="o1")
    assert [j.id for j in await queue.browse(org_id="o1", status="dead")] == ids[::-1]
    assert len(await queue.browse(org_id="o1")) == 6
    assert [j.id for j in await queue.browse(org_id="o2")] == [other]
    assert [j.id for j in await queue.browse(org_id=None)] == [bare]
    first = await queue.browse(org_id="o1", status=JobStatus.DEAD, limit=2)
    assert [j.id for j in first] == ids[::-1][:2]
    rest = await queue.browse(
        org_id="o1", status="dead", before=(first[-1].created_at, first[-1].id)
    )
    assert [j.id for j in first + rest] == ids[::-1]
    assert await queue.browse(org_id="o1", job_type="crm.report.nightly") == []
    with pytest.raises(SpecValidationError):
        await queue.browse(org_id="o1", limit=0)


async def test_enqueue_many_is_all_or_nothing(queue: JobQueue) -> None:
    """enqueue_many validates every job first: one bad payload means none is stored."""
    with pytest.raises(SpecValidationError):
        await queue.enqueue_many([("mail.send", {"to": "ok@x.io"}), ("mail.send", {"to": ""})])
    assert await queue.counts() == ZERO
    ids = await queue.enqueue_many([(send_email, {"to": f"u{i}@x.io"}) for i in range(3)])
    assert [j.id for j in await queue.list()] == ids


async def test_list_counts_and_purge(queue: JobQueue, clock: FakeClock) -> None:
    """Inspection filters by status, type and queue; purge deletes old finished jobs only."""
    a = await queue.enqueue("mail.send", {"to": "a@x.io"})
    await queue.enqueue("crm.report.nightly", {"day": "d"})
    await queue.enqueue("mail.send", {"to": "c@x.io"})
    (job,) = await queue.lease(worker_id="w", queues=["default"])
    assert job.lease_token is not None
    await queue.complete(a, job.lease_token)
    assert [j.type for j in await queue.list(status=JobStatus.QUEUED)] == [
        "crm.report.nightly",
        "mail.send",
    ]
    assert [j.id for j in await queue.list(job_type="mail.send", limit=1)] == [a]
    assert len(await queue.list(queue="reports")) == 1
    assert await queue.counts(queue="default") == counts(queued=1, succeeded=1)
    with pytest.raises(SpecValidationError):
        await queue.list(status="done")
    assert await queue.purge(older_than=timedelta(hours=1)) == 0
    clock.advance(timedelta(hours=2))
    assert await queue.purge(older_than=timedelta(hours=1)) == 1
    assert await queue.counts() == counts(queued=2)


async def test_a_hundred_jobs_leased_by_concurrent_leases_exactly_once(
    queue: JobQueue, tmp_path: Path
) -> None:
    """Concurrent lease calls partition the due jobs: no job is handed out twice."""
    import asyncio

    await queue.enqueue_many([("mail.send", {"to": f"u{i}@x.io"}) for i in range(100)])

    async def drain(name: str) -> list[str]:
        got: list[str] = []
        while batch := await queue.lease(worker_id=name, limit=7, queues=["default"]):
            got.extend(j.id for j in batch)
        return got

    results = await asyncio.gather(*(drain(f"w{i}") for i in range(4)))
    everything = [i for r in results for i in r]
    assert len(everything) == 100
    assert len(set(everything)) == 100


async def test_complete_many_completes_held_jobs_and_reports_lost_ones(
    queue: JobQueue, clock: FakeClock
) -> None:
    """complete_many stores each result in one call and returns the ids whose lease was lost."""
    ids = [await queue.enqueue("mail.send", {"to": f"u{i}@x.io"}) for i in range(3)]
    leased = await queue.lease(worker_id="w", limit=3, queues=["default"])
    tokens = {j.id: j.lease_token or "" for j in leased}
    assert await queue.cancel(ids[2]) is True
    lost = await queue.complete_many(
        [
            (ids[0], tokens[ids[0]], {"ok": [1, "a"]}),
            (ids[1], "stale", None),
            (ids[2], tokens[ids[2]], None),
        ]
    )
    assert lost == [ids[1], ids[2]]
    done = await queue.get(ids[0])
    assert done is not None
    assert (done.status, done.result, done.lease_token) == (
        JobStatus.SUCCEEDED,
        {"ok": [1, "a"]},
        None,
    )
    assert await queue.complete_many([]) == []
    assert await queue.counts() == counts(succeeded=1, running=1, cancelled=1)


async def test_heartbeat_many_extends_held_leases_and_reports_lost_ones(
    queue: JobQueue, clock: FakeClock
) -> None:
    """heartbeat_many extends every held lease and returns the ids no longer held."""
    ids = [await queue.enqueue("mail.send", {"to": f"u{i}@x.io"}) for i in range(3)]
    leased = await queue.lease(worker_id="w", limit=3, queues=["default"])
    held = [(j.id, j.lease_token or "") for j in leased]
    await queue.cancel(ids[1])
    clock.advance(20)
    lost = await queue.heartbeat_many(
        [*held[:2], (ids[2], "stale")], lease_for=timedelta(seconds=30)
    )
    assert lost == [ids[1], ids[2]]
    kept = await queue.get(ids[0])
    assert kept is not None
    assert kept.leased_until == T0 + timedelta(seconds=50)
    assert await queue.heartbeat_many([], lease_for=timedelta(seconds=30)) == []


async def test_large_batches_are_stored_whole(queue: JobQueue) -> None:
    """enqueue_many of thousands of jobs stores them all (past the driver's parameter limit)."""
    ids = await queue.enqueue_many([(send_email, {"to": f"u{i}@x.io"}) for i in range(4000)])
    assert len(set(ids)) == 4000
    assert await queue.counts() == counts(queued=4000)
    first = await queue.lease(worker_id="w", limit=3, queues=["default"])
    assert [j.payload["to"] for j in first] == ["u0@x.io", "u1@x.io", "u2@x.io"]


def test_every_queue_is_a_job_queue_and_cores_job_enqueuer(queue: JobQueue) -> None:
    """Adapters satisfy the JobQueue protocol and core's JobEnqueuer port."""
    from contractspec.core import JobEnqueuer

    assert isinstance(queue, JobQueue)
    assert isinstance(queue, JobEnqueuer)
