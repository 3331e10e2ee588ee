"""`Files`: staging uploads into storage, signed links, orphan collection and retention.

An upload is two-phase:

1. `Files.stage(slot, chunks, ...)` streams the bytes into storage under a fresh key
   (`blobs/<file id>`), hashing (SHA-256) and counting them on the way, sniffing the media type
   from the first bytes and aborting mid-stream when the slot's `max_size` is passed. No record
   is written: the result is a `StagedUpload` with a signed, time-limited `token`.
2. The `files.upload` operation (see `contractspec.files.operations`) runs through the executor
   with that token: it checks the tenant, the permission, the entity and the slot's count, and
   writes the `File` and `Attachment` records in the call's transaction.

A crash (or a rollback, or a refused call) between the two leaves a blob no record refers to.
`Files.collect_orphans()` deletes such blobs once they are older than the token's lifetime plus a
margin, i.e. once no call can commit them any more. Deleting a record removes its blob only after
the transaction commits; if that removal fails, the blob is an orphan and is collected the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable
from datetime import timedelta
from typing import IO, Any, Final

from attrs import define
from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

from contractspec.core import (
    Actor,
    CallContext,
    ConfigurationError,
    Executor,
    IdGenerator,
    NotFoundError,
    SpecValidationError,
    SystemClock,
    TenantScopeError,
    Transaction,
    UuidGenerator,
)
from contractspec.core._log import get_logger
from contractspec.core.ports import Clock
from contractspec.files._pipe import ThreadPipe
from contractspec.files.errors import (
    DownloadLinkError,
    FileTooLargeError,
    MediaTypeRefusedError,
)
from contractspec.files.names import safe_filename
from contractspec.files.records import File, FileState, FileStore
from contractspec.files.sniff import (
    OCTET_STREAM,
    SNIFF_BYTES,
    check_zip,
    is_polyglot,
    sniff_media_type,
)
from contractspec.files.spec import ARCHIVE_MEDIA_TYPES, AttachmentSlot
from contractspec.files.storage import FileStorage

__all__ = ["BLOB_PREFIX", "Files", "RetentionReport", "StagedUpload"]

_log = get_logger(__name__)

#: Prefix of every blob key written by `Files`; `collect_orphans` lists only under it.
BLOB_PREFIX: Final = "blobs/"
#: Chunks at least this large are hashed in a worker thread, overlapping the storage write.
_THREAD_HASH_BYTES: Final = 256 * 1024
#: Bytes the hasher thread may lag behind the stream (memory per upload stays flat).
_HASH_AHEAD_BYTES: Final = 4 * 1024 * 1024
_UPLOAD_SALT: Final = "contractspec.files.upload"
_DOWNLOAD_SALT: Final = "contractspec.files.download"
#: Media types that browsers render and a polyglot could abuse; never accepted with an image one.
_ALIASES: Final = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "application/x-zip-compressed": "application/zip",
    "application/x-pdf": "application/pdf",
}


#: File-name extensions a browser or OS would execute or render; their bytes must say so too.
_DANGEROUS_EXTENSIONS: Final = {
    "exe": "application/vnd.microsoft.portable-executable",
    "dll": "application/vnd.microsoft.portable-executable",
    "scr": "application/vnd.microsoft.portable-executable",
    "com": None, "bat": None, "cmd": None, "msi": None, "ps1": None, "vbs": None, "js": None,
    "jar": None, "hta": None, "sh": None, "app": None,
    "html": "text/html", "htm": "text/html", "xhtml": "text/html", "svg": "image/svg+xml",
}  # fmt: skip


def _check_extension(filename: str, media_type: str) -> None:
    """Refuse a name whose extension means executable or HTML when the bytes say otherwise."""
    ext = filename.rpartition(".")[2].lower() if "." in filename else ""
    if ext in _DANGEROUS_EXTENSIONS and _DANGEROUS_EXTENSIONS[ext] != media_type:
        raise MediaTypeRefusedError(
            f"the file name ends in .{ext} but its bytes are {media_type}; a file whose name and "
            "content disagree is refused (rename it to match its content)",
            details={"field": "filename", "sniffed": media_type, "extension": ext},
        )


def _normalise(media_type: str) -> str:
    base = media_type.split(";", 1)[0].strip().lower()
    return _ALIASES.get(base, base)


@define(frozen=True)
class StagedUpload:
    """A blob written to storage and waiting for its record (phase 1 of an upload).

    Attributes:
        token: Signed, time-limited proof of what was staged; pass it to `files.upload`.
        file_id: The id the `File` record will get.
        key: The blob's storage key.
        slot: Slot name.
        filename: Sanitised client file name.
        media_type: Sniffed media type.
        size: Bytes.
        sha256: Hex SHA-256 of the content.
    """

    token: str
    file_id: str
    key: str
    slot: str
    filename: str
    media_type: str
    size: int
    sha256: str


@define(frozen=True)
class RetentionReport:
    """What `Files.apply_retention` did: file ids deleted and archived."""

    deleted: tuple[str, ...]
    archived: tuple[str, ...]


def _clock_signer(clock: Clock) -> type[TimestampSigner]:
    class ClockSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(clock.now().timestamp())

    return ClockSigner


class _Streamer:
    """Counts, hashes, size-checks and sniffs the chunks on their way into storage."""

    def __init__(
        self, slot: AttachmentSlot, declared: str | None, filename: str, spool: bool
    ) -> None:
        self.slot = slot
        self.filename = filename
        self.declared = declared
        self.size = 0
        self.sha = hashlib.sha256()
        self.head = bytearray()
        self.media_type: str | None = None
        self.spool: IO[bytes] | None = None
        self._spool_wanted = spool

    def _sniff(self) -> None:
        head = bytes(self.head)
        media_type = sniff_media_type(head)
        slot = self.slot
        if self.declared is not None:
            declared = _normalise(self.declared)
            if declared not in (OCTET_STREAM, "", _normalise(media_type)):
                raise MediaTypeRefusedError(
                    f"the upload claims to be {declared} but its bytes are {media_type}; send the "
                    "file's real type (or none: it is sniffed from the content)",
                    details={"field": "content_type", "declared": declared, "sniffed": media_type},
                )
        _check_extension(self.filename, media_type)
        if not slot.allows(media_type):
            raise MediaTypeRefusedError(
                f"the content is {media_type} (sniffed from its bytes), which slot {slot.name} "
                f"does not accept; allowed: {', '.join(slot.media_types)}",
                details={"field": "file", "sniffed": media_type},
            )
        if is_polyglot(head, media_type):
            raise MediaTypeRefusedError(
                f"the content is {media_type} but also contains HTML/script markup (a polyglot "
                "file a browser could execute); refused",
                details={"field": "file", "sniffed": media_type, "reason": "polyglot"},
            )
        self.media_type = media_type
        if media_type in ARCHIVE_MEDIA_TYPES and self._spool_wanted:
            self.spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed by Files.stage
            self.spool.write(head)

    async def run(self, chunks: AsyncIterable[bytes]) -> AsyncGenerator[bytes, None]:
        """Yield the chunks after checking them. SHA-256 runs in a worker thread fed by a
        `ThreadPipe` (in order, at most `_HASH_AHEAD_BYTES` behind) while the storage writes the
        same chunks in its own thread: hashlib and file writes release the GIL, so on two cores
        hashing and writing overlap instead of adding up. Chunks under `_THREAD_HASH_BYTES` are
        hashed inline when the hasher is idle (a thread hop costs more)."""
        limit = self.slot.max_size
        hasher = ThreadPipe(
            self.sha.update, max_bytes=_HASH_AHEAD_BYTES, inline_below=_THREAD_HASH_BYTES
        )
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                if type(chunk) is not bytes:  # hashed later: a caller's buffer may change
                    chunk = bytes(chunk)
                self.size += len(chunk)
                if self.size > limit:
                    raise FileTooLargeError(
                        f"the file is larger than {limit} bytes, the limit of slot "
                        f"{self.slot.name}",
                        details={"field": "file", "max_size": limit},
                    )
                if self.media_type is None:
                    taken = SNIFF_BYTES - len(self.head)
                    self.head += chunk[:taken]
                    if len(self.head) >= SNIFF_BYTES:
                        self._sniff()  # writes the head to the spool
                        if self.spool is not None and len(chunk) > taken:
                            self.spool.write(chunk[taken:])
                elif self.spool is not None:
                    self.spool.write(chunk)
                await hasher.feed(chunk)
                yield chunk
            if self.media_type is None:
                self._sniff()
            await hasher.close()
        except BaseException:
            await asyncio.shield(hasher.abort())
            raise


class Files:
    """The files runtime: slots, storage, records, signing and maintenance.

    Args:
        storage: Where blobs go (`LocalFileStorage`, `ObjectStoreStorage`).
        store: Where records go (`MemoryFileStore`, `SqlFileStore`).
        secret: Key for signing upload tokens and download links (at least 32 bytes; keep it
            outside the database, e.g. in your secret manager).
        slots: Attachment slots (also registered by `register_file_operations`).
        clock: Time source for tokens, links and retention (default: the system clock).
        ids: Id generator for files and attachments (default UUIDv7).
        upload_ttl: How long a staged upload may wait for its `files.upload` call.
        link_ttl: Lifetime of signed download links.
        orphan_margin: Extra time before a blob without record counts as an orphan.

    Raises:
        ConfigurationError: The secret is shorter than 32 bytes.
    """

    def __init__(
        self,
        *,
        storage: FileStorage,
        store: FileStore,
        secret: str | bytes,
        slots: Iterable[AttachmentSlot] = (),
        clock: Clock | None = None,
        ids: IdGenerator | None = None,
        upload_ttl: timedelta = timedelta(hours=1),
        link_ttl: timedelta = timedelta(minutes=15),
        orphan_margin: timedelta = timedelta(minutes=5),
    ) -> None:
        raw = secret.encode() if isinstance(secret, str) else bytes(secret)
        if len(raw) < 32:
            raise ConfigurationError(
                "Files(secret=...) needs at least 32 bytes of secret (e.g. secrets.token_hex(32))",
                details={"field": "secret"},
            )
        self.storage = storage
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.ids: IdGenerator = ids or UuidGenerator()
        self.upload_ttl = upload_ttl
        self.link_ttl = link_ttl
        self.orphan_margin = orphan_margin
        self.slots: dict[str, AttachmentSlot] = {}
        signer = _clock_signer(self.clock)
        self._uploads = URLSafeTimedSerializer(raw, salt=_UPLOAD_SALT, signer=signer)
        self._links = URLSafeTimedSerializer(raw, salt=_DOWNLOAD_SALT, signer=signer)
        self._pending: set[asyncio.Task[Any]] = set()
        for slot in slots:
            self.add_slot(slot)

    # -- slots ------------------------------------------------------------------------------------

    def add_slot(self, slot: AttachmentSlot) -> None:
        """Make `slot` known (an equal slot again is a no-op).

        Raises:
            ConfigurationError: Another slot of that name exists.
        """
        current = self.slots.get(slot.name)
        if current is not None and current != slot:
            raise ConfigurationError(
                f"attachment slot {slot.name!r} is already defined differently",
                details={"field": "slot"},
            )
        self.slots[slot.name] = slot

    def slot(self, name: str) -> AttachmentSlot:
        """The slot called `name` (`project.contracts`).

        Raises:
            NotFoundError: No such slot; the message lists the known ones.
        """
        slot = self.slots.get(name)
        if slot is None:
            raise NotFoundError(
                f"unknown attachment slot {name!r}; known slots: "
                f"{', '.join(sorted(self.slots)) or 'none'}",
                details={"field": "slot"},
            )
        return slot

    # -- phase 1: staging --------------------------------------------------------------------------

    async def stage(
        self,
        slot: AttachmentSlot | str,
        chunks: AsyncIterable[bytes],
        *,
        org_id: str,
        actor_id: str,
        filename: str | None = None,
        content_type: str | None = None,
    ) -> StagedUpload:
        """Stream an upload into storage (phase 1); nothing is recorded yet.

        Args:
            slot: The slot (or its name) the file is meant for.
            chunks: The content, as an async iterable of byte chunks.
            org_id: Tenant of the authenticated caller (never from the client).
            actor_id: The authenticated caller.
            filename: The client's file name (sanitised with `safe_filename`).
            content_type: The client's claimed media type; must agree with the sniffed one
                (`application/octet-stream` and `None` claim nothing).

        Returns:
            The `StagedUpload`, whose `token` the `files.upload` operation takes.

        Raises:
            FileTooLargeError: More than `slot.max_size` bytes (the write is aborted; nothing is
                left in storage).
            MediaTypeRefusedError: Sniffed type not allowed, claimed type disagrees, polyglot.
            ArchiveRefusedError: A zip archive over the slot's `ArchiveLimits`.
            NotFoundError: Unknown slot.
        """
        the_slot = self.slot(slot) if isinstance(slot, str) else slot
        if not org_id or not actor_id:
            raise SpecValidationError(
                "staging an upload needs the caller's org_id and actor_id",
                details={"field": "org_id"},
            )
        file_id = self.ids.new_id()
        key = f"{BLOB_PREFIX}{file_id}"
        name = safe_filename(filename)
        streamer = _Streamer(the_slot, content_type, name, spool=the_slot.accepts_archives)
        stream = streamer.run(chunks)
        try:
            try:
                await self.storage.put(key, stream)
            finally:
                await stream.aclose()  # stops the hasher if the storage gave up first
            if streamer.spool is not None:
                spool = streamer.spool
                spool.seek(0)
                await asyncio.to_thread(check_zip, spool, the_slot.archive_limits)
        except BaseException:
            await asyncio.shield(self._forget(key))
            raise
        finally:
            if streamer.spool is not None:
                streamer.spool.close()
        media_type = streamer.media_type or OCTET_STREAM
        sha256 = streamer.sha.hexdigest()
        token = self._uploads.dumps(
            {
                "f": file_id,
                "k": key,
                "s": the_slot.name,
                "o": org_id,
                "a": actor_id,
                "n": name,
                "m": media_type,
                "z": streamer.size,
                "h": sha256,
            }
        )
        return StagedUpload(
            token=token,
            file_id=file_id,
            key=key,
            slot=the_slot.name,
            filename=name,
            media_type=media_type,
            size=streamer.size,
            sha256=sha256,
        )

    async def upload(
        self,
        executor: Executor,
        slot: AttachmentSlot | str,
        entity_id: str,
        chunks: AsyncIterable[bytes],
        ctx: CallContext,
        *,
        filename: str | None = None,
        content_type: str | None = None,
    ) -> Any:
        """Both phases in one call: `stage` with the caller's tenant and actor, then run
        `files.upload` through `executor` (registered by `register_file_operations`).

        Args:
            executor: The app's executor.
            slot: Slot (or its name).
            entity_id: The record to attach to.
            chunks: The content.
            ctx: The caller's context (its `org_id` and actor own the file).
            filename: Client file name.
            content_type: Claimed media type (checked against the sniffed one).

        Returns:
            The `AttachmentView` returned by `files.upload`.

        Raises:
            TenantScopeError: `ctx` has no `org_id`.
            Exception: Whatever `stage` or the operation raises (see both).
        """
        if ctx.org_id is None:
            raise TenantScopeError(
                "uploading a file needs a tenant: pass CallContext(org_id=...)",
                reason="no_tenant",
                action="files.upload",
            )
        staged = await self.stage(
            slot, chunks, org_id=ctx.org_id, actor_id=ctx.actor.id, filename=filename,
            content_type=content_type,
        )  # fmt: skip
        return await executor.execute(
            "files.upload", {"token": staged.token, "entity_id": entity_id}, ctx
        )

    async def _forget(self, key: str) -> None:
        try:
            await self.storage.delete(key)
        except Exception:  # the blob is an orphan now: collect_orphans removes it
            _log.warning("contractspec.files.blob_delete_failed", key=key, exc_info=True)

    def read_upload_token(self, token: str) -> dict[str, Any]:
        """The verified content of a staging token.

        Raises:
            DownloadLinkError: Tampered, malformed or older than `upload_ttl`.
        """
        try:
            data = self._uploads.loads(token, max_age=int(self.upload_ttl.total_seconds()))
        except SignatureExpired:
            raise DownloadLinkError(
                "the staged upload expired; upload the file again",
                reason="expired",
                action="files.upload",
            ) from None
        except BadSignature:
            raise DownloadLinkError(
                "the upload token is not valid (tampered with or signed by another key)",
                reason="bad_signature",
                action="files.upload",
            ) from None
        if not isinstance(data, dict):  # pragma: no cover - we sign only dicts
            raise DownloadLinkError("the upload token is malformed", reason="malformed")
        return data

    # -- blobs after commit ---------------------------------------------------------------------

    def delete_blob_after_commit(self, tx: Transaction, file: File) -> None:
        """Delete `file`'s blob once `tx` commits (never if it rolls back).

        The deletion runs as a background task on the running loop; `drain()` waits for it. If it
        fails or the process stops first, the blob is an orphan and `collect_orphans` removes it.
        """

        def schedule() -> None:
            task = asyncio.get_running_loop().create_task(self._forget(file.key))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

        tx.on_commit(schedule)

    async def drain(self) -> None:
        """Wait for blob deletions scheduled after commits (tests, graceful shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    # -- downloads ------------------------------------------------------------------------------

    def download_token(self, file: File) -> str:
        """A signed token granting a download of `file` for `link_ttl` (bearer: share with care)."""
        return self._links.dumps({"f": file.id, "o": file.org_id})

    async def open_download(self, token: str) -> tuple[File, AsyncIterator[bytes]]:
        """Verify a download token and open the file's content as a stream.

        Returns:
            The `File` and an async iterator of its bytes.

        Raises:
            DownloadLinkError: Tampered, malformed or expired token.
            NotFoundError: The file was deleted or archived since the link was issued.
        """
        try:
            data = self._links.loads(token, max_age=int(self.link_ttl.total_seconds()))
        except SignatureExpired:
            raise DownloadLinkError(
                "the download link expired; ask for a new one",
                reason="expired",
                action="files.download",
            ) from None
        except BadSignature:
            raise DownloadLinkError(
                "the download link is not valid", reason="bad_signature", action="files.download"
            ) from None
        file = await self.store.get_file(str(data["o"]), str(data["f"]))
        if file is None or file.state is not FileState.ACTIVE:
            raise NotFoundError("the file no longer exists", details={"field": "token"})
        return file, self.storage.get(file.key)

    # -- maintenance ----------------------------------------------------------------------------

    async def collect_orphans(self, *, grace: timedelta | None = None, batch: int = 500) -> int:
        """Delete blobs under `BLOB_PREFIX` that no `File` record refers to.

        Only blobs last written before `now - grace` are considered; `grace` defaults to
        `upload_ttl + orphan_margin`, after which no staged upload can commit any more (its token
        has expired), so a blob whose call is still running is never taken.

        Schedule it periodically with contractspec-jobs:
        `contractspec.files.jobs.schedule_orphan_collection(registry, handlers, files)`.

        Returns:
            The number of blobs deleted.
        """
        horizon = self.clock.now() - (
            grace if grace is not None else self.upload_ttl + self.orphan_margin
        )
        deleted = 0
        candidates: list[str] = []

        async def sweep(keys: list[str]) -> int:
            known = await self.store.known_keys(self.storage.name, keys)
            removed = 0
            for key in keys:
                if key not in known and await self.storage.delete(key):
                    removed += 1
                    _log.info("contractspec.files.orphan_deleted", key=key)
            return removed

        async for obj in self.storage.list(BLOB_PREFIX):
            if obj.modified < horizon:
                candidates.append(obj.key)
                if len(candidates) >= batch:
                    deleted += await sweep(candidates)
                    candidates = []
        if candidates:
            deleted += await sweep(candidates)
        return deleted

    async def apply_retention(self, executor: Executor, *, limit: int = 500) -> RetentionReport:
        """Apply every slot's `Retention`: delete or archive files older than its `days`.

        Candidates (active, not on hold, created before `now - days` by this `Files`' clock, at
        most `limit` per slot) each go through the `files.expire` operation on `executor`, as the
        system actor `files.retention` in the file's tenant: the executor's checks, one
        transaction, an audit record and a `files.expired` event per file; the operation checks
        again (with the executor's clock) so a hold placed meanwhile wins. A deleted file's blob
        goes after the commit. Schedule it daily (e.g. with contractspec-jobs).

        Returns:
            The ids deleted and archived.
        """
        deleted: list[str] = []
        archived: list[str] = []
        now = self.clock.now()
        actor = Actor.system("files.retention")
        for slot in self.slots.values():
            if slot.retention is None:
                continue
            cutoff = now - timedelta(days=slot.retention.days)
            for file in await self.store.expiring(
                slot.name, cutoff, state=FileState.ACTIVE, limit=limit
            ):
                ctx = CallContext(actor=actor, org_id=file.org_id, channel="job")
                out = await executor.execute("files.expire", {"file_id": file.id}, ctx)
                outcome = getattr(out, "outcome", None)
                if outcome == "deleted":
                    deleted.append(file.id)
                elif outcome == "archived":
                    archived.append(file.id)
        await self.drain()
        return RetentionReport(tuple(deleted), tuple(archived))
