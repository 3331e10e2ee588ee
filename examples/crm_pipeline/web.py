"""The CRM's web app: its HTTP API under `/api` and its console under `/admin`, one authenticator.

```py
from crm_pipeline.web import Tokens, create_web_app

app = create_web_app(executor, tokens=Tokens.parse("s3cret=ana:sales@acme"), secret_key=SECRET)
```

The console (`contractspec-console`) shows contacts, companies, deals and tasks (lists, records,
forms of the CRM's operations), the deals as a board by stage (`crm_pipeline.console_board`: the
moves the caller may make from each card) and the org's audit log with its chain
verification. Reading needs `crm.read`; the audit log needs `crm.audit.read` (the `sales` role
has both through `crm.*`). Both surfaces run on the same executor and authenticator: a bearer
token (`Authorization: Bearer <token>`, API clients) or the `crm_token` cookie (browsers).

Serve it: `CRM_CONSOLE_SECRET=... CRM_TOKENS="tok=ana:sales@acme" python -m crm_pipeline.web
--db crm.db` (uvicorn on 127.0.0.1:8000; `/login?token=...` sets the cookie).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

from attrs import define
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route

from contractspec.console import Console
from contractspec.console.reviews import AuditLog
from contractspec.core import Actor, ConfigurationError, Executor, SpecRegistry
from contractspec.core.http import Principal, create_app
from crm_pipeline.console_board import StageBoard
from crm_pipeline.spec import registry as crm_registry

__all__ = ["COOKIE", "Tokens", "console_registry", "create_console", "create_web_app", "main"]

#: The cookie a browser session carries its token in.
COOKIE = "crm_token"


@define(frozen=True)
class Tokens:
    """The app's authenticator: known tokens and who they are (`token -> Principal`)."""

    principals: Mapping[str, Principal]

    @classmethod
    def parse(cls, text: str) -> Tokens:
        """`"token=user:role1+role2@org,..."` (e.g. from an environment variable).

        Raises:
            ConfigurationError: An entry without `token=user:roles@org` (named in the message).
        """
        out: dict[str, Principal] = {}
        for entry in filter(None, (e.strip() for e in text.split(","))):
            token, _, who = entry.partition("=")
            user, _, rest = who.partition(":")
            roles, _, org = rest.partition("@")
            if not (token and user and roles and org):
                raise ConfigurationError(
                    f"token entry {entry.split('=')[0][:4]}...: write token=user:role@org "
                    "(roles joined by '+')",
                    details={"field": "tokens"},
                )
            out[token] = Principal(Actor.user(user, roles=roles.split("+")), org_id=org)
        return cls(out)

    def __call__(self, request: Request) -> Principal | None:
        """The caller of `request`: its bearer token, else its `crm_token` cookie; else None."""
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ") if header.startswith("Bearer ") else None
        return self.principals.get(token or request.cookies.get(COOKIE) or "")


def console_registry(base: SpecRegistry = crm_registry) -> SpecRegistry:
    """A copy of the CRM registry (same specs and handlers) for the console's executor.

    The console's sections register their own queries (the board, the audit log); a copy keeps
    them out of the CRM's spec (`generated/`, the lock and the API stay as they are).
    """
    copy = SpecRegistry()
    specs = list(base)
    copy.register(*[s for s in specs if getattr(s, "kind", None) != "workflow"])
    copy.register(*[s for s in specs if getattr(s, "kind", None) == "workflow"])
    for op in base.operations():
        handler = base.handler_for(op)
        if handler is not None and copy.handler_for(op) is None:
            copy.bind(op, handler)
    return copy


def create_console(executor: Executor, *, authenticate: Any, secret_key: str) -> Console:
    """The CRM console over `executor` (whose registry is a `console_registry()`)."""
    registry = executor.registry
    return Console(
        executor,
        authenticate=authenticate,
        secret_key=secret_key,
        title="CRM",
        read_permission=lambda entity: "crm.read",
        sections=[
            StageBoard(),
            AuditLog(registry, executor.audit, permission="crm.audit.read"),  # type: ignore[arg-type]
        ],
    )


def create_web_app(
    executor: Executor, *, tokens: Tokens, secret_key: str, title: str = "CRM pipeline API"
) -> Starlette:
    """The API (`contractspec.core.http`) at `/api` and the console at `/admin`.

    `executor` must run a `console_registry()` (the console registers its sections' queries).
    `/login?token=...` stores a known token in an HTTP-only, same-site cookie and opens the
    console; an unknown token answers 401.
    """
    api = create_app(executor, authenticate=tokens, title=title)
    console = create_console(executor, authenticate=tokens, secret_key=secret_key)

    async def login(request: Request) -> Response:
        token = request.query_params.get("token", "")
        if token not in tokens.principals:
            return Response("unknown token", status_code=401)
        response = RedirectResponse("/admin/", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    return Starlette(
        routes=[Route("/login", login), Mount("/api", app=api), Mount("/admin", app=console)]
    )


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - starts a server
    """Serve the CRM's API and console on a SQLite (or PostgreSQL) database with uvicorn."""
    import asyncio

    import uvicorn

    from contractspec.core.sql import SqlBackend, sqlite_engine
    from crm_pipeline.spec import policy

    parser = argparse.ArgumentParser(description="Serve the CRM's API and web console.")
    parser.add_argument("--db", default="crm.db", help="SQLite file (created if missing)")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    secret = os.environ.get("CRM_CONSOLE_SECRET", "")
    tokens = Tokens.parse(os.environ.get("CRM_TOKENS", ""))
    registry = console_registry()
    backend = SqlBackend(sqlite_engine(args.db), registry)
    asyncio.run(backend.create_all())
    executor = Executor(registry, backend=backend, policy=policy())
    app = create_web_app(executor, tokens=tokens, secret_key=secret)
    uvicorn.run(app, host="127.0.0.1", port=args.port)


if __name__ == "__main__":  # pragma: no cover
    main()
