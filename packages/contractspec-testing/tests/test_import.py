"""The package imports and reports its version."""

import contractspec.testing


def test_version_is_a_string() -> None:
    """The version comes from the installed distribution metadata."""
    assert isinstance(contractspec.testing.__version__, str)
    assert contractspec.testing.__version__ != ""
