"""Crash between phase 1 and the commit: `python files_crash_upload.py URL SCHEMA DIR`.

Stages a PDF into DIR/blobs, prints its key, then runs `files.upload` with a middleware that
kills the process (`os._exit`) after the handler wrote the records but before the commit.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from files_support import PDF, chunks, ctx, sql_app
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import create_async_engine

from contractspec.core import Invocation
from contractspec.core.handler import NextFn
from contractspec.core.sql import sqlite_engine


class Crash:
    async def __call__(self, inv: Invocation, call_next: NextFn) -> BaseModel:
        out = await call_next(inv)
        if inv.spec.name == "files.upload":
            os._exit(17)
        return out


async def main(url: str, schema: str, directory: str) -> None:
    if url.startswith("sqlite"):
        engine = sqlite_engine(url.split("///", 1)[1])
    else:
        engine = create_async_engine(url, connect_args={"options": f"-csearch_path={schema}"})
    app = await sql_app(engine, Path(directory), middleware=(Crash(),))
    staged = await app.files.stage(
        "project.docs", chunks(PDF), org_id="org-1", actor_id="u-1", filename="x.pdf"
    )
    print(staged.key, flush=True)
    await app.executor.execute("files.upload", {"token": staged.token, "entity_id": "p1"}, ctx())
    print("committed", flush=True)  # never reached


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
