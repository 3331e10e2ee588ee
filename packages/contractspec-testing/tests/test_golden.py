"""Golden cases: comparison, masking, generation (dedup, detection, verification, merge), replay."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field
from testing_app import PRO_DISCOUNT, WELCOME_TEXT, build_registry, ctx, make_executor

from contractspec.core import ConfigurationError, define_query, public
from contractspec.testing import (
    NONDETERMINISTIC,
    GoldenCase,
    GoldenSuite,
    GoldenTestGenerator,
    MemoryTrafficStore,
    Snapshot,
    TrafficRecorder,
    run_golden_tests,
)
from contractspec.testing._literal import render_literal
from contractspec.testing.golden import apply_mask, compare, declared_mask

REF = "testing_app:build_registry"
QUOTE = {
    "customer_email": "ann@acme.io",
    "lines": [{"sku": "A", "quantity": 2, "unit_price": "5.00"}],
    "plan": "pro",
}

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=10,
)


@pytest.fixture
def pro_discount() -> Iterator[dict[str, Decimal]]:
    """The PRO discount knob of the test app, restored afterwards."""
    saved = dict(PRO_DISCOUNT)
    yield PRO_DISCOUNT
    PRO_DISCOUNT.clear()
    PRO_DISCOUNT.update(saved)


@pytest.fixture
def welcome_text() -> Iterator[dict[str, str]]:
    """The welcome event's text template of the test app, restored afterwards."""
    saved = dict(WELCOME_TEXT)
    yield WELCOME_TEXT
    WELCOME_TEXT.clear()
    WELCOME_TEXT.update(saved)


async def recorded(*calls: tuple[str, dict[str, Any]]) -> list[Snapshot]:
    """Run calls through a recording executor (rate 1.0) and return the snapshots."""
    store = MemoryTrafficStore()
    executor = make_executor(build_registry(), traffic=TrafficRecorder(store, sample_rate=1.0))
    for n, (operation, payload) in enumerate(calls):
        with contextlib.suppress(Exception):  # errors are recorded too
            await executor.execute(operation, payload, ctx(f"t{n}"))
    return store.snapshots


# -- comparison -----------------------------------------------------------------------------------


def test_mappings_compare_in_any_order_and_ellipsis_matches_anything() -> None:
    """Key order does not matter; `...` matches any value; bool and int differ."""
    assert compare({"a": 1, "b": [1, 2]}, {"b": [1, 2], "a": 1.0}) == []
    assert compare({"id": ..., "n": 1}, {"id": "x-9", "n": 1}) == []
    diffs = compare({"a": True, "l": [1, 2], "gone": 1}, {"a": 1, "l": [1], "new": 2})
    assert [d.describe() for d in diffs] == [
        "output.a: expected true, got 1",
        "output.l[1]: missing (expected 2)",
        "output.gone: missing (expected 1)",
        "output.new: unexpected (got 2)",
    ]


@given(value=json_values)
def test_any_value_equals_itself(value: Any) -> None:
    """Hypothesis: compare(x, x) finds nothing; a masked whole value matches anything."""
    assert compare(value, value) == []
    assert compare(apply_mask(value, ["output"]), {"other": value}) == []


def test_mask_paths_traverse_lists() -> None:
    """`output.items.id` masks the id of every item."""
    value = {"items": [{"id": 1, "n": 2}, {"id": 3, "n": 4}], "id": 5}
    assert apply_mask(value, ["output.items.id"]) == {
        "items": [{"id": ..., "n": 2}, {"id": ..., "n": 4}],
        "id": 5,
    }


def test_declared_mask_reads_markers_and_schema_extra() -> None:
    """NONDETERMINISTIC and json_schema_extra={'nondeterministic': True} declare masked paths."""

    class Inner(BaseModel):
        at: Annotated[str, NONDETERMINISTIC]

    class Out(BaseModel):
        token: str = Field(json_schema_extra={"nondeterministic": True})
        inner: list[Inner]
        n: int

    class In(BaseModel):
        q: str

    spec = define_query("a.b.c", input=In, output=Out, auth=public())
    assert declared_mask(spec) == ("output.inner.at", "output.token")


# -- generation -----------------------------------------------------------------------------------


async def test_equivalent_cases_are_deduplicated() -> None:
    """Ten quotes of one shape give one case; another shape and an error add one each."""
    calls = [
        ("billing.invoice.quote", {**QUOTE, "customer_email": f"c{i}@x.io"}) for i in range(10)
    ]
    calls.append(("billing.invoice.quote", {**QUOTE, "note": "gift"}))
    calls.append(("billing.invoice.quote", {**QUOTE, "lines": []}))
    snapshots = await recorded(*calls)
    generator = GoldenTestGenerator(build_registry(), registry_ref=REF)
    result = await generator.build(snapshots, "billing.invoice.quote")
    assert [(c.id, c.error) for c in result.cases] == [
        ("ok-redacted-1-example-com", None),
        ("ok-redacted-1-example-com-2", None),
        (
            "validation_error-redacted-1-example-com",
            {"code": "validation_error", "type": "SpecValidationError"},
        ),
    ]
    assert result.cases[1].input["note"] == "[redacted-1]"
    assert result.skipped == []


async def test_nondeterministic_paths_are_detected_by_replaying_twice() -> None:
    """Generated ids and timestamps differ between two replays, so they are masked with `...`."""
    snapshots = await recorded(("billing.customer.create", {"name": "Ann", "email": "ann@acme.io"}))
    generator = GoldenTestGenerator(build_registry(), registry_ref=REF)
    result = await generator.build(snapshots, "billing.customer.create")
    assert result.suite.mask == ("output.created_at", "output.id")
    assert result.cases[0].output == {
        "id": ...,
        "name": "Ann",
        "email": "redacted-1@example.com",
        "phone": None,
        "created_at": ...,
    }


async def test_cases_that_do_not_replay_are_left_out_and_listed() -> None:
    """A read of state that a fresh replay does not have is skipped with the reason."""
    snapshots = await recorded(
        ("billing.customer.create", {"name": "Ann", "email": "ann@acme.io"}),
        ("billing.customer.get", {"id": "c-000001"}),
        ("billing.customer.get", {"id": "missing"}),
    )
    generator = GoldenTestGenerator(build_registry(), registry_ref=REF)
    result = await generator.build(snapshots, "billing.customer.get")
    assert result.added == ["not_found-missing"]
    assert result.skipped == [
        (snapshots[1].id, 'error: unexpected (got {"code": "not_found", "type": "NotFoundError"})')
    ]
    assert f"#   {snapshots[1].id}: error: unexpected" in result.source


async def test_policy_denials_are_excluded_by_default() -> None:
    """Authorisation failures are not turned into cases (recorded traffic holds no roles)."""
    snap = Snapshot.from_dict(
        {
            "id": "s1",
            "operation": "billing.customer.create",
            "version": 1,
            "recorded_at": "2024-01-01T00:00:00+00:00",
            "input": {"name": "A", "email": "a@x.io"},
            "error": {"code": "policy_denied", "type": "PolicyDeniedError", "message": "no"},
        }
    )
    generator = GoldenTestGenerator(build_registry(), registry_ref=REF)
    result = await generator.build([snap], "billing.customer.create")
    assert result.cases == []
    assert "CASES: list[GoldenCase] = []" in result.source


async def test_write_merges_and_deletes_nothing(tmp_path: Path) -> None:
    """A second run keeps existing cases verbatim (hand edits too) and appends new ones."""
    target = tmp_path / "golden" / "test_quote.py"
    generator = GoldenTestGenerator(build_registry(), registry_ref=REF)
    first = await generator.write(
        target, await recorded(("billing.invoice.quote", QUOTE)), "billing.invoice.quote"
    )
    assert first.added == ["ok-redacted-1-example-com"]
    edited = target.read_text().replace('"plan": "pro",', '"plan": "pro",  # the PRO plan')
    target.write_text(edited)
    again = await recorded(
        ("billing.invoice.quote", QUOTE),
        ("billing.invoice.quote", {**QUOTE, "plan": "free", "note": "x"}),
    )
    second = await generator.write(target, again, "billing.invoice.quote")
    assert second.kept == ["ok-redacted-1-example-com"]
    assert second.added == ["ok-redacted-1-example-com-2"]
    text = target.read_text()
    assert '"plan": "pro",  # the PRO plan' in text
    assert text.count("GoldenCase(\n") == 2
    third = await generator.write(target, again, "billing.invoice.quote")
    assert third.added == []
    assert target.read_text() == text


@settings(max_examples=40, deadline=None)
@given(
    operation=st.text(max_size=30),
    case_id=st.text(max_size=20),
    payload=json_values,
    mask=st.lists(st.text(max_size=10), max_size=3),
)
def test_rendered_module_is_valid_python_for_any_content(
    operation: str, case_id: str, payload: Any, mask: list[str]
) -> None:
    """Hypothesis: any operation name, case id, mask or JSON content renders compilable source."""
    generator = GoldenTestGenerator(build_registry(), registry_ref=REF)
    suite = GoldenSuite(operation=operation, version=1, registry=REF, mask=tuple(mask))
    case = GoldenCase(id=case_id, input=payload, output={"v": payload}, org_id=case_id)
    source = generator.render(suite, [case], skipped=[operation + "\n" + case_id])
    compile(source, "golden.py", "exec")
    tree = ast.parse(source)
    (call,) = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "GoldenCase"
    ]
    kws = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    assert kws["id"] == case_id
    assert kws["input"] == payload or payload != payload  # NaN-free: equal


@given(value=json_values, indent=st.integers(min_value=0, max_value=40))
def test_literals_round_trip(value: Any, indent: int) -> None:
    """Hypothesis: a rendered literal evaluates back to the value."""
    assert ast.literal_eval(render_literal(value, indent)) == value


def test_generated_module_passes_ruff(tmp_path: Path) -> None:
    """Generated modules pass `ruff check` and `ruff format --check` unchanged."""
    snapshots = asyncio.run(
        recorded(
            (
                "billing.invoice.quote",
                {**QUOTE, "note": 'quote "x" it\'s \\ \n\t done ' + "é" * 80},
            ),
            ("billing.customer.create", {"name": "Ann", "email": "ann@acme.io"}),
            ("billing.customer.get", {"id": "missing"}),
        )
    )
    generator = GoldenTestGenerator(build_registry(), registry_ref=REF)
    paths = []
    for op in ("billing.invoice.quote", "billing.customer.create", "billing.customer.get"):
        path = tmp_path / f"test_{op.replace('.', '_')}.py"
        generator.write_sync(path, snapshots, op)
        paths.append(str(path))
    (tmp_path / "ruff.toml").write_text(
        'line-length = 100\n[lint]\nselect = ["E", "F", "W", "I", "B", "UP", "RUF"]\n'
    )
    ruff = [sys.executable, "-m", "ruff"]
    check = subprocess.run([*ruff, "check", *paths], capture_output=True, text=True, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = subprocess.run(
        [*ruff, "format", "--check", "--diff", *paths], capture_output=True, text=True, cwd=tmp_path
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_generator_rejects_bad_configuration() -> None:
    """A registry ref without ':' and a zero max_cases raise ConfigurationError naming the field."""
    with pytest.raises(ConfigurationError, match="registry_ref must be MODULE:OBJECT"):
        GoldenTestGenerator(build_registry(), registry_ref="testing_app")
    with pytest.raises(ConfigurationError, match="max_cases must be a positive integer"):
        GoldenTestGenerator(build_registry(), registry_ref=REF, max_cases=0)


# -- replay ---------------------------------------------------------------------------------------


async def test_run_golden_tests_reports_a_changed_handler(pro_discount: dict[str, Decimal]) -> None:
    """Recorded cases pass; after the PRO discount changes the report shows each difference."""
    snapshots = await recorded(
        ("billing.invoice.quote", QUOTE),
        ("billing.invoice.quote", {**QUOTE, "plan": "free", "note": "n"}),
    )
    generator = GoldenTestGenerator(build_registry(), registry_ref=REF)
    built = await generator.build(snapshots, "billing.invoice.quote")
    report = await run_golden_tests(built.cases, REF, suite=built.suite)
    assert report.ok
    assert report.summary() == "2 passed, 0 failed"
    pro_discount["rate"] = Decimal("0.25")
    report = await run_golden_tests(
        built.cases, build_registry(), operation="billing.invoice.quote"
    )
    assert [r.case.id for r in report.failed] == ["ok-redacted-1-example-com"]
    assert report.summary() == (
        "1 passed, 1 failed\n"
        "golden case billing.invoice.quote@1 'ok-redacted-1-example-com': 2 differences\n"
        '  output.total: expected "9.00", got "7.50"\n'
        '  output.discount: expected "1.00", got "2.50"'
    )


async def test_errors_compare_by_code_and_type() -> None:
    """An expected error passes whatever the message; a success where an error was expected fails."""
    suite = GoldenSuite("billing.customer.get", 1, REF)
    cases = [
        GoldenCase(
            "gone", {"id": "x"}, None, {"code": "not_found", "type": "NotFoundError"}, "o", "u"
        ),
        GoldenCase("typed", {"id": "x"}, None, {"code": "not_found", "type": "KeyError"}, "o", "u"),
        GoldenCase(
            "bad", {"id": ""}, None, {"code": "not_found", "type": "NotFoundError"}, "o", "u"
        ),
    ]
    report = await run_golden_tests(cases, REF, suite=suite)
    assert [r.passed for r in report.results] == [True, False, False]
    assert [d.describe() for d in report.results[1].differences] == [
        'error.type: expected "KeyError", got "NotFoundError"'
    ]
    assert [d.describe() for d in report.results[2].differences] == [
        'error.code: expected "not_found", got "validation_error"',
        'error.type: expected "NotFoundError", got "SpecValidationError"',
    ]


# -- events ---------------------------------------------------------------------------------------

WELCOME = {"customer_id": "c-9", "name": "Ada Lovelace"}


async def test_generated_cases_keep_the_events_with_detected_masks() -> None:
    """A case records the committed events (type, version, payload), redacted like the input,
    with the event's timestamp detected as non-deterministic and masked like an output path."""
    snapshots = await recorded(("billing.customer.welcome", WELCOME))
    generator = GoldenTestGenerator(build_registry(), registry_ref=REF)
    built = await generator.build(snapshots, "billing.customer.welcome")
    assert built.suite.mask == ("events.payload.sent_at",)
    (case,) = built.cases
    assert case.events == [
        {
            "type": "billing.customer.welcomed",
            "version": 1,
            "payload": {
                "customer_id": "c-9",
                "name": "[redacted-1]",
                "text": "Dear [redacted-1], welcome aboard",
                "sent_at": ...,
            },
        }
    ]
    assert "events=[" in built.source
    assert "Ada" not in built.source
    report = await run_golden_tests(built.cases, REF, suite=built.suite)
    assert report.ok, report.summary()


async def test_a_mutated_event_payload_fails_the_golden_test(welcome_text: dict[str, str]) -> None:
    """Same output, changed event payload: the case fails and names the event path."""
    snapshots = await recorded(("billing.customer.welcome", WELCOME))
    generator = GoldenTestGenerator(build_registry(), registry_ref=REF)
    built = await generator.build(snapshots, "billing.customer.welcome")
    welcome_text["template"] = "Hi {name}"
    report = await run_golden_tests(built.cases, REF, suite=built.suite)
    (failed,) = report.failed
    assert [d.describe() for d in failed.differences] == [
        'events[0].payload.text: expected "Dear [redacted-1], welcome aboard", '
        'got "Hi [redacted-1]"'
    ]
    assert failed.output == {"message": "welcome sent to [redacted-1]"}


async def test_missing_or_extra_events_fail_and_cases_without_events_skip_them() -> None:
    """An expected event that is not emitted fails; `events=None` (old cases) compares none."""
    suite = GoldenSuite("billing.customer.welcome", 1, REF, mask=("events.payload.sent_at",))
    event = {
        "type": "billing.customer.welcomed",
        "version": 1,
        "payload": {
            "customer_id": "c-9",
            "name": "X Y",
            "text": "Dear X Y, welcome aboard",
            "sent_at": "2001-01-01T00:00:00Z",  # masked: any value matches
        },
    }
    inp, out = {"customer_id": "c-9", "name": "X Y"}, {"message": "welcome sent to X Y"}
    who = {"org_id": "org-1", "actor_id": "u-1"}
    cases = [
        GoldenCase("none-expected", inp, out, events=[], **who),
        GoldenCase("old", inp, out, events=None, **who),
        GoldenCase("one", inp, out, events=[event], **who),
        GoldenCase("two", inp, out, events=[event, event], **who),
    ]
    report = await run_golden_tests(cases, REF, suite=suite)
    assert [r.passed for r in report.results] == [False, True, True, False]
    assert [(d.path, d.kind) for d in report.results[0].differences] == [
        ("events[0]", "unexpected")
    ]
    assert [(d.path, d.kind) for d in report.results[3].differences] == [("events[1]", "missing")]


def test_declared_mask_covers_event_payloads() -> None:
    """NONDETERMINISTIC fields of an emitted event's payload are masked under `events.payload.`."""
    from contractspec.core import define_command, define_event

    class Payload(BaseModel):
        at: Annotated[str, NONDETERMINISTIC]
        n: int

    class In(BaseModel):
        q: str

    class Out(BaseModel):
        ok: bool

    event = define_event("a.b.happened", payload=Payload)
    spec = define_command("a.b.do", input=In, output=Out, emits=[event])
    assert declared_mask(spec) == ("events.payload.at",)
