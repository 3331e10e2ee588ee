"""`python -m contractspec.testing.redteam module:factory`: run the built-in attacks from CI.

`factory` is a callable (sync or async) of an importable module returning a `RedTeamTarget`.
The Markdown report goes to stdout (or `--markdown PATH`), the JSON report to `--json PATH`.
Exit status: 0 when every attack was blocked, 1 when one escaped or could not be run, 2 for a
bad command line or factory.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path

from contractspec.core.sync import run_sync
from contractspec.testing.redteam._corpus import default_scenarios
from contractspec.testing.redteam._harness import RedTeam
from contractspec.testing.redteam._target import Category, RedTeamTarget

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m contractspec.testing.redteam",
        description="Attack an agent with the built-in red-team scenarios (scripted, offline).",
    )
    parser.add_argument("factory", help="module:callable returning a RedTeamTarget")
    parser.add_argument("--json", type=Path, help="write the JSON report to this file")
    parser.add_argument("--markdown", type=Path, help="write the Markdown report to this file")
    parser.add_argument(
        "--category",
        action="append",
        choices=[c.value for c in Category],
        help="only this category (repeatable; default: all)",
    )
    return parser


async def _target(spec: str) -> RedTeamTarget:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{spec!r} is not 'module:callable'")
    factory = getattr(importlib.import_module(module_name), attr)
    made = factory()
    target = await made if inspect.isawaitable(made) else made
    if not isinstance(target, RedTeamTarget):
        raise TypeError(f"{spec} returned {type(target).__name__}, not a RedTeamTarget")
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see the module docs)."""
    args = _parser().parse_args(argv)

    async def go() -> int:
        try:
            target = await _target(args.factory)
        except (ImportError, AttributeError, ValueError, TypeError) as exc:
            print(f"error: cannot load the target factory: {exc}", file=sys.stderr)
            return 2
        import structlog

        if not structlog.is_configured():  # the application here: logs to stderr, not the report
            structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
        only = {Category(c) for c in args.category} if args.category else None
        report = await RedTeam(target, default_scenarios(target, only)).run()
        text = report.to_markdown()
        if args.markdown is not None:
            args.markdown.write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text)
        if args.json is not None:
            args.json.write_text(report.to_json(), encoding="utf-8")
        return 0 if not (report.escaped or report.errors) else 1

    return run_sync(go())


if __name__ == "__main__":  # pragma: no cover - run as a module
    raise SystemExit(main())
