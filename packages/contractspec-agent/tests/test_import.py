"""The package imports and reports its version."""

import contractspec.agent


def test_version_is_a_string() -> None:
    """The version comes from the installed distribution metadata."""
    assert isinstance(contractspec.agent.__version__, str)
    assert contractspec.agent.__version__ != ""
