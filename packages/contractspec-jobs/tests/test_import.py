"""The package imports and reports its version."""

import contractspec.jobs


def test_version_is_a_string() -> None:
    """The version comes from the installed distribution metadata."""
    assert isinstance(contractspec.jobs.__version__, str)
    assert contractspec.jobs.__version__ != ""
