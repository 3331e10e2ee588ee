"""Experiment assignment: contractspec-growth vs GrowthBook's Python SDK, side by side.

The same three experiments (a 50/50 test, a 3-arm test in a namespace with partial coverage, and
a legacy hash-v1 test) and the same subjects, in three shapes (`user-<n>` strings, UUID4 strings,
integers), are assigned by:

* GrowthBook's SDK, one call per subject (`gb.set_attributes({"id": ...}); gb.run(experiment)`);
* our `ExperimentRunner.assign`, one call per subject;
* our vectorised `ExperimentRunner.assign_many`, over a Python list and over a NumPy array.

Per-call cost is dominated by the FNV-1a loop over the id's characters, which both sides run in
pure Python, so the ratio is largest for short ids and smallest for 36-character UUIDs.

Every assignment is compared (variation and in/out of the experiment must be identical). Per-call
times are medians over chunks of subjects; vectorised rates are medians of repeated full runs.

Run: `uv run --group bench python benchmarks/bucketing_vs_growthbook.py [--subjects N]`.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
import uuid
from importlib.metadata import version
from typing import Any

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


def id_sets(n: int) -> list[tuple[str, list[Any]]]:
    """The subjects, three ways: `user-<n>` strings, UUID4 strings, integers."""
    rng = random.Random(20240601)
    return [
        ("user-<n>", [f"user-{i}" for i in range(1, n + 1)]),
        ("uuid4", [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]),
        ("integer", list(range(1, n + 1))),
    ]


def run_set(
    label: str, ids: list[Any], specs: list[Any], gb_experiments: list[Any], chunks: int
) -> list[tuple[str, str, float, float, float, float, int, int]]:
    """Time and compare every experiment on one id set."""
    runner = ExperimentRunner(ExperimentRegistry(*specs))
    id_array = np.asarray(ids)
    chunk = max(1, len(ids) // chunks)
    rows = []
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
        same = (gb_out == our_out).copy()
        for _ in range(5):
            if label != "integer":  # integers come as an array; a list of ints is not hashed
                started = time.perf_counter()
                from_list = runner.assign_many(spec, ids)
                vec_list.append(time.perf_counter() - started)
                same &= gb_out == from_list.variation_index
            started = time.perf_counter()
            from_array = runner.assign_many(spec, id_array)
            vec_array.append(time.perf_counter() - started)
            same &= gb_out == from_array.variation_index
        rows.append(
            (
                label,
                spec.key,
                statistics.median(gb_times) * 1e6,
                statistics.median(our_times) * 1e6,
                len(ids) / statistics.median(vec_list) if vec_list else math.nan,
                len(ids) / statistics.median(vec_array),
                int(same.sum()),
                len(ids),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subjects", type=int, default=1_000_000)
    parser.add_argument("--chunks", type=int, default=10)
    args = parser.parse_args()

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
        f"assignment of {args.subjects:,} subjects x {len(specs)} experiments x 3 id shapes "
        f"(growthbook {version('growthbook')}, numpy {np.__version__})"
    )
    rows = []
    for label, ids in id_sets(args.subjects):
        rows += run_set(label, ids, specs, gb_experiments, args.chunks)

    header = (
        f"{'ids':<9} {'experiment':<18} {'growthbook us/call':>19} {'ours us/call':>13} "
        f"{'ratio':>6} {'ours vec list':>14} {'ours vec ndarray':>17} {'identical':>11}"
    )
    print(header)
    print("-" * len(header))
    for label, key, gb_us, our_us, rate_list, rate_array, same, _total in rows:
        listed = "-" if math.isnan(rate_list) else f"{rate_list / 1e6:.1f} M/s"
        print(
            f"{label:<9} {key:<18} {gb_us:>19.2f} {our_us:>13.2f} {gb_us / our_us:>5.1f}x "
            f"{listed:>14} {rate_array / 1e6:>13.1f} M/s {same:>11,}"
        )
    print("-" * len(header))
    for label in dict.fromkeys(r[0] for r in rows):
        mine = [r for r in rows if r[0] == label]
        gb_all = statistics.median(r[2] for r in mine)
        our_all = statistics.median(r[3] for r in mine)
        print(
            f"{label:<9} per call (median of experiments): growthbook {gb_all:.2f} us, ours "
            f"{our_all:.2f} us -> {gb_all / our_all:.1f}x; vectorised from an ndarray "
            f"{statistics.median(r[5] for r in mine) / 1e6:.1f} M/s"
        )
    identical = sum(r[6] for r in rows)
    total = sum(r[7] for r in rows)
    print(f"identical assignments (growthbook = assign = assign_many): {identical:,} / {total:,}")
    print("goals: >= 3x growthbook per call, >= 10 M assignments/s vectorised")
    if identical != total:
        raise SystemExit("assignments differ from GrowthBook's")


if __name__ == "__main__":
    main()
