"""The global switch that makes real model requests raise (tests run offline)."""

from __future__ import annotations

import os

from contractspec.agent.errors import ModelRequestsForbiddenError

__all__ = ["allow_model_requests", "check_model_requests_allowed", "model_requests_allowed"]

_allowed = os.environ.get("CONTRACTSPEC_ALLOW_MODEL_REQUESTS", "1").strip().lower() not in (
    "0",
    "false",
    "no",
)


def allow_model_requests(allowed: bool) -> None:
    """Allow (`True`) or forbid (`False`) requests to real models, process-wide."""
    global _allowed
    _allowed = bool(allowed)


def model_requests_allowed() -> bool:
    """Whether real model requests are allowed right now."""
    return _allowed


def check_model_requests_allowed(model: str) -> None:
    """Raise `ModelRequestsForbiddenError` if real model requests are switched off."""
    if not _allowed:
        raise ModelRequestsForbiddenError(
            f"a real model request to {model!r} was blocked: real model requests are switched off "
            "(contractspec.agent.testing.block_model_requests() or "
            "CONTRACTSPEC_ALLOW_MODEL_REQUESTS=0); use ScriptedModel or FunctionModel in tests",
            details={"model": model},
        )
