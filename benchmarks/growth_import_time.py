"""Import time of a flags-only service: `contractspec.growth.flags` vs the whole package.

Each figure is the median, over `--repeats` fresh interpreters, of the wall time of one import
statement (measured inside the child process, so interpreter start-up is excluded):

* `numpy` and `contractspec.core`: what flags and assignment build on (not ours to trim here);
* `contractspec.growth.flags` + `contractspec.growth.experiments`: a service that evaluates
  flags and assigns experiments (the goal: < 150 ms, and no scipy, no SQLAlchemy);
* the same plus `contractspec.growth.stats` and `contractspec.growth.analytics`: what every
  import of the package used to load (scipy included).

The child also reports which heavy modules got loaded. Run:
`uv run --group bench python benchmarks/growth_import_time.py [--repeats N]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = """
import json, sys, time
t = time.perf_counter()
{imports}
elapsed = time.perf_counter() - t
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {{"scipy", "sqlalchemy", "pandas"}})
print(json.dumps({{"ms": elapsed * 1000, "heavy": heavy}}))
"""

CASES = {
    "numpy": "import numpy",
    "contractspec.core": "import contractspec.core",
    "flags + experiments": "import contractspec.growth.flags, contractspec.growth.experiments",
    "flags + experiments + stats + analytics (the old eager import)": (
        "import contractspec.growth.flags, contractspec.growth.experiments, "
        "contractspec.growth.stats, contractspec.growth.analytics"
    ),
}


def measure(imports: str, repeats: int) -> tuple[float, list[str]]:
    """Median import time in ms over fresh interpreters, and the heavy modules loaded."""
    times: list[float] = []
    heavy: list[str] = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", CHILD.format(imports=imports)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        row = json.loads(out.strip().splitlines()[-1])
        times.append(row["ms"])
        heavy = row["heavy"]
    return statistics.median(times), heavy


def main() -> None:
    """Print one row per case."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"median of {args.repeats} fresh interpreters, Python {sys.version.split()[0]}")
    print(f"{'import':<66} {'ms':>8}  heavy modules loaded")
    results = {}
    for label, imports in CASES.items():
        ms, heavy = measure(imports, args.repeats)
        results[label] = ms
        print(f"{label:<66} {ms:8.1f}  {', '.join(heavy) or '-'}")
    flags = results["flags + experiments"]
    print(
        f"goal: flags + experiments < 150 ms: {'met' if flags < 150 else 'NOT met'} "
        f"({flags:.0f} ms; numpy {results['numpy']:.0f} ms and contractspec.core "
        f"{results['contractspec.core']:.0f} ms of it are dependencies)"
    )


if __name__ == "__main__":
    main()
