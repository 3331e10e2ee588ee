"""The notes app served as an MCP server over stdio (spawned by test_mcp.py and by agent tests).

Usage: `python mcp_notes_server.py --actor u1 --roles writer --org org-1 [--sqlite PATH]`.
With `--sqlite`, the data lives in that SQLite file (tables created when missing), so two
processes see each other's writes; else in memory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).parent))

from core_regen_app import POLICY, build_notes_registry

from contractspec.core import Actor, Executor, MemoryBackend
from contractspec.core.context import Principal
from contractspec.core.mcp import mcp_server


async def main(args: argparse.Namespace) -> None:
    """Serve the notes registry over stdio, acting as the given user in the given org."""
    registry = build_notes_registry()
    caller = Principal(Actor.user(args.actor, roles=args.roles.split(",")), org_id=args.org)
    if args.sqlite:
        from contractspec.core.sql import SqlBackend, sqlite_engine

        engine = sqlite_engine(Path(args.sqlite))
        try:
            backend = SqlBackend(engine, registry)
            await backend.create_all()
            server = mcp_server(Executor(registry, backend=backend, policy=POLICY))
            await server.run_stdio(caller)
        finally:
            await engine.dispose()
    else:
        server = mcp_server(Executor(registry, backend=MemoryBackend(), policy=POLICY))
        await server.run_stdio(caller)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--actor", default="u1")
    parser.add_argument("--roles", default="writer")
    parser.add_argument("--org", default="org-1")
    parser.add_argument("--sqlite", default=None)
    anyio.run(main, parser.parse_args())
