"""HTTP routes for uploads and downloads (Starlette; install `contractspec-files[http]`).

```python
from contractspec.core.http import create_app
from contractspec.files.http import file_routes

app = create_app(executor, authenticate=authenticate)          # files.get, .list, .delete, ...
app.router.routes.extend(file_routes(executor, files, authenticate=authenticate))
```

* `POST /files/upload/{slot}/{entity_id}` — `multipart/form-data` with one part named `file`.
  Before any byte is stored, the policy is asked (tenant membership, the slot's `upload`
  permission), so a caller it denies cannot fill storage. The part is then parsed as it arrives
  (python-multipart's push parser) and streamed into storage: neither the request nor the file is
  held whole in memory or spooled to a temporary file (except a zip for a slot accepting archives:
  copied to an anonymous temporary file as it streams, so its central directory can be
  inspected). Then `files.upload` runs through the executor (policy again, with the audit
  record; tenant, events). Answers `201` with the `AttachmentView`; `401` anonymous; `403`
  denied; `413` above the slot's `max_size` (or a declared `Content-Length` above
  `max_size + 64 KiB`); `415` for a refused media type (sniffed, spoofed or polyglot); `422` for a
  refused archive or a malformed body.
* `GET /files/download/{token}` — a signed, time-limited link (from `files.get`): streams the bytes
  with the sniffed `Content-Type`, `X-Content-Type-Options: nosniff`, `Content-Disposition:
  attachment` with a safe name (RFC 6266/5987) and a `sandbox` CSP, so even a file that slipped past
  the sniffer is never rendered or executed by a browser in the app's origin. `403` for a
  tampered or expired link, `404` for a deleted or archived file.

The tenant comes from the authenticator, never from the client.
"""

from __future__ import annotations

import inspect
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from contractspec.core import (
    HTTP_STATUS,
    Actor,
    CallContext,
    ContractSpecError,
    Executor,
    MembershipChecker,
    NotFoundError,
    PolicyDeniedError,
    Principal,
    Resource,
    SpecValidationError,
)
from contractspec.core._log import get_logger
from contractspec.files.errors import FILES_HTTP_STATUS, FileTooLargeError
from contractspec.files.names import content_disposition
from contractspec.files.service import Files

try:
    from python_multipart.multipart import MultipartParser, parse_options_header
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import BaseRoute, Route
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "contractspec.files.http needs Starlette and python-multipart: "
        "pip install 'contractspec-files[http]'"
    ) from exc

__all__ = ["file_routes"]

_log = get_logger(__name__)
_OVERHEAD: Final = 64 * 1024
Authenticate = Callable[[Request], "Principal | Actor | Awaitable[Principal | Actor | None] | None"]


def _problem(exc: ContractSpecError, request_id: str) -> JSONResponse:
    status = FILES_HTTP_STATUS.get(exc.code) or HTTP_STATUS.get(exc.code, 500)
    if status >= 500:
        _log.error("contractspec.files.http_error", request_id=request_id, exc_info=exc)
        body = {"code": "internal_error", "message": f"internal error (request {request_id})"}
        return JSONResponse(body, status_code=status, headers={"X-Request-Id": request_id})
    return JSONResponse(exc.to_dict(), status_code=status, headers={"X-Request-Id": request_id})


class _FilePart:
    """Feeds request body chunks to the multipart parser and yields the `file` part's bytes."""

    def __init__(self, request: Request, boundary: bytes, limit: int) -> None:
        self.request = request
        self.limit = limit
        self.received = 0
        self.ready: deque[bytes] = deque()
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.headers: dict[str, bytes] = {}
        self.in_file = False
        self.seen_file = False
        self.file_done = False
        self.filename: str | None = None
        self.content_type: str | None = None
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_header_field": lambda d, s, e: self.header_field.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self.header_value.extend(d[s:e]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
            },
        )
        self._body = request.stream()

    def _part_begin(self) -> None:
        self.headers = {}

    def _header_end(self) -> None:
        self.headers[self.header_field.decode("latin-1").lower()] = bytes(self.header_value)
        self.header_field.clear()
        self.header_value.clear()

    def _headers_finished(self) -> None:
        _disp, params = parse_options_header(self.headers.get("content-disposition", b""))
        if params.get(b"name") == b"file" and not self.seen_file:
            self.in_file = self.seen_file = True
            raw_name = params.get(b"filename")
            self.filename = None if raw_name is None else raw_name.decode("utf-8", "replace")
            ctype = self.headers.get("content-type")
            self.content_type = None if ctype is None else ctype.decode("latin-1")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file:
            self.ready.append(bytes(data[start:end]))

    def _part_end(self) -> None:
        if self.in_file:
            self.in_file = False
            self.file_done = True

    async def _feed(self) -> bool:
        """Parse the next body chunk; False at the end of the body."""
        try:
            chunk = await self._body.__anext__()
        except StopAsyncIteration:
            self.parser.finalize()
            return False
        self.received += len(chunk)
        if self.received > self.limit:
            raise FileTooLargeError(
                f"the request body is larger than {self.limit} bytes",
                details={"field": "file", "max_size": self.limit},
            )
        try:
            self.parser.write(chunk)
        except Exception as exc:
            raise SpecValidationError(
                f"the multipart body is malformed ({exc})", details={"field": "body"}
            ) from None
        return True

    async def open(self) -> None:
        """Read until the `file` part's headers are parsed.

        Raises:
            SpecValidationError: The body has no `file` part.
        """
        while not self.seen_file:
            if not await self._feed():
                raise SpecValidationError(
                    "the multipart body has no part named 'file'", details={"field": "file"}
                )

    async def chunks(self) -> AsyncIterator[bytes]:
        """The `file` part's bytes, as they arrive."""
        while True:
            while self.ready:
                yield self.ready.popleft()
            if self.file_done:
                return
            if not await self._feed():
                if self.ready:
                    continue
                raise SpecValidationError(
                    "the multipart body ended inside the file part", details={"field": "file"}
                )


async def _preflight(
    executor: Executor, ctx: CallContext, permission: str | None, entity: str, entity_id: str
) -> None:
    """Ask the policy before any byte is stored, so a caller it would deny cannot fill storage.

    The executor's `files.upload` call still makes the authoritative (audited) decision; this
    check only spares storage writes. It applies tenant membership (a `MembershipChecker` policy)
    and the slot's upload permission.

    Raises:
        PolicyDeniedError: The policy denies.
    """
    policy = executor.policy
    if policy is None:
        return
    if isinstance(policy, MembershipChecker) and ctx.org_id is not None:
        member = policy.is_member(ctx.actor, ctx.org_id)
        if inspect.isawaitable(member):
            member = await member
        if not member:
            raise PolicyDeniedError(
                f"{ctx.actor.id!r} is not a member of org {ctx.org_id!r}",
                reason="not a member",
                action="tenant.member",
            )
    if permission is None:
        return
    resource = Resource(type=entity, id=entity_id, org_id=ctx.org_id)
    decision = policy.decide(ctx.actor, permission, resource, ctx)
    if inspect.isawaitable(decision):
        decision = await decision
    if not decision.allowed:
        raise PolicyDeniedError(
            f"{ctx.actor.id!r} may not {permission!r} on {entity} {entity_id!r}: {decision.reason}",
            reason=decision.reason,
            action=permission,
        )


def file_routes(
    executor: Executor,
    files: Files,
    *,
    authenticate: Authenticate | None,
    prefix: str = "/files",
) -> list[BaseRoute]:
    """Starlette routes for multipart uploads and signed downloads (see the module docstring).

    Args:
        executor: The executor running `files.upload` (registered by `register_file_operations`).
        files: The `Files` runtime.
        authenticate: `request -> Principal | Actor | None` (may be async), as for core's HTTP
            adapter; the tenant is the principal's `org_id`.
        prefix: URL prefix; `download_path` values of `files.get` assume `/files`.

    Returns:
        The two routes, to add to a Starlette or FastAPI app.
    """

    async def caller(request: Request) -> tuple[Actor | None, str | None]:
        if authenticate is None:
            return None, None
        who = authenticate(request)
        if inspect.isawaitable(who):
            who = await who
        if isinstance(who, Principal):
            return who.actor, who.org_id
        if isinstance(who, Actor):
            return who, None
        return None, None

    async def upload(request: Request) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        try:
            actor, org = await caller(request)
            if actor is None:
                return JSONResponse(
                    {"code": "unauthenticated", "message": "sign in to upload files"},
                    status_code=401,
                    headers={"X-Request-Id": request_id},
                )
            if org is None:
                raise NotFoundError("uploads need a tenant (org) in the credential")
            slot = files.slot(request.path_params["slot"])
            limit = slot.max_size + _OVERHEAD
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise FileTooLargeError(
                    f"the request body ({declared} bytes) is larger than slot {slot.name} accepts "
                    f"({slot.max_size} bytes)",
                    details={"field": "file", "max_size": slot.max_size},
                )
            ctype, params = parse_options_header(request.headers.get("content-type", ""))
            boundary = params.get(b"boundary")
            if ctype != b"multipart/form-data" or not boundary:
                raise SpecValidationError(
                    "send the file as multipart/form-data with a part named 'file'",
                    details={"field": "content-type"},
                )
            ctx = CallContext(actor=actor, org_id=org, request_id=request_id, channel="http")
            entity_id = request.path_params["entity_id"]
            await _preflight(executor, ctx, slot.upload_permission, slot.entity, entity_id)
            part = _FilePart(request, boundary, limit)
            await part.open()
            staged = await files.stage(
                slot,
                part.chunks(),
                org_id=org,
                actor_id=actor.id,
                filename=part.filename,
                content_type=part.content_type,
            )
            out = await executor.execute(
                "files.upload", {"token": staged.token, "entity_id": entity_id}, ctx
            )
        except ContractSpecError as exc:
            return _problem(exc, request_id)
        return JSONResponse(
            out.model_dump(mode="json"), status_code=201, headers={"X-Request-Id": request_id}
        )

    async def download(request: Request) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        try:
            file, stream = await files.open_download(request.path_params["token"])
        except ContractSpecError as exc:
            return _problem(exc, request_id)
        headers = {
            "Content-Disposition": content_disposition(file.filename),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "private, no-store",
            "Content-Length": str(file.size),
            "X-Request-Id": request_id,
        }
        return StreamingResponse(stream, media_type=file.media_type, headers=headers)

    return [
        Route(f"{prefix}/download/{{token}}", download, methods=["GET"]),
        Route(f"{prefix}/upload/{{slot}}/{{entity_id}}", upload, methods=["POST"]),
    ]
