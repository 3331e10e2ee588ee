"""`python -m approvals`: the scripted story on a temporary SQLite file."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path

import structlog

from approvals.app import build_app
from approvals.story import run_story
from contractspec.core.sql import sqlite_engine
from contractspec.core.testing import FakeClock


async def demo() -> None:
    """Run the story on a fresh SQLite file and print each step."""
    with tempfile.TemporaryDirectory() as tmp:
        engine = sqlite_engine(Path(tmp) / "approvals.db")
        try:
            clock = FakeClock()
            story = await run_story(await build_app(engine, clock=clock), clock)
        finally:
            await engine.dispose()
    print("\n".join(story.lines))


def main() -> None:
    """Entry point (an app may configure logging: keep the worker's info lines out of the story)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(demo())


if __name__ == "__main__":
    main()
