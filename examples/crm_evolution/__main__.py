"""`python -m crm_evolution [--db FILE] [--out DIR]`: play the story and print what happened."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from contractspec.core.diff import Change, Severity, SpecDiff
from contractspec.core.sql import sqlite_engine
from crm_evolution.story import run_story


def _diff(changes: list[dict[str, str]]) -> SpecDiff:
    return SpecDiff(tuple(Change(c["rule"], Severity(c["severity"]), c["kind"], c["spec"],
                                 c["path"], c["message"]) for c in changes))  # fmt: skip


async def _main(db: Path, out: Path) -> None:
    engine = sqlite_engine(db)
    try:
        story = await run_story(engine, out)
    finally:
        await engine.dispose()
    intent = story.regression
    print(
        f"intent      {intent.kind.value} ({intent.severity.value}, confidence {intent.confidence})"
    )
    print(f"            {intent.summary}")
    print(f"            methods: {', '.join(intent.evidence['methods'])}")
    s = story.suggestion
    print(f"suggestion  {s.title} [{'breaking' if s.breaking else 'non-breaking'}]")
    print(_diff([dict(c) for c in s.diff]).to_text().rstrip())
    a = story.approved
    print(f"approval    {a.status.value} by {a.decided_by} at {a.decided_at}")
    print(f"envelope    {story.envelope}")
    if story.workflow is not None:
        print(f"also        {story.workflow.title}")


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, default=None, help="SQLite file (default: a temp file)")
    parser.add_argument("--out", type=Path, default=Path("spec-suggestions"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_main(args.db or Path(tmp) / "crm_evolution.db", args.out))


if __name__ == "__main__":
    main()
