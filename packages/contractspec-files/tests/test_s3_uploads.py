"""Phase 1 of an upload into S3 (moto): refusals raised mid-stream surface as our errors and
leave no object behind."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from files_support import PDF, PE, SECRET, chunks, docs_slot, images_slot, noise

from contractspec.files import (
    Files,
    FileTooLargeError,
    MediaTypeRefusedError,
    MemoryFileStore,
    ObjectStoreStorage,
)


@pytest.fixture
def files(s3_storage: ObjectStoreStorage) -> Files:
    return Files(
        storage=s3_storage, store=MemoryFileStore(), secret=SECRET, slots=[docs_slot, images_slot]
    )


async def keys(files: Files) -> list[str]:
    return [o.key async for o in files.storage.list("")]


async def test_stage_into_s3_streams_and_hashes(files: Files) -> None:
    """A 60 KiB PDF lands in the bucket with the reported size and hash."""
    import hashlib

    data = PDF + noise(60_000)
    staged = await files.stage("project.docs", chunks(data), org_id="o", actor_id="u")
    assert (staged.size, staged.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert b"".join([c async for c in files.storage.get(staged.key)]) == data


async def test_oversize_upload_into_s3_is_our_error_and_leaves_nothing(files: Files) -> None:
    """The size limit raised inside obstore's multipart upload comes out as FileTooLargeError."""

    async def endless() -> AsyncIterator[bytes]:
        yield PDF
        while True:
            yield b"\0" * 65536

    with pytest.raises(FileTooLargeError):
        await files.stage("project.docs", endless(), org_id="o", actor_id="u")
    with pytest.raises(MediaTypeRefusedError):
        await files.stage("project.images", chunks(PE), org_id="o", actor_id="u")
    assert await keys(files) == []
