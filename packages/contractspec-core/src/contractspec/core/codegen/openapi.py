"""The OpenAPI 3.1 document of a spec's HTTP surface, built from the IR.

The same function feeds `contractspec generate` (`openapi.json`) and the runtime adapter
(`contractspec.core.http` serves it), so the committed document and the live one never drift.

Binding (the one `contractspec.core.http` implements):

* queries: `GET /<name with dots as slashes>/v<version>`, input fields as query parameters
  (arrays repeat the parameter, objects are JSON text);
* commands: `POST` on the same path, input as a JSON body;
* `200` with the output; errors as a `Problem` document (`code`, `message`, `details`) with the
  statuses of `contractspec.core.errors.HTTP_STATUS`. Every operation documents the statuses the
  adapter can answer (`ERROR_STATUSES`): `400` malformed JSON or header, `401` no identified
  caller (non-public operations), `403` policy, `404` not found, `409` conflict (commands), `413`
  body too large (commands), `422` validation, `429` rate limited, `202` approval required, `500`
  internal, `504` timeout;
* security: `components.securitySchemes` (an HTTP bearer scheme unless the app declares its own)
  and a `security` requirement on every non-public operation (`security: []` on public ones).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, Final

from contractspec.core.ir import ir_digest, validate_ir

__all__ = [
    "DEFAULT_SECURITY_SCHEMES",
    "ERROR_STATUSES",
    "HEADER_MAX_LENGTH",
    "HEADER_PATTERN",
    "HeaderNames",
    "http_method",
    "http_path",
    "openapi_document",
    "operation_id",
    "query_parameters",
]

#: Binding headers carry 1 to 200 visible ASCII characters (the adapter answers 400 otherwise).
HEADER_PATTERN: Final = "^[\\x21-\\x7e]+$"
HEADER_MAX_LENGTH: Final = 200

#: Documented error statuses and what they mean. Every operation documents `202`, `400`, `403`,
#: `404`, `422`, `429`, `500` and `504`; non-public operations also `401`; commands also `409`
#: and `413`.
ERROR_STATUSES: Final[dict[str, str]] = {
    "202": "Accepted: the action needs a human approval before it runs (code approval_required)",
    "400": "Bad request: the body is not valid JSON, or a binding header is malformed "
    "(code bad_request)",
    "401": "Unauthorized: the operation needs an identified caller; send credentials "
    "(code policy_denied)",
    "403": "Forbidden: the policy denied the call, the caller is not a member of the tenant, or the "
    "call needs a tenant (codes policy_denied, tenant_scope_required)",
    "404": "Not found: a record the input refers to does not exist in the tenant (code not_found)",
    "409": "Conflict with the current state: a duplicate, a concurrent update, or an idempotency "
    "key reused with another input or still in progress (codes conflict, concurrent_update, "
    "idempotency_conflict, idempotency_in_progress)",
    "413": "Content too large: the request body exceeds the server's limit "
    "(code content_too_large)",
    "422": "The input does not match the operation's schema, holds characters that cannot be "
    "stored (NUL, lone surrogates), or carries a header the operation does not take "
    "(code validation_error)",
    "429": "Too many requests: retry after the Retry-After header's seconds (code rate_limited)",
    "500": "Internal error: the details are in the server logs under the request id "
    "(code internal_error)",
    "504": "The operation took longer than its time limit; nothing it wrote was kept "
    "(code operation_timeout)",
}

_COMMAND_ONLY: Final = frozenset({"409", "413"})
_NON_PUBLIC_ONLY: Final = frozenset({"401"})

#: The security scheme documented unless the app declares its own: a bearer token in the
#: `Authorization` header (what the app's authenticator checks is up to the app).
DEFAULT_SECURITY_SCHEMES: Final[Mapping[str, Mapping[str, Any]]] = MappingProxyType(
    {
        "bearerAuth": MappingProxyType(
            {
                "type": "http",
                "scheme": "bearer",
                "description": "Credentials checked by the server's authenticator; the tenant "
                "comes from them, not from the client",
            }
        )
    }
)

_PROBLEM: Final[dict[str, Any]] = {
    "title": "Problem",
    "type": "object",
    "description": "Error document of every non-2xx answer (and of 202 approval_required).",
    "properties": {
        "code": {"type": "string", "description": "Stable error code (validation_error, ...)"},
        "message": {"type": "string", "description": "What was wrong and what to do"},
        "details": {"type": "object", "description": "Field errors and other context"},
    },
    "required": ["code", "message", "details"],
}


class HeaderNames:
    """Header names of the HTTP binding (override them in `contractspec.core.http.create_app`).

    Attributes:
        request_id: Echoed on every response; generated when absent.
        idempotency_key: Makes an idempotent command safe to retry.
        org_id: Names the tenant of the call, read (and documented) only when the adapter
            trusts it (`trust_org_header=True`, behind a gateway that sets it).
    """

    __slots__ = ("idempotency_key", "org_id", "request_id")

    def __init__(
        self,
        request_id: str = "X-Request-Id",
        idempotency_key: str = "Idempotency-Key",
        org_id: str | None = "X-Org-Id",
    ) -> None:
        self.request_id = request_id
        self.idempotency_key = idempotency_key
        self.org_id = org_id


def http_path(name: str, version: int) -> str:
    """`/crm/deal/create/v1` for `crm.deal.create@1`."""
    return "/" + name.replace(".", "/") + f"/v{version}"


def http_method(operation_kind: str) -> str:
    """`get` for queries, `post` for commands."""
    return "get" if operation_kind == "query" else "post"


def operation_id(name: str, version: int) -> str:
    """`crm_deal_create_v1`: a Python identifier, also used by the generated routers."""
    return name.replace(".", "_") + f"_v{version}"


# --------------------------------------------------------------------------------------------
# Components: every role schema's `$defs` merged under unique names
# --------------------------------------------------------------------------------------------


def _rewrite(node: Any, mapping: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                out[key] = "#/components/schemas/" + mapping[value.removeprefix("#/$defs/")]
            elif key == "$defs":
                continue
            else:
                out[key] = _rewrite(value, mapping)
        return out
    if isinstance(node, list):
        return [_rewrite(v, mapping) for v in node]
    return node


class _Components:
    """Merges self-contained schemas into `components/schemas` with stable, unique names."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def _fresh(self, base: str, role: str, taken: set[str]) -> str:
        candidates = [f"{base}-{role.title()}"] + [f"{base}{i}" for i in range(2, 10_000)]
        for name in candidates:
            if name not in self.schemas and name not in taken:
                return name
        raise RuntimeError("no free component name")  # pragma: no cover - 10k collisions

    def add(self, schema: Mapping[str, Any], role: str) -> str:
        """Add a role schema (root + `$defs`); return the component name of its root."""
        return self.add_mapped(schema, role)[0]

    def add_mapped(self, schema: Mapping[str, Any], role: str) -> tuple[str, dict[str, str]]:
        """`add`, also returning the component name chosen for each `$defs` entry."""
        defs: dict[str, Any] = dict(schema.get("$defs") or {})
        root_key = "\x00root"
        defs[root_key] = {k: v for k, v in schema.items() if k != "$defs"}
        title = str(schema.get("title") or "Model")
        mapping = {k: (title if k == root_key else k) for k in defs}
        for _ in range(len(defs) + 1):
            contents = {k: _rewrite(v, mapping) for k, v in defs.items()}
            clashes = [
                k
                for k in sorted(defs)
                if mapping[k] in self.schemas and self.schemas[mapping[k]] != contents[k]
            ]
            taken = list(mapping.values())
            dupes = {n for n in taken if taken.count(n) > 1}
            clashes += [k for k in sorted(defs) if mapping[k] in dupes and k == root_key]
            if not clashes:
                break
            used = set(mapping.values())
            for k in clashes:
                mapping[k] = self._fresh(mapping[k], role, used)
                used.add(mapping[k])
        for k in sorted(defs):
            self.schemas.setdefault(mapping[k], contents[k])
        return mapping[root_key], {k: v for k, v in mapping.items() if k != root_key}


# --------------------------------------------------------------------------------------------
# Query parameters
# --------------------------------------------------------------------------------------------


def _deref(schema: Any, root: Mapping[str, Any]) -> dict[str, Any]:
    current = dict(schema) if isinstance(schema, Mapping) else {}
    for _ in range(32):
        ref = current.get("$ref")
        if not (isinstance(ref, str) and ref.startswith("#/$defs/")):
            break
        target = (root.get("$defs") or {}).get(ref.removeprefix("#/$defs/"), {})
        current = {**target, **{k: v for k, v in current.items() if k != "$ref"}}
    return current


def _value_kinds(schema: Mapping[str, Any], root: Mapping[str, Any]) -> set[str]:
    node = _deref(schema, root)
    if "x-decimal" in node:
        return {"decimal"}
    members = node.get("anyOf") or node.get("oneOf")
    if isinstance(members, list):
        return set().union(*(_value_kinds(m, root) for m in members))
    types = node.get("type")
    if isinstance(types, list):
        return {str(t) for t in types}
    if isinstance(types, str):
        return {types}
    if "properties" in node:
        return {"object"}
    if "enum" in node or "const" in node:
        return {"scalar"}
    return {"any"}


def query_parameters(input_schema: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """How each input field travels in a query string: `(name, style, required)`.

    `style` is `scalar` (one value), `array` (repeated parameter) or `json` (JSON text: objects,
    unions of structured values, untyped values).
    """
    root = _deref(input_schema, input_schema)
    required = set(root.get("required") or ())
    out = []
    for name, prop in sorted((root.get("properties") or {}).items()):
        kinds = _value_kinds(prop, input_schema) - {"null"}
        if kinds <= {"string", "integer", "number", "boolean", "decimal", "scalar"} and kinds:
            style = "scalar"
        elif kinds == {"array"}:
            style = "array"
        else:
            style = "json"
        out.append((name, style, name in required))
    return out


def _strip_null(schema: Any) -> Any:
    """A query parameter cannot carry null: absence is null. Drop null variants."""
    if not isinstance(schema, dict):
        return schema
    members = schema.get("anyOf")
    if isinstance(members, list):
        kept = [m for m in members if not (isinstance(m, dict) and m.get("type") == "null")]
        rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
        if schema.get("default") is not None:
            rest["default"] = schema["default"]
        if len(kept) == 1:
            return {**kept[0], **rest}
        return {**rest, "anyOf": kept}
    if schema.get("default", 0) is None:
        return {k: v for k, v in schema.items() if k != "default"}
    return schema


# --------------------------------------------------------------------------------------------
# The document
# --------------------------------------------------------------------------------------------


def _operations(ir: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    yield from ir["specs"].get("operation", [])


def _header(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": HEADER_MAX_LENGTH,
            "pattern": HEADER_PATTERN,
        },
    }


def _summary(op: Mapping[str, Any]) -> str:
    lines = str(op.get("description") or "").strip().splitlines()
    return lines[0] if lines else f"{op['name']}@{op['version']}"


def _plain(node: Any) -> Any:
    """Mappings (read-only ones too) as plain dicts, for JSON."""
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_plain(v) for v in node]
    return node


def _problem_response(status: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": ERROR_STATUSES[status],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    if status == "429":
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before retrying",
                "schema": {"type": "integer", "minimum": 1},
            }
        }
    return response


def openapi_document(
    ir: Mapping[str, Any],
    *,
    title: str = "ContractSpec API",
    description: str = "",
    headers: HeaderNames | None = None,
    servers: list[dict[str, Any]] | None = None,
    security_schemes: Mapping[str, Mapping[str, Any]] | None = None,
    trust_org_header: bool = False,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every operation in `ir` (see the module docstring).

    Args:
        ir: A spec IR (`registry.to_ir()` or a loaded lock).
        title: `info.title`.
        description: `info.description`.
        headers: Header names of the binding (defaults: `X-Request-Id`, `Idempotency-Key`,
            `X-Org-Id`).
        servers: Optional `servers` list.
        security_schemes: `components.securitySchemes` (OpenAPI Security Scheme Objects by
            name); every non-public operation requires one of them. Defaults to
            `DEFAULT_SECURITY_SCHEMES` (an HTTP bearer token); `{}` documents none.
        trust_org_header: Document the tenant header (`headers.org_id`) as a parameter, as the
            adapter reads it only with `trust_org_header=True`.

    Returns:
        The document as JSON data; `info.version` is the IR digest (`sha256:...`).

    Raises:
        IRFormatError: `ir` is not valid IR.
    """
    validate_ir(dict(ir))
    names = headers or HeaderNames()
    schemes = _plain(DEFAULT_SECURITY_SCHEMES if security_schemes is None else security_schemes)
    requirement: list[dict[str, list[str]]] = [{name: []} for name in sorted(schemes)]
    components = _Components()
    components.schemas["Problem"] = _PROBLEM
    paths: dict[str, Any] = {}
    for op in _operations(ir):
        name, version = op["name"], op["version"]
        kind = op.get("operation_kind", "command")
        is_public = (op.get("auth") or {}).get("kind") == "public"
        schemas = op["schemas"]
        output_ref = components.add(schemas["output"], "output")
        parameters = [
            _header(names.request_id, "Request id, echoed back; generated when absent"),
        ]
        if names.org_id and trust_org_header:
            parameters.append(
                _header(
                    names.org_id,
                    "Tenant (organization) of the call, set by the trusted gateway in front of "
                    "the server",
                )
            )
        if kind != "query" and op.get("idempotent"):
            parameters.append(
                _header(names.idempotency_key, "Repeat-safe key: a retry returns the first result")
            )
        operation: dict[str, Any] = {
            "operationId": operation_id(name, version),
            "summary": _summary(op),
            "tags": [name.split(".", 1)[0]],
            "x-contractspec": {
                "operation": f"{name}@{version}",
                "kind": kind,
                "auth": op.get("auth"),
                "emits": op.get("emits", []),
                "idempotent": op.get("idempotent", False),
                "errors": op.get("errors", []),
            },
        }
        if op.get("description"):
            operation["description"] = op["description"]
        if op.get("stability") == "deprecated":
            operation["deprecated"] = True
        if is_public:
            operation["security"] = []
        elif requirement:
            operation["security"] = requirement
        input_schema = schemas["input"]
        if kind == "query":
            root = _deref(input_schema, input_schema)
            props = root.get("properties") or {}
            _, mapping = components.add_mapped(input_schema, "input")
            for field, style, required in query_parameters(input_schema):
                prop = _rewrite(copy.deepcopy(props[field]), mapping)
                param: dict[str, Any] = {"name": field, "in": "query", "required": required}
                if style == "json":
                    param["content"] = {"application/json": {"schema": prop}}
                else:
                    param["schema"] = _strip_null(prop)
                    if style == "array":
                        param["style"] = "form"
                        param["explode"] = True
                parameters.append(param)
        else:
            input_ref = components.add(input_schema, "input")
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{input_ref}"}}
                },
            }
        operation["parameters"] = parameters
        responses: dict[str, Any] = {
            "200": {
                "description": "The operation's output",
                "headers": {names.request_id: {"schema": {"type": "string"}}},
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{output_ref}"}}
                },
            }
        }
        for status in ERROR_STATUSES:
            if status in _COMMAND_ONLY and kind == "query":
                continue
            if status in _NON_PUBLIC_ONLY and is_public:
                continue
            responses[status] = _problem_response(status)
        operation["responses"] = dict(sorted(responses.items()))
        paths[http_path(name, version)] = {http_method(kind): operation}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": ir_digest(ir)},
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": dict(sorted(components.schemas.items()))},
    }
    if schemes:
        document["components"]["securitySchemes"] = schemes
    if description:
        document["info"]["description"] = description
    if servers:
        document["servers"] = servers
    canonical: dict[str, Any] = json.loads(json.dumps(document, sort_keys=True))
    return canonical
