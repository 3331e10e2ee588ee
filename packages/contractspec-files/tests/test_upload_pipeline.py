"""The overlapped upload pipeline: SHA-256 in one worker thread, the file write in another
(`ThreadPipe`), on real files. Hash and size stay exact, the limit still stops the stream, failures
and cancellation leave no temporary file, and buffering stays bounded."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contractspec.core import define_entity
from contractspec.files import (
    Files,
    FileTooLargeError,
    LocalFileStorage,
    MemoryFileStore,
    define_attachment_slot,
)
from contractspec.files._pipe import ThreadPipe

MIB = 1024 * 1024
item = define_entity("pipe.item", fields={"id": str})
SLOT = define_attachment_slot(
    item, "blobs", media_types=["application/octet-stream", "text/plain"], max_size=6 * MIB
)
SECRET = "p" * 40
BLOCK = os.urandom(7 * MIB)


def files_on(root: Path) -> Files:
    return Files(
        storage=LocalFileStorage(root, fsync=False), store=MemoryFileStore(), secret=SECRET
    )


def everything_under(root: Path) -> list[str]:
    """Every file under `root`, temporary upload files included."""
    return sorted(p.name for p in root.rglob("*") if p.is_file())


async def pieces(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    """`data` cut at `sizes` (cycled), each piece sometimes bytes, sometimes a reused bytearray
    (whose content changes once the next piece is taken)."""
    buffer = bytearray()
    i = n = 0
    while i < len(data):
        size = sizes[n % len(sizes)]
        piece = data[i : i + size]
        if n % 3 == 2:
            buffer[:] = piece
            yield buffer  # a caller's reused buffer
            buffer[:] = b"X" * len(buffer)  # the caller overwrites it afterwards
        else:
            yield piece
        i += size
        n += 1


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    total=st.integers(min_value=0, max_value=3 * MIB)
    | st.integers(min_value=MIB, max_value=3 * MIB),
    sizes=st.lists(
        st.one_of(
            st.integers(min_value=1, max_value=5000),
            st.integers(min_value=200 * 1024, max_value=1536 * 1024),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_recorded_sha256_and_size_equal_hashlib_over_odd_chunks(
    tmp_path: Path, total: int, sizes: list[int]
) -> None:
    """Random uploads in odd chunk sizes (small ones hashed inline, large ones in the hasher
    thread, mixed, some in reused buffers): the recorded SHA-256 and size are hashlib's over the
    bytes, and the stored blob holds exactly those bytes."""
    data = BLOCK[:total]
    files = files_on(tmp_path / "root")

    async def run() -> None:
        staged = await files.stage(SLOT, pieces(data, sizes), org_id="o", actor_id="u")
        assert staged.sha256 == hashlib.sha256(data).hexdigest()
        assert staged.size == len(data)
        stored = b"".join([c async for c in files.storage.get(staged.key)])
        assert stored == data
        await files.storage.delete(staged.key)

    asyncio.run(run())


async def test_size_limit_breach_mid_stream_leaves_no_temporary_file(tmp_path: Path) -> None:
    """1 MiB chunks into a 6 MiB slot: the 7th chunk raises FileTooLargeError while the writer and
    hasher threads still have chunks queued; the stream is not read further and nothing is left
    under the root, temporary files included."""
    root = tmp_path / "root"
    files = files_on(root)
    read = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal read
        while True:
            read += MIB
            yield BLOCK[:MIB]

    with pytest.raises(FileTooLargeError) as info:
        await files.stage(SLOT, endless(), org_id="o", actor_id="u")
    assert (info.value.details["field"], info.value.details["max_size"]) == ("file", 6 * MIB)
    assert read == 7 * MIB
    assert everything_under(root) == []


async def test_cancelled_upload_leaves_no_temporary_file(tmp_path: Path) -> None:
    """An upload cancelled while chunks are in flight removes its temporary file."""
    root = tmp_path / "root"
    files = files_on(root)
    started = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield BLOCK[:MIB]
        started.set()
        await asyncio.sleep(30)
        yield b""

    task = asyncio.create_task(files.stage(SLOT, slow(), org_id="o", actor_id="u"))
    await started.wait()
    await asyncio.sleep(0.05)
    assert any(name.startswith(".cs-upload-") for name in everything_under(root))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert everything_under(root) == []


async def test_write_error_in_the_writer_thread_is_raised_and_cleaned_up(tmp_path: Path) -> None:
    """A failing write (here: the pipe's function raising on the 3rd chunk) surfaces as that error
    from `feed`/`close`, later chunks are not processed, and the caller can clean up."""
    seen: list[int] = []

    def write(chunk: bytes) -> None:
        if len(seen) == 2:
            raise OSError(28, "No space left on device")
        seen.append(len(chunk))

    pipe = ThreadPipe(write, max_bytes=2 * MIB)

    async def stream() -> None:
        for _ in range(10):
            await pipe.feed(BLOCK[:MIB])
        await pipe.close()

    with pytest.raises(OSError, match="No space left"):
        await stream()
    await pipe.abort()
    assert seen == [MIB, MIB]


async def test_pipe_keeps_order_and_bounds_what_it_buffers() -> None:
    """A slow consumer: the producer waits, so at most `max_bytes` plus the chunk being processed
    are ever held by the pipe; the chunks arrive whole and in order."""
    held = 0
    peak = 0
    lock = threading.Lock()
    out: list[int] = []

    def consume(chunk: bytes) -> None:
        nonlocal held
        time.sleep(0.002)
        out.append(chunk[0])
        with lock:
            held -= len(chunk)

    pipe = ThreadPipe(consume, max_bytes=3 * 64 * 1024)
    for i in range(100):
        with lock:
            held += 64 * 1024
            peak = max(peak, held)
        await pipe.feed(bytes([i]) * 64 * 1024)
    await pipe.close()
    assert out == list(range(100))
    assert peak <= 4 * 64 * 1024


async def test_small_chunks_run_inline_only_when_the_pipe_is_idle() -> None:
    """`inline_below` never reorders: a small chunk fed while a large one is queued waits its turn."""
    order: list[Any] = []
    gate = threading.Event()

    def consume(chunk: bytes) -> None:
        if len(chunk) > 10:
            gate.wait(5)
        order.append((len(chunk), threading.current_thread() is threading.main_thread()))

    pipe = ThreadPipe(consume, max_bytes=MIB, inline_below=10)
    await pipe.feed(b"a")  # idle: inline, on the loop's thread
    await pipe.feed(b"b" * 100)  # to the worker, blocked on the gate
    await pipe.feed(b"c")  # the worker is busy: queued behind it
    gate.set()
    await pipe.close()
    assert order == [(1, True), (100, False), (1, False)]
