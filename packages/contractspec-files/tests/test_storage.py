"""One conformance suite for `FileStorage`: the local filesystem and S3 (a real moto server)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from files_support import chunks

from contractspec.core import NotFoundError, SpecValidationError
from contractspec.files import FileStorage, LocalFileStorage


async def read(storage: FileStorage, key: str, chunk_size: int = 1024 * 1024) -> bytes:
    return b"".join([c async for c in storage.get(key, chunk_size=chunk_size)])


async def test_put_get_roundtrip_streams_in_chunks(storage: FileStorage) -> None:
    """12 MiB of random bytes written in 64 KiB chunks read back identical, in several chunks."""
    data = os.urandom(12 * 1024 * 1024)
    size = await storage.put("blobs/a", chunks(data, 64 * 1024))
    assert size == len(data)
    parts = [c async for c in storage.get("blobs/a", chunk_size=1024 * 1024)]
    assert len(parts) > 1
    assert hashlib.sha256(b"".join(parts)).digest() == hashlib.sha256(data).digest()
    assert await storage.exists("blobs/a")


async def test_put_replaces_and_delete_reports_existence(storage: FileStorage) -> None:
    """A second put replaces the blob; delete is True once, then False; get of a gone key 404s."""
    await storage.put("k/1", chunks(b"first"))
    await storage.put("k/1", chunks(b"second"))
    assert await read(storage, "k/1") == b"second"
    assert await storage.delete("k/1") is True
    assert await storage.delete("k/1") is False
    assert not await storage.exists("k/1")
    with pytest.raises(NotFoundError):
        await read(storage, "k/1")


async def test_failed_stream_leaves_nothing(storage: FileStorage) -> None:
    """A source that raises mid-stream leaves no blob under the key (and the old one intact)."""

    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * (6 * 1024 * 1024)
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError, match="client went away"):
        await storage.put("k/new", broken())
    assert not await storage.exists("k/new")
    await storage.put("k/old", chunks(b"old"))
    with pytest.raises(RuntimeError):
        await storage.put("k/old", broken())
    assert await read(storage, "k/old") == b"old"
    assert [o.key async for o in storage.list("k/")] == ["k/old"]


async def test_list_by_prefix_with_size_and_time(storage: FileStorage) -> None:
    """list(prefix) yields every blob under the prefix with its size and a recent UTC time."""
    await storage.put("blobs/x", chunks(b"12345"))
    await storage.put("blobs/y", chunks(b""))
    await storage.put("other/z", chunks(b"1"))
    listed = sorted([o async for o in storage.list("blobs/")], key=lambda o: o.key)
    assert [(o.key, o.size) for o in listed] == [("blobs/x", 5), ("blobs/y", 0)]
    now = datetime.now(UTC)
    assert all(
        now - timedelta(minutes=5) < o.modified <= now + timedelta(minutes=5) for o in listed
    )


@pytest.mark.parametrize(
    "key",
    [
        "../escape",
        "a/../../etc/passwd",
        "/abs",
        "a//b",
        ".hidden",
        "a/.cs-upload-x",
        "a\\b",
        "",
        "a/./b",
    ],
)
async def test_hostile_keys_are_refused(storage: FileStorage, key: str) -> None:
    """Keys that could escape the root (or hit temp files) are refused before any I/O."""
    with pytest.raises(SpecValidationError):
        await storage.put(key, chunks(b"x"))
    with pytest.raises(SpecValidationError):
        await storage.exists(key)


async def test_local_symlink_escape_is_refused(tmp_path: object) -> None:
    """A symlink inside the root pointing outside cannot be used to read or write outside it."""
    root = f"{tmp_path}/root"
    storage = LocalFileStorage(root)
    outside = f"{tmp_path}/outside"
    os.makedirs(outside)
    os.symlink(outside, f"{root}/link")
    with pytest.raises(SpecValidationError, match="outside the storage root"):
        await storage.put("link/file", chunks(b"x"))
    assert os.listdir(outside) == []


async def test_local_write_is_atomic_and_temp_files_are_swept(tmp_path: object) -> None:
    """An interrupted write leaves only a temp file, invisible to list and removed by the sweeper."""
    storage = LocalFileStorage(f"{tmp_path}/root")

    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        await storage.put("a/b", broken())
    # the adapter removed its temporary file; simulate a crash leaving one behind
    os.makedirs(f"{tmp_path}/root/a", exist_ok=True)
    Path(f"{tmp_path}/root/a/.cs-upload-dead").write_bytes(b"partial")  # noqa: ASYNC240
    assert [o.key async for o in storage.list()] == []
    assert await storage.cleanup_temporary(datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert os.listdir(f"{tmp_path}/root/a") == []
