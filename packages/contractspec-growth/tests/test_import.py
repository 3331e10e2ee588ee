"""The package imports, reports its version, and a flags-only service does not load scipy."""

import json
import subprocess
import sys

import contractspec.growth


def test_version_is_a_string() -> None:
    """The version comes from the installed distribution metadata."""
    assert isinstance(contractspec.growth.__version__, str)
    assert contractspec.growth.__version__ != ""


def test_flags_and_assignment_import_without_scipy_or_sqlalchemy() -> None:
    """In a fresh interpreter, importing flags and experiments (also through the package's
    top-level names) loads neither scipy, SQLAlchemy, the stats engine nor the analytics."""
    code = (
        "import sys\n"
        "import contractspec.growth.flags, contractspec.growth.experiments\n"
        "from contractspec.growth import ExperimentRunner, FlagEvaluator, define_flag\n"
        "heavy = {'scipy', 'sqlalchemy', 'contractspec.growth.stats',"
        " 'contractspec.growth.analytics', 'contractspec.growth.tracking'}\n"
        "print(sorted(heavy & {m if m.startswith('contractspec') else m.split('.')[0]"
        " for m in sys.modules}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


def test_every_public_name_resolves_lazily() -> None:
    """Each name in `__all__` is importable from the package (loaded on first use)."""
    for name in contractspec.growth.__all__:
        assert getattr(contractspec.growth, name) is not None, name
    assert "analyze_experiment" in dir(contractspec.growth)


FLAGS_CHILD = """
import json, sys
from contractspec.growth.flags import FlagEvaluator, define_flag, force, rollout, target
loaded = sorted(
    {m.split(".")[0] for m in sys.modules}
    & {"numpy", "pydantic", "structlog", "rich", "scipy", "pandas", "matplotlib", "sqlalchemy"}
)
if "importlib.metadata" in sys.modules:
    loaded.append("importlib.metadata")
flag = define_flag(
    "checkout.new-flow",
    default=False,
    rules=[force(True, when=target(org=["acme"])), rollout(True, coverage=0.3)],
)
flags = FlagEvaluator([flag])
on = [flags.is_on("checkout.new-flow", {"id": f"u-{i}"}) for i in range(200)]
print(json.dumps({"loaded": loaded, "on": on}))
"""


def test_flags_import_loads_neither_numpy_pydantic_nor_structlog() -> None:
    """In a fresh interpreter `contractspec.growth.flags` loads no numpy, pydantic, structlog
    (nor rich), scipy, pandas, matplotlib, SQLAlchemy or importlib.metadata; numpy comes in on
    demand and rollouts then serve exactly what an eagerly imported numpy serves."""
    import numpy  # noqa: F401  - this process: numpy already loaded, the reference

    from contractspec.growth.flags import FlagEvaluator, define_flag, force, rollout, target

    flag = define_flag(
        "checkout.new-flow",
        default=False,
        rules=[force(True, when=target(org=["acme"])), rollout(True, coverage=0.3)],
    )
    expected = [
        FlagEvaluator([flag]).is_on("checkout.new-flow", {"id": f"u-{i}"}) for i in range(200)
    ]
    out = subprocess.run(
        [sys.executable, "-c", FLAGS_CHILD], check=True, capture_output=True, text=True, timeout=120
    )
    child = json.loads(out.stdout.strip().splitlines()[-1])
    assert child["loaded"] == []
    assert child["on"] == expected
    assert 30 < sum(expected) < 90  # about 30% of 200 subjects: the rollout really buckets


def test_lazy_numpy_rebinds_the_module_global() -> None:
    """After first use, `np` in the hashing module is numpy itself (no stand-in left on the
    vectorised paths)."""
    import numpy

    from contractspec.growth import hashing

    assert hashing.bucket_hash_many("seed", ["a", "b"]).shape == (2,)
    assert hashing.np is numpy
