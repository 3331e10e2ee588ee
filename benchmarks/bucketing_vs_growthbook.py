"""Experiment assignment: contractspec-growth vs GrowthBook's Python SDK, side by side.

The same three experiments (a 50/50 test, a 3-arm test in a namespace with partial coverage, and
a legacy hash-v1 test) and the same subjects (UUID strings) are assigned by:

* GrowthBook's SDK, one call per subject (`gb.set_attributes({"id": ...}); gb.run(experiment)`);
* our `ExperimentRunner.assign`, one call per subject;
* our vectorised `ExperimentRunner.assign_many`, over a Python list and over a NumPy array.

Every assignment is compared (variation and in/out of the experiment must be identical). Per-call
times are medians over chunks of subjects; vectorised rates are medians of repeated full runs.

Run: `uv run --group bench python benchmarks/bucketing_vs_growthbook.py [--subjects N]`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import uuid
from importlib.metadata import version

import numpy as np
from growthbook import Experiment, GrowthBook

from contractspec.growth import (
    ExperimentRegistry,
    ExperimentRunner,
    define_experiment,
)

EXPERIMENTS = [
    {"key": "checkout.one-page", "arms": 2, "weights": None, "coverage": 1.0,
     "namespace": None, "hash_version": 2},
    {"key": "pricing.annual", "arms": 3, "weights": [0.2, 0.3, 0.5], "coverage": 0.6,
     "namespace": ("pricing", 0.1, 0.9), "hash_version": 2},
    {"key": "legacy.banner", "arms": 2, "weights": [0.1, 0.9], "coverage": 0.8,
     "namespace": None, "hash_version": 1},
]  # fmt: skip


def subjects(n: int) -> list[str]:
    """`n` deterministic UUID4-shaped ids."""
    rng = random.Random(20240601)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subjects", type=int, default=1_000_000)
    parser.add_argument("--chunks", type=int, default=10)
    args = parser.parse_args()
    ids = subjects(args.subjects)
    id_array = np.asarray(ids)
    chunk = max(1, len(ids) // args.chunks)

    specs = [
        define_experiment(
            e["key"],
            [f"v{i}" for i in range(e["arms"])],
            weights=e["weights"],
            coverage=e["coverage"],
            namespace=e["namespace"],
            hash_version=e["hash_version"],
        )
        for e in EXPERIMENTS
    ]
    runner = ExperimentRunner(ExperimentRegistry(*specs))
    gb_experiments = [
        Experiment(
            key=e["key"],
            variations=list(range(e["arms"])),
            weights=e["weights"],
            coverage=e["coverage"],
            namespace=e["namespace"],
            hashVersion=e["hash_version"],
        )
        for e in EXPERIMENTS
    ]

    print(
        f"assignment of {len(ids):,} subjects x {len(specs)} experiments "
        f"(growthbook {version('growthbook')}, numpy {np.__version__})"
    )
    rows = []
    identical = total = 0
    for spec, gb_exp in zip(specs, gb_experiments, strict=True):
        gb = GrowthBook(attributes={})
        gb_times, our_times = [], []
        gb_out = np.empty(len(ids), dtype=np.int16)
        our_out = np.empty(len(ids), dtype=np.int16)
        for lo in range(0, len(ids), chunk):
            part = ids[lo : lo + chunk]
            started = time.perf_counter()
            for j, subject in enumerate(part, lo):
                gb.set_attributes({"id": subject})
                result = gb.run(gb_exp)
                gb_out[j] = result.variationId if result.inExperiment else -1
            gb_times.append((time.perf_counter() - started) / len(part))
            started = time.perf_counter()
            for j, subject in enumerate(part, lo):
                a = runner.assign(spec, {"id": subject})
                our_out[j] = a.variation_index if a.in_experiment else -1
            our_times.append((time.perf_counter() - started) / len(part))
        gb.destroy()

        vec_list, vec_array = [], []
        for _ in range(5):
            started = time.perf_counter()
            from_list = runner.assign_many(spec, ids)
            vec_list.append(time.perf_counter() - started)
            started = time.perf_counter()
            from_array = runner.assign_many(spec, id_array)
            vec_array.append(time.perf_counter() - started)
        same = (
            (gb_out == our_out)
            & (gb_out == from_list.variation_index)
            & (gb_out == from_array.variation_index)
        )
        identical += int(same.sum())
        total += len(ids)
        rows.append(
            (
                spec.key,
                statistics.median(gb_times) * 1e6,
                statistics.median(our_times) * 1e6,
                len(ids) / statistics.median(vec_list),
                len(ids) / statistics.median(vec_array),
                int(same.sum()),
            )
        )

    header = (
        f"{'experiment':<20} {'growthbook us/call':>19} {'ours us/call':>13} {'ratio':>7} "
        f"{'ours vec (list)':>16} {'ours vec (ndarray)':>19} {'identical':>11}"
    )
    print(header)
    print("-" * len(header))
    for key, gb_us, our_us, rate_list, rate_array, same_count in rows:
        print(
            f"{key:<20} {gb_us:>19.2f} {our_us:>13.2f} {gb_us / our_us:>6.1f}x "
            f"{rate_list / 1e6:>12.1f} M/s {rate_array / 1e6:>15.1f} M/s {same_count:>11,}"
        )
    gb_all = statistics.median(r[1] for r in rows)
    our_all = statistics.median(r[2] for r in rows)
    print("-" * len(header))
    print(
        f"per call, median over experiments: growthbook {gb_all:.2f} us, ours {our_all:.2f} us "
        f"-> {gb_all / our_all:.1f}x (goal >= 3x)"
    )
    print(
        f"vectorised, median over experiments: {statistics.median(r[4] for r in rows) / 1e6:.1f} "
        f"M assignments/s from a NumPy array, {statistics.median(r[3] for r in rows) / 1e6:.1f} "
        "M/s from a Python list (goal >= 10 M/s)"
    )
    print(f"identical assignments: {identical:,} / {total:,}")
    if identical != total:
        raise SystemExit("assignments differ from GrowthBook's")


if __name__ == "__main__":
    main()
