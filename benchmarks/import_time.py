"""Import time and peak RSS of each ContractSpec package beside `fastapi` and `growthbook`.

Every measurement runs in a fresh interpreter (`sys.executable -c ...`). The child times the
import statement itself with `time.perf_counter()`, so interpreter start-up (and `site`) is
excluded: the figure is what the import adds to a process, the same quantity as the wall time of
`python -c "import x"` minus that of a bare `python -c "pass"`, without the start-up noise. The
child then reports its own peak RSS (`resource.getrusage(RUSAGE_SELF).ru_maxrss`, which includes
the interpreter's own ~10 MB; the bare interpreter is printed as the first row).

Two statements per module:

* `import x`: what a process pays to import the package; packages whose `__init__` resolves
  names on first use (PEP 562) pay for the rest when a name is used;
* `from x import *`: every name in `__all__` resolved, i.e. the whole public surface.

Reference rows: `fastapi` and `growthbook` (the peers the issue names), and `pydantic`'s
`BaseModel` and `attrs`, the floor any spec-defining process pays whatever ContractSpec does.
Figures are medians over `--repeats` runs (default 9), interleaved across cases so that load
on a shared machine spreads over all rows; the CPU time of the import (`time.process_time()`) is
printed beside the wall time because other processes' load inflates it far less. Modules are
imported from bytecode, as from an installed wheel: an untimed warm-up run writes it to a private
`PYTHONPYCACHEPREFIX` (`--source` times compiling from source instead, which is what a checkout
run with `PYTHONDONTWRITEBYTECODE=1` pays: about 30 ms more for `contractspec.core`). The goal (issue 16): `import contractspec.core` and
`import contractspec.growth.flags` under 150 ms each. Run:
`uv run --group bench python benchmarks/import_time.py [--repeats N]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import NamedTuple

CHILD = """
import json, resource, sys, time
t, c = time.perf_counter(), time.process_time()
{statement}
elapsed, cpu = time.perf_counter() - t, time.process_time() - c
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rss = rss / 1024 if sys.platform != "darwin" else rss / 1024 / 1024  # KiB on Linux, bytes on macOS
loaded = {{m.split(".")[0] for m in sys.modules}}
heavy = sorted(loaded & {{"numpy", "pydantic", "rich", "scipy", "sqlalchemy", "pandas", "structlog"}})
if "importlib.metadata" in sys.modules:
    heavy.append("importlib.metadata")
print(json.dumps({{"ms": elapsed * 1000, "cpu": cpu * 1000, "rss": rss, "heavy": heavy}}))
"""

PACKAGES = [
    "contractspec.core",
    "contractspec.identity",
    "contractspec.bus",
    "contractspec.jobs",
    "contractspec.agent",
    "contractspec.growth",
    "contractspec.growth.flags",
    "contractspec.evolution",
    "contractspec.testing",
    "fastapi",
    "growthbook",
]
REFERENCES = {
    "(bare interpreter)": "pass",
    "pydantic.BaseModel (floor)": "from pydantic import BaseModel",
    "attrs (floor)": "import attrs",
}
GOAL_MS = 150.0
GOALS = ("contractspec.core", "contractspec.growth.flags")


class Sample(NamedTuple):
    """One fresh interpreter's figures."""

    ms: float
    cpu: float
    rss: float
    heavy: list[str]


def run_child(statement: str, env: dict[str, str]) -> Sample:
    """One fresh interpreter: import time in ms, peak RSS in MB, heavy modules it loaded."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(statement=statement)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    row = json.loads(out.strip().splitlines()[-1])
    return Sample(float(row["ms"]), float(row["cpu"]), float(row["rss"]), list(row["heavy"]))


def main() -> None:
    """Print one row per module (median ms and MB), the ratios to the references and the goal."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="fresh interpreters per case (>= 7)")
    parser.add_argument("--no-star", action="store_true", help="skip the `from x import *` rows")
    parser.add_argument(
        "--source",
        action="store_true",
        help="compile our modules from source on every import (no bytecode cache), as a "
        "checkout run with PYTHONDONTWRITEBYTECODE does",
    )
    args = parser.parse_args()

    cases: dict[tuple[str, str], str] = {}
    for label, statement in REFERENCES.items():
        cases[(label, "ref")] = statement
    for module in PACKAGES:
        cases[(module, "import")] = f"import {module}"
        if not args.no_star:
            cases[(module, "star")] = f"from {module} import *"
    samples: dict[tuple[str, str], list[Sample]] = {key: [] for key in cases}
    with tempfile.TemporaryDirectory(prefix="import-time-pycache-") as pycache:
        # Bytecode as an installed wheel has it: written once (untimed warm-up) to a private
        # prefix, so a source tree run with PYTHONDONTWRITEBYTECODE does not time compilation.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = pycache
        if args.source:
            env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": pycache}
        else:
            for statement in cases.values():
                run_child(statement, env)
        for _ in range(args.repeats):  # interleaved: load on the machine hits every case alike
            for key, statement in cases.items():
                samples[key].append(run_child(statement, env))

    def med(key: tuple[str, str], field: str) -> float:
        return float(statistics.median(getattr(row, field) for row in samples[key]))

    fastapi_cpu = med(("fastapi", "import"), "cpu")
    growthbook_cpu = med(("growthbook", "import"), "cpu")
    print(
        f"median of {args.repeats} fresh interpreters, Python {sys.version.split()[0]}, "
        f"{'compiled from source' if args.source else 'from cached bytecode'}. "
        "ms: wall time of the import statement alone (start-up excluded); cpu: its CPU time "
        "(what a shared machine's load inflates least; the ratios use it); MB: peak RSS"
    )
    header = (
        f"{'module':<26} {'ms':>7} {'cpu':>7} {'/fastapi':>8} {'/growthb':>8} {'MB':>6}"
        f" {'import * ms':>11} {'cpu':>7} {'MB':>6}  heavy modules after `import *`"
    )
    print(header)
    print("-" * len(header))
    for label in REFERENCES:
        key = (label, "ref")
        print(
            f"{label:<26} {med(key, 'ms'):7.1f} {med(key, 'cpu'):7.1f} {'':>8} {'':>8}"
            f" {med(key, 'rss'):6.1f} {'':>11} {'':>7} {'':>6}"
            f"  {', '.join(samples[key][-1].heavy) or '-'}"
        )
    for module in PACKAGES:
        key = (module, "import")
        cpu = med(key, "cpu")
        line = (
            f"{module:<26} {med(key, 'ms'):7.1f} {cpu:7.1f} {cpu / fastapi_cpu:8.2f}"
            f" {cpu / growthbook_cpu:8.2f} {med(key, 'rss'):6.1f}"
        )
        star = (module, "star")
        if star in samples:
            heavy = ", ".join(samples[star][-1].heavy) or "-"
            line += (
                f" {med(star, 'ms'):11.1f} {med(star, 'cpu'):7.1f} {med(star, 'rss'):6.1f}  {heavy}"
            )
        print(line)
    for module in GOALS:
        key = (module, "import")
        ms, cpu = med(key, "ms"), med(key, "cpu")
        verdict = "met" if max(ms, cpu) < GOAL_MS else "NOT met"
        extra = ""
        if (module, "star") in samples:
            extra = f"; whole public surface {med((module, 'star'), 'ms'):.0f} ms"
        print(
            f"goal: import {module} < {GOAL_MS:.0f} ms: {verdict} "
            f"({ms:.0f} ms wall, {cpu:.0f} ms cpu{extra})"
        )


if __name__ == "__main__":
    main()
