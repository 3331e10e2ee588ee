"""Fixtures: the files test app on memory, a SQLite file and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from files_support import App, open_app

from contractspec.core.testing.fixtures import backend_kind, sql_engine, sql_kind
from contractspec.files import FileStorage, LocalFileStorage, ObjectStoreStorage

__all__ = ["backend_kind", "sql_engine", "sql_kind"]


@pytest.fixture
async def app(backend_kind: str, tmp_path: Path) -> AsyncIterator[App]:
    """The app on the parametrised backend."""
    async with open_app(backend_kind, tmp_path) as built:
        yield built


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real S3-compatible server (moto's server mode, offline) on a random local port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_storage(moto_endpoint: str) -> ObjectStoreStorage:
    """An `ObjectStoreStorage` on a fresh bucket of the moto server."""
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    httpx.put(f"{moto_endpoint}/{bucket}").raise_for_status()
    from obstore.store import S3Store

    store = S3Store(
        bucket,
        endpoint=moto_endpoint,
        access_key_id="test",
        secret_access_key="test",
        region="us-east-1",
        virtual_hosted_style_request=False,
        # moto's threaded server answers slowly when the 2-core CI machine is busy: give each
        # request room and retry transient failures the way production S3 clients do.
        client_options={"allow_http": True, "timeout": "120s", "connect_timeout": "30s"},
        retry_config={
            "max_retries": 5,
            "backoff": {
                "init_backoff": timedelta(milliseconds=100),
                "max_backoff": timedelta(seconds=2),
                "base": 2,
            },
            "retry_timeout": timedelta(seconds=120),
        },
    )
    return ObjectStoreStorage(store, name="s3", chunk_size=5 * 1024 * 1024)


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> FileStorage:
    """Each storage adapter: the local filesystem and S3 (moto)."""
    if request.param == "local":
        return LocalFileStorage(tmp_path / "store", fsync=True)
    return request.getfixturevalue("s3_storage")  # type: ignore[no-any-return]
