"""Values no store can hold (NaN, infinities, NUL, lone surrogates) in what a model sends or a tool
returns: refused or failed cleanly, and the run is saved on memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest
from agent_support import OWNER, AgentEnv, agent_env
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from contractspec.agent import (
    ActionStatus,
    AgentRunError,
    ModelRequest,
    RiskLevel,
    RunResult,
    RunStatus,
    ToolCall,
    ToolMessage,
    define_agent,
    tool,
)
from contractspec.agent.testing import FunctionModel, ScriptedModel, call

#: What the `emit` tools return in the current run (set by each test before it runs).
RESULT: dict[str, Any] = {"value": None}
FIX = "cannot be stored"


@tool
async def measure(x: float, label: str = "") -> dict[str, object]:
    """Read a measurement (read-only)."""
    return {"x": x, "label": label}


@tool(risk=RiskLevel.L1, side_effects=True)
async def record(x: float, label: str = "") -> dict[str, object]:
    """Record a measurement (side effect)."""
    return {"recorded": x, "label": label}


@tool(risk=RiskLevel.L1, side_effects=True)
async def emit() -> Any:
    """Return whatever RESULT holds (side effect)."""
    return RESULT["value"]


@tool
async def peek() -> Any:
    """Return whatever RESULT holds (read-only)."""
    return RESULT["value"]


def _hostile_evidence(args: BaseModel, ctx: Any) -> dict[str, Any]:
    return {"margin": RESULT["value"]}


@tool(risk=RiskLevel.L1, side_effects=True, evidence=_hostile_evidence)
async def guarded(x: float) -> dict[str, object]:
    """A tool whose evidence may be unstorable."""
    return {"x": x}


agent = define_agent(
    "lab.assistant",
    model="scripted",
    instructions="You record measurements.",
    tools=[measure, record, emit, peek, guarded],
)


class Reading(BaseModel):
    value: float
    note: str = ""


structured = define_agent(
    "lab.reader", model="scripted", instructions="Answer with a reading.", output_type=Reading
)


def _unstorable(value: Any) -> bool:
    """Whether JSON-like `value` holds NaN, an infinity, NUL or a lone surrogate (test oracle)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        return any(c == "\x00" or 0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(_unstorable(k) or _unstorable(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_unstorable(v) for v in value)
    return False


def _numbers_as_floats(value: Any) -> Any:
    """`value` with numbers as floats and tuples as lists: PostgreSQL jsonb gives a float with no
    fraction back as an int (4.8e16 -> 48000185713961090, the same float)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        return {k: _numbers_as_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_numbers_as_floats(v) for v in value]
    return value


async def _stored(env: AgentEnv, result: RunResult) -> dict[str, Any]:
    """The run, its steps and its ledger entries as loaded back from the store."""
    runner = env.runner()
    run = await runner.get(result.run_id)
    steps = await runner.steps(result.run_id)
    tx = await env.backend.unit_of_work.begin(readonly=True)
    try:
        actions = await env.runs.actions(tx, result.run_id)
    finally:
        await tx.rollback()
    loaded = {"run": run, "steps": steps, "actions": {a.tool: a for a in actions}}
    assert run.status is result.status
    assert not _unstorable(list(run.messages)), "an unstorable value was kept in the messages"
    assert not _unstorable([s.response for s in steps] + [list(s.tool_results) for s in steps])
    assert not _unstorable([a.result for a in actions] + [a.packet for a in actions])
    return loaded


def _results(loaded: dict[str, Any], step: int = 1) -> dict[str, dict[str, Any]]:
    (found,) = [s for s in loaded["steps"] if s.index == step]
    return {r["name"]: r for r in found.tool_results}


# -- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments",
    [
        {"x": float("nan")},
        {"x": float("inf"), "label": "ok"},
        {"x": float("-inf")},
        '{"x": NaN}',
        '{"x": -Infinity}',
        {"x": "nan"},  # the float field parses the text: refused after validation
        {"x": 1.5, "label": "a\x00b"},
        {"x": 1.5, "label": "a\ud800b"},
        '{"x": 1.5, "label": "a\\u0000b"}',
        '{"x": 1.5, "label": "a\\udfffb"}',
        '{"x": 1.5, "label": "raw \x00 nul"}',
    ],
    ids=lambda a: ascii(a)[:30],
)
async def test_unstorable_arguments_are_refused_as_invalid_and_the_run_goes_on(
    env: AgentEnv, arguments: Any
) -> None:
    """NaN/Infinity numbers and NUL/lone-surrogate text in a call's arguments (decoded or JSON
    text) come back to the model as `invalid` naming the field and the fix; the side-effecting
    tool never runs (no ledger entry), the model corrects itself, the run completes and is
    stored."""
    model = ScriptedModel(
        [
            [call("record", arguments, id="c1"), call("measure", arguments, id="c2")],
            call("record", x=1.5, label="fixed"),
            "recorded",
        ]
    )
    result = await env.runner(model).run(agent, "record 1.5", OWNER)
    model.assert_consumed()
    assert result.status is RunStatus.COMPLETED
    assert result.output == "recorded"
    feedback = [m for m in model.requests[1].messages if isinstance(m, ToolMessage)]
    assert [m.is_error for m in feedback] == [True, True]
    for message in feedback:
        problem = json.loads(message.content)
        assert problem["status"] == "invalid"
        fields = {e["field"] for e in problem["errors"]}
        assert fields, problem
        assert fields <= {"x", "label"}, problem
        assert all(FIX in e["message"] for e in problem["errors"]), problem
    loaded = await _stored(env, result)
    assert loaded["run"].output == "recorded"
    assert {r["status"] for r in _results(loaded).values()} == {"invalid"}
    assert _results(loaded, 2)["record"]["status"] == "ok"
    (action,) = loaded["actions"].values()  # only the corrected call reached the ledger
    assert action.step == 2
    assert action.status is ActionStatus.SUCCEEDED
    assert action.packet["arguments"] == {"x": 1.5, "label": "fixed"}


async def test_unstorable_names_ids_and_text_from_the_model_are_stored_replaced(
    env: AgentEnv,
) -> None:
    """A call id or tool name holding NUL or a lone surrogate is an unknown tool, and text with
    them is the answer with U+FFFD in their place: the run completes and is stored."""
    model = ScriptedModel(
        [
            raw_call("c\x00", "mea\x00sure", {"x": 1.0}),
            raw_call("c\ud800", "measure", {"x": 2.0}),
            "done \x00 and \udc00 too",
        ]
    )
    result = await env.runner(model).run(agent, "go", OWNER)
    assert result.status is RunStatus.COMPLETED
    assert result.output == "done \ufffd and \ufffd too"
    loaded = await _stored(env, result)
    assert loaded["run"].output == result.output
    assert _results(loaded)["mea\ufffdsure"]["status"] == "unknown_tool"
    assert _results(loaded, 2)["measure"]["tool_call_id"] == "c\ufffd"
    assert _results(loaded, 2)["measure"]["status"] == "ok"


def raw_call(id: str, name: str, arguments: Any) -> ToolCall:
    """A raw tool call, bypassing `call`'s helpers."""
    return ToolCall(id, name, arguments)


async def test_a_failed_run_quoting_unstorable_text_is_saved(env: AgentEnv) -> None:
    """A model client failing with NUL and a lone surrogate in its message fails the run, and the
    failed run is stored (U+FFFD in their place) instead of failing to save."""

    def broken(request: ModelRequest) -> str:
        raise RuntimeError("provider said \x00 and \ud800")

    runner = env.runner(FunctionModel(broken))
    with pytest.raises(AgentRunError) as info:
        await runner.run(agent, "go", OWNER)
    (run,) = await runner.history(org_id=OWNER.org_id)
    assert run.status is RunStatus.FAILED
    assert run.error is not None
    assert "provider said \ufffd and \ufffd" in run.error["message"]
    assert info.value.code == run.error["code"]
    assert not _unstorable(run.error)
    logs = await runner.logs(run.id)
    assert not _unstorable([line.message for line in logs])


# -- results and evidence -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [float("nan"), {"v": float("inf")}, ["ok", "a\x00b"], {"k\ud800": 1}, {"n": [1, -math.inf]}],
    ids=ascii,
)
async def test_an_unstorable_result_fails_a_read_and_keeps_an_effect_once(
    env: AgentEnv, value: Any
) -> None:
    """A read-only tool returning NaN/Infinity or NUL/surrogate text fails that call with a known
    failure the model is told about; a side-effecting tool's effect already happened, so its
    call is recorded as succeeded (ledger `succeeded`, never a failure that invites a second
    effect) with a storable copy of the result. The run completes and is stored."""
    RESULT["value"] = value
    model = ScriptedModel([[call("emit", id="e1"), call("peek", id="p1")], "noted"])
    result = await env.runner(model).run(agent, "emit", OWNER)
    assert result.status is RunStatus.COMPLETED
    feedback = {m.name: m for m in model.requests[1].messages if isinstance(m, ToolMessage)}
    problem = json.loads(feedback["peek"].content)
    assert feedback["peek"].is_error
    assert problem["status"] == "unstorable_result"
    assert FIX in problem["error"]
    assert "peek" in problem["error"]
    assert not feedback["emit"].is_error
    loaded = await _stored(env, result)
    assert {n: r["status"] for n, r in _results(loaded).items()} == {
        "emit": "ok",
        "peek": "error",
    }
    action = loaded["actions"]["emit"]
    assert action.status is ActionStatus.SUCCEEDED
    assert _unstorable(action.result["result"]) is False
    assert json.loads(feedback["emit"].content) == action.result["result"]


async def test_unstorable_evidence_blocks_the_call_fail_closed(env: AgentEnv) -> None:
    """Evidence holding NaN would be stored in the action packet: the call is blocked (as when
    evidence cannot be gathered) and the run is saved."""
    RESULT["value"] = float("nan")
    model = ScriptedModel([call("guarded", x=1.0), "ok"])
    result = await env.runner(model).run(agent, "go", OWNER)
    assert result.status is RunStatus.COMPLETED
    loaded = await _stored(env, result)
    outcome = _results(loaded)["guarded"]
    assert outcome["status"] == "blocked"
    assert FIX in json.loads(outcome["content"])["error"]
    assert loaded["actions"] == {}


@pytest.mark.parametrize(
    "answer",
    ['{"value": NaN}', '{"value": Infinity}', '{"value": 1, "note": "a\\u0000b"}'],
)
async def test_unstorable_structured_output_is_sent_back_for_correction(
    env: AgentEnv, answer: str
) -> None:
    """A structured answer that parses into NaN, an infinity or NUL text is sent back naming the
    field, like an answer that does not match the schema; the corrected one is stored."""
    model = ScriptedModel([answer, '{"value": 2.5}'])
    result = await env.runner(model).run(structured, "read", OWNER)
    assert result.status is RunStatus.COMPLETED
    assert result.output == Reading(value=2.5)
    correction = model.requests[1].messages[-1].to_dict()["content"]
    assert FIX in correction
    assert '"value"' in correction or '"note"' in correction
    loaded = await _stored(env, result)
    assert loaded["run"].output == {"value": 2.5, "note": ""}


# -- hostile input, every backend -----------------------------------------------------------------

_BAD = st.sampled_from(["\x00", "\ud800", "\udbff", "\udc00", "\udfff"])
_TEXT = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=12),
    st.builds(lambda a, b, c: a + b + c, st.text(max_size=4), _BAD, st.text(max_size=4)),
)
_FLOAT = st.floats(allow_nan=True, allow_infinity=True)
_JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), _FLOAT, _TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_TEXT, inner, max_size=3)),
    max_leaves=6,
)


def test_any_model_output_or_tool_result_leaves_a_stored_consistent_run(
    backend_kind: str, tmp_path: Path
) -> None:
    """Hypothesis over floats (NaN, infinities) and text (NUL, surrogates) in arguments (decoded
    or JSON text), tool results and answers: every run completes and loads back consistent — each
    call `invalid` exactly when its arguments were unstorable, a side effect `ok` with a storable
    copy of any result, ledger entries only for valid side-effecting calls, the answer as stored."""
    with asyncio.Runner() as runner:  # one environment for all examples
        manager = agent_env(backend_kind, tmp_path)
        env = runner.run(manager.__aenter__())
        try:

            @settings(
                max_examples=50,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                database=None,
                phases=[Phase.explicit, Phase.generate],  # shrinking a run per example is slow
            )
            @given(x=_FLOAT, label=_TEXT, as_text=st.booleans(), value=_JSONISH, answer=_TEXT)
            def one_run(x: float, label: str, as_text: bool, value: Any, answer: str) -> None:
                runner.run(_one_run(env, x, label, as_text, value, answer))

            one_run()
        finally:
            runner.run(manager.__aexit__(None, None, None))


async def _one_run(
    env: AgentEnv, x: float, label: str, as_text: bool, value: Any, answer: str
) -> None:
    RESULT["value"] = value
    arguments: Any = {"x": x, "label": label}
    if as_text:
        arguments = json.dumps(arguments)  # NaN / Infinity literals, \\u escapes
    answer = answer if answer.strip() else "done"
    model = ScriptedModel(
        [[call("record", arguments), call("measure", arguments), call("emit")], answer]
    )
    result = await env.runner(model).run(agent, "go", OWNER)
    assert result.status is RunStatus.COMPLETED
    loaded = await _stored(env, result)
    bad_args = _unstorable([x, label])
    bad_result = _unstorable(value)
    statuses = {n: r["status"] for n, r in _results(loaded).items()}
    expected = "invalid" if bad_args else "ok"
    assert statuses == {
        "record": expected,
        "measure": expected,
        "emit": "ok",  # a side effect: succeeded, its result kept as a storable copy
    }
    assert set(loaded["actions"]) == ({"emit"} if bad_args else {"record", "emit"})
    emitted = loaded["actions"]["emit"]
    assert emitted.status is ActionStatus.SUCCEEDED
    assert not _unstorable(emitted.result["result"])
    if not bad_result:
        assert _numbers_as_floats(emitted.result["result"]) == _numbers_as_floats(value)
    if not bad_args:
        stored = loaded["actions"]["record"].packet["arguments"]
        # PostgreSQL jsonb gives a float with no fraction back as an int (4.37e16 -> 43705...10)
        assert (float(stored["x"]), stored["label"]) == (x, label)
    stored_answer = "".join(
        "\ufffd" if c == "\x00" or 0xD800 <= ord(c) <= 0xDFFF else c for c in answer
    )
    assert result.output == loaded["run"].output == stored_answer
