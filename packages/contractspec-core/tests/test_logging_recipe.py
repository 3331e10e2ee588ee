"""The logging recipe: ContractSpec's structlog events arrive in the app's stdlib `logging`."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from pydantic import BaseModel

from contractspec.core import (
    Actor,
    CallContext,
    Executor,
    HandlerCtx,
    InternalError,
    PolicyDeniedError,
    RolePermissions,
    SpecRegistry,
    define_command,
    requires,
)

SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
]


class _Name(BaseModel):
    name: str


def _executor() -> Executor:
    rename = define_command(
        "crm.contact.rename", input=_Name, output=_Name, auth=requires("contact.write")
    )
    registry = SpecRegistry(rename)

    @registry.handler(rename)
    async def _rename(inp: _Name, ctx: HandlerCtx) -> _Name:
        return _Name(name={"Ada": "Ada L."}[inp.name])  # KeyError for anyone else

    return Executor(registry, policy=RolePermissions({"sales": ["contact.*"]}))


def _configure_stdlib_routing() -> None:
    """The recipe of docs/core/logging.md: only structlog's and logging's public API."""
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *SHARED,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )


def _render(record: logging.LogRecord) -> dict[str, Any]:
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )
    rendered: dict[str, Any] = json.loads(formatter.format(record))
    return rendered


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    """Leave structlog's global configuration as it was for the other tests."""
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def _ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("contractspec.")]


@pytest.mark.usefixtures("restore_structlog")
async def test_denied_call_log_reaches_the_stdlib_handler_with_its_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Configured after ContractSpec already logged, the routing applies: no internals touched."""
    executor = _executor()
    with pytest.raises(PolicyDeniedError):  # logs once with structlog's defaults (to stdout)
        await executor.execute("crm.contact.rename", {"name": "Ada"})
    _configure_stdlib_routing()
    caplog.set_level(logging.INFO)
    structlog.contextvars.bind_contextvars(service="crm-api")
    with pytest.raises(PolicyDeniedError):
        await executor.execute(
            "crm.contact.rename", {"name": "Ada"}, CallContext(org_id="acme", request_id="req-7")
        )
    (record,) = _ours(caplog)
    assert record.levelno == logging.INFO
    rendered = _render(record)
    assert rendered["event"] == "contractspec.denied_unauthenticated"
    assert rendered["level"] == "info"
    assert rendered["logger"] == record.name
    assert rendered["operation"] == "crm.contact.rename@1"
    assert rendered["claimed_org"] == "acme"
    assert rendered["request_id"] == "req-7"
    assert rendered["total"] == 2
    assert rendered["service"] == "crm-api"  # the app's bound context is merged in


@pytest.mark.usefixtures("restore_structlog")
async def test_handler_failure_log_carries_the_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """contractspec.handler_failed arrives at ERROR with the handler's exception rendered."""
    _configure_stdlib_routing()
    caplog.set_level(logging.INFO)
    sales = CallContext(actor=Actor.user("u1", roles="sales"), org_id="acme", request_id="r-1")
    with pytest.raises(InternalError):
        await _executor().execute("crm.contact.rename", {"name": "Bob"}, sales)
    (record,) = _ours(caplog)
    assert record.levelno == logging.ERROR
    rendered = _render(record)
    assert rendered["event"] == "contractspec.handler_failed"
    assert (rendered["operation"], rendered["org_id"]) == ("crm.contact.rename@1", "acme")
    assert "KeyError: 'Bob'" in rendered["exception"]
    assert "_rename" in rendered["exception"]


@pytest.mark.usefixtures("restore_structlog")
async def test_stdlib_levels_decide_what_contractspec_emits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With the recipe, the app's `contractspec` logger level filters ContractSpec's events."""
    _configure_stdlib_routing()
    caplog.set_level(logging.WARNING, logger="contractspec")
    with pytest.raises(PolicyDeniedError):
        await _executor().execute("crm.contact.rename", {"name": "Ada"})
    assert _ours(caplog) == []


async def test_contractspec_never_configures_logging() -> None:
    """Running calls configures neither structlog nor any stdlib handler or level."""
    root, ours = logging.getLogger(), logging.getLogger("contractspec")
    before = (list(root.handlers), root.level, list(ours.handlers), ours.level)
    configured, config = structlog.is_configured(), structlog.get_config()
    executor = _executor()
    with pytest.raises(PolicyDeniedError):
        await executor.execute("crm.contact.rename", {"name": "Ada"})
    with pytest.raises(InternalError):
        await executor.execute(
            "crm.contact.rename", {"name": "Bob"}, CallContext(actor=Actor.user("u", roles="sales"))
        )
    assert (structlog.is_configured(), structlog.get_config()) == (configured, config)
    assert (list(root.handlers), root.level, list(ours.handlers), ours.level) == before
