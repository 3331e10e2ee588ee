"""HTTP status of error codes: a package's own error subclass answers its base class's status,
never a 500 by omission (an approval refusal, a `ConflictError`, is a 409)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from contractspec.core import ConflictError, NotFoundError
from contractspec.core.errors import HTTP_STATUS, ContractSpecError, SpecValidationError


class _StaleDecision(ConflictError):
    code = "test_stale_decision"


class _GoneRecord(NotFoundError):
    code = "test_gone_record"


class _BadRow(_StaleDecision):
    """A subclass that keeps its parent's code."""


def _all(cls: type[ContractSpecError]) -> Iterator[type[ContractSpecError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _all(sub)


def test_unlisted_codes_take_their_nearest_listed_base_status() -> None:
    assert HTTP_STATUS[_StaleDecision.code] == 409
    assert HTTP_STATUS.get(_GoneRecord.code, 500) == 404
    assert HTTP_STATUS[_BadRow.code] == 409
    assert _StaleDecision.code in HTTP_STATUS
    assert HTTP_STATUS.get("no_such_code", 500) == 500
    assert "no_such_code" not in HTTP_STATUS
    assert HTTP_STATUS[SpecValidationError.code] == 422  # listed codes unchanged


def test_every_caller_error_subclass_maps_to_a_4xx() -> None:
    """No subclass of a caller-blame error (conflict, not found, validation) answers 5xx."""
    for base in (ConflictError, NotFoundError, SpecValidationError):
        for sub in _all(base):
            assert 400 <= HTTP_STATUS.get(sub.code, 500) < 500, (sub, sub.code)


def test_the_agent_approval_refusal_is_a_conflict() -> None:
    errors = pytest.importorskip("contractspec.agent.errors")  # core installs without the agent
    assert HTTP_STATUS.get(errors.ApprovalDecisionError.code, 500) == 409
