"""AgentControl: the agent console on the web (contractspec-console), beside its HTTP API.

```py
async with open_console("agent_console.db") as control:
    app = create_control_app(control, users=Users.parse("tok=ana:ops"), secret_key=SECRET)
```

`/admin/` is the console, for the signed-in user (a bearer token, or the `agentcontrol_token`
cookie `/login?token=...` sets):

* Agents and tools (`/admin/agents/`): every agent of the spec with its model, limits and tools
  (kind, risk level, side effects, invariants); a form per agent starts a run as the caller (the
  runner checks the agent's run permission, the tools' policies and invariants, and asks for
  approvals); "Resume decided runs" continues the runs whose approvals were decided;
* Agent runs (`/admin/runs/`, `contractspec.console.reviews.AgentRuns`): history, each run's
  steps, tool calls, cost, status (polled while it runs) and logs; SREs may cancel;
* Approvals (`/admin/approvals/`, `ApprovalsQueue`): the exact arguments and their hash,
  approve or reject with a comment (SREs; never the user who started the run).

`/api/...` serves the same review operations as JSON (`contractspec.core.http`). The command line
(`python -m agent_console`) stays a thin client of the same `AgentConsole` on the same file.
Serve it: `AGENTCONTROL_SECRET=... AGENTCONTROL_USERS="t1=ana:ops,t2=sam:sre" python -m
agent_console.web --db agent_console.db`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from attrs import define
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from agent_console.console import ORG, POLICY, AgentConsole, open_console
from contractspec.agent import RunResult
from contractspec.console import Console, ConsoleHost
from contractspec.console.reviews import AgentRuns, ApprovalsQueue
from contractspec.core import Actor, ConfigurationError, Executor, PolicyDeniedError
from contractspec.core.http import Principal, create_app

__all__ = ["COOKIE", "AgentCatalog", "Users", "create_control_app", "main"]

#: The cookie a browser session carries its token in.
COOKIE = "agentcontrol_token"
_TEMPLATES = Path(__file__).parent / "templates"


@define(frozen=True)
class Users:
    """The app's authenticator: known tokens and who they are (all in the console's org)."""

    principals: Mapping[str, Principal]

    @classmethod
    def parse(cls, text: str, *, org: str = ORG) -> Users:
        """`"token=user:role1+role2,..."` (e.g. from an environment variable).

        Raises:
            ConfigurationError: An entry without `token=user:roles`.
        """
        out: dict[str, Principal] = {}
        for entry in filter(None, (e.strip() for e in text.split(","))):
            token, _, who = entry.partition("=")
            user, _, roles = who.partition(":")
            if not (token and user and roles):
                raise ConfigurationError(
                    "a user entry must read token=user:role (roles joined by '+')",
                    details={"field": "users"},
                )
            out[token] = Principal(Actor.user(user, roles=roles.split("+")), org_id=org)
        return cls(out)

    def __call__(self, request: Request) -> Principal | None:
        """The caller of `request`: its bearer token, else its cookie; else None."""
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ") if header.startswith("Bearer ") else None
        return self.principals.get(token or request.cookies.get(COOKIE) or "")


class AgentCatalog:
    """Console section: agents and tools from the spec, a run form per agent, resume."""

    template_dir: Path | None = _TEMPLATES

    def __init__(
        self, control: AgentConsole, *, key: str = "agents", title: str = "Agents and tools"
    ) -> None:
        self.control = control
        self.key = key
        self.title = title

    async def visible(self, console: ConsoleHost, request: Request) -> bool:
        """Shown to every signed-in user (the runner decides who may run which agent)."""
        try:
            await console.call_context(request)
        except Exception:  # 401: not signed in
            return False
        return True

    def routes(self, console: ConsoleHost) -> Sequence[BaseRoute]:
        """`/` (catalog), `/run` (POST: start a run), `/resume` (POST: resume decided runs)."""
        control = self.control

        async def catalog(request: Request) -> Response:
            await console.call_context(request)
            return self._page(console, request)

        async def run(request: Request) -> Response:
            call = await console.call_context(request)
            form = await console.form(request)
            agent, text = str(form.get("agent", "")), str(form.get("text", "")).strip()
            if agent not in {a.name for a in control.runner.registry}:
                return self._page(console, request, error=f"no agent {agent!r}", status=422)
            if not text:
                return self._page(console, request, error="write what the agent should do",
                                  status=422, agent=agent)  # fmt: skip
            try:
                result = await control.runner.run(agent, text, call)
            except PolicyDeniedError as exc:  # may not run this agent
                return console.render_error(request, exc)
            except Exception as exc:  # the run is stored as failed (e.g. a usage limit); say why
                message = f"the run failed: {type(exc).__name__}: {exc}"
                return self._page(console, request, error=message, status=200)
            root = request.scope.get("root_path", "").rsplit("/", 1)[0]
            return RedirectResponse(f"{root}/runs/{result.run_id}", status_code=303)

        async def resume(request: Request) -> Response:
            call = await console.call_context(request)
            await console.form(request)
            results = await control.runner.resume_ready(org_id=call.org_id)
            return self._page(console, request, resumed=[_summary(r) for r in results])

        return [
            Route("/", catalog, methods=["GET"]),
            Route("/run", run, methods=["POST"]),
            Route("/resume", resume, methods=["POST"]),
        ]

    def _page(
        self, console: ConsoleHost, request: Request, *, status: int = 200, **values: Any
    ) -> Response:
        agents = [
            {
                "name": a.name,
                "ref": a.ref,
                "model": a.model,
                "description": a.description,
                "max_steps": a.limits.max_steps,
                "tools": [
                    {
                        "name": t.name,
                        "kind": t.kind,
                        "risk": t.risk.name,
                        "side_effects": t.side_effects,
                        "invariants": [f"{i.name}: {i.expression.text}" for i in t.invariants],
                        "description": t.description,
                    }
                    for t in a.tools
                ],
            }
            for a in self.control.runner.registry
        ]
        context = {"agents": agents, "error": None, "resumed": None, "agent": None, **values}
        return console.render(request, "agentcontrol/agents.html", context, status_code=status)


def _summary(result: RunResult) -> dict[str, Any]:
    return {"run_id": result.run_id, "status": result.status.value, "output": result.output}


def create_control_app(control: AgentConsole, *, users: Users, secret_key: str) -> Starlette:
    """AgentControl's app: the console at `/admin`, the review operations at `/api`, `/login`.

    Args:
        control: An open `AgentConsole` (`open_console(path)`): runner, approvals, backend.
        users: Who the tokens are.
        secret_key: Signs the console's CSRF tokens (at least 32 characters).
    """
    executor = Executor(control.registry, backend=control.backend, policy=POLICY)
    console = Console(
        executor,
        authenticate=users,
        secret_key=secret_key,
        title="AgentControl",
        sections=[AgentCatalog(control), AgentRuns(), ApprovalsQueue()],
    )
    api = create_app(executor, authenticate=users, title="AgentControl API")

    async def login(request: Request) -> Response:
        token = request.query_params.get("token", "")
        if token not in users.principals:
            return Response("unknown token", status_code=401)
        response = RedirectResponse("/admin/agents/", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    return Starlette(
        routes=[Route("/login", login), Mount("/api", app=api), Mount("/admin", app=console)]
    )


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - starts a server
    """Serve AgentControl on a SQLite file with uvicorn (127.0.0.1)."""
    import asyncio

    import uvicorn

    parser = argparse.ArgumentParser(description="Serve AgentControl, the agent web console.")
    parser.add_argument("--db", default="agent_console.db", help="SQLite file")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    users = Users.parse(os.environ.get("AGENTCONTROL_USERS", ""))
    secret = os.environ.get("AGENTCONTROL_SECRET", "")

    async def serve() -> None:
        async with open_console(args.db) as control:
            app = create_control_app(control, users=users, secret_key=secret)
            config = uvicorn.Config(app, host="127.0.0.1", port=args.port)
            await uvicorn.Server(config).serve()

    asyncio.run(serve())


if __name__ == "__main__":  # pragma: no cover
    main()
