"""The `FileStorage` port and its adapters: the local filesystem and S3-compatible object stores.

Blobs stream in and out as async iterators of byte chunks: no adapter holds a whole file in
memory. Keys are relative, `/`-separated paths (`org-1/01J.../blob`).

```python
from contractspec.files import LocalFileStorage

storage = LocalFileStorage("var/files")                      # the embedded default
size = await storage.put("org-1/f1", chunks)                 # chunks: AsyncIterable[bytes]
async for chunk in storage.get("org-1/f1"):
    ...
```

S3 (and MinIO, R2, ...) through `obstore` (`pip install 'contractspec-files[s3]'`):

```python
from obstore.store import S3Store
from contractspec.files.storage import ObjectStoreStorage

storage = ObjectStoreStorage(S3Store("my-bucket", region="eu-west-1"), name="s3")
```
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Final, Protocol, runtime_checkable

import anyio
from attrs import define

from contractspec.core import ConfigurationError, NotFoundError, SpecValidationError
from contractspec.files._pipe import ThreadPipe

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FileStorage",
    "LocalFileStorage",
    "ObjectStoreStorage",
    "StoredObject",
    "check_key",
]

#: Bytes per chunk read from storage (1 MiB).
DEFAULT_CHUNK_SIZE: Final = 1024 * 1024
_KEY_SEGMENT: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,199}\Z")
_TMP_PREFIX: Final = ".cs-upload-"
#: Bytes `LocalFileStorage.put` lets wait for its writer thread (memory per upload stays flat).
_WRITE_AHEAD_BYTES: Final = 4 * 1024 * 1024


@define(frozen=True)
class StoredObject:
    """One blob as listed by `FileStorage.list`.

    Attributes:
        key: Its key.
        size: Bytes.
        modified: UTC time of its last write.
    """

    key: str
    size: int
    modified: datetime


def check_key(key: str) -> str:
    """Validate a storage key and return it.

    Keys are `/`-separated segments of letters, digits and `._=-`, none starting with a dot (so
    `..`, hidden files and the adapters' temporary files are impossible), no absolute paths, at
    most 1024 characters.

    Raises:
        SpecValidationError: The key could escape the storage root or is malformed.
    """
    if not isinstance(key, str) or not key or len(key) > 1024:
        raise SpecValidationError(
            f"storage key {key!r} must be a non-empty string of at most 1024 characters",
            details={"field": "key"},
        )
    segments = key.split("/")
    if not all(_KEY_SEGMENT.match(s) for s in segments):
        raise SpecValidationError(
            f"storage key {key!r} is refused: use '/'-separated segments of letters, digits and "
            "'._=-' that do not start with '.' (no '..', no absolute paths, no backslashes)",
            details={"field": "key"},
        )
    return key


@runtime_checkable
class FileStorage(Protocol):
    """Where blobs live. Every method streams; none buffers a whole file.

    Attributes:
        name: Short name recorded in `File.backend` (`local`, `s3`).
    """

    name: str

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        """Write `chunks` under `key` (replacing it), atomically: readers see the old blob or the
        whole new one, never a part. If `chunks` raises, nothing is left at `key`.

        Returns:
            The number of bytes written.
        """
        ...

    def get(self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AsyncIterator[bytes]:
        """Stream the blob (raises `NotFoundError` on first iteration when it does not exist)."""
        ...

    async def delete(self, key: str) -> bool:
        """Delete the blob; `False` when it did not exist."""
        ...

    async def exists(self, key: str) -> bool:
        """Whether a blob is stored under `key`."""
        ...

    def list(self, prefix: str = "") -> AsyncIterator[StoredObject]:
        """Every blob whose key starts with `prefix` (any order)."""
        ...


class LocalFileStorage:
    """Blobs as files under a root directory (the embedded default).

    Keys are checked by `check_key` and resolved paths must stay inside `root` (symlinks
    included): path traversal is refused with `SpecValidationError`. Writes go to a temporary
    file in the target directory, are fsynced, then renamed over the target (`os.replace`), so a
    crash leaves the old blob or the new one, plus at most a temporary file that `list` skips
    and `cleanup_temporary` removes.

    Args:
        root: Directory of the blobs (created if missing).
        name: Backend name recorded in `File.backend`.
        fsync: fsync each file before renaming it (durability across power loss).
    """

    __slots__ = ("fsync", "name", "root")

    def __init__(self, root: str | os.PathLike[str], *, name: str = "local", fsync: bool = True):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.fsync = fsync

    def path(self, key: str) -> Path:
        """The file path of `key`, guaranteed inside `root`.

        Raises:
            SpecValidationError: A malformed key or one that resolves outside the root.
        """
        target = (self.root / check_key(key)).resolve()
        if not target.is_relative_to(self.root):
            raise SpecValidationError(
                f"storage key {key!r} resolves outside the storage root and is refused",
                details={"field": "key"},
            )
        return target

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        """See `FileStorage.put`.

        Chunks are written in a worker thread while the next ones arrive (at most
        `_WRITE_AHEAD_BYTES` queued; see `ThreadPipe`); opening, fsync, closing and the rename run
        in one thread call each side of the stream.
        """
        target = self.path(key)
        tmp = target.parent / f"{_TMP_PREFIX}{secrets.token_hex(8)}"

        def open_tmp() -> BinaryIO:
            target.parent.mkdir(parents=True, exist_ok=True)
            return open(tmp, "xb")  # closed by finish() or discard()

        def finish() -> None:
            with handle:
                if self.fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(tmp, target)

        def discard() -> None:
            try:
                handle.close()
            finally:
                tmp.unlink(missing_ok=True)

        handle = await anyio.to_thread.run_sync(open_tmp)
        size = 0
        try:
            pipe = ThreadPipe(handle.write, max_bytes=_WRITE_AHEAD_BYTES)
            try:
                async for chunk in chunks:
                    if not chunk:
                        continue
                    if type(chunk) is not bytes:  # a caller's buffer may change once we return
                        chunk = bytes(chunk)
                    size += len(chunk)
                    await pipe.feed(chunk)
                await pipe.close()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await pipe.abort()
                raise
            await anyio.to_thread.run_sync(finish)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(discard)
            raise
        return size

    async def get(self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AsyncIterator[bytes]:
        """See `FileStorage.get`."""
        target = self.path(key)
        try:
            handle = await anyio.open_file(target, "rb")
        except FileNotFoundError:
            raise NotFoundError(f"no blob under key {key!r}", details={"field": "key"}) from None
        async with handle:
            while chunk := await handle.read(chunk_size):
                yield chunk

    async def delete(self, key: str) -> bool:
        """See `FileStorage.delete`."""
        target = self.path(key)

        def remove() -> bool:
            try:
                target.unlink()
            except FileNotFoundError:
                return False
            return True

        return await anyio.to_thread.run_sync(remove)

    async def exists(self, key: str) -> bool:
        """See `FileStorage.exists`."""
        target = self.path(key)
        return await anyio.to_thread.run_sync(target.is_file)

    async def list(self, prefix: str = "") -> AsyncIterator[StoredObject]:
        """See `FileStorage.list` (temporary upload files are skipped)."""

        def scan() -> list[StoredObject]:
            found: list[StoredObject] = []
            for dirpath, _dirs, files in os.walk(self.root):
                for fname in files:
                    if fname.startswith(_TMP_PREFIX):
                        continue
                    full = Path(dirpath) / fname
                    key = full.relative_to(self.root).as_posix()
                    if key.startswith(prefix):
                        st = full.stat()
                        found.append(
                            StoredObject(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))
                        )
            return found

        for item in await anyio.to_thread.run_sync(scan):
            yield item

    async def cleanup_temporary(self, older_than: datetime) -> int:
        """Remove temporary files of interrupted writes last modified before `older_than`."""

        def sweep() -> int:
            removed = 0
            cutoff = older_than.timestamp()
            for dirpath, _dirs, files in os.walk(self.root):
                for fname in files:
                    full = Path(dirpath) / fname
                    if fname.startswith(_TMP_PREFIX) and full.stat().st_mtime < cutoff:
                        full.unlink(missing_ok=True)
                        removed += 1
            return removed

        return await anyio.to_thread.run_sync(sweep)


class ObjectStoreStorage:
    """Blobs in an object store through `obstore` (S3, S3-compatible servers, GCS, Azure, local).

    `put` uploads with obstore's multipart upload, fed chunk by chunk from the async iterator
    (at most `max_concurrency` parts of `chunk_size` bytes in flight); the object appears only
    when the upload completes, and an aborted upload leaves nothing under the key.

    Args:
        store: An `obstore.store.*Store` (e.g. `S3Store("bucket", endpoint=..., ...)`).
        name: Backend name recorded in `File.backend`.
        chunk_size: Multipart part size in bytes (S3 requires at least 5 MiB).
        max_concurrency: Parts uploaded in parallel.

    Raises:
        ConfigurationError: obstore is not installed.
    """

    __slots__ = ("_obs", "chunk_size", "max_concurrency", "name", "store")

    def __init__(
        self,
        store: Any,
        *,
        name: str = "s3",
        chunk_size: int = 8 * 1024 * 1024,
        max_concurrency: int = 4,
    ) -> None:
        try:
            import obstore
        except ImportError as exc:  # pragma: no cover - exercised by the isolation session
            raise ConfigurationError(
                "ObjectStoreStorage needs obstore: pip install 'contractspec-files[s3]'"
            ) from exc
        self._obs = obstore
        self.store = store
        self.name = name
        self.chunk_size = chunk_size
        self.max_concurrency = max_concurrency

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        """See `FileStorage.put`."""
        check_key(key)
        size = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal size
            async for chunk in chunks:
                size += len(chunk)
                yield chunk

        await self._obs.put_async(
            self.store,
            key,
            counted(),
            chunk_size=self.chunk_size,
            max_concurrency=self.max_concurrency,
        )
        return size

    async def get(self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AsyncIterator[bytes]:
        """See `FileStorage.get`."""
        check_key(key)
        try:
            result = await self._obs.get_async(self.store, key)
        except FileNotFoundError:
            raise NotFoundError(f"no blob under key {key!r}", details={"field": "key"}) from None
        async for chunk in result.stream(min_chunk_size=chunk_size):
            yield bytes(chunk)

    async def delete(self, key: str) -> bool:
        """See `FileStorage.delete` (S3 deletes are idempotent: existence is checked first)."""
        if not await self.exists(key):
            return False
        await self._obs.delete_async(self.store, key)
        return True

    async def exists(self, key: str) -> bool:
        """See `FileStorage.exists`."""
        check_key(key)
        try:
            await self._obs.head_async(self.store, key)
        except FileNotFoundError:
            return False
        return True

    async def list(self, prefix: str = "") -> AsyncIterator[StoredObject]:
        """See `FileStorage.list`."""
        stream = self._obs.list(self.store, prefix or None)
        async for batch in stream:
            for meta in batch:
                yield StoredObject(str(meta["path"]), int(meta["size"]), meta["last_modified"])
