"""A process killed between the blob write and the commit leaves an orphan, never a record."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from files_support import sql_app
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

HERE = Path(__file__).parent


async def test_crash_between_blob_and_commit_leaves_a_collectable_orphan(
    sql_engine: AsyncEngine, tmp_path: Path
) -> None:
    """The child dies inside the upload's transaction: no record; the blob is collected later."""
    app = await sql_app(sql_engine, tmp_path)
    await app.project()
    url = sql_engine.url.render_as_string(hide_password=False)
    schema = ""
    if sql_engine.dialect.name == "postgresql":
        async with sql_engine.connect() as conn:
            schema = str((await conn.execute(text("SELECT current_schema()"))).scalar())
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "files_crash_upload.py"), url, schema, str(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=HERE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 17, err.decode()
    lines = out.decode().split()
    assert len(lines) == 1, out  # the key; "committed" never printed
    key = lines[0]
    assert app.blobs() == [key]
    file_id = key.rsplit("/", 1)[1]
    assert await app.store.get_file("org-1", file_id) is None
    assert await app.store.list_attachments("org-1", "project", "p1") == []
    assert await app.files.collect_orphans() == 0  # inside the grace period
    app.clock.set(
        datetime.now(UTC) + app.files.upload_ttl + app.files.orphan_margin + timedelta(seconds=1)
    )
    assert await app.files.collect_orphans() == 1
    assert app.blobs() == []
