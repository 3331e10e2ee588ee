"""`python -m saas_boilerplate`: the scripted story on a temporary SQLite file."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path

import structlog

from contractspec.core.sql import sqlite_engine
from contractspec.core.testing import FakeClock
from saas_boilerplate.app import build_app
from saas_boilerplate.story import run_story


async def demo() -> None:
    """Run the story on a fresh SQLite file and print each step."""
    with tempfile.TemporaryDirectory() as tmp:
        engine = sqlite_engine(Path(tmp) / "saas.db")
        try:
            app = await build_app(engine, Path(tmp) / "files", clock=FakeClock())
            story = await run_story(app)
        finally:
            await engine.dispose()
    print("\n".join(story.lines))


def main() -> None:
    """Entry point (an app may configure logging: keep library info lines out of the story)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(demo())


if __name__ == "__main__":
    main()
