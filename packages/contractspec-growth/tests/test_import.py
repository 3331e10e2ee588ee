"""The package imports and reports its version."""

import contractspec.growth


def test_version_is_a_string() -> None:
    """The version comes from the installed distribution metadata."""
    assert isinstance(contractspec.growth.__version__, str)
    assert contractspec.growth.__version__ != ""
