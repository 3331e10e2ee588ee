"""Upload/download MB/s through contractspec-files vs the storage library used directly, and peak
RSS for a streamed 1 GiB file.

Run: `uv run --all-packages --all-extras --group bench python benchmarks/files_throughput.py`
(`--size-mib 64 --rounds 5 --big-gib 1` are the defaults; `--skip-s3`, `--skip-rss`).

What is measured (both sides in one process, same machine, same moment, same bytes):

* Local filesystem, SIZE MiB of random bytes in 1 MiB chunks, no fsync on either side:
  - ours upload: `Files.stage` into `LocalFileStorage` — the whole phase 1 of an upload: media type
    sniffed from the first 8 KiB, SHA-256 and size computed while streaming, size limit checked,
    written to a temporary file and renamed into place, signed token;
  - peer upload: `open(path, "wb")` + `write` per chunk in a worker thread (anyio), no hashing;
  - peer+sha256 upload: the same plus `hashlib.sha256().update(chunk)` inline (equal work: the
    SHA-256 ours must record; hashing and writing add up there);
  - SHA-256 alone: `hashlib.sha256().update(chunk)` over the same chunks, no I/O. With the bare
    write it gives the bound: an upload that records a SHA-256 cannot beat
    min(hash, write) / write of the bare write, even with hashing and writing overlapped;
  - overlap: SHA-256 in one bare thread and `write()` in another, at the same time (no event
    loop, no checks): what overlapping can buy with the cores free at that moment (on a busy
    shared machine it is no faster, even slower, than hashing then writing in one thread);
  - ours download: `LocalFileStorage.get` (1 MiB chunks, async file I/O);
  - peer download: `open(path, "rb")` + `read(1 MiB)` in a worker thread.
* S3 (a real moto server on localhost, in a thread of this process), same bytes:
  - ours: `Files.stage` into `ObjectStoreStorage` (obstore multipart, 8 MiB parts, 4 in flight)
    and `ObjectStoreStorage.get`;
  - peer: `obstore.put_async` with the same async iterator, part size and concurrency, and
    `obstore.get_async(...).stream()`.
  moto is a Python server, so both sides are bounded by it; the ratio is what matters.
* Peak RSS: a child process streams a BIG GiB file (generated on the fly from one 1 MiB random
  block, never held whole) through `Files.stage` into `LocalFileStorage`, then reads it back
  through `LocalFileStorage.get`; the same child first does the same with 64 MiB. Peak RSS
  (VmHWM of /proc/self/status) after each phase shows whether memory grows with file size.

The sides run one after the other in every round, in reverse order every other round; each peer
write goes to a fresh file, as ours does (a temporary file renamed into place).

Printed: median MB/s (1 MB = 10^6 bytes) over ROUNDS rounds per side, ratio ours/peer, the range of
each side, the load average (the machine is shared), and the RSS figures.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio

from contractspec.core import EntitySpec, define_entity
from contractspec.files import (
    Files,
    LocalFileStorage,
    MemoryFileStore,
    ObjectStoreStorage,
    define_attachment_slot,
)

MIB = 1024 * 1024
SECRET = "b" * 40
blob_entity: EntitySpec[Any] = define_entity("bench.item", fields={"id": str})
SLOT = define_attachment_slot(
    blob_entity, "blobs", media_types=["application/octet-stream"], max_size=4 * 1024 * MIB
)


def sync_source(block: bytes, total: int) -> Iterator[bytes]:
    """The chunks of `source`, for plain threads."""
    sent = 0
    while sent < total:
        piece = block[: total - sent]
        sent += len(piece)
        yield piece


async def source(block: bytes, total: int) -> AsyncIterator[bytes]:
    """`total` bytes made of repetitions of `block` (constant memory)."""
    sent = 0
    while sent < total:
        piece = block[: total - sent]
        sent += len(piece)
        yield piece


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


async def timed(fn: Any) -> float:
    started = time.perf_counter()
    await fn()
    return time.perf_counter() - started


async def local_round(
    files: Files, root: Path, block: bytes, size: int, flip: bool = False
) -> dict[str, float]:
    storage = files.storage
    assert isinstance(storage, LocalFileStorage)
    peer_path = root / f"peer-{uuid.uuid4().hex}"
    staged: list[str] = []

    async def ours_up() -> None:
        s = await files.stage(SLOT, source(block, size), org_id="o", actor_id="u", filename="b.bin")
        staged.append(s.key)

    async def peer_up() -> None:
        handle = await anyio.open_file(peer_path, "wb")
        async with handle:
            async for chunk in source(block, size):
                await handle.write(chunk)

    async def peer_hash_up() -> None:
        sha = hashlib.sha256()
        handle = await anyio.open_file(peer_path, "wb")
        async with handle:
            async for chunk in source(block, size):
                sha.update(chunk)
                await handle.write(chunk)
        sha.hexdigest()

    async def hash_only() -> None:
        sha = hashlib.sha256()
        async for chunk in source(block, size):
            sha.update(chunk)
        sha.hexdigest()

    async def overlap_up() -> None:
        def hash_all() -> None:
            sha = hashlib.sha256()
            for chunk in sync_source(block, size):
                sha.update(chunk)
            sha.hexdigest()

        def write_all() -> None:
            with open(peer_path, "wb") as handle:
                for chunk in sync_source(block, size):
                    handle.write(chunk)

        await asyncio.gather(asyncio.to_thread(hash_all), asyncio.to_thread(write_all))

    async def ours_down() -> None:
        n = 0
        async for chunk in storage.get(staged[-1]):
            n += len(chunk)
        assert n == size

    async def peer_down() -> None:
        n = 0
        handle = await anyio.open_file(peer_path, "rb")
        async with handle:
            while chunk := await handle.read(MIB):
                n += len(chunk)
        assert n == size

    sides: list[tuple[str, Any]] = [
        ("ours_up", ours_up),
        ("peer_up", peer_up),
        ("peerhash_up", peer_hash_up),
        ("hash_only", hash_only),
        ("overlap_up", overlap_up),
    ]
    result: dict[str, float] = {}
    for name, fn in reversed(sides) if flip else sides:  # alternate the order between rounds
        if name in ("peer_up", "peerhash_up", "overlap_up"):
            peer_path.unlink(missing_ok=True)
        result[name] = await timed(fn)
    downs = [("ours_down", ours_down), ("peer_down", peer_down)]
    for name, fn in reversed(downs) if flip else downs:
        result[name] = await timed(fn)
    await storage.delete(staged[-1])
    peer_path.unlink()
    return result


async def s3_round(files: Files, block: bytes, size: int) -> dict[str, float]:
    import obstore

    storage = files.storage
    assert isinstance(storage, ObjectStoreStorage)
    peer_key = f"peer/{uuid.uuid4().hex}"
    staged: list[str] = []

    async def ours_up() -> None:
        s = await files.stage(SLOT, source(block, size), org_id="o", actor_id="u", filename="b.bin")
        staged.append(s.key)

    async def peer_up() -> None:
        await obstore.put_async(
            storage.store, peer_key, source(block, size),
            chunk_size=storage.chunk_size, max_concurrency=storage.max_concurrency,
        )  # fmt: skip

    async def ours_down() -> None:
        n = 0
        async for chunk in storage.get(staged[-1]):
            n += len(chunk)
        assert n == size

    async def peer_down() -> None:
        n = 0
        result = await obstore.get_async(storage.store, peer_key)
        async for chunk in result.stream(min_chunk_size=MIB):
            n += len(chunk)
        assert n == size

    result = {
        "ours_up": await timed(ours_up),
        "peer_up": await timed(peer_up),
        "ours_down": await timed(ours_down),
        "peer_down": await timed(peer_down),
    }
    await storage.delete(staged[-1])
    await obstore.delete_async(storage.store, peer_key)
    return result


def report(title: str, rounds: list[dict[str, float]], size: int) -> None:
    print(f"\n{title}  ({size // MIB} MiB per transfer, {len(rounds)} rounds, medians)")
    for what in ("up", "down"):
        ours = statistics.median(mbps(size, r[f"ours_{what}"]) for r in rounds)
        peer = statistics.median(mbps(size, r[f"peer_{what}"]) for r in rounds)
        label = "upload  " if what == "up" else "download"
        print(
            f"  {label}: ours {ours:8.1f} MB/s   peer {peer:8.1f} MB/s   ratio {ours / peer:5.2f}x"
        )
        if f"peerhash_{what}" in rounds[0]:
            eq = statistics.median(mbps(size, r[f"peerhash_{what}"]) for r in rounds)
            print(
                f"  {label}: ours {ours:8.1f} MB/s   peer+sha256 {eq:8.1f} MB/s   ratio "
                f"{ours / eq:5.2f}x  (equal work: the peer also hashes)"
            )
        if what == "up" and "hash_only" in rounds[0]:
            hashed = statistics.median(mbps(size, r["hash_only"]) for r in rounds)
            bound = min(hashed, peer) / peer
            print(
                f"  bound   : SHA-256 alone {hashed:8.1f} MB/s, write alone {peer:8.1f} MB/s: an "
                f"upload that hashes cannot beat {bound:4.2f}x of the bare write, even with "
                "hashing and writing fully overlapped on two free cores"
            )
        if what == "up" and "overlap_up" in rounds[0]:
            both = statistics.median(mbps(size, r["overlap_up"]) for r in rounds)
            print(
                f"  overlap : SHA-256 and write() in two bare threads at once {both:8.1f} MB/s "
                f"(ours {ours / both:4.2f}x of it): what overlapping buys on this machine right now"
            )
        ranges = {k: [mbps(size, r[k]) for r in rounds] for k in rounds[0] if k.endswith(what)}
        print(
            "  ranges  : "
            + ", ".join(f"{k} {min(v):.0f}-{max(v):.0f}" for k, v in sorted(ranges.items()))
        )


def s3_store() -> tuple[Any, Any]:
    import httpx
    from moto.server import ThreadedMotoServer
    from obstore.store import S3Store

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    httpx.put(f"{endpoint}/bench").raise_for_status()
    store = S3Store(
        "bench", endpoint=endpoint, access_key_id="x", secret_access_key="x",
        region="us-east-1", virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )  # fmt: skip
    return server, store


def peak_rss_kib() -> int:
    """Peak RSS of this process in KiB: VmHWM from /proc (reset by exec, unlike ru_maxrss, which
    Linux carries over from the parent that forked us), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def rss_child(root: str, big_gib: float) -> None:
    """Stream 64 MiB, then BIG GiB through Files; print peak RSS (KiB) after each phase."""

    async def run() -> None:
        files = Files(
            storage=LocalFileStorage(root, fsync=False), store=MemoryFileStore(), secret=SECRET
        )
        block = os.urandom(MIB)
        base = peak_rss_kib()
        print(f"rss baseline {base}", flush=True)
        for label, size in (("64MiB", 64 * MIB), ("big", int(big_gib * 1024 * MIB))):
            s = await files.stage(SLOT, source(block, size), org_id="o", actor_id="u")
            n = 0
            async for chunk in files.storage.get(s.key):
                n += len(chunk)
            assert n == size == s.size
            await files.storage.delete(s.key)
            peak = peak_rss_kib()
            print(f"rss {label} {size} {peak}", flush=True)

    asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--big-gib", type=float, default=1.0)
    parser.add_argument("--skip-s3", action="store_true")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.big_gib)
        return
    size = args.size_mib * MIB
    block = os.urandom(MIB)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, chunks 1 MiB, size {args.size_mib} MiB, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, fsync off on both sides"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = Files(
            storage=LocalFileStorage(root / "ours", fsync=False),
            store=MemoryFileStore(),
            secret=SECRET,
        )

        async def local() -> list[dict[str, float]]:
            await local_round(files, root, block, size)  # warm-up
            return [
                await local_round(files, root, block, size, flip=i % 2 == 1)
                for i in range(args.rounds)
            ]

        report(
            "local filesystem: Files.stage/LocalFileStorage vs open()/write()",
            asyncio.run(local()),
            size,
        )

        if not args.skip_s3:
            server, store = s3_store()
            try:
                s3_files = Files(
                    storage=ObjectStoreStorage(store, chunk_size=8 * MIB, max_concurrency=4),
                    store=MemoryFileStore(),
                    secret=SECRET,
                )

                async def s3() -> list[dict[str, float]]:
                    await s3_round(s3_files, block, size)
                    return [await s3_round(s3_files, block, size) for _ in range(args.rounds)]

                report(
                    "S3 (moto): Files.stage/ObjectStoreStorage vs obstore directly",
                    asyncio.run(s3()),
                    size,
                )
            finally:
                server.stop()

        if not args.skip_rss:
            out = subprocess.run(
                [sys.executable, __file__, "--rss-child", str(root / "rss"), "--big-gib", str(args.big_gib)],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            print("\npeak RSS of a child streaming through Files.stage + LocalFileStorage.get:")
            for line in out.splitlines():
                parts = line.split()
                if parts[1] == "baseline":
                    print(f"  after imports:        {int(parts[2]) / 1024:7.1f} MiB")
                else:
                    print(
                        f"  after {int(parts[2]) / MIB:6.0f} MiB file: {int(parts[3]) / 1024:7.1f} MiB"
                    )
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
