"""The package imports, reports its version, and a flags-only service does not load scipy."""

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
