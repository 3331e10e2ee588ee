"""The generated views: home, entity list and detail, operation forms and their results.

Entity pages read through the repository API in a read-only transaction of the executor's unit
of work, scoped to the caller's tenant, after the policy allowed `<entity name>.read` (see
`Console(read_permission=...)`). Operation forms run through the executor, so policy, tenant,
idempotency, outbox and audit apply as on every other surface.
"""

from __future__ import annotations

import inspect
import json
import re
import uuid
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlencode

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from contractspec.console._forms import (
    FormField,
    errors_by_field,
    form_fields,
    parse_form,
    values_of,
)
from contractspec.core._fields import SCALAR_KINDS, entity_columns
from contractspec.core._log import get_logger
from contractspec.core.context import CallContext, Resource
from contractspec.core.errors import (
    HTTP_STATUS,
    ContractSpecError,
    NotFoundError,
    PolicyDeniedError,
    SpecValidationError,
    UnknownOperationError,
)
from contractspec.core.specs import EntitySpec, OperationSpec
from contractspec.core.workflows import may_call

if TYPE_CHECKING:
    from contractspec.console.app import Console

_log = get_logger(__name__)

__all__ = ["entity_label", "is_record_action", "may_read", "operation_label", "routes"]

_KEY: Final = re.compile(r"[A-Za-z0-9_-]{8,128}")
_CREATE_VERBS: Final = frozenset({"create", "add", "new", "register", "import"})


def entity_label(entity: EntitySpec[Any]) -> str:
    """The entity's readable name: the last name segment (`crm.deal` -> `Deal`)."""
    return entity.name.rsplit(".", 1)[-1].replace("_", " ").capitalize()


def operation_label(op: OperationSpec) -> str:
    """The operation's readable name without its domain (`crm.deal.create` -> `Deal create`)."""
    parts = op.name.split(".")
    tail = parts[1:] if len(parts) > 1 else parts
    return " ".join(tail).replace("_", " ").capitalize()


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def may_read(console: Console, call: CallContext, entity: EntitySpec[Any]) -> bool:
    """Whether the executor's policy lets `call` read `entity`'s records.

    The same checks as the authorize stage: an authenticated actor, a member of the tenant (when
    the policy knows memberships), and the permission `console.read_permission(entity)`
    (`<entity name>.read` by default) on the resource `<entity name>`.
    """
    actor = call.actor
    if actor.is_anonymous:
        return False
    executor = console.executor
    is_member = executor._is_member
    if (
        call.org_id is not None
        and is_member is not None
        and not await _maybe_await(is_member(actor, call.org_id))
    ):
        return False
    policy = executor.policy
    if policy is None:
        return False
    permission = console.read_permission(entity)
    decision = await _maybe_await(
        policy.decide(actor, permission, Resource(entity.name, None, call.org_id), call)
    )
    return bool(decision.allowed)


def _entity(console: Console, name: str) -> EntitySpec[Any]:
    for entity in console.entities:
        if entity.name == name:
            return entity
    raise NotFoundError(
        f"no entity {name!r} in this console; pick one from the navigation",
        details={"field": "entity", "entity": name},
    )


def _operation(console: Console, name: str) -> OperationSpec:
    if name.startswith("contractspec."):
        raise UnknownOperationError(
            f"operation {name!r} has no form in the console", details={"operation": name}
        )
    spec: OperationSpec = console.executor._plan(name, None).spec
    return spec


def _denied_read(entity: EntitySpec[Any], permission: str) -> PolicyDeniedError:
    return PolicyDeniedError(
        f"you may not read {entity.name} records (permission {permission!r})",
        reason="not allowed by the policy",
        action=permission,
        details={"entity": entity.name},
    )


def _denied_op(op: OperationSpec) -> PolicyDeniedError:
    return PolicyDeniedError(
        f"you may not run {op.name}",
        reason="not allowed by the policy",
        action=op.auth.describe(),
        details={"operation": op.ref},
    )


def _entity_for_output(console: Console, output: BaseModel) -> EntitySpec[Any] | None:
    for entity in console.entities:
        if type(output) is entity.model:
            return entity
    return None


def _related_operations(console: Console, entity: EntitySpec[Any]) -> list[OperationSpec]:
    """Commands named under the entity (`<entity>.<verb>`)."""
    prefix = entity.name + "."
    return [op for op in console.operations if op.name.startswith(prefix) and op.is_command]


def _target_field(entity: EntitySpec[Any], op: OperationSpec) -> str | None:
    """The input field of `op` naming one record of `entity` (its primary key or `<x>_id`)."""
    fields = op.input.model_fields
    last = entity.name.rsplit(".", 1)[-1]
    for name in (entity.primary_key, f"{last}_{entity.primary_key}", f"{last}_id"):
        if name in fields:
            return name
    return None


def is_record_action(console: Console, op: OperationSpec) -> bool:
    """Whether `op` acts on one record of an entity (offered on that record's page, not in the
    navigation): a command named `<entity>.<verb>` whose input names the record (see
    `_target_field`) and whose verb is not a create verb."""
    if not op.is_command or op.name.rsplit(".", 1)[-1] in _CREATE_VERBS:
        return False
    return any(
        op.name.startswith(entity.name + ".") and _target_field(entity, op) is not None
        for entity in console.entities
    )


def _record_url(root: str, entity: EntitySpec[Any], record: BaseModel) -> str:
    pk = getattr(record, entity.primary_key)
    return f"{root}/entities/{entity.name}/{quote(str(pk), safe='')}"


def _cell_text(value: Any) -> str:
    """The text of one list cell (structured values as JSON, long texts truncated)."""
    if value is None:
        return ""
    if value is True:
        return "yes"
    if value is False:
        return "no"
    if isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 80 else text[:77] + "..."
    text = str(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _display(value: Any) -> Any:
    """A JSON-like form of a value for the `value()` macro (models become mappings)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


async def _read(console: Console, call: CallContext, entity: EntitySpec[Any], work: Any) -> Any:
    """Run `work(repository)` in a read-only transaction scoped to the caller's tenant."""
    executor = console.executor
    tx = await executor.unit_of_work.begin(readonly=True)
    try:
        repo = executor.entities.repository(entity, tx, call.org_id)
        return await work(repo)
    finally:
        await tx.rollback()


def routes(console: Console) -> list[BaseRoute]:
    """The console's own routes (home, entities, operations)."""
    root_of = console.root_of

    async def home(request: Request) -> Response:
        await console.call_context(request)
        return console.render(request, "console/index.html", {})

    async def entity_list(request: Request) -> Response:
        call = await console.call_context(request)
        entity = _entity(console, request.path_params["name"])
        if not await may_read(console, call, entity):
            raise _denied_read(entity, console.read_permission(entity))
        columns = entity_columns(entity.model)
        params = request.query_params
        where: dict[str, Any] = {}
        filters: dict[str, str] = {}
        for key in params:
            if key.startswith("_"):
                continue
            field_name, _, lookup = key.partition("__")
            col = columns.get(field_name)
            if lookup and lookup in ("in", "not_in"):
                values = [v for v in params.getlist(key) if v]
                if values:
                    where[key] = values
                    filters[key] = ",".join(values)
                continue
            value = params[key]
            if not value:
                continue
            filters[key] = value
            if lookup == "is_null":
                where[key] = value.lower() in ("1", "true", "yes")
            elif not lookup and col is not None and col.kind == "str":
                where[f"{key}__icontains"] = value
            elif not lookup and col is not None and col.kind == "bool":
                where[key] = value.lower() in ("1", "true", "yes")
            else:
                where[key] = value
        sort = params.get("_sort") or entity.primary_key
        try:
            page_no = max(1, int(params.get("_page", "1")))
        except ValueError:
            page_no = 1
        size = console.page_size
        error: str | None = None
        rows: list[BaseModel] = []
        total = 0
        try:

            async def work(repo: Any) -> tuple[list[BaseModel], int]:
                found = await repo.find(
                    where or None, order_by=sort, limit=size + 1, offset=(page_no - 1) * size
                )
                return found, await repo.count(where or None)

            rows, total = await _read(console, call, entity, work)
        except SpecValidationError as exc:
            error = exc.message
        more = len(rows) > size
        rows = rows[:size]
        root = root_of(request)
        base = f"{root}/entities/{entity.name}/"

        def link(**changes: Any) -> str:
            query = {**filters, "_sort": sort, "_page": str(page_no)}
            query.update({k: str(v) for k, v in changes.items()})
            if query.get("_sort") == entity.primary_key:
                query.pop("_sort")
            if query.get("_page") == "1":
                query.pop("_page")
            return base + ("?" + urlencode(query) if query else "")

        from contractspec.console.app import PageLinks

        first = (page_no - 1) * size + 1
        page = PageLinks(
            previous_url=link(_page=page_no - 1) if page_no > 1 else None,
            next_url=link(_page=page_no + 1) if more else None,
            summary=f"rows {first}-{first + len(rows) - 1} of {total}" if rows else "no rows",
        )
        shown = list(columns.values())
        headers = []
        for col in shown:
            sortable = col.kind in SCALAR_KINDS
            direction = None
            if sort == col.name:
                direction = "ascending"
            elif sort == f"-{col.name}":
                direction = "descending"
            headers.append(
                {
                    "name": col.name,
                    "label": col.name.replace("_", " ").capitalize(),
                    "kind": col.kind,
                    "sort_url": link(
                        _sort=f"-{col.name}" if sort == col.name else col.name, _page=1
                    )
                    if sortable
                    else None,
                    "direction": direction,
                }
            )
        filter_fields = [
            {
                "name": col.name,
                "label": col.name.replace("_", " ").capitalize(),
                "kind": col.kind,
                "choices": [str(v) for v in col.enum_values],
                "value": filters.get(col.name, ""),
            }
            for col in columns.values()
            if col.kind in ("str", "enum", "bool", "int", "decimal", "date", "uuid")
        ]
        actions = [
            {"label": operation_label(op), "url": f"{root}/ops/{op.name}"}
            for op in _related_operations(console, entity)
            if (op.name.rsplit(".", 1)[-1] in _CREATE_VERBS or _target_field(entity, op) is None)
            and await may_call(console.executor, op, call)
        ]
        numeric = {"int", "float", "decimal"}
        layout = [(col.name, col.kind in numeric, col.name == entity.primary_key) for col in shown]
        records: list[list[tuple[str, bool, str | None]]] = []
        for row in rows:
            data = row.model_dump(mode="json")
            url = _record_url(root, entity, row)
            records.append(
                [
                    (_cell_text(data.get(name)), num, url if is_pk else None)
                    for name, num, is_pk in layout
                ]
            )
        return console.render(
            request,
            "console/entity_list.html",
            {
                "entity": entity,
                "label": entity_label(entity),
                "headers": headers,
                "records": records,
                "filters": filter_fields,
                "extra_filters": {
                    k: v for k, v in filters.items() if k not in {f["name"] for f in filter_fields}
                },
                "sort": sort,
                "page": page,
                "error": error,
                "actions": actions,
                "list_url": base,
            },
            status_code=400 if error else 200,
        )

    async def entity_detail(request: Request) -> Response:
        call = await console.call_context(request)
        entity = _entity(console, request.path_params["name"])
        if not await may_read(console, call, entity):
            raise _denied_read(entity, console.read_permission(entity))
        record_id = request.path_params["id"]

        async def work(repo: Any) -> BaseModel | None:
            try:
                found: BaseModel | None = await repo.get(record_id)
            except SpecValidationError:
                return None
            return found

        record = await _read(console, call, entity, work)
        if record is None:
            raise NotFoundError(
                f"no {entity.name} {record_id!r} in this tenant",
                details={"entity": entity.name, "id": record_id},
            )
        root = root_of(request)
        actions = []
        for op in _related_operations(console, entity):
            target = _target_field(entity, op)
            if target is None or op.name.rsplit(".", 1)[-1] in _CREATE_VERBS:
                continue
            if not await may_call(console.executor, op, call):
                continue
            pk = getattr(record, entity.primary_key)
            actions.append(
                {
                    "label": operation_label(op),
                    "url": f"{root}/ops/{op.name}?{urlencode({target: str(pk)})}",
                }
            )
        done = request.query_params.get("done")
        notice = None
        if done:
            try:
                notice = f"{operation_label(_operation(console, done))}: done."
            except ContractSpecError:
                notice = None
        return console.render(
            request,
            "console/entity_detail.html",
            {
                "entity": entity,
                "label": entity_label(entity),
                "record": record.model_dump(mode="json"),
                "record_id": str(getattr(record, entity.primary_key)),
                "actions": actions,
                "notice": notice,
                "list_url": f"{root}/entities/{entity.name}/",
            },
        )

    async def _prefill(
        call: CallContext, op: OperationSpec, fields: tuple[FormField, ...], request: Request
    ) -> dict[str, str]:
        """Form values from the query string, completed from the record it names (edit forms)."""
        given = {k: v for k, v in request.query_params.items() if not k.startswith("_")}
        values = values_of(fields, given)
        for entity in console.entities:
            if not op.name.startswith(entity.name + "."):
                continue
            target = _target_field(entity, op)
            if target is None or target not in given:
                continue
            if not await may_read(console, call, entity):
                continue

            async def work(repo: Any, key: str = given[target]) -> BaseModel | None:
                try:
                    found: BaseModel | None = await repo.get(key)
                except SpecValidationError:
                    return None
                return found

            record = await _read(console, call, entity, work)
            if record is not None:
                stored = values_of(fields, record.model_dump())
                values = {**stored, **values}
            break
        return values

    def _form_context(
        request: Request,
        op: OperationSpec,
        fields: tuple[FormField, ...],
        values: dict[str, str],
        *,
        errors: dict[str, list[str]] | None = None,
        form_errors: list[str] | None = None,
        result: Any = None,
        error: dict[str, Any] | None = None,
        key: str | None = None,
    ) -> dict[str, Any]:
        return {
            "op": op,
            "label": operation_label(op),
            "fields": fields,
            "values": values,
            "errors": errors or {},
            "form_errors": form_errors or [],
            "result": result,
            "error": error,
            "is_command": op.is_command,
            "idempotency_key": (key or uuid.uuid4().hex)
            if op.is_command and op.idempotent
            else None,
            "action": f"{root_of(request)}/ops/{op.name}",
        }

    async def operation_form(request: Request) -> Response:
        call = await console.call_context(request)
        op = _operation(console, request.path_params["name"])
        if not await may_call(console.executor, op, call):
            raise _denied_op(op)
        fields = form_fields(op.input)
        if not op.is_command and "_run" in request.query_params:
            values = values_of(fields, dict(request.query_params.items()))
            raw = parse_form(fields, request.query_params)
            try:
                output = await console.execute(request, op.name, raw)
            except SpecValidationError as exc:
                errors, rest = errors_by_field(fields, exc.errors)
                return console.render(
                    request,
                    "console/operation.html",
                    _form_context(request, op, fields, values, errors=errors, form_errors=rest),
                    status_code=422,
                )
            except ContractSpecError as exc:
                return _failed(request, op, fields, values, exc, None)
            return console.render(
                request,
                "console/operation.html",
                _form_context(request, op, fields, values, result=_display(output)),
            )
        values = await _prefill(call, op, fields, request)
        return console.render(
            request, "console/operation.html", _form_context(request, op, fields, values)
        )

    def _failed(
        request: Request,
        op: OperationSpec,
        fields: tuple[FormField, ...],
        values: dict[str, str],
        exc: ContractSpecError,
        key: str | None,
    ) -> Response:
        status = HTTP_STATUS.get(exc.code, 500)
        message = exc.message
        code = exc.code
        if status >= 500 and status != 504:
            # the cause goes to the log, never to the page (as contractspec.core.http)
            caller = console.caller_of(request)
            request_id = caller.request_id if caller is not None else None
            _log.error(
                "contractspec.console.operation_failed",
                operation=op.ref,
                request_id=request_id,
                code=exc.code,
                exc_info=exc,
            )
            code = "internal_error"
            message = f"internal error; quote request id {request_id} to the operator"
        elif isinstance(exc, PolicyDeniedError) and call_is_anonymous(request):
            status = 401
        return console.render(
            request,
            "console/operation.html",
            _form_context(
                request,
                op,
                fields,
                values,
                error={"status": status, "code": code, "message": message},
                key=key,
            ),
            status_code=status,
        )

    def call_is_anonymous(request: Request) -> bool:
        return console.caller_of(request) is None

    async def operation_submit(request: Request) -> Response:
        await console.call_context(request)
        op = _operation(console, request.path_params["name"])
        data = await console.form(request)
        fields = form_fields(op.input)
        values = values_of(fields, {k: v for k, v in data.multi_items() if isinstance(v, str)})
        if not op.is_command:
            raise UnknownOperationError(
                f"{op.name} is a query: open its form and press Run (GET)",
                details={"operation": op.ref},
            )
        key: str | None = None
        if op.idempotent:
            given = data.get("_idempotency_key")
            if isinstance(given, str) and given:
                if not _KEY.fullmatch(given):
                    raise SpecValidationError(
                        "invalid form: _idempotency_key must be 8-128 letters, digits, '_' or '-'; "
                        "reload the form",
                        errors=[
                            {
                                "loc": ["_idempotency_key"],
                                "field": "_idempotency_key",
                                "msg": "reload the form",
                                "type": "idempotency_key",
                            }
                        ],
                    )
                key = given
        raw = parse_form(fields, data)
        try:
            output = await console.execute(request, op.name, raw, idempotency_key=key)
        except SpecValidationError as exc:
            errors, rest = errors_by_field(fields, exc.errors)
            if not errors and not rest:
                rest = [exc.message]
            return console.render(
                request,
                "console/operation.html",
                _form_context(
                    request, op, fields, values, errors=errors, form_errors=rest, key=key
                ),
                status_code=422,
            )
        except ContractSpecError as exc:
            return _failed(request, op, fields, values, exc, key)
        entity = _entity_for_output(console, output)
        caller = await console.call_context(request)
        if entity is not None and await may_read(console, caller, entity):
            url = _record_url(root_of(request), entity, output) + "?" + urlencode({"done": op.name})
            if request.headers.get("hx-request") == "true":
                return Response(status_code=200, headers={"HX-Redirect": url})
            return RedirectResponse(url, status_code=303)
        return console.render(
            request,
            "console/operation.html",
            _form_context(request, op, fields, {}, result=_display(output)),
        )

    return [
        Route("/", home, methods=["GET"], name="index"),
        Route("/entities/{name}/", entity_list, methods=["GET"], name="entity_list"),
        Route("/entities/{name}/{id:path}", entity_detail, methods=["GET"], name="entity_detail"),
        Route("/ops/{name}", operation_form, methods=["GET"], name="operation_form"),
        Route("/ops/{name}", operation_submit, methods=["POST"], name="operation_submit"),
    ]
