"""The guarantees under concurrent clients: 20 tasks issue a seeded random mix of calls — creates
with colliding unique keys, read-modify-write increments (plain and locked), deal transitions,
idempotent retries, denied and anonymous calls — some of them inside their own `batch()`. Every
call's reported outcome is recorded; afterwards the store must agree with it call by call
(memory, SQLite file, PostgreSQL)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import pytest
from attrs import define
from core_guarantees_app import (
    CLOSED,
    VIEWER,
    GuaranteesApp,
    Outcome,
    Stored,
    build_app,
    call_ctx,
    chain_verifies,
    counter_entity,
    make_executor,
    note_entity,
    read_stored,
    run_call,
)

from contractspec.core import (
    Backend,
    ConflictError,
    ContractSpecError,
    Executor,
    IdempotencyConflictError,
    PolicyDeniedError,
    SpecRegistry,
    SpecValidationError,
)
from contractspec.core.specs import EntitySpec

CLIENTS = 20
CALLS_PER_CLIENT = 6
CALL_LIMIT_S = 30.0
DEADLINE_S = 120.0

KINDS = ("contact", "inc", "inc_locked", "move", "idem", "viewer", "guarded", "catch", "anon")
WEIGHTS = (3, 2, 2, 3, 3, 1, 1, 1, 1)
CONTACT_IDS = [f"c{i}" for i in range(5)]
EMAILS = [None, "a@x.io", "b@x.io", "c@x.io"]
KEYS = [f"k{i}" for i in range(4)]
TARGETS = ["qualified", "qualified", "qualified", "won", "lost"]
#: events each kind of call emits when it runs its handler successfully
EVENTS: dict[str, list[str]] = {
    "seed_contact": [],
    "seed_counter": [],
    "seed_deal": ["crm.deal.created"],
    "contact": [],
    "inc": ["ops.counter.incremented"],
    "inc_locked": ["ops.counter.incremented"],
    "move": ["crm.deal.moved"],
    "idem": ["crm.deal.created"],
    "catch": ["ops.note.created"],
}


@pytest.fixture
def app() -> GuaranteesApp:
    """The guarantees app (its registry also builds the `backend` fixture's tables)."""
    return build_app()


@pytest.fixture
def registry(app: GuaranteesApp) -> SpecRegistry:
    """Overrides conftest's registry so `backend` has this app's tables."""
    return app.registry


@define
class Workload:
    """Everything the clients reported."""

    outcomes: list[Outcome]
    batch_errors: list[str]
    deal_ids: list[str]


def _plan(rng: random.Random, rid: str, deal_ids: list[str]) -> tuple[str, str, dict[str, Any]]:
    """`(kind, operation, input)` of one random call."""
    kind = rng.choices(KINDS, WEIGHTS)[0]
    if kind == "contact":
        data = {"id": rng.choice(CONTACT_IDS), "name": rid, "email": rng.choice(EMAILS)}
        return kind, "crm.contact.create", data
    if kind in ("inc", "inc_locked"):
        operation = "ops.counter.increment" + ("_locked" if kind == "inc_locked" else "")
        return kind, operation, {"id": "ctr"}
    if kind == "move":
        data = {"deal_id": rng.choice(deal_ids), "to_stage": rng.choice(TARGETS)}
        return kind, "crm.deal.move", data
    if kind == "idem":
        key = rng.choice(KEYS)
        return (
            kind,
            "crm.deal.create",
            {"contact_id": "seed", "title": f"idem-{key}", "amount": "5"},
        )
    if kind == "viewer":
        return kind, "crm.deal.create", {"contact_id": "seed", "title": "nope", "amount": "1"}
    if kind in ("guarded", "catch"):
        return kind, "ops.note.guarded", {"id": f"n-{rid}", "catch": kind == "catch"}
    return kind, "crm.contact.create", {"id": f"anon-{rid}", "name": "anonymous"}


async def _run_workload(ex: Executor, seed: int) -> Workload:
    seeds = [
        await run_call(
            ex,
            "crm.contact.create",
            {"id": "seed", "name": "Seed"},
            call_ctx("seed-0"),
            tag="seed_contact",
        ),
        await run_call(
            ex, "ops.counter.create", {"id": "ctr"}, call_ctx("seed-1"), tag="seed_counter"
        ),
    ]
    seeds.extend(
        [
            await run_call(
                ex,
                "crm.deal.create",
                {"contact_id": "seed", "title": f"deal-{i}", "amount": "1"},
                call_ctx(f"seed-d{i}"),
                tag="seed_deal",
            )
            for i in range(3)
        ]
    )
    assert all(o.ok for o in seeds), [o.describe() for o in seeds]
    deal_ids = [o.output["id"] for o in seeds[2:] if o.output]
    outcomes: list[Outcome] = list(seeds)
    batch_errors: list[str] = []

    async def client(n: int) -> None:
        rng = random.Random(f"{seed}-{n}")
        batched = rng.random() < 0.4
        commit_every = rng.choice([1, 2, 3, 100])

        async def calls() -> None:
            for j in range(CALLS_PER_CLIENT):
                rid = f"s{seed}-c{n}-{j}"
                kind, operation, data = _plan(rng, rid, deal_ids)
                if kind == "viewer":
                    ctx = call_ctx(rid, actor=VIEWER)
                elif kind == "anon":
                    ctx = call_ctx(rid, actor=None)
                elif kind == "idem":
                    ctx = call_ctx(rid, idempotency_key=data["title"].removeprefix("idem-"))
                else:
                    ctx = call_ctx(rid)
                outcomes.append(
                    await run_call(ex, operation, data, ctx, limit_s=CALL_LIMIT_S, tag=kind)
                )
                await asyncio.sleep(0)

        if not batched:
            await calls()
            return
        try:
            async with ex.batch(commit_every=commit_every):
                await calls()
        except Exception as exc:  # judged by the test: a batch must end cleanly
            batch_errors.append(f"client {n}: leaving the batch raised {exc!r}")

    tasks = [asyncio.create_task(client(n), name=f"client-{n}") for n in range(CLIENTS)]
    _, pending = await asyncio.wait(tasks, timeout=DEADLINE_S)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if pending:
        codes = Counter(f"{o.tag}:{o.code}" for o in outcomes)
        pytest.fail(
            f"{len(pending)} of {CLIENTS} clients were still running after {DEADLINE_S} s "
            f"(a hang); outcomes so far: {dict(codes)}"
        )
    return Workload(outcomes, batch_errors, deal_ids)


def _allowed_error(o: Outcome) -> bool:
    error = o.error
    if not isinstance(error, ContractSpecError):
        return False
    if o.tag in ("viewer", "anon"):
        return isinstance(error, PolicyDeniedError)
    if o.tag == "guarded" and isinstance(error, PolicyDeniedError):
        return True
    if o.tag == "move" and isinstance(error, SpecValidationError):
        return "closed" in error.message
    if o.tag == "idem" and isinstance(error, IdempotencyConflictError):
        return False  # the same input is never a different request
    # write conflicts: unique keys, stale writes, in-progress keys, deadlock victims
    return isinstance(error, ConflictError)


def _expected_audit(o: Outcome, stored: Stored) -> list[list[str]]:
    """The sorted audit outcomes the call may have left (one list per acceptable answer)."""
    if o.tag == "anon":
        return [[]]
    if not o.ok:
        if o.tag == "viewer" or isinstance(o.error, PolicyDeniedError):
            return [["denied"]]
        if o.tag in ("guarded", "catch"):
            return [[], ["denied"]]  # a conflict before or after the (recorded) denial
        return [[]]
    if o.tag == "catch":
        return [["denied", "success"]]
    if o.tag == "idem" and not stored.events_for(o.request_id):
        return [["replayed"]]
    return [["success"]]


def _check_calls(w: Workload, stored: Stored, problems: list[str]) -> None:
    known = {o.request_id for o in w.outcomes}
    strays = [r for r in stored.audit if r.request_id not in known]
    if strays:
        problems.append(f"{len(strays)} audit entries of no call, e.g. {strays[0]!r}"[:400])
    stray_events = [e for e in stored.events if e.request_id not in known]
    if stray_events:
        problems.append(f"{len(stray_events)} events of no call, e.g. {stray_events[0]!r}"[:400])
    for o in w.outcomes:
        if isinstance(o.error, TimeoutError):
            problems.append(f"hung for {CALL_LIMIT_S} s: {o.describe()}")
        elif not o.ok and not _allowed_error(o):
            problems.append(f"unexpected error: {o.describe()}")
        audit = stored.outcomes_for(o.request_id)
        expected = _expected_audit(o, stored)
        if audit not in expected:
            problems.append(f"audit {audit}, expected one of {expected}: {o.describe()}")
        events = stored.event_names_for(o.request_id)
        ran = o.ok and ["replayed"] not in expected
        expected_events = EVENTS[o.tag] if ran else []
        if events != expected_events:
            problems.append(f"events {events}, expected {expected_events}: {o.describe()}")


def _check_contacts(
    w: Workload, stored: Stored, entity: EntitySpec[Any], problems: list[str]
) -> None:
    rows = {cid: (row["name"], row["email"]) for cid, row in stored.entity(entity).items()}
    rows.pop("seed", None)
    expected = {
        o.input["id"]: (o.request_id, o.input["email"])
        for o in w.outcomes
        if o.tag == "contact" and o.ok
    }
    if rows != expected:
        problems.append(f"contacts stored {rows}, but the ok creates were {expected}")


def _check_counter(w: Workload, stored: Stored, problems: list[str]) -> None:
    ok = [o for o in w.outcomes if o.tag in ("inc", "inc_locked") and o.ok]
    value = stored.entity(counter_entity)["ctr"]["value"]
    if value != len(ok):
        problems.append(f"lost update: counter is {value} after {len(ok)} ok increments")
    seen = sorted(o.output["value"] for o in ok if o.output)
    if seen != list(range(1, len(ok) + 1)):
        problems.append(f"increments saw values {seen}, not 1..{len(ok)}")


def _check_deals(w: Workload, stored: Stored, entity: EntitySpec[Any], problems: list[str]) -> None:
    rows = stored.entity(entity)
    for deal_id in w.deal_ids:
        moves = [
            o for o in w.outcomes if o.tag == "move" and o.ok and o.input["deal_id"] == deal_id
        ]
        steps = []
        for o in moves:
            payloads = [e.payload for e in stored.events_for(o.request_id)]
            steps.extend((p["from_stage"], p["to_stage"]) for p in payloads)
        from_lead = [s for s in steps if s[0] == "lead"]
        from_closed = [s for s in steps if s[0] in CLOSED]
        into_closed = [s for s in steps if s[1] in CLOSED]
        where = f"deal {deal_id} moves {sorted(steps)}"
        if steps and len(from_lead) != 1:
            problems.append(f"{where}: {len(from_lead)} moves left 'lead' (a lost transition)")
        if from_closed:
            problems.append(f"{where}: a closed deal moved")
        if len(into_closed) > 1:
            problems.append(f"{where}: the deal was closed {len(into_closed)} times")
        final = into_closed[0][1] if into_closed else "qualified" if steps else "lead"
        if rows[deal_id]["stage"] != final:
            problems.append(f"{where}: stored stage {rows[deal_id]['stage']}, expected {final}")


def _check_idempotency(
    app: GuaranteesApp, w: Workload, stored: Stored, entity: EntitySpec[Any], problems: list[str]
) -> None:
    for key in KEYS:
        calls = [o for o in w.outcomes if o.tag == "idem" and o.input["title"] == f"idem-{key}"]
        stored_ids = sorted(
            d for d, row in stored.entity(entity).items() if row["title"] == f"idem-{key}"
        )
        returned = {o.output["id"] for o in calls if o.ok and o.output}
        if returned and (len(returned) != 1 or sorted(returned) != stored_ids):
            problems.append(f"key {key}: callers got deals {sorted(returned)}, stored {stored_ids}")
        if not returned and stored_ids:
            problems.append(f"key {key}: no call succeeded but deals {stored_ids} are stored")
        retried = sum(1 for o in calls if not o.ok and o.code != "idempotency_in_progress")
        runs = app.runs[("crm.deal.create", key)]
        if returned and not 1 <= runs <= 1 + retried:
            problems.append(f"key {key}: the handler ran {runs} times ({retried} failed calls)")


def _check_no_stray_deals(
    w: Workload, stored: Stored, entity: EntitySpec[Any], problems: list[str]
) -> None:
    created = {o.output["id"] for o in w.outcomes if o.tag == "idem" and o.ok and o.output}
    strays = sorted(set(stored.entity(entity)) - set(w.deal_ids) - created)
    if strays:
        problems.append(f"deals {strays} are stored but no ok call created them")


def _check_notes(w: Workload, stored: Stored, problems: list[str]) -> None:
    expected = sorted(o.input["id"] for o in w.outcomes if o.tag == "catch" and o.ok)
    notes = sorted(stored.entity(note_entity))
    if notes != expected:
        problems.append(f"notes stored {notes}, expected those of the ok calls {expected}")


@pytest.mark.parametrize("seed", [1, 2])
async def test_concurrent_clients_leave_exactly_what_they_reported(
    app: GuaranteesApp, backend: Backend, seed: int
) -> None:
    """20 concurrent clients (some in batches): every ok call is stored once with its events and
    one audit entry, every failed call left nothing, no update is lost, each idempotency key ran
    once, denials are recorded once, anonymous calls not at all, and the audit chain verifies."""
    ex = make_executor(app, backend)
    w = await _run_workload(ex, seed)
    stored = await read_stored(backend)
    contacts = app.registry.get_entity("crm.contact")
    deals = app.registry.get_entity("crm.deal")

    problems: list[str] = list(w.batch_errors)
    _check_contacts(w, stored, contacts, problems)
    _check_counter(w, stored, problems)
    _check_deals(w, stored, deals, problems)
    _check_idempotency(app, w, stored, deals, problems)
    _check_no_stray_deals(w, stored, deals, problems)
    _check_notes(w, stored, problems)
    if not await chain_verifies(backend):
        problems.append("the audit chain does not verify")
    anonymous = sum(1 for o in w.outcomes if o.tag == "anon")
    counted = getattr(ex, "unauthenticated_denials", None)
    if counted != anonymous:
        problems.append(f"executor.unauthenticated_denials is {counted}, expected {anonymous}")
    _check_calls(w, stored, problems)

    codes = Counter(f"{o.tag}:{o.code}" for o in w.outcomes)
    assert not problems, f"{len(problems)} problems (outcomes {dict(codes)}):\n" + "\n".join(
        problems[:40]
    )
