"""HTTP upload and download routes, and hostile input: traversal, spoofing, polyglots, zip bombs."""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
from files_support import GIF_POLYGLOT, HTML, PDF, PE, PNG, App, noise, open_app, zip_bytes
from starlette.applications import Starlette
from starlette.requests import Request

from contractspec.core import Actor, Principal
from contractspec.core.http import routes
from contractspec.files.http import file_routes


def authenticate(request: Request) -> Principal | None:
    user = request.headers.get("x-user")
    if user is None:
        return None
    roles = tuple(filter(None, request.headers.get("x-roles", "member").split(",")))
    return Principal(Actor.user(user, roles=roles), org_id=request.headers.get("x-org", "org-1"))


@pytest.fixture
async def client(backend_kind: str, tmp_path: Path) -> AsyncIterator[tuple[App, httpx.AsyncClient]]:
    async with open_app(backend_kind, tmp_path) as app:
        await app.project("p1")
        star = Starlette(
            routes=[
                *file_routes(app.executor, app.files, authenticate=authenticate),
                *routes(app.executor, authenticate=authenticate),
            ]
        )
        transport = httpx.ASGITransport(app=star)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield app, http


USER = {"x-user": "u-1"}


async def post(
    http: httpx.AsyncClient,
    data: bytes,
    *,
    filename: str = "a.pdf",
    content_type: str = "application/octet-stream",
    slot: str = "project.docs",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return await http.post(
        f"/files/upload/{slot}/p1",
        files={"file": (filename, io.BytesIO(data), content_type)},
        headers=USER if headers is None else headers,
    )


async def test_upload_then_download_with_safe_headers(
    client: tuple[App, httpx.AsyncClient],
) -> None:
    """201 with the record; the signed link streams the bytes with nosniff, attachment, CSP."""
    app, http = client
    data = PDF + noise(30_000)
    res = await post(http, data, filename='../../evil"\r\nX-Injected: 1.pdf')
    assert res.status_code == 201, res.text
    body = res.json()
    assert body["file"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["file"]["media_type"] == "application/pdf"
    name = body["file"]["filename"]
    assert "/" not in name
    assert '"' not in name
    assert "\r" not in name
    assert "\n" not in name
    got = await http.get(body["download_path"])
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["content-type"] == "application/pdf"
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["content-disposition"].startswith("attachment; filename=")
    assert "sandbox" in got.headers["content-security-policy"]
    assert "x-injected" not in got.headers
    assert app.blobs() == [body["file"]["key"]]


async def test_anonymous_upload_is_401_and_writes_nothing(
    client: tuple[App, httpx.AsyncClient],
) -> None:
    """No credential, no upload, no blob."""
    app, http = client
    res = await post(http, PDF, headers={})
    assert res.status_code == 401
    assert app.blobs() == []


async def test_denied_caller_stores_nothing(client: tuple[App, httpx.AsyncClient]) -> None:
    """A caller without the upload permission gets 403 before a single byte reaches storage."""
    app, http = client
    res = await post(http, PDF, headers={**USER, "x-roles": ""})
    assert res.status_code == 403
    assert res.json()["code"] == "policy_denied"
    assert app.blobs() == []


async def test_declared_length_over_the_limit_is_413(client: tuple[App, httpx.AsyncClient]) -> None:
    """A Content-Length above max_size is refused before the body is read."""
    app, http = client
    res = await post(http, PDF + b"\0" * (200 * 1024))
    assert res.status_code == 413
    assert res.json()["code"] == "file_too_large"
    assert app.blobs() == []


async def test_streamed_body_over_the_limit_is_413(client: tuple[App, httpx.AsyncClient]) -> None:
    """A chunked body without Content-Length is cut off once it passes the limit."""
    app, http = client
    boundary = "b0undary"
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.pdf"\r\n'
            "Content-Type: application/pdf\r\n\r\n"
        ).encode() + PDF
        for _ in range(1000):
            sent += 8192
            yield b"\0" * 8192
        yield f"\r\n--{boundary}--\r\n".encode()

    res = await http.post(
        "/files/upload/project.docs/p1",
        content=body(),
        headers={**USER, "content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert res.status_code == 413
    assert app.blobs() == []


@pytest.mark.parametrize(
    ("data", "filename", "content_type", "slot", "reason"),
    [
        (PE, "photo.png", "image/png", "project.images", "claims to be image/png"),
        (PE, "photo.png", "application/octet-stream", "project.images", "portable-executable"),
        (HTML, "photo.png", "image/png", "project.images", "claims to be image/png"),
        (HTML, "page.html", "text/html", "project.images", "text/html"),
        (GIF_POLYGLOT, "cat.gif", "image/gif", "project.images", "polyglot"),
        (PNG + PE, "payload.exe", "image/png", "project.images", "ends in .exe"),
        (PNG, "x.svg", "image/png", "project.images", "ends in .svg"),
    ],
)
async def test_spoofed_and_polyglot_files_are_415(
    client: tuple[App, httpx.AsyncClient],
    data: bytes,
    filename: str,
    content_type: str,
    slot: str,
    reason: str,
) -> None:
    """The type comes from the bytes: spoofed claims, HTML, polyglots and disguised names fail."""
    app, http = client
    res = await post(http, data, filename=filename, content_type=content_type, slot=slot)
    assert res.status_code == 415, res.text
    assert res.json()["code"] == "media_type_refused"
    assert reason in res.json()["message"]
    assert app.blobs() == []


async def test_png_with_trailing_pe_bytes_is_served_inert(
    client: tuple[App, httpx.AsyncClient],
) -> None:
    """A PNG header with an executable after it is stored as image/png and never executed."""
    _app, http = client
    res = await post(http, PNG + PE, filename="x.png", slot="project.images")
    assert res.status_code == 201
    got = await http.get(res.json()["download_path"])
    assert got.headers["content-type"] == "image/png"
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["content-disposition"].startswith("attachment;")


async def test_zip_bombs_are_refused_and_sane_zips_accepted(
    client: tuple[App, httpx.AsyncClient],
) -> None:
    """High ratio, too many members and too much total size → 422; a normal archive → 201."""
    app, http = client
    bomb = zip_bytes({"zeros.bin": b"\0" * (150_000)})
    assert len(bomb) < 2_000
    res = await post(http, bomb, filename="a.zip")
    assert res.status_code == 422, res.text
    assert res.json()["details"]["reason"] == "ratio"
    many = zip_bytes({f"f{i}.txt": noise(10) for i in range(11)})
    res = await post(http, many, filename="b.zip")
    assert (res.status_code, res.json()["details"]["reason"]) == (422, "members")
    big = zip_bytes({f"r{i}.bin": noise(20_000) for i in range(5)})
    res = await post(http, big, filename="c.zip")
    assert res.status_code in (413, 422)
    assert app.blobs() == []
    ok = zip_bytes({"readme.txt": b"hello " * 100, "data.bin": noise(2000)})
    res = await post(http, ok, filename="d.zip")
    assert res.status_code == 201, res.text
    assert res.json()["file"]["media_type"] == "application/zip"


async def test_total_uncompressed_limit(tmp_path: Path) -> None:
    """An archive within the ratio but above max_uncompressed is refused (checked without extracting)."""
    from contractspec.files import ArchiveLimits, ArchiveRefusedError
    from contractspec.files.sniff import check_zip

    archive = zip_bytes({f"r{i}.bin": noise(30_000) for i in range(3)})
    with pytest.raises(ArchiveRefusedError) as info:
        check_zip(io.BytesIO(archive), ArchiveLimits(max_uncompressed=50_000, max_ratio=10))
    assert info.value.details["reason"] == "size"
    assert check_zip(io.BytesIO(archive), ArchiveLimits(max_uncompressed=100_000)) == 90_000


async def test_tampered_and_foreign_download_links(client: tuple[App, httpx.AsyncClient]) -> None:
    """A modified link is 403; after deletion the link is 404; another org cannot read the file."""
    app, http = client
    res = await post(http, PDF)
    path = res.json()["download_path"]
    assert (await http.get(path[:-4] + "AAAA")).status_code == 403
    other = await http.get(
        "/files/get/v1", params={"attachment_id": res.json()["attachment"]["id"]},
        headers={**USER, "x-org": "org-2"},
    )  # fmt: skip
    assert other.status_code in (403, 404)
    deleted = await http.post(
        "/files/delete/v1",
        json={"attachment_id": res.json()["attachment"]["id"]},
        headers={**USER, "x-roles": "admin"},
    )
    assert deleted.status_code == 200, deleted.text
    await app.files.drain()
    assert (await http.get(path)).status_code == 404
    assert app.blobs() == []


async def test_non_multipart_and_missing_part_are_rejected(
    client: tuple[App, httpx.AsyncClient],
) -> None:
    """A JSON body or a form without `file` is a 422 naming the fix; nothing is stored."""
    app, http = client
    res = await http.post("/files/upload/project.docs/p1", json={"x": 1}, headers=USER)
    assert res.status_code == 422
    assert "multipart/form-data" in res.json()["message"]
    res = await http.post(
        "/files/upload/project.docs/p1", files={"other": ("a", b"x")}, headers=USER
    )
    assert res.status_code == 422
    assert "no part named 'file'" in res.json()["message"]
    assert app.blobs() == []


def test_content_disposition_round_trips_unicode() -> None:
    """filename* carries the UTF-8 name; filename is an ASCII fallback."""
    from contractspec.files import content_disposition

    header = content_disposition("résumé 2024.pdf")
    assert header.startswith('attachment; filename="r_sum_ 2024.pdf"; ')
    assert unquote(header.split("filename*=UTF-8''", 1)[1]) == "résumé 2024.pdf"
