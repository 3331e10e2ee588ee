"""The package imports and reports its version."""

import contractspec.metering


def test_version_is_a_string() -> None:
    """The version comes from the installed distribution metadata."""
    assert isinstance(contractspec.metering.__version__, str)
    assert contractspec.metering.__version__ != ""
