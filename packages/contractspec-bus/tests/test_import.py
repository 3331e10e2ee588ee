"""The package imports and reports its version."""

import contractspec.bus


def test_version_is_a_string() -> None:
    """The version comes from the installed distribution metadata."""
    assert isinstance(contractspec.bus.__version__, str)
    assert contractspec.bus.__version__ != ""
