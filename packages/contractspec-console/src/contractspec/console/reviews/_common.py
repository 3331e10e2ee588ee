"""Shared plumbing of the review sections: optional imports, queue pages, a small form builder."""

from __future__ import annotations

import enum
import importlib
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from attrs import define, field
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from contractspec.console.sections import ConsoleHost
from contractspec.core import ConfigurationError, ContractSpecError
from contractspec.core.errors import HTTP_STATUS, NotFoundError, PolicyDeniedError


def require_package(module: str, package: str, section: str) -> ModuleType:
    """Import `module`, or raise a `ConfigurationError` naming the distribution to install.

    Raises:
        ConfigurationError: `module` cannot be imported (`details.field` is `section`).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigurationError(
            f"the console section {section} needs {package}: pip install '{package}' "
            f"(import of {module} failed: {exc})",
            details={"field": section, "install": package},
        ) from exc


def pretty(value: Any) -> str:
    """`value` as indented JSON text (sorted keys; `str()` for what JSON cannot hold)."""
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def status_of(error: ContractSpecError) -> int:
    """The HTTP status of `error`: `HTTP_STATUS` of its code, else of the nearest base class's
    code (a package's `ApprovalDecisionError(ConflictError)` is a 409), else 500."""
    for cls in type(error).__mro__:
        code = getattr(cls, "code", None) if cls is not type(error) else error.code
        if isinstance(code, str) and code in HTTP_STATUS:
            return HTTP_STATUS[code]
    return 500


def field_errors(error: ContractSpecError) -> dict[str, str]:
    """`{field: message}` of a `SpecValidationError` (the first message per field)."""
    out: dict[str, str] = {}
    for item in getattr(error, "errors", None) or ():
        if not isinstance(item, Mapping):
            continue
        loc = [str(p) for p in item.get("loc") or () if p not in ("body",)]
        name = str(item.get("field") or ".".join(loc) or "")
        out.setdefault(name, str(item.get("msg") or error.message))
    return out


def back_to(request: Request) -> str:
    """The page an action route (`.../<item>/<action>`) belongs to: its path without the action."""
    path = request.url.path
    return path[: path.rstrip("/").rfind("/")] or "/"


# -- forms built from an input model ----------------------------------------------------------


@define(frozen=True)
class FormField:
    """One input of a form built from a pydantic model.

    Attributes:
        name: The model's field name (the form posts it as `<prefix><name>`).
        label: What the label says.
        kind: `text`, `number`, `checkbox`, `select` or `textarea`.
        required: Whether the model requires it.
        step: For numbers: `1` for integers, `any` for floats and decimals.
        choices: For selects: the allowed values.
        default: The model's default, as text (`""` when none).
        description: The field's description (help text).
    """

    name: str
    label: str
    kind: str
    required: bool
    step: str = ""
    choices: tuple[str, ...] = ()
    default: str = ""
    description: str = ""


def _unwrap(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else str
    return annotation


def form_fields(model: type[BaseModel] | None) -> list[FormField]:
    """The inputs of a form for `model` (scalar fields; others are entered as JSON text)."""
    if model is None:
        return []
    out: list[FormField] = []
    for name, info in model.model_fields.items():
        tp = _unwrap(info.annotation)
        default = "" if info.is_required() or info.default is None else str(info.default)
        if isinstance(info.default, enum.Enum):
            default = str(info.default.value)
        common: dict[str, Any] = {
            "name": name,
            "label": info.title or name.replace("_", " ").capitalize(),
            "required": info.is_required(),
            "default": default,
            "description": info.description or "",
        }
        if tp is bool:
            out.append(FormField(kind="checkbox", **common))
        elif tp is int:
            out.append(FormField(kind="number", step="1", **common))
        elif tp in (float, Decimal):
            out.append(FormField(kind="number", step="any", **common))
        elif typing.get_origin(tp) is Literal:
            choices = tuple(str(a) for a in typing.get_args(tp))
            out.append(FormField(kind="select", choices=choices, **common))
        elif isinstance(tp, type) and issubclass(tp, enum.Enum):
            out.append(FormField(kind="select", choices=tuple(str(m.value) for m in tp), **common))
        elif tp is str:
            out.append(FormField(kind="text", **common))
        else:
            out.append(FormField(kind="textarea", **common))
    return out


def form_values(
    fields: Sequence[FormField], form: Mapping[str, Any], prefix: str = ""
) -> dict[str, Any]:
    """The raw input for `fields` from a submitted form (the executor validates it).

    Empty optional inputs are left out (the model's default applies); unchecked checkboxes are
    `False`; JSON text fields are parsed (text that is not JSON is passed on as it is).
    """
    out: dict[str, Any] = {}
    for f in fields:
        key = prefix + f.name
        if f.kind == "checkbox":
            out[f.name] = key in form
            continue
        raw = form.get(key)
        if not isinstance(raw, str) or (raw == "" and not f.required):
            continue
        if f.kind == "textarea":
            try:
                out[f.name] = json.loads(raw)
            except ValueError:
                out[f.name] = raw
        else:
            out[f.name] = raw
    return out


# -- a review queue: list, show, act ----------------------------------------------------------


@define(frozen=True)
class QueueAction:
    """A command offered on an item's page (shown only when `ConsoleHost.may` allows it).

    Attributes:
        name: URL segment of the action (`approve`).
        operation: The review command (`agent.review.approvals.approve`).
        label: The button's text.
        comment: The input field the comment box fills (`comment`, `reason`); `None`: no box.
        danger: Styled as a destructive action.
    """

    name: str
    operation: str
    label: str
    comment: str | None = "comment"
    danger: bool = False


@define
class QueueSection:
    """A section over list/show queries and item commands (the shape of every review module).

    Subclasses set the operation names, the item's id field and their two templates; the pages
    only call `ConsoleHost.execute`, `form`, `may`, `render` and `render_error`.
    """

    key: str
    title: str
    list_operation: str
    show_operation: str
    id_field: str
    actions: tuple[QueueAction, ...]
    list_template: str
    detail_template: str
    #: Query-string filters passed to the list query (`status`, `job_type`, ...).
    filters: tuple[str, ...] = ()
    #: Filter values that mean "no filter" (`status=any` -> `None`).
    any_value: str = "any"
    template_dir: Path | None = None
    #: Adds section-specific context to a detail page (`item` -> extra context).
    detail_extra: Callable[[Any], Mapping[str, Any]] | None = field(default=None, eq=False)

    def routes(self, console: ConsoleHost) -> Sequence[BaseRoute]:
        """`/` (list), `/{item_id}` (detail) and `/{item_id}/{action}` (POST)."""

        async def listing(request: Request) -> Response:
            return await self.list_page(console, request)

        async def detail(request: Request) -> Response:
            return await self.detail_page(console, request, request.path_params["item_id"])

        async def act(request: Request) -> Response:
            return await self.act(
                console, request, request.path_params["item_id"], request.path_params["action"]
            )

        return [
            Route("/", listing, methods=["GET"]),
            Route("/{item_id}", detail, methods=["GET"]),
            Route("/{item_id}/{action}", act, methods=["POST"]),
        ]

    async def visible(self, console: ConsoleHost, request: Request) -> bool:
        """Shown to callers the policy lets run the list query."""
        return await console.may(request, self.list_operation)

    def list_input(self, request: Request) -> dict[str, Any]:
        """The list query's input from the query string (cursor and this section's filters)."""
        params = request.query_params
        raw: dict[str, Any] = {}
        for name in self.filters:
            value = params.get(name)
            if value is None or value == "":
                continue
            raw[name] = None if value == self.any_value else value
        if params.get("cursor"):
            raw["cursor"] = params["cursor"]
        return raw

    async def list_page(self, console: ConsoleHost, request: Request) -> Response:
        """The list query's page, with a link to the next page."""
        raw = self.list_input(request)
        try:
            page = await console.execute(request, self.list_operation, raw)
        except ContractSpecError as exc:
            return console.render_error(request, exc)
        filters = {k: request.query_params.get(k, "") for k in self.filters}
        return console.render(
            request,
            self.list_template,
            {
                "section": self,
                "page": page,
                "items": getattr(page, "items", []),
                "filters": filters,
            },
        )

    async def more_context(
        self, console: ConsoleHost, request: Request, item: Any
    ) -> Mapping[str, Any]:
        """Extra context of an item's page that needs more calls (none by default)."""
        return {}

    def show_input(self, request: Request, item_id: str) -> dict[str, Any]:
        """The show query's input for `item_id` (`{id_field: item_id}`)."""
        return {self.id_field: item_id}

    async def offered(self, console: ConsoleHost, request: Request) -> list[QueueAction]:
        """The actions the caller's policy allows (others are not shown)."""
        return [a for a in self.actions if await console.may(request, a.operation)]

    async def detail_page(
        self,
        console: ConsoleHost,
        request: Request,
        item_id: str,
        *,
        error: ContractSpecError | None = None,
    ) -> Response:
        """The show query's page with the offered actions (and the error of a failed action)."""
        try:
            item = await console.execute(
                request, self.show_operation, self.show_input(request, item_id)
            )
        except ContractSpecError as exc:
            return console.render_error(request, exc)
        context: dict[str, Any] = {
            "section": self,
            "item": item,
            "item_id": item_id,
            "actions": await self.offered(console, request),
            "error": error.message if error is not None else None,
            "error_code": error.code if error is not None else None,
            "pretty": pretty,
        }
        if self.detail_extra is not None:
            context.update(self.detail_extra(item))
        context.update(await self.more_context(console, request, item))
        return console.render(
            request,
            self.detail_template,
            context,
            status_code=status_of(error) if error is not None else 200,
        )

    async def act(
        self, console: ConsoleHost, request: Request, item_id: str, action: str
    ) -> Response:
        """Run an action's command as the caller; back to the item's page (303) when done.

        A denial or an unknown item is the console's error page (403/404); another refusal
        (the workflow's rules, a conflict, invalid input) is shown on the item's page.
        """
        chosen = next((a for a in self.actions if a.name == action), None)
        if chosen is None:
            raise HTTPException(404, f"no action {action!r} in {self.title}")
        form = await console.form(request)
        raw: dict[str, Any] = {self.id_field: item_id}
        comment = form.get("comment")
        if chosen.comment is not None and isinstance(comment, str) and comment:
            raw[chosen.comment] = comment
        try:
            await console.execute(request, chosen.operation, raw)
        except (PolicyDeniedError, NotFoundError) as exc:
            return console.render_error(request, exc)
        except ContractSpecError as exc:
            return await self.detail_page(console, request, item_id, error=exc)
        return RedirectResponse(back_to(request), status_code=303)
