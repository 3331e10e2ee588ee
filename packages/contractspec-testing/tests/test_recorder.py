"""TrafficRecorder: sampling, error capture, overrides, serialisation, buffering, the sanitize hook."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from testing_app import build_registry, ctx, make_executor

from contractspec.core import ConfigurationError, NotFoundError, SpecValidationError
from contractspec.core.testing import SequentialIds
from contractspec.testing import (
    JsonlTrafficStore,
    MemoryTrafficStore,
    Snapshot,
    TrafficRecorder,
    sampling_fraction,
)

QUOTE = {
    "customer_email": "ann@acme.io",
    "lines": [{"sku": "A", "quantity": 2, "unit_price": "5.00"}],
    "plan": "pro",
}


def test_sampling_fraction_is_deterministic_and_uniform() -> None:
    """The fraction of a trace id is stable and spreads 10,000 ids evenly over [0, 1)."""
    assert sampling_fraction("trace-1") == sampling_fraction("trace-1")
    assert 0.0 <= sampling_fraction("") < 1.0
    fractions = [sampling_fraction(f"t-{i}") for i in range(10_000)]
    below = sum(1 for f in fractions if f < 0.05)
    assert 400 <= below <= 600  # 5% of 10,000 = 500, binomial sd ~ 22


async def test_rate_keeps_matching_traces_whole() -> None:
    """At 30%, exactly the traces whose fraction < 0.3 are kept, with every call of each."""
    store = MemoryTrafficStore()
    executor = make_executor(build_registry(), traffic=TrafficRecorder(store, sample_rate=0.3))
    traces = [f"trace-{i}" for i in range(60)]
    for trace in traces:
        for _ in range(2):
            await executor.execute("billing.invoice.quote", QUOTE, ctx(trace))
    expected = sorted(t for t in traces if sampling_fraction(t) < 0.3)
    kept = sorted({s.trace_id for s in store.snapshots if s.trace_id})
    assert kept == expected
    assert len(store.snapshots) == 2 * len(expected)


async def test_errors_are_always_kept_even_at_rate_zero() -> None:
    """A failing call is stored at sample rate 0; successful ones are not."""
    store = MemoryTrafficStore()
    executor = make_executor(build_registry(), traffic=TrafficRecorder(store, sample_rate=0.0))
    await executor.execute("billing.invoice.quote", QUOTE, ctx("t1"))
    with pytest.raises(NotFoundError):
        await executor.execute("billing.customer.get", {"id": "nope"}, ctx("t2"))
    with pytest.raises(SpecValidationError):
        await executor.execute("billing.invoice.quote", {"lines": []}, ctx("t3"))
    assert [(s.operation, s.outcome) for s in store.snapshots] == [
        ("billing.customer.get", "not_found"),
        ("billing.invoice.quote", "validation_error"),
    ]
    assert store.snapshots[0].error == {
        "code": "not_found",
        "type": "NotFoundError",
        "message": "customer 'nope' not found",
    }
    assert store.snapshots[1].input == {"lines": []}


async def test_per_operation_override_wins() -> None:
    """An override by name or name@version replaces the default rate for that operation."""
    store = MemoryTrafficStore()
    recorder = TrafficRecorder(store, sample_rate=0.0, overrides={"billing.customer.create@1": 1.0})
    executor = make_executor(build_registry(), traffic=recorder)
    await executor.execute("billing.invoice.quote", QUOTE, ctx("t1"))
    await executor.execute(
        "billing.customer.create", {"name": "Ann", "email": "ann@acme.io"}, ctx("t2")
    )
    assert [s.operation for s in store.snapshots] == ["billing.customer.create"]
    assert recorder.rate_for("billing.customer.create", 1) == 1.0
    assert recorder.rate_for("billing.invoice.quote", 1) == 0.0


async def test_snapshot_holds_the_redacted_call() -> None:
    """A stored snapshot has JSON input/output with spec pii replaced, and the call's context."""
    store = MemoryTrafficStore()
    recorder = TrafficRecorder(store, sample_rate=1.0, ids=SequentialIds("snap"))
    executor = make_executor(build_registry(), traffic=recorder)
    await executor.execute(
        "billing.customer.create",
        {"name": "Ann Lee", "email": "ann@acme.io", "phone": "+33 6 12 34 56 78"},
        ctx("t9", org="org-7", actor="u-7"),
    )
    (snap,) = store.snapshots
    assert snap.id == "snap-000001"
    assert snap.ref == "billing.customer.create@1"
    assert snap.input == {
        "name": "Ann Lee",
        "email": "redacted-1@example.com",
        "phone": "+1-555-0101",
    }
    assert snap.output == {
        "id": "c-000001",
        "name": "Ann Lee",
        "email": "redacted-1@example.com",
        "phone": "+1-555-0101",
        "created_at": "2024-01-01T00:00:00Z",
    }
    assert (snap.org_id, snap.actor_id, snap.trace_id, snap.request_id) == (
        "org-7",
        "u-7",
        "t9",
        "r-t9",
    )
    assert snap.recorded_at.tzinfo is not None
    assert snap.error is None


async def test_redaction_can_be_turned_off() -> None:
    """redact=False stores values as they are (for synthetic traffic)."""
    store = MemoryTrafficStore()
    executor = make_executor(
        build_registry(), traffic=TrafficRecorder(store, sample_rate=1.0, redact=False)
    )
    await executor.execute("billing.invoice.quote", QUOTE, ctx("t"))
    assert store.snapshots[0].input["customer_email"] == "ann@acme.io"


async def test_sanitize_hook_rewrites_or_drops() -> None:
    """The sanitize hook sees redacted snapshots; returning None drops one."""
    store = MemoryTrafficStore()

    def sanitize(snap: Snapshot) -> Snapshot | None:
        if snap.org_id == "org-secret":
            return None
        return Snapshot.from_dict({**snap.to_dict(), "actor_id": "someone"})

    recorder = TrafficRecorder(store, sample_rate=1.0, sanitize=sanitize)
    executor = make_executor(build_registry(), traffic=recorder)
    await executor.execute("billing.invoice.quote", QUOTE, ctx("a"))
    await executor.execute("billing.invoice.quote", QUOTE, ctx("b", org="org-secret"))
    assert [(s.org_id, s.actor_id) for s in store.snapshots] == [("org-1", "someone")]
    assert recorder.stats.dropped_by_sanitizer == 1
    assert recorder.stats.sampled == 2


async def test_failures_never_reach_the_caller() -> None:
    """A raising hook and a failing store are counted, never raised into the call."""

    def boom(snap: Snapshot) -> Snapshot:
        raise RuntimeError("hook bug")

    recorder = TrafficRecorder(MemoryTrafficStore(), sample_rate=1.0, sanitize=boom)
    executor = make_executor(build_registry(), traffic=recorder)
    out: Any = await executor.execute("billing.invoice.quote", QUOTE, ctx("a"))
    assert str(out.total) == "9.00"
    assert recorder.stats.failed == 1

    class BrokenStore(MemoryTrafficStore):
        async def append(self, snapshots: Sequence[Snapshot]) -> None:
            raise OSError("disk full")

    broken = TrafficRecorder(BrokenStore(), sample_rate=1.0, batch_size=2)
    executor = make_executor(build_registry(), traffic=broken)
    broken._direct = False  # exercise the buffered path on a memory subclass
    for trace in ("a", "b", "c"):
        await executor.execute("billing.invoice.quote", QUOTE, ctx(trace))
    with pytest.raises(OSError, match="disk full"):
        await broken.flush()
    assert broken.stats.dropped == 3
    assert broken.pending == 0


async def test_buffer_flushes_in_batches_and_on_close(tmp_path: Path) -> None:
    """A file store receives batches in the background and the rest on aclose()."""
    store = JsonlTrafficStore(tmp_path / "t.jsonl")
    recorder = TrafficRecorder(store, sample_rate=1.0, batch_size=3)
    executor = make_executor(build_registry(), traffic=recorder)
    for i in range(7):
        await executor.execute("billing.invoice.quote", QUOTE, ctx(f"t{i}"))
    await recorder.flush()
    assert recorder.pending == 0
    assert recorder.stats.stored == 7
    async with recorder:
        await executor.execute("billing.invoice.quote", QUOTE, ctx("last"))
    stored = await store.query()
    # the fake clock stands still, so recorded_at only differs by each call's duration
    assert sorted(str(s.trace_id) for s in stored) == sorted([f"t{i}" for i in range(7)] + ["last"])


def test_buffer_is_bounded() -> None:
    """Beyond max_pending the oldest snapshots are dropped and counted."""
    from testing_app import QuoteIn, quote

    from contractspec.core import CallRecord

    store = JsonlTrafficStore("/nonexistent/never-written.jsonl")
    recorder = TrafficRecorder(store, sample_rate=1.0, batch_size=100, max_pending=2)
    model = QuoteIn.model_validate(QUOTE)
    for i in range(5):
        recorder.record(
            CallRecord(
                spec=quote,
                input=model,
                output=None,
                error=None,
                org_id=None,
                actor_id=None,
                trace_id=f"t{i}",
                request_id=None,
                channel="script",
                started_at=datetime(2024, 1, 1, tzinfo=UTC),
                duration_ms=1.0,
            )
        )
    assert recorder.pending == 2
    assert recorder.stats.dropped == 3
    assert [s.trace_id for s in recorder._pending] == ["t3", "t4"]


@given(rate=st.one_of(st.floats().filter(lambda r: not 0 <= r <= 1), st.booleans(), st.text()))
def test_bad_rates_are_rejected(rate: Any) -> None:
    """Hypothesis: a rate outside [0, 1] (or not a number) raises ConfigurationError."""
    with pytest.raises(ConfigurationError, match="sample_rate must be a fraction"):
        TrafficRecorder(MemoryTrafficStore(), sample_rate=rate)


def test_bad_override_and_sizes_name_the_field() -> None:
    """Errors name the override key and the size argument."""
    with pytest.raises(ConfigurationError, match=r"overrides\['a.b'\] must be a fraction"):
        TrafficRecorder(MemoryTrafficStore(), overrides={"a.b": 2})
    with pytest.raises(ConfigurationError, match="batch_size must be a positive integer"):
        TrafficRecorder(MemoryTrafficStore(), batch_size=0)


async def test_snapshot_keeps_the_committed_events_redacted() -> None:
    """Events go into the snapshot (type, version, payload) with their spec PII and its echoes
    replaced everywhere: in the payload, the input and the output."""
    store = MemoryTrafficStore()
    executor = make_executor(build_registry(), traffic=TrafficRecorder(store, sample_rate=1.0))
    await executor.execute(
        "billing.customer.welcome", {"customer_id": "c-9", "name": "Ada Lovelace"}, ctx("t")
    )
    (snap,) = store.snapshots
    assert snap.input == {"customer_id": "c-9", "name": "[redacted-1]"}
    assert snap.output == {"message": "welcome sent to [redacted-1]"}
    assert [dict(e) for e in snap.events] == [
        {
            "type": "billing.customer.welcomed",
            "version": 1,
            "payload": {
                "customer_id": "c-9",
                "name": "[redacted-1]",
                "text": "Dear [redacted-1], welcome aboard",
                "sent_at": "2024-01-01T00:00:00Z",
            },
        }
    ]
    assert Snapshot.from_dict(snap.to_dict()) == snap
    assert "Ada" not in str(snap.to_dict())
