"""Code generation from the spec IR: plain code and documents that run without ContractSpec.

`generate(ir, out)` renders, deterministically, with Jinja2 templates:

* `models.py`: pydantic models of every operation input/output and event payload;
* `tables.py`: SQLAlchemy 2.x typed models (`Mapped`, `mapped_column`) of every entity;
* `router_<domain>.py`: a FastAPI router per domain whose endpoints run each operation on a
  ContractSpec `Executor` (policy, audit, outbox; see `contractspec.core.fastapi`), or, with
  `plain=True` (`contractspec generate --plain`), call your own handler functions;
* `app.py`: `create_app(executor, authenticate)` mounting every router (`create_app(handlers)`
  with `plain=True`);
* `openapi.json`: the OpenAPI 3.1 document (the one `contractspec.core.http` serves);
* `docs/<domain>/<operation>.md` and `docs/events/<event>.md`: Markdown reference pages.

Every Python file passes ruff and mypy strict. The `plain=True` variant imports only pydantic,
SQLAlchemy and FastAPI, so it runs with ContractSpec uninstalled.
"""

from __future__ import annotations

from contractspec.core.codegen._render import (
    GENERATED_MARK,
    Drift,
    GenerationResult,
    check_generated,
    generate,
    render,
)
from contractspec.core.codegen.openapi import (
    HeaderNames,
    http_method,
    http_path,
    openapi_document,
    operation_id,
)

__all__ = [
    "GENERATED_MARK",
    "Drift",
    "GenerationResult",
    "HeaderNames",
    "check_generated",
    "generate",
    "http_method",
    "http_path",
    "openapi_document",
    "operation_id",
    "render",
]
