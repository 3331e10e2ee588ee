"""The package imports and reports its version."""

import contractspec.identity


def test_version_is_a_string() -> None:
    """The version comes from the installed distribution metadata."""
    assert isinstance(contractspec.identity.__version__, str)
    assert contractspec.identity.__version__ != ""
